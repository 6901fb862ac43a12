//! What every long-running command shares: its configuration sources and its stop flag.

use crate::config;
use anyhow::Context;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The configuration file (when given) with the environment applied, `--http-bind` when
/// given, and `--duration` parsed.
pub fn load(
    file: Option<&Path>,
    http_bind: Option<String>,
    duration: Option<&str>,
) -> anyhow::Result<(config::FileConfig, Option<Duration>)> {
    let mut cfg = match file {
        Some(path) => config::load_file(path)?,
        None => config::FileConfig::default(),
    };
    config::apply_env(&mut cfg, &|k| std::env::var(k).ok())?;
    if let Some(b) = http_bind {
        cfg.api.bind = b;
    }
    let duration = match duration {
        Some(d) => Some(
            config::parse_duration(d)
                .ok_or_else(|| config::refuse("--duration", format!("{d:?} is not a duration like 10s, 500ms, 2m or 1h")))?,
        ),
        None => None,
    };
    Ok((cfg, duration))
}

/// A flag set by Ctrl-C or SIGTERM (how Kubernetes stops a pod; a second one exits at once),
/// and after `duration` when given.
pub fn stop_flag(duration: Option<Duration>) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user means it.
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    if let Some(d) = duration {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stop.store(true, Ordering::SeqCst);
        });
    }
    Ok(stop)
}

/// Keeps the process alive past the file size limit (`ulimit -f`): by default SIGXFSZ kills
/// it without a word; handled, the write that crossed the limit fails with EFBIG and the
/// journal reports it like any other write error (and the engine stops deciding).
pub fn survive_file_size_limit() {
    let crossed = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, crossed) {
        eprintln!("warning: could not handle SIGXFSZ ({e}): a write past `ulimit -f` will kill the process");
    }
}
