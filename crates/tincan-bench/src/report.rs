//! Results: figures with their targets, the human table and the `--json` document.
//!
//! JSON schema (`"schema": "tincan-bench/1"`): `parts` maps a part key (`throughput`, `latency`,
//! `pairing`, `relay_rss`, `cold_start`, `serve`, `relay_load`, `relay_latency`, `idle_conns`,
//! `http_poll`) to `{status, params, figures, notes}` where `status` is
//! `"ok"`, `"skipped"` or `"failed"` (then `reason` says why), and `figures` maps a figure key to
//! `{value, unit, target: {op, value} | null, meets: bool | null}`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

/// Which side of the target is good.
#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    AtLeast,
    AtMost,
}

impl Cmp {
    fn symbol(self) -> &'static str {
        match self {
            Self::AtLeast => ">=",
            Self::AtMost => "<=",
        }
    }
}

/// One measured number.
#[derive(Clone, Debug)]
pub struct Figure {
    pub key: Cow<'static, str>,
    pub label: Cow<'static, str>,
    pub value: f64,
    pub unit: &'static str,
    pub target: Option<(Cmp, f64)>,
}

impl Figure {
    pub fn new(
        key: impl Into<Cow<'static, str>>,
        label: impl Into<Cow<'static, str>>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            value,
            unit,
            target: None,
        }
    }

    pub fn at_least(mut self, target: f64) -> Self {
        self.target = Some((Cmp::AtLeast, target));
        self
    }

    pub fn at_most(mut self, target: f64) -> Self {
        self.target = Some((Cmp::AtMost, target));
        self
    }

    fn meets(&self) -> Option<bool> {
        self.target.map(|(cmp, t)| match cmp {
            Cmp::AtLeast => self.value >= t,
            Cmp::AtMost => self.value <= t,
        })
    }
}

/// What a part produced.
#[derive(Debug)]
pub enum Outcome {
    Measured {
        figures: Vec<Figure>,
        notes: Vec<String>,
    },
    Skipped(String),
    Failed(String),
}

/// One benchmark part and its outcome.
#[derive(Debug)]
pub struct Part {
    pub key: &'static str,
    pub title: &'static str,
    pub params: Value,
    pub outcome: Outcome,
}

/// Milliseconds as a float, for latency figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of an ascending-sorted slice (`p` in 0..=100). Zero when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts durations into milliseconds, ascending.
pub fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn format_value(v: f64, unit: &str) -> String {
    let num = if v >= 1000.0 {
        group_thousands(v.round() as u64)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    format!("{num} {unit}")
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human-readable table.
pub fn table(parts: &[Part]) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut notes = Vec::new();
    for part in parts {
        match &part.outcome {
            Outcome::Measured { figures, notes: n } => {
                for f in figures {
                    let target = f
                        .target
                        .map(|(c, t)| format!("{} {}", c.symbol(), format_value(t, f.unit)))
                        .unwrap_or_default();
                    let verdict = match f.meets() {
                        Some(true) => "ok",
                        Some(false) => "MISS",
                        None => "",
                    };
                    rows.push([
                        format!("{}: {}", part.title, f.label),
                        format_value(f.value, f.unit),
                        target,
                        verdict.to_string(),
                    ]);
                }
                notes.extend(n.iter().map(|n| format!("{}: {n}", part.title)));
            }
            // The reason goes below the table, so a long one does not widen every row.
            Outcome::Skipped(why) => {
                rows.push([
                    part.title.to_string(),
                    "skipped".into(),
                    String::new(),
                    String::new(),
                ]);
                notes.push(format!("{}: skipped: {why}", part.title));
            }
            Outcome::Failed(why) => {
                rows.push([
                    part.title.to_string(),
                    "FAILED".into(),
                    String::new(),
                    String::new(),
                ]);
                notes.push(format!("{}: FAILED: {why}", part.title));
            }
        }
    }
    let header = ["measurement", "result", "target", ""];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, r: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
    };
    line(&mut out, header);
    let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 6));
    for r in &rows {
        line(&mut out, [&r[0], &r[1], &r[2], &r[3]]);
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    out
}

/// The `--json` document.
pub fn json(parts: &[Part]) -> Value {
    let mut map = serde_json::Map::new();
    for part in parts {
        let mut obj = json!({ "title": part.title, "params": part.params });
        match &part.outcome {
            Outcome::Measured { figures, notes } => {
                let figs: serde_json::Map<String, Value> = figures
                    .iter()
                    .map(|f| {
                        let target = f
                            .target
                            .map(|(c, t)| json!({"op": c.symbol(), "value": t}))
                            .unwrap_or(Value::Null);
                        (
                            f.key.to_string(),
                            json!({"value": f.value, "unit": f.unit, "target": target, "meets": f.meets()}),
                        )
                    })
                    .collect();
                obj["status"] = json!("ok");
                obj["figures"] = Value::Object(figs);
                obj["notes"] = json!(notes);
            }
            Outcome::Skipped(why) => {
                obj["status"] = json!("skipped");
                obj["reason"] = json!(why);
            }
            Outcome::Failed(why) => {
                obj["status"] = json!("failed");
                obj["reason"] = json!(why);
            }
        }
        map.insert(part.key.to_string(), obj);
    }
    json!({
        "schema": "tincan-bench/1",
        "tincan_version": env!("CARGO_PKG_VERSION"),
        "parts": Value::Object(map),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(1234567), "1,234,567");
        assert_eq!(group_thousands(999), "999");
    }
}
