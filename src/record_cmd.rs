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
//!
//! Bybit v5 (spot or linear): `/v5/public/{category}` with the topics subscribed in
//! batches (10 per request on spot), `{"op":"ping"}` every 20 s, every frame written as
//! received (acknowledgements and pongs included: readers skip them). Each (re)subscription
//! brings Bybit's own `orderbook` snapshot, so there is no REST snapshot to fetch.

use crate::config;
use anyhow::Context;
use flate2::write::GzEncoder;
use futures_util::SinkExt;
use futures_util::StreamExt;
use sapphire_core::latency::unix_nanos;
use sapphire_gateway::binance::BinanceMarket;
use sapphire_gateway::bybit::BybitCategory;
use sapphire_gateway::connection::{binance, http, Backoff, BinanceConnectionConfig, BybitConnectionConfig};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// `sapphire record` arguments.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// binance or bybit.
    #[arg(long, default_value = "binance")]
    pub venue: String,
    /// spot or usdm (binance); spot or linear (bybit).
    #[arg(long, default_value = "spot")]
    pub market: String,
    /// Symbols, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub symbols: Vec<String>,
    /// Channels per symbol, comma-separated: Binance stream names (default
    /// depth@100ms,bookTicker,trade) or Bybit topic prefixes (default orderbook.50,publicTrade,
    /// and tickers on linear).
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Output file (gzip); default: <venue>_<market>_<symbols>_<unix seconds>.gz here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// WebSocket base (default: the venue's public endpoint; e.g. ws://127.0.0.1:9000 for
    /// `sapphire feed serve`).
    #[arg(long)]
    pub ws_url: Option<String>,
    /// REST base for depth snapshots (give with --ws-url; Bybit needs none but takes it).
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

/// The venue connection a recording uses.
enum Venue {
    Binance(BinanceConnectionConfig),
    Bybit(BybitConnectionConfig),
}

/// Records until stopped.
pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    let symbols: Vec<String> = args.symbols.iter().map(|s| s.trim().to_uppercase()).filter(|s| !s.is_empty()).collect();
    if symbols.is_empty() {
        return Err(config::refuse("--symbols", "at least one symbol"));
    }
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let channels: Vec<String> = args.channels.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    let endpoints = match (&args.ws_url, &args.rest_url) {
        (Some(ws), Some(rest)) => Some((ws.trim_end_matches('/').to_string(), rest.trim_end_matches('/').to_string())),
        (None, None) => None,
        (Some(ws), None) if args.venue == "bybit" => Some((ws.trim_end_matches('/').to_string(), String::new())),
        _ => return Err(config::refuse("--ws-url / --rest-url", "give both or neither")),
    };
    let venue = match args.venue.as_str() {
        "binance" => {
            let market = match args.market.as_str() {
                "spot" => BinanceMarket::Spot,
                "usdm" => BinanceMarket::UsdM,
                m => return Err(config::refuse("--market", format!("{m:?}: spot or usdm"))),
            };
            let mut cfg = match &endpoints {
                Some((ws, rest)) => BinanceConnectionConfig::new(ws.as_str(), rest.as_str(), market, &refs),
                None => BinanceConnectionConfig::binance(market, &refs),
            };
            if !channels.is_empty() {
                cfg.channels = channels;
            }
            Venue::Binance(cfg)
        }
        "bybit" => {
            let category = match args.market.as_str() {
                "spot" => BybitCategory::Spot,
                "linear" => BybitCategory::Linear,
                m => return Err(config::refuse("--market", format!("{m:?}: bybit markets are spot and linear"))),
            };
            let mut cfg = match &endpoints {
                Some((ws, rest)) => BybitConnectionConfig::new(ws.as_str(), rest.as_str(), category, &refs),
                None => BybitConnectionConfig::bybit(category, &refs),
            };
            if !channels.is_empty() {
                cfg.channels = channels;
            }
            Venue::Bybit(cfg)
        }
        v => return Err(config::refuse("--venue", format!("{v:?}: binance or bybit"))),
    };
    let duration = match args.duration.as_deref() {
        Some(d) => {
            Some(config::parse_duration(d).ok_or_else(|| config::refuse("--duration", format!("{d:?} is not a duration like 30s")))?)
        }
        None => None,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("{}_{}_{}_{}.gz", args.venue, args.market, symbols.join("-").to_lowercase(), unix_nanos() / 1_000_000_000))
    });
    let file = std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let stop = crate::process::stop_flag(duration)?;
    let url = match &venue {
        Venue::Binance(cfg) => cfg.stream_url(),
        Venue::Bybit(cfg) => cfg.stream_url(),
    };
    outln!("record: {url} into {} (Ctrl-C stops and finishes the file)", out.display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let written = match venue {
        Venue::Binance(cfg) => runtime.block_on(record_binance(&cfg, &symbols, &mut gz, &stop))?,
        Venue::Bybit(cfg) => runtime.block_on(record_bybit(&cfg, &mut gz, &stop))?,
    };
    gz.finish().and_then(|mut f| f.flush()).with_context(|| format!("finishing {}", out.display()))?;
    outln!(
        "record: {} frames and {} snapshots ({} bytes before compression), {} reconnects, into {}",
        written.frames,
        written.snapshots,
        written.bytes,
        written.reconnects,
        out.display()
    );
    Ok(())
}

/// The gzip writer a recording goes into.
type Out = GzEncoder<std::io::BufWriter<std::fs::File>>;

/// Writes one `<recv_ns> <json>` line. One frame per line: a frame with a raw newline
/// (never seen from a venue) would break the format, so it is escaped as JSON allows.
fn write_line(gz: &mut Out, w: &mut Written, recv: u64, text: &str) -> std::io::Result<()> {
    let line = format!("{recv} {}\n", text.replace('\n', "\\n"));
    gz.write_all(line.as_bytes())?;
    w.frames += 1;
    w.bytes += line.len() as u64;
    Ok(())
}

/// Bybit: subscribe, ping, write every frame; reconnect and resubscribe when dropped.
async fn record_bybit(cfg: &BybitConnectionConfig, gz: &mut Out, stop: &std::sync::atomic::AtomicBool) -> std::io::Result<Written> {
    let mut w = Written::default();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), unix_nanos());
    let (mut first, mut req_id) = (true, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match binance::connect(&cfg.stream_url(), Duration::from_secs(10)).await {
            Ok(ws) => ws,
            Err(e) => {
                errln!("record: {e}; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if !first {
            w.reconnects += 1;
        }
        first = false;
        let mut alive = true;
        for (_, text) in cfg.requests("subscribe", &cfg.topics(), "sub", &mut req_id) {
            if ws.send(Message::text(text)).await.is_err() {
                alive = false;
                break;
            }
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + cfg.ping_interval, cfg.ping_interval);
        while alive && !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = ping.tick() => {
                    req_id += 1;
                    if ws.send(Message::text(format!("{{\"req_id\":\"ping-{req_id}\",\"op\":\"ping\"}}"))).await.is_err() {
                        errln!("record: connection lost; reconnecting");
                        break;
                    }
                }
                next = tokio::time::timeout(Duration::from_millis(200), ws.next()) => match next {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(text)))) => {
                        write_line(gz, &mut w, unix_nanos(), text.as_str())?;
                        if text.as_str().contains("\"type\":\"snapshot\"") && text.as_str().starts_with("{\"topic\":\"orderbook.") {
                            w.snapshots += 1;
                        }
                        backoff.reset();
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => {
                        errln!("record: connection lost ({e}); reconnecting");
                        break;
                    }
                    Ok(None) => {
                        errln!("record: the venue closed the connection; reconnecting");
                        break;
                    }
                },
            }
        }
        if !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Ok(w)
}

/// Binance: the combined stream, and a REST snapshot per symbol after its first depth frame
/// on each connection.
async fn record_binance(
    cfg: &BinanceConnectionConfig,
    symbols: &[String],
    gz: &mut Out,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<Written> {
    let mut w = Written::default();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), unix_nanos());
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match binance::connect(&cfg.stream_url(), Duration::from_secs(10)).await {
            Ok(ws) => ws,
            Err(e) => {
                errln!("record: {e}; retrying");
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
            if cfg.channels.iter().any(|c| c.starts_with("depth")) { symbols.to_vec() } else { Vec::new() };
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match next {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(text)))) => {
                    write_line(gz, &mut w, unix_nanos(), text.as_str())?;
                    let text = text.as_str();
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
                            Err(e) => errln!("record: snapshot of {symbol}: {e} (the recording continues without it)"),
                        }
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    errln!("record: connection lost ({e}); reconnecting");
                    break;
                }
                Ok(None) => {
                    errln!("record: the venue closed the connection; reconnecting");
                    break;
                }
            }
        }
        if !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Ok(w)
}
