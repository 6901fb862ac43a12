//! What every long-running command shares: its configuration sources and its stop flag.

use crate::config;
use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The running command's stop flag, once [`stop_flag`] made it (a closed stdout sets it).
static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// Stdout / stderr went away (the reader of a pipe exited): nothing more is written there.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes to stdout (`outln!`, `out!`). When the reader has gone (`sapphire run | head` after
/// `head` exits) the write fails with a broken pipe: where `outln!` would panic (exit 101,
/// the engine left mid-flight), this stops writing there and stops a running command as
/// Ctrl-C does — journals closed, exit 0 — the clean form of what SIGPIPE does to a Unix tool.
/// Other write errors (a full disk under a redirect) lose the line and nothing else.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    write_to(&mut std::io::stdout().lock(), &STDOUT_GONE, args, newline);
}

/// [`write_out`] for stderr (`errln!`, `errout!`).
pub fn write_err(args: std::fmt::Arguments<'_>, newline: bool) {
    write_to(&mut std::io::stderr().lock(), &STDERR_GONE, args, newline);
}

fn write_to(w: &mut impl Write, gone: &AtomicBool, args: std::fmt::Arguments<'_>, newline: bool) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    let written = w.write_fmt(args).and_then(|()| if newline { w.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe && !gone.swap(true, Ordering::SeqCst) {
            if let Some(stop) = STOP.get() {
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// True once stdout's reader has gone (see [`write_out`]).
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

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
/// by a closed stdout or stderr (see [`write_out`]), and after `duration` when given.
pub fn stop_flag(duration: Option<Duration>) -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let _ = STOP.set(Arc::clone(&stop));
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
        errln!("warning: could not handle SIGXFSZ ({e}): a write past `ulimit -f` will kill the process");
    }
}
