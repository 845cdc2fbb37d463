//! The audit log: an append-only, hash-chained record of what peers sent and what the agent did
//! after, in `audit.log` (JSON lines, mode 0600) in the home.
//!
//! Each line is a JSON object with `seq` (1, 2, ...), `at` (unix ms), `event`, the event's fields,
//! `prev` (the previous line's hash; 64 zeros for the first) and `hash`, the SHA-256 of
//! `"tincan v1 audit\n"` followed by the line serialised without `hash`. Editing a line breaks its
//! hash; removing one breaks the next line's `prev` and `seq`; removing lines at the end is caught
//! by the head (last `seq` and `hash`) kept in the home database. Appends take an exclusive file
//! lock, so the MCP server and hook processes can write concurrently.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Home;
use crate::error::ClientError;

const FILE: &str = "audit.log";
const LABEL: &[u8] = b"tincan v1 audit\n";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HEAD_KEY: &str = "audit.head";
/// Lines are small; the last one is always within this many bytes of the end.
const TAIL: u64 = 64 * 1024;

/// The result of checking the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditVerdict {
    /// Lines read.
    pub entries: u64,
    /// The first problem found: (1-based line number, what is wrong). `None`: the chain holds.
    pub problem: Option<(u64, String)>,
}

impl Home {
    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Appends one event with its fields (an object); returns the written entry.
    pub fn audit_append(
        &self,
        event: &str,
        fields: Value,
        at_ms: u64,
    ) -> Result<Value, ClientError> {
        let path = self.audit_path();
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(&path)?;
        file.lock()?;
        let (seq, prev) = match last_line(&mut file)? {
            Some(line) => {
                let v: Value = serde_json::from_str(&line).map_err(bad_log)?;
                let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
                let hash = v
                    .get("hash")
                    .and_then(Value::as_str)
                    .unwrap_or(GENESIS)
                    .to_string();
                (seq + 1, hash)
            }
            None => (1, GENESIS.to_string()),
        };
        let mut obj = Map::new();
        obj.insert("seq".into(), seq.into());
        obj.insert("at".into(), at_ms.into());
        obj.insert("event".into(), event.into());
        if let Value::Object(f) = fields {
            for (k, v) in f {
                if !matches!(k.as_str(), "seq" | "at" | "event" | "prev" | "hash") {
                    obj.insert(k, v);
                }
            }
        }
        obj.insert("prev".into(), prev.into());
        let hash = chain_hash(&obj);
        obj.insert("hash".into(), hash.clone().into());
        let value = Value::Object(obj);
        let mut line = serde_json::to_string(&value).map_err(bad_log)?;
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![HEAD_KEY, format!("{seq} {hash}")],
        )?;
        drop(file);
        Ok(value)
    }

    /// Every entry, oldest first (unverified; see [`Home::audit_verify`]).
    pub fn audit_entries(&self) -> Result<Vec<Value>, ClientError> {
        let file = match File::open(self.audit_path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                out.push(serde_json::from_str(&line).unwrap_or(Value::String(line)));
            }
        }
        Ok(out)
    }

    /// Checks the chain line by line and against the head kept in the database.
    pub fn audit_verify(&self) -> Result<AuditVerdict, ClientError> {
        let head: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![HEAD_KEY],
                |r| r.get(0),
            )
            .optional()?;
        let text = match std::fs::read_to_string(self.audit_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        let mut prev = GENESIS.to_string();
        let mut n = 0u64;
        let fail = |n: u64, why: String| {
            Ok(AuditVerdict {
                entries: n,
                problem: Some((n, why)),
            })
        };
        for line in text.lines() {
            n += 1;
            let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
                return fail(n, "not a JSON object".into());
            };
            let Some(Value::String(hash)) = obj.remove("hash") else {
                return fail(n, "no hash".into());
            };
            if obj.get("seq").and_then(Value::as_u64) != Some(n) {
                return fail(
                    n,
                    format!("expected seq {n}: a line was removed or inserted"),
                );
            }
            if obj.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
                return fail(
                    n,
                    "does not follow the previous line: a line was removed or edited".into(),
                );
            }
            if chain_hash(&obj) != hash {
                return fail(n, "hash mismatch: the line was edited".into());
            }
            prev = hash;
        }
        let expected = head.unwrap_or_else(|| format!("0 {GENESIS}"));
        let actual = if n == 0 {
            format!("0 {GENESIS}")
        } else {
            format!("{n} {prev}")
        };
        if expected != actual {
            let last = expected.split(' ').next().unwrap_or("?").to_string();
            return fail(
                n.max(1),
                format!(
                    "the log ends at entry {n} but entry {last} was written: lines were removed at the end"
                ),
            );
        }
        Ok(AuditVerdict {
            entries: n,
            problem: None,
        })
    }

    /// A small piece of state kept beside the log (e.g. the last peer message shown to the agent).
    pub fn audit_note(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![format!("audit.note.{key}")],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores a note (see [`Home::audit_note`]).
    pub fn set_audit_note(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![format!("audit.note.{key}"), value],
        )?;
        Ok(())
    }
}

/// SHA-256 of the label and the entry without its hash, hex.
fn chain_hash(obj: &Map<String, Value>) -> String {
    let body = serde_json::to_string(obj).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

/// SHA-256 of some text, hex: how the log refers to message text and tool input.
pub fn text_digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn last_line(file: &mut File) -> Result<Option<String>, ClientError> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = String::new();
    file.read_to_string(&mut buf)?;
    Ok(buf
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string))
}

fn bad_log(e: serde_json::Error) -> ClientError {
    ClientError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("audit log is damaged: {e}"),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let h = Home::open(&dir.path().join("h")).unwrap();
        (dir, h)
    }

    fn write(h: &Home, n: u64) {
        for i in 0..n {
            h.audit_append("received", json!({"peer": "p", "i": i}), 1000 + i)
                .unwrap();
        }
    }

    #[test]
    fn an_intact_log_verifies() {
        let (_d, h) = home();
        assert_eq!(h.audit_verify().unwrap().problem, None);
        write(&h, 3);
        let v = h.audit_verify().unwrap();
        assert_eq!(
            v,
            AuditVerdict {
                entries: 3,
                problem: None
            }
        );
        assert_eq!(h.audit_entries().unwrap()[2]["seq"], 3);
    }

    #[test]
    fn edits_and_removals_anywhere_are_detected() {
        let edit = |t: &str| t.replacen("\"i\":1", "\"i\":7", 1);
        let drop_middle = |t: &str| {
            let l: Vec<_> = t.lines().collect();
            format!("{}\n{}\n", l[0], l[2])
        };
        let drop_last = |t: &str| {
            let l: Vec<_> = t.lines().collect();
            format!("{}\n{}\n", l[0], l[1])
        };
        let drop_all = |_: &str| String::new();
        type Tamper = fn(&str) -> String;
        let cases: [(&str, Tamper); 4] = [
            ("edit", edit),
            ("drop_middle", drop_middle),
            ("drop_last", drop_last),
            ("drop_all", drop_all),
        ];
        for (name, change) in cases {
            let (_d, h) = home();
            write(&h, 3);
            let text = std::fs::read_to_string(h.audit_path()).unwrap();
            std::fs::write(h.audit_path(), change(&text)).unwrap();
            let v = h.audit_verify().unwrap();
            assert!(v.problem.is_some(), "{name} not detected: {v:?}");
        }
    }
}
