//! Configuration overrides (`--set key=value`) and parameter sweeps for `sapphire replay`.
//!
//! `--set risk.max_order_usd=500` overrides one key of the configuration file (the keys of
//! `config/sapphire.example.toml`); `--set paper.taker_fee_bps=5,10,20` gives a key several
//! values, and several such keys make a grid: every combination runs as its own
//! `sapphire replay --json` process (the current executable, `--jobs` at a time) with its own
//! configuration file, and the results come back as one table sorted by PnL.
//!
//! A value takes the type of the key's default in the example configuration (a string key
//! stays a string: `risk.max_order_usd=500` is `"500"`); keys the example leaves out are
//! read as integer, float, boolean or else string. Unknown keys are refused when the
//! configuration is resolved, naming the key.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The example configuration: the keys and their types.
const EXAMPLE: &str = include_str!("../config/sapphire.example.toml");

/// One `--set`: a dotted key and its values (one, or a list for a sweep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// `section.key`.
    pub key: String,
    /// Values as given.
    pub values: Vec<String>,
}

/// Parses `--set` arguments (`key=value` or `key=v1,v2,v3`).
pub fn parse_sets(sets: &[String]) -> anyhow::Result<Vec<Setting>> {
    let mut out: Vec<Setting> = Vec::new();
    for s in sets {
        let (key, values) = s.split_once('=').ok_or_else(|| crate::config::refuse("--set", format!("{s:?}: key=value or key=v1,v2")))?;
        let key = key.trim();
        let ok_key = key.split('.').count() >= 2
            && key.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok_key {
            return Err(crate::config::refuse("--set", format!("{key:?} is not a key like risk.max_order_usd")));
        }
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(crate::config::refuse("--set", format!("{s:?}: an empty value")));
        }
        if out.iter().any(|o| o.key == key) {
            return Err(crate::config::refuse("--set", format!("{key} given twice")));
        }
        out.push(Setting { key: key.to_string(), values });
    }
    Ok(out)
}

/// Every combination of the settings' values (the first setting varies slowest).
pub fn grid(settings: &[Setting]) -> Vec<Vec<(String, String)>> {
    let mut combos = vec![Vec::new()];
    for s in settings {
        combos = combos
            .into_iter()
            .flat_map(|c: Vec<(String, String)>| {
                s.values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((s.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// The type of a key's default in the example configuration.
fn example_value(key: &str) -> Option<toml::Value> {
    let doc: toml::Value = toml::from_str(EXAMPLE).ok()?;
    key.split('.').try_fold(&doc, |v, k| v.get(k)).cloned()
}

fn typed(key: &str, raw: &str) -> anyhow::Result<toml::Value> {
    let bad = |what: &str| crate::config::refuse(key, format!("{raw:?} is not {what}"));
    Ok(match example_value(key) {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => toml::Value::Integer(raw.parse().map_err(|_| bad("an integer"))?),
        Some(toml::Value::Float(_)) => toml::Value::Float(raw.parse().map_err(|_| bad("a number"))?),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(raw.parse().map_err(|_| bad("true or false"))?),
        Some(_) => return Err(crate::config::refuse("--set", format!("{key}: lists and tables cannot be set from the command line"))),
        None => {
            if let Ok(i) = raw.parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(f) = raw.parse::<f64>() {
                toml::Value::Float(f)
            } else if let Ok(b) = raw.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(raw.to_string())
            }
        }
    })
}

/// The configuration document: `base` (a TOML file, or empty) with `overrides` applied.
pub fn document(base: Option<&Path>, overrides: &[(String, String)]) -> anyhow::Result<toml::Value> {
    let mut doc = match base {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading configuration file {}", p.display()))?;
            toml::from_str::<toml::Value>(&text).map_err(|e| crate::config::refuse("--config", format!("{}: {e}", p.display())))?
        }
        None => toml::Value::Table(Default::default()),
    };
    for (key, raw) in overrides {
        let value = typed(key, raw)?;
        let parts: Vec<&str> = key.split('.').collect();
        let mut table = doc.as_table_mut().context("the configuration is not a table")?;
        for p in &parts[..parts.len() - 1] {
            let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            table = entry.as_table_mut().ok_or_else(|| crate::config::refuse(key, format!("{p} is not a section")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(doc)
}

/// The configuration of `doc` (unknown keys refused, naming the key).
pub fn file_config(doc: &toml::Value) -> anyhow::Result<crate::config::FileConfig> {
    let text = toml::to_string(doc).context("writing the configuration")?;
    toml::from_str(&text).map_err(|e| crate::config::ConfigError(format!("configuration with --set: {}", e.to_string().trim_end())).into())
}

/// One combination's result.
#[derive(Clone, Debug)]
pub struct Row {
    /// The combination.
    pub settings: Vec<(String, String)>,
    /// The child's JSON summary, or its error.
    pub result: Result<serde_json::Value, String>,
}

impl Row {
    fn pnl(&self) -> Option<sapphire_core::fixed::Money> {
        let v = self.result.as_ref().ok()?;
        sapphire_core::fixed::Money::parse(v.get("pnl")?.as_str()?).ok()
    }
}

/// Runs every combination as `exe replay <child_args> --config <file> --json`, `jobs` at a time;
/// rows sorted by PnL, best first (failed combinations last).
pub fn run_grid(
    exe: &Path,
    child_args: &[String],
    base: Option<&Path>,
    settings: &[Setting],
    jobs: usize,
    progress: bool,
) -> anyhow::Result<Vec<Row>> {
    let combos = grid(settings);
    // Refuse bad values before starting anything.
    for c in &combos {
        file_config(&document(base, c)?)?;
    }
    let dir = std::env::temp_dir().join(format!("sapphire-sweep-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let rows: Mutex<Vec<Option<Row>>> = Mutex::new(vec![None; combos.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, combos.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(combo) = combos.get(i) else { break };
                let result = run_one(exe, child_args, base, combo, &dir.join(format!("combo-{i}.toml")));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress {
                    errout!("\rsweep: {n}/{} runs done   ", combos.len());
                }
                if let Ok(mut r) = rows.lock() {
                    r[i] = Some(Row { settings: combo.clone(), result });
                }
            });
        }
    });
    if progress {
        errln!();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut rows: Vec<Row> = rows.into_inner().map_err(|_| anyhow::anyhow!("a sweep worker panicked"))?.into_iter().flatten().collect();
    // Best first; failed runs (no PnL) last.
    rows.sort_by_key(|r| std::cmp::Reverse(r.pnl()));
    Ok(rows)
}

fn unique() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

fn run_one(
    exe: &Path,
    child_args: &[String],
    base: Option<&Path>,
    combo: &[(String, String)],
    file: &PathBuf,
) -> Result<serde_json::Value, String> {
    let doc = document(base, combo).map_err(|e| format!("{e:#}"))?;
    std::fs::write(file, toml::to_string(&doc).map_err(|e| e.to_string())?).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let out = Command::new(exe)
        .arg("replay")
        .args(child_args)
        .arg("--config")
        .arg(file)
        .arg("--json")
        .env_remove("SAPPHIRE_CONFIG")
        .output()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("the child's summary is not JSON: {e}"))
}

/// The rows as a table for people.
pub fn table(rows: &[Row]) -> String {
    let keys: Vec<&str> = rows.first().map(|r| r.settings.iter().map(|(k, _)| k.as_str()).collect()).unwrap_or_default();
    let cols = ["pnl", "fees", "turnover", "fills", "max_drawdown_pct", "sharpe", "hit_rate"];
    let mut cells: Vec<Vec<String>> = vec![keys.iter().map(|k| k.to_string()).chain(cols.iter().map(|c| c.to_string())).collect()];
    for r in rows {
        let mut line: Vec<String> = r.settings.iter().map(|(_, v)| v.clone()).collect();
        match &r.result {
            Ok(v) => {
                for c in cols {
                    line.push(match v.get(c) {
                        Some(serde_json::Value::String(s)) => match sapphire_core::fixed::Money::parse(s) {
                            Ok(m) => format!("{m:.2}"),
                            Err(_) => s.clone(),
                        },
                        Some(serde_json::Value::Number(n)) if c == "hit_rate" => format!("{:.1}%", n.as_f64().unwrap_or(0.0) * 100.0),
                        Some(serde_json::Value::Number(n)) => {
                            n.as_f64().map_or(n.to_string(), |f| if f.fract() == 0.0 { format!("{f:.0}") } else { format!("{f:.2}") })
                        }
                        _ => "n/a".into(),
                    });
                }
            }
            Err(e) => line.push(format!("failed: {e}")),
        }
        cells.push(line);
    }
    let widths: Vec<usize> =
        (0..cells[0].len()).map(|i| cells.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0))).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows as one JSON array (`settings` and `summary` or `error` per row).
/// The grid's throughput: every run's events over the wall time of the whole grid, and how many
/// processes' worth of work that was (the runs' own replay times added up, over the wall time:
/// 1.0 for one process at a time, up to `jobs` when the cores take them all at full speed).
pub fn throughput(rows: &[Row], wall: std::time::Duration, jobs: usize) -> String {
    let ok: Vec<&serde_json::Value> = rows.iter().filter_map(|r| r.result.as_ref().ok()).collect();
    let events: u64 = ok.iter().filter_map(|v| v.get("events")?.as_u64()).sum();
    let busy: f64 = ok.iter().filter_map(|v| v.get("elapsed_s")?.as_f64()).sum();
    let wall_s = wall.as_secs_f64().max(1e-9);
    format!(
        "grid: {} runs, {} at a time, in {wall_s:.1}s: {events} events, {:.0} events/s in all; the runs' own replay times add up to {busy:.1}s, {:.2}× one process at a time",
        rows.len(),
        jobs.clamp(1, rows.len().max(1)),
        events as f64 / wall_s,
        busy / wall_s
    )
}

pub fn rows_json(rows: &[Row]) -> String {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let settings: serde_json::Map<String, serde_json::Value> =
                r.settings.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            match &r.result {
                Ok(s) => serde_json::json!({"settings": settings, "summary": s}),
                Err(e) => serde_json::json!({"settings": settings, "error": e}),
            }
        })
        .collect();
    serde_json::Value::Array(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_counts_every_run_against_the_grids_wall_time() {
        let row = |events: u64, secs: f64| Row { settings: vec![], result: Ok(serde_json::json!({"events": events, "elapsed_s": secs})) };
        let rows = vec![row(1_000_000, 2.0), row(3_000_000, 2.0), Row { settings: vec![], result: Err("boom".into()) }];
        let line = throughput(&rows, std::time::Duration::from_secs(2), 4);
        assert!(line.starts_with("grid: 3 runs, 3 at a time, in 2.0s: 4000000 events, 2000000 events/s in all"), "{line}");
        assert!(line.ends_with("add up to 4.0s, 2.00× one process at a time"), "{line}");
    }

    #[test]
    fn sets_parse_into_a_grid() {
        let s = parse_sets(&["paper.taker_fee_bps=5,10".into(), "risk.max_order_usd=500".into(), "risk.leverage=1,2".into()]).unwrap();
        let g = grid(&s);
        assert_eq!(g.len(), 4);
        assert_eq!(
            g[0],
            vec![
                ("paper.taker_fee_bps".into(), "5".into()),
                ("risk.max_order_usd".into(), "500".into()),
                ("risk.leverage".into(), "1".into())
            ]
        );
        assert_eq!(g[3][0].1, "10");
        assert_eq!(g[3][2].1, "2");
        for bad in ["nokey", "x=1", ".a=1", "a.b=", "a.b=1,,2"] {
            assert!(parse_sets(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_sets(&["a.b=1".into(), "a.b=2".into()]).is_err());
    }

    #[test]
    fn values_take_the_example_types_and_unknown_keys_are_refused() {
        let doc = document(None, &[("risk.max_order_usd".into(), "500".into()), ("paper.taker_fee_bps".into(), "7".into())]).unwrap();
        assert_eq!(doc["risk"]["max_order_usd"].as_str(), Some("500"));
        assert_eq!(doc["paper"]["taker_fee_bps"].as_integer(), Some(7));
        let cfg = file_config(&doc).unwrap().resolve().unwrap();
        assert_eq!(cfg.engine.matching.taker_fee_bps, 7);
        assert!(document(None, &[("paper.taker_fee_bps".into(), "lots".into())]).is_err());
        let unknown = file_config(&document(None, &[("risk.no_such_key".into(), "1".into())]).unwrap()).unwrap_err();
        assert!(unknown.to_string().contains("no_such_key"), "{unknown}");
    }
}
