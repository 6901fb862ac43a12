//! `sapphire record`: captures a venue's live frames to gzip files in the `<recv_ns> <json>`
//! line format that `feed decode`, `feed serve` and `replay` read — so users can build their
//! own replay sets.
//!
//! Binance (spot or USD-M): the combined stream of the configured channels for every symbol,
//! and after each (re)connect a REST depth snapshot per symbol, written as its own line right
//! after that symbol's first depth frame (Binance's own sync order: diffs buffered, then the
//! snapshot; and how `feed decode` and `replay` attribute a snapshot line), so a recording
//! always carries what its book needs to sync. Frames are written as received (not
//! parsed: a recording is the venue's own bytes). A dropped connection is retried with
//! jittered backoff and counted; the file is finished cleanly on Ctrl-C, SIGTERM or
//! `--duration`.

use crate::config;
use anyhow::Context;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use sapphire_core::latency::unix_nanos;
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::connection::{binance, http, Backoff, BinanceConnectionConfig};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// `sapphire record` arguments.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// binance (Bybit recording is not in this build).
    #[arg(long, default_value = "binance")]
    pub venue: String,
    /// spot or usdm.
    #[arg(long, default_value = "spot")]
    pub market: String,
    /// Symbols, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Channels per symbol, comma-separated (Binance stream names).
    #[arg(long, value_delimiter = ',', default_value = "depth@100ms,bookTicker,trade")]
    pub channels: Vec<String>,
    /// Output file (gzip); default: binance_<market>_<symbols>_<unix seconds>.gz here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// WebSocket base (default: the venue's public endpoint; e.g. ws://127.0.0.1:9000 for
    /// `sapphire feed serve`).
    #[arg(long)]
    pub ws_url: Option<String>,
    /// REST base for depth snapshots (give with --ws-url).
    #[arg(long)]
    pub rest_url: Option<String>,
    /// Stop by itself after this long (e.g. 30s, 10m); default: until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub duration: Option<String>,
}

/// What a recording wrote.
#[derive(Debug, Default)]
struct Written {
    frames: u64,
    snapshots: u64,
    reconnects: u64,
    bytes: u64,
}

/// Records until stopped.
pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    if args.venue != "binance" {
        return Err(config::refuse("--venue", format!("{:?}: this build records Binance (spot, usdm)", args.venue)));
    }
    let market = match args.market.as_str() {
        "spot" => BinanceMarket::Spot,
        "usdm" => BinanceMarket::UsdM,
        m => return Err(config::refuse("--market", format!("{m:?}: spot or usdm"))),
    };
    let symbols: Vec<String> = args.symbols.iter().map(|s| s.trim().to_uppercase()).filter(|s| !s.is_empty()).collect();
    if symbols.is_empty() {
        return Err(config::refuse("--symbols", "at least one symbol"));
    }
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut cfg = match (&args.ws_url, &args.rest_url) {
        (Some(ws), Some(rest)) => BinanceConnectionConfig::new(ws.trim_end_matches('/'), rest.trim_end_matches('/'), market, &refs),
        (None, None) => BinanceConnectionConfig::binance(market, &refs),
        _ => return Err(config::refuse("--ws-url / --rest-url", "give both or neither")),
    };
    cfg.channels = args.channels.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    let duration = match args.duration.as_deref() {
        Some(d) => {
            Some(config::parse_duration(d).ok_or_else(|| config::refuse("--duration", format!("{d:?} is not a duration like 30s")))?)
        }
        None => None,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("binance_{}_{}_{}.gz", args.market, symbols.join("-").to_lowercase(), unix_nanos() / 1_000_000_000))
    });
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let stop = crate::process::stop_flag(duration)?;
    println!("record: {} into {} (Ctrl-C stops and finishes the file)", cfg.stream_url(), out.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let written = runtime.block_on(async {
        let mut w = Written::default();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), unix_nanos());
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            let mut ws = match binance::connect(&cfg.stream_url(), Duration::from_secs(10)).await {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("record: {e}; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if !first {
                w.reconnects += 1;
            }
            first = false;
            // Symbols still waiting for their snapshot on this connection.
            let mut want_snapshot: Vec<String> =
                if cfg.channels.iter().any(|c| c.starts_with("depth")) { symbols.clone() } else { Vec::new() };
            loop {
                let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match next {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let recv = unix_nanos();
                        // One frame per line: a frame with a raw newline (never seen from a
                        // venue) would break the format, so it is escaped as JSON allows.
                        let text = text.as_str().replace('\n', "\\n");
                        let line = format!("{recv} {text}\n");
                        gz.write_all(line.as_bytes())?;
                        w.frames += 1;
                        w.bytes += line.len() as u64;
                        backoff.reset();
                        // After a symbol's first depth frame on this connection, its snapshot.
                        if let Some(i) = want_snapshot.iter().position(|s| text.contains(&format!("\"{}@depth", s.to_lowercase()))) {
                            let symbol = want_snapshot.swap_remove(i);
                            match http::get(&cfg.snapshot_url(&symbol)).await {
                                Ok(body) => {
                                    let line = format!("{} {}\n", unix_nanos(), String::from_utf8_lossy(&body));
                                    gz.write_all(line.as_bytes())?;
                                    w.snapshots += 1;
                                    w.bytes += line.len() as u64;
                                }
                                Err(e) => eprintln!("record: snapshot of {symbol}: {e} (the recording continues without it)"),
                            }
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => {
                        eprintln!("record: connection lost ({e}); reconnecting");
                        break;
                    }
                    Ok(None) => {
                        eprintln!("record: the venue closed the connection; reconnecting");
                        break;
                    }
                }
            }
            if !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Ok::<_, std::io::Error>(w)
    })?;
    gz.finish().and_then(|mut f| f.flush()).with_context(|| format!("finishing {}", out.display()))?;
    println!(
        "record: {} frames and {} snapshots ({} bytes before compression), {} reconnects, into {}",
        written.frames,
        written.snapshots,
        written.bytes,
        written.reconnects,
        out.display()
    );
    Ok(())
}
