//! `tincan mcp install`: adds the tincan server to an MCP client's configuration, merging with
//! what is there. Existing entries are kept; a file that does not parse is left untouched and
//! reported; the previous version of a changed file is kept beside it as `<name>.bak`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::InstallError;

/// MCP clients with a known configuration format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Claude Code: `~/.claude.json` (`mcpServers`) and the audit hook in `~/.claude/settings.json`.
    Claude,
    /// Codex: `$CODEX_HOME/config.toml` (default `~/.codex`), `[mcp_servers.tincan]`.
    Codex,
    /// OpenCode: `$XDG_CONFIG_HOME/opencode/opencode.json` (default `~/.config`), `mcp.tincan`.
    Opencode,
}

/// How to start the server: the program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCommand {
    /// The `tincan` binary.
    pub program: String,
    /// Arguments, e.g. `["--home", "/h", "mcp"]`.
    pub args: Vec<String>,
}

impl ServerCommand {
    /// The PostToolUse hook command line for the audit log, shell-quoted.
    pub fn hook_command(&self) -> String {
        let mut words = vec![shell_quote(&self.program)];
        let home_args = self.args.iter().take_while(|a| *a != "mcp");
        words.extend(home_args.map(|a| shell_quote(a)));
        words.push("audit".into());
        words.push("hook".into());
        words.join(" ")
    }
}

/// Where the user's configuration lives.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// `$HOME`.
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, if set.
    pub xdg_config: Option<PathBuf>,
    /// `$CODEX_HOME`, if set.
    pub codex_home: Option<PathBuf>,
}

/// One file to write.
#[derive(Clone, Debug)]
pub struct Change {
    /// The file.
    pub path: PathBuf,
    /// Its new contents.
    pub contents: String,
    /// The part tincan adds, for `--print`.
    pub snippet: String,
    /// Whether anything differs from what is there.
    pub changed: bool,
}

/// Works out the changes for `kind` without writing anything.
pub fn plan(
    kind: ClientKind,
    dirs: &Dirs,
    cmd: &ServerCommand,
) -> Result<Vec<Change>, InstallError> {
    match kind {
        ClientKind::Claude => {
            let entry =
                json!({"type": "stdio", "command": cmd.program, "args": cmd.args, "env": {}});
            let servers = merge_json(
                &dirs.home.join(".claude.json"),
                &["mcpServers"],
                "tincan",
                entry,
            )?;
            let hook = hook_change(&dirs.home.join(".claude").join("settings.json"), cmd)?;
            Ok(vec![servers, hook])
        }
        ClientKind::Opencode => {
            let base = dirs
                .xdg_config
                .clone()
                .unwrap_or_else(|| dirs.home.join(".config"));
            let mut command = vec![cmd.program.clone()];
            command.extend(cmd.args.iter().cloned());
            let entry = json!({"type": "local", "command": command, "enabled": true});
            let path = base.join("opencode").join("opencode.json");
            Ok(vec![merge_json(&path, &["mcp"], "tincan", entry)?])
        }
        ClientKind::Codex => {
            let base = dirs
                .codex_home
                .clone()
                .unwrap_or_else(|| dirs.home.join(".codex"));
            Ok(vec![codex_change(&base.join("config.toml"), cmd)?])
        }
    }
}

/// Writes the changes (only files that differ), keeping a `.bak` of each replaced file.
///
/// Returns the backups it made, keyed by the file replaced; a file that did not exist before has
/// none.
pub fn apply(changes: &[Change]) -> Result<BTreeMap<PathBuf, PathBuf>, InstallError> {
    let mut backups = BTreeMap::new();
    for c in changes.iter().filter(|c| c.changed) {
        let io = |source| InstallError::Io {
            path: c.path.display().to_string(),
            source,
        };
        if let Some(dir) = c.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if c.path.exists() {
            let mut bak = c.path.clone().into_os_string();
            bak.push(".bak");
            let bak = PathBuf::from(bak);
            std::fs::copy(&c.path, &bak).map_err(io)?;
            backups.insert(c.path.clone(), bak);
        }
        let mut tmp = c.path.clone().into_os_string();
        tmp.push(".tincan-tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, &c.contents).map_err(io)?;
        std::fs::rename(&tmp, &c.path).map_err(io)?;
    }
    Ok(backups)
}

fn read_opt(path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn load_json(path: &Path) -> Result<(Option<String>, Map<String, Value>), InstallError> {
    let old = read_opt(path)?;
    let root = match old.as_deref().map(str::trim) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(InstallError::Shape {
                    path: path.display().to_string(),
                    key: "(top level)".into(),
                });
            }
            Err(e) => {
                return Err(InstallError::Unparsable {
                    path: path.display().to_string(),
                    format: "JSON",
                    reason: e.to_string(),
                });
            }
        },
    };
    Ok((old, root))
}

fn finish_json(
    path: &Path,
    old: Option<String>,
    root: Map<String, Value>,
    snippet: Value,
) -> Change {
    let mut contents = serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default();
    contents.push('\n');
    let changed = match &old {
        Some(o) => {
            serde_json::from_str::<Value>(o).ok() != serde_json::from_str::<Value>(&contents).ok()
        }
        None => true,
    };
    Change {
        path: path.to_path_buf(),
        contents,
        snippet: serde_json::to_string_pretty(&snippet).unwrap_or_default(),
        changed,
    }
}

/// Sets `root[table...][key] = entry`, creating the tables, keeping everything else.
fn merge_json(
    path: &Path,
    table: &[&str],
    key: &str,
    entry: Value,
) -> Result<Change, InstallError> {
    let (old, mut root) = load_json(path)?;
    let mut cur = &mut root;
    for t in table {
        let slot = cur
            .entry((*t).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match slot {
            Value::Object(m) => m,
            _ => {
                return Err(InstallError::Shape {
                    path: path.display().to_string(),
                    key: (*t).to_string(),
                });
            }
        };
    }
    cur.insert(key.to_string(), entry.clone());
    let mut snippet = json!({ key: entry });
    for t in table.iter().rev() {
        snippet = json!({ *t: snippet });
    }
    Ok(finish_json(path, old, root, snippet))
}

/// Adds the audit hook to Claude Code's PostToolUse hooks unless a tincan audit hook is there.
fn hook_change(path: &Path, cmd: &ServerCommand) -> Result<Change, InstallError> {
    let (old, mut root) = load_json(path)?;
    let shape = |key: &str| InstallError::Shape {
        path: path.display().to_string(),
        key: key.into(),
    };
    let hook =
        json!({"matcher": "*", "hooks": [{"type": "command", "command": cmd.hook_command()}]});
    let hooks = root.entry("hooks").or_insert_with(|| json!({}));
    let Value::Object(hooks) = hooks else {
        return Err(shape("hooks"));
    };
    let post = hooks.entry("PostToolUse").or_insert_with(|| json!([]));
    let Value::Array(post) = post else {
        return Err(shape("hooks.PostToolUse"));
    };
    let present = post.iter().any(|m| {
        m["hooks"].as_array().is_some_and(|hs| {
            hs.iter().any(|h| {
                h["command"]
                    .as_str()
                    .is_some_and(|c| c.contains("audit hook"))
            })
        })
    });
    if !present {
        post.push(hook.clone());
    }
    Ok(finish_json(
        path,
        old,
        root,
        json!({"hooks": {"PostToolUse": [hook]}}),
    ))
}

fn codex_change(path: &Path, cmd: &ServerCommand) -> Result<Change, InstallError> {
    let old = read_opt(path)?;
    let mut doc: toml_edit::DocumentMut =
        old.as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|e: toml_edit::TomlError| InstallError::Unparsable {
                path: path.display().to_string(),
                format: "TOML",
                reason: e.to_string(),
            })?;
    let shape = |key: &str| InstallError::Shape {
        path: path.display().to_string(),
        key: key.into(),
    };
    let servers = doc
        .entry("mcp_servers")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| shape("mcp_servers"))?;
    let mut entry = toml_edit::Table::new();
    entry.insert("command", toml_edit::value(cmd.program.clone()));
    let mut args = toml_edit::Array::new();
    for a in &cmd.args {
        args.push(a.as_str());
    }
    entry.insert("args", toml_edit::value(args));
    servers.insert("tincan", toml_edit::Item::Table(entry));
    let contents = doc.to_string();
    let mut snippet_doc = toml_edit::DocumentMut::new();
    if let Some(t) = doc
        .get("mcp_servers")
        .and_then(|s| s.get("tincan"))
        .cloned()
    {
        let mut outer = toml_edit::Table::new();
        outer.set_implicit(true);
        outer.insert("tincan", t);
        snippet_doc.insert("mcp_servers", toml_edit::Item::Table(outer));
    }
    Ok(Change {
        path: path.to_path_buf(),
        changed: old.as_deref() != Some(contents.as_str()),
        contents,
        snippet: snippet_doc.to_string(),
    })
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | ':' | '='))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cmd() -> ServerCommand {
        ServerCommand {
            program: "/bin/tincan".into(),
            args: vec!["--home".into(), "/h 1".into(), "mcp".into()],
        }
    }

    fn dirs(t: &Path) -> Dirs {
        Dirs {
            home: t.to_path_buf(),
            xdg_config: None,
            codex_home: None,
        }
    }

    #[test]
    fn claude_merge_keeps_other_servers_and_settings_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join(".claude.json"),
            r#"{"theme": "dark", "mcpServers": {"other": {"command": "x"}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(t.path().join(".claude")).unwrap();
        std::fs::write(
            t.path().join(".claude/settings.json"),
            r#"{"hooks": {"PostToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "lint"}]}]}, "model": "x"}"#,
        )
        .unwrap();
        let changes = plan(ClientKind::Claude, &dirs(t.path()), &cmd()).unwrap();
        let backups = apply(&changes).unwrap();
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(t.path().join(".claude.json")).unwrap())
                .unwrap();
        assert_eq!(v["theme"], "dark");
        assert_eq!(v["mcpServers"]["other"]["command"], "x");
        assert_eq!(v["mcpServers"]["tincan"]["args"][2], "mcp");
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(t.path().join(".claude/settings.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(s["model"], "x");
        let post = s["hooks"]["PostToolUse"].as_array().unwrap();
        assert_eq!(post.len(), 2);
        assert_eq!(
            post[1]["hooks"][0]["command"],
            "/bin/tincan --home '/h 1' audit hook"
        );
        assert!(t.path().join(".claude.json.bak").exists());
        assert_eq!(
            backups.get(&t.path().join(".claude.json")),
            Some(&t.path().join(".claude.json.bak"))
        );
        // Again: nothing changes.
        let again = plan(ClientKind::Claude, &dirs(t.path()), &cmd()).unwrap();
        assert!(again.iter().all(|c| !c.changed), "{again:?}");
    }

    #[test]
    fn a_fresh_home_gets_no_backups() {
        let t = tempfile::tempdir().unwrap();
        let changes = plan(ClientKind::Claude, &dirs(t.path()), &cmd()).unwrap();
        assert!(changes.iter().all(|c| c.changed), "{changes:?}");
        let backups = apply(&changes).unwrap();
        assert!(backups.is_empty(), "{backups:?}");
        assert!(t.path().join(".claude.json").exists());
        assert!(!t.path().join(".claude.json.bak").exists());
    }

    #[test]
    fn codex_keeps_comments_and_tables() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(".codex/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "# my settings\nmodel = \"o3\"\n\n[mcp_servers.other]\ncommand = \"x\"\n",
        )
        .unwrap();
        apply(&plan(ClientKind::Codex, &dirs(t.path()), &cmd()).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my settings\nmodel = \"o3\""), "{text}");
        assert!(text.contains("[mcp_servers.other]"));
        assert!(text.contains("[mcp_servers.tincan]"));
        assert!(
            text.contains("args = [\"--home\", \"/h 1\", \"mcp\"]"),
            "{text}"
        );
    }

    #[test]
    fn an_unparsable_file_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(".config/opencode/opencode.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{ // comment\n").unwrap();
        let err = plan(ClientKind::Opencode, &dirs(t.path()), &cmd()).unwrap_err();
        assert!(matches!(err, InstallError::Unparsable { .. }));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ // comment\n");
    }
}
