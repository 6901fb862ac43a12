//! The configuration: a TOML file and environment values, through `load`'s parse, the
//! environment overrides and `resolve`'s validation, exactly as `sapphire run` reads them
//! (`src/config.rs`, and the modules whose sections it holds, are compiled here as modules; a
//! new `crate::` module that config.rs names must be added below). Input: TOML, a NUL byte, then `KEY=VALUE`
//! lines. Never panics: a bad value is an error naming its key.
#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

// The binary's own modules that the configuration names (its sections), compiled as they are.
#[path = "../../src/alerts.rs"]
mod alerts;
#[path = "../../src/charts.rs"]
mod charts;
#[path = "../../src/config.rs"]
mod config;
#[path = "../../src/report/mod.rs"]
mod report;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Token files are read by path: keep the fuzzer off devices that never end.
    if ["dev/", "proc/", "sys/", "fd/"].iter().any(|p| text.contains(p)) {
        return;
    }
    let (toml_text, env_text) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> =
        env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = |k: &str| env.iter().rev().find(|(name, _)| name == k).map(|(_, v)| v.clone());
    for (_, v) in &env {
        let _ = config::parse_duration(v);
        let _ = config::parse_symbols("TRADING_SYMBOLS", v);
    }
    let Ok(mut file) = toml::from_str::<config::FileConfig>(toml_text) else { return };
    if config::apply_env(&mut file, &lookup).is_err() {
        return;
    }
    let _ = file.resolve();
});
