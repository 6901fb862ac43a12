//! `sapphire`: the command line. Parses configuration, wires the parts, starts the process.

// Every line a command prints goes through these, never `println!`/`eprintln!`: those panic
// when the reader of a pipe has gone (`sapphire run | head`), while these stop a running command
// cleanly instead (see `process::write_out`).
macro_rules! outln {
    () => { $crate::process::write_out(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::process::write_out(format_args!($($arg)*), true) };
}
macro_rules! out {
    ($($arg:tt)*) => { $crate::process::write_out(format_args!($($arg)*), false) };
}
macro_rules! errln {
    () => { $crate::process::write_err(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::process::write_err(format_args!($($arg)*), true) };
}
macro_rules! errout {
    ($($arg:tt)*) => { $crate::process::write_err(format_args!($($arg)*), false) };
}

mod agents_bridge;
mod agents_cmd;
mod alerts;
mod bench_cmd;
mod charts;
mod config;
mod engine_core;
mod feed_cmd;
mod feed_serve;
mod gateway_cmd;
mod journal_cmd;
mod live_feed;
mod migrate_cmd;
mod process;
mod record_cmd;
mod rehearse;
mod replay;
mod report;
mod run;
mod sink_cmd;
mod snapshot_cmd;
mod sweep;
mod venue_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Sapphire: a low-latency crypto trading engine.
#[derive(Debug, Parser)]
#[command(name = "sapphire", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: market source → engine → paper venue, with a status line every second.
    Run(RunArgs),
    /// The engine as the deployment's core role: the same as `run` (feeds, journals, API,
    /// and the Redis bus and Postgres sink when REDIS_URL / DATABASE_URL are set).
    Core(RunArgs),
    /// The API and dashboard fed by a core through Redis (REDIS_URL); operator control is
    /// forwarded to the cores signed with SAPPHIRE_API_TOKEN.
    Gateway(gateway_cmd::GatewayArgs),
    /// The agents runtime as a process of its own, fed by a core through Redis (REDIS_URL):
    /// ticks in, signals out on `<prefix>:signals:in`.
    Agents(agents_cmd::AgentsArgs),
    /// Exchange feed tools.
    #[command(subcommand)]
    Feed(FeedCommand),
    /// Venue tools (request signing).
    #[command(subcommand)]
    Venue(venue_cmd::VenueCommand),
    /// Journal tools.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Captures a venue's live frames (and a depth snapshot per symbol at each connect) to a
    /// gzip file of `<recv_ns> <json>` lines, the format `feed decode`, `feed serve` and
    /// `replay` read.
    Record(record_cmd::RecordArgs),
    /// Apply the Postgres schema migrations (on purpose; `run` never migrates). Idempotent.
    Migrate(migrate_cmd::MigrateArgs),
    /// Follow an output journal into Postgres (the sink role), exactly once across restarts.
    Sink(sink_cmd::SinkArgs),
    /// The latency lab: one-hop and engine comparisons, feed parsing, journal appends and
    /// loopback end to end; writes report.md, report.json, .hgrm files and PNG plots.
    Bench(bench_cmd::BenchArgs),
    /// A strategy report from an output journal: PNG charts, index.html and summary.md,
    /// optionally sent to Telegram.
    Report(report::ReportArgs),
    /// Replay recordings (`<recv_ns> <json>` lines, gzip or plain; several files are merged
    /// by time) or an input journal through the engine, deterministically, as fast as possible
    /// or at recorded pace; `--set` overrides and sweeps configuration keys.
    Replay(replay::ReplayArgs),
    /// Binary captures: recordings decoded once into an input journal that `replay` reads
    /// without parsing.
    #[command(subcommand)]
    Capture(CaptureCommand),
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Prints a journal's records (input: events; output: orders, fills, refusals, alerts,
    /// PnL, signals) as JSON lines or CSV; decimals are exact strings.
    Dump {
        /// The journal directory, e.g. data/journal/input or data/journal/output.
        dir: PathBuf,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// First record sequence.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Finds the first damage in a journal (a bad record with data after it, a sequence out
    /// of order, a missing segment) and moves it aside into DIR/quarantine/, cutting the
    /// damaged segment at its last good record; deletes nothing. A clean journal is left as
    /// it is. Stop the engine first.
    Repair {
        /// The journal directory, e.g. data/journal/input.
        dir: PathBuf,
        /// Only say what would be moved.
        #[arg(long)]
        dry_run: bool,
    },
    /// Lists a data directory's engine snapshots, each checked (header, checksums, the
    /// instruments and engine configuration it was written for); with --verify, replays the
    /// input journal and compares each with the engine's state after its event.
    Snapshots {
        /// The data directory (or its snapshots directory).
        dir: PathBuf,
        /// Replay the input journal and compare.
        #[arg(long)]
        verify: bool,
        /// The configuration the run used (its engine, risk and paper sections).
        #[arg(long, env = "SAPPHIRE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Archives, then deletes, the sealed segments a restart no longer needs: input segments
    /// before the newest snapshot (checked by its checksums), and, when the sink's cursor is
    /// given, output segments it has committed. What `[retention]` does in the core, by hand;
    /// safe while the core runs.
    Prune {
        /// The data directory (journal/input, journal/output and snapshots under it).
        dir: PathBuf,
        /// A directory, file:///dir or gs://bucket/prefix (segments go under <shard>/).
        #[arg(long, env = "SAPPHIRE_ARCHIVE")]
        archive: String,
        /// The shard folder in the archive.
        #[arg(long, env = "SAPPHIRE_SHARD", default_value = sapphire_persistence::shard::DEFAULT_SHARD)]
        shard: String,
        /// The sink's committed cursor (next output record not in Postgres); without it (or
        /// --sink-cursor-file) the output journal stays whole, and the input journal too.
        #[arg(long, conflicts_with = "sink_cursor_file")]
        sink_cursor: Option<u64>,
        /// The file `sapphire sink --cursor-file` keeps.
        #[arg(long)]
        sink_cursor_file: Option<PathBuf>,
        /// Output segments written to within this many hours stay.
        #[arg(long, default_value_t = 26)]
        keep_output_hours: u64,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
    },
    /// Brings a data directory's archived segments back in front of its local ones (stop the
    /// core first), e.g. to recover with a snapshot older than the newest.
    Restore {
        /// The data directory.
        dir: PathBuf,
        /// Where they were archived.
        #[arg(long, env = "SAPPHIRE_ARCHIVE")]
        archive: String,
        /// The shard folder in the archive.
        #[arg(long, env = "SAPPHIRE_SHARD", default_value = sapphire_persistence::shard::DEFAULT_SHARD)]
        shard: String,
    },
}

#[derive(Debug, Subcommand)]
enum CaptureCommand {
    /// Decodes Binance recordings (`<recv_ns> <json>` lines, gzip or plain; several merged by
    /// time) exactly as `replay` does — timers, book sync and all — into an input journal OUT
    /// (a new directory) with the instruments' exact specifications; `sapphire replay OUT`
    /// then gives the recordings' outputs, record for record, without parsing them.
    Convert {
        /// Recording files, then the capture directory to create.
        #[arg(required = true, num_args = 2.., value_name = "IN... OUT")]
        paths: Vec<PathBuf>,
        /// spot or usdm (default: usdm when a file name says so).
        #[arg(long)]
        market: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FeedCommand {
    /// Raw exchange frames on stdin (one per line, `<recv_ns> <json>` accepted), one normalized
    /// JSON object per event on stdout; bad lines are reported on stderr with their number.
    Decode {
        /// binance or bybit.
        #[arg(long)]
        venue: String,
        /// spot (default) or usdm for binance; spot or linear for bybit.
        #[arg(long)]
        market: Option<String>,
        /// Maintain the order book and add its top and sync state to book events.
        #[arg(long)]
        book: bool,
    },
    /// A local exchange: replays recordings (`<recv_ns> <json>` lines, gzip or plain) over
    /// Binance's WebSocket (combined streams, SUBSCRIBE) and REST (depth, exchangeInfo) or
    /// Bybit v5's (`/v5/public/spot|linear`, instruments-info) wire format until stopped;
    /// prints the bound address.
    Serve {
        /// binance or bybit.
        #[arg(long, default_value = "binance")]
        venue: String,
        /// spot (default) or usdm; bybit: spot or linear (the client picks by path).
        #[arg(long)]
        market: Option<String>,
        /// recorded (original timing) or fast (as fast as clients read).
        #[arg(long, default_value = "recorded")]
        pace: String,
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
        /// Recording files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML). Environment variables and flags override it.
    #[arg(long, env = "SAPPHIRE_CONFIG")]
    config: Option<PathBuf>,
    /// Stop by itself after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Where journals and run state live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Engine layout: fused (one thread) or split (a thread per stage).
    #[arg(long)]
    layout: Option<String>,
    /// Cores to pin engine threads to, comma-separated (fused: one; split: four).
    #[arg(long, value_delimiter = ',')]
    engine_cores: Option<Vec<usize>>,
    /// Engine wait strategy: busy-spin, spin-hint, yield, sleep or sleep:<micros>.
    #[arg(long)]
    wait: Option<String>,
    /// Synthetic market rate, events per second.
    #[arg(long)]
    events_per_sec: Option<u64>,
    /// Synthetic market seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Symbols to trade, comma-separated (overrides TRADING_SYMBOLS).
    #[arg(long)]
    symbols: Option<String>,
    /// HTTP API address (health, readiness, metrics, dashboard, control); port 0 picks a free one.
    #[arg(long)]
    http_bind: Option<String>,
    /// Print only the final summary.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::survive_file_size_limit();
    let result = match cli.command {
        Command::Run(args) | Command::Core(args) => run_command(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Agents(args) => agents_cmd::run(args),
        Command::Record(args) => record_cmd::run(args),
        Command::Replay(args) => replay::command(args),
        Command::Capture(CaptureCommand::Convert { mut paths, market }) => {
            let out = paths.pop().expect("clap requires two paths");
            replay::parse_market(market.as_deref(), &paths).and_then(|market| {
                let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
                let started = std::time::Instant::now();
                let c = replay::capture(&paths, market, &out, progress)?;
                outln!(
                    "capture: {} events ({} instruments) from {} lines ({} skipped) into {}: {:.1} MiB, {:.1}s",
                    c.events,
                    c.instruments,
                    c.lines,
                    c.skipped,
                    out.display(),
                    c.bytes as f64 / (1u64 << 20) as f64,
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            })
        }
        Command::Feed(FeedCommand::Decode { venue, market, book }) => {
            feed_cmd::Source::parse(&venue, market.as_deref()).and_then(|source| {
                let (written, skipped) = feed_cmd::decode(
                    source,
                    book,
                    std::io::stdin().lock(),
                    std::io::BufWriter::new(std::io::stdout().lock()),
                    std::io::stderr().lock(),
                )?;
                errln!("feed decode: {written} events, {skipped} lines skipped");
                Ok(())
            })
        }
        Command::Journal(JournalCommand::Dump { dir, format, from, limit }) => {
            journal_cmd::Format::parse(&format).map_err(|e| config::refuse("--format", e.to_string())).and_then(|format| {
                let opts = journal_cmd::DumpOptions { dir, format, from, limit };
                let dumped = journal_cmd::dump(&opts, std::io::BufWriter::new(std::io::stdout().lock()))?;
                errln!("journal dump: {} records", dumped.records);
                if let Some(note) = dumped.note {
                    errln!("journal dump: {note}");
                }
                Ok(())
            })
        }
        Command::Journal(JournalCommand::Repair { dir, dry_run }) => journal_cmd::repair(&dir, dry_run, std::io::stdout().lock()),
        Command::Journal(JournalCommand::Snapshots { dir, verify, config }) => {
            snapshot_cmd::run(&dir, verify, config.as_deref(), std::io::stdout().lock())
        }
        Command::Journal(JournalCommand::Prune { dir, archive, shard, sink_cursor, sink_cursor_file, keep_output_hours, dry_run }) => {
            let sink = match (sink_cursor, &sink_cursor_file) {
                (Some(c), _) => Ok(Some(c)),
                (None, Some(f)) => sapphire_persistence::retention::read_cursor_file(f)
                    .map(Some)
                    .ok_or_else(|| config::refuse("--sink-cursor-file", format!("{} is missing or holds no cursor", f.display()))),
                (None, None) => Ok(None),
            };
            sink.and_then(|sink| {
                let opts = journal_cmd::PruneOptions {
                    data_dir: dir,
                    archive,
                    shard,
                    sink,
                    keep_output: std::time::Duration::from_secs(keep_output_hours.saturating_mul(3_600)),
                    dry_run,
                };
                journal_cmd::prune(&opts, std::io::stdout().lock())
            })
        }
        Command::Journal(JournalCommand::Restore { dir, archive, shard }) => {
            journal_cmd::restore(&dir, &archive, &shard, std::io::stdout().lock())
        }
        Command::Venue(cmd) => venue_cmd::run(cmd),
        Command::Migrate(args) => migrate_cmd::run(args),
        Command::Sink(args) => sink_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Report(args) => report::run(args),
        Command::Feed(FeedCommand::Serve { venue, market, pace, bind, paths }) => {
            feed_serve::serve(&venue, market.as_deref(), &pace, &bind, &paths)
        }
    };
    if process::stdout_gone() {
        errln!("sapphire: stdout was closed (the reader of the pipe exited): stopped cleanly");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<config::ConfigError>().is_some() => {
            errln!("sapphire: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            errln!("sapphire: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let (mut file, duration) = process::load(args.config.as_deref(), args.http_bind, args.duration.as_deref())?;
    if let Some(d) = args.data_dir {
        file.run.data_dir = d;
    }
    if let Some(l) = args.layout {
        file.engine.layout = l;
    }
    if let Some(c) = args.engine_cores {
        file.engine.engine_cores = Some(c);
    }
    if let Some(w) = args.wait {
        file.engine.wait = w;
    }
    if let Some(r) = args.events_per_sec {
        file.market.events_per_sec = r;
    }
    if let Some(s) = args.seed {
        file.market.seed = s;
    }
    if let Some(s) = args.symbols {
        file.market.symbols = config::parse_symbols("--symbols", &s)?;
    }
    let cfg = file.resolve()?;
    run::run(cfg, run::RunOptions { duration, quiet: args.quiet })
}
