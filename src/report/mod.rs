//! `sapphire report`: a strategy report from an output journal — PNG charts, an HTML page
//! (`index.html`, images relative, no external assets) and a Markdown summary (`summary.md`),
//! optionally sent to Telegram.
//!
//! # Layout
//! - [`metrics`]: the figures (PnL, fees, drawdown, Sharpe, Sortino, hit rate, turnover), shared
//!   with `sapphire replay`;
//! - [`telegram`]: delivery through the Bot API.
//!
//! Charts: `equity.png` (portfolio equity), `drawdown.png` (% below the running peak),
//! `agents_pnl.png` and `agents_margin.png` (per-agent PnL and margin utilisation from the
//! `AgentPnl` outputs: gross exposure over the agent's budget), `latency.png` (per-stage
//! percentiles from `<data dir>/last-run.json`, when present) and `trades.png` (fill prices
//! over time, buys and sells marked; the most traded instrument).

pub mod metrics;
pub mod telegram;

use crate::charts::{self, Chart, Mark, Series};
use anyhow::Context;
use metrics::Metrics;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::Side;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const DAY_NS: u64 = 86_400_000_000_000;

/// The `[report]` configuration section (for `sapphire run`'s daily report).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// UTC time of day (`HH:MM`) at which `sapphire run` writes the previous UTC day's report;
    /// empty: no daily report.
    pub daily_at: String,
    /// Send each daily report to Telegram (`TELEGRAM_BOT_TOKEN`, `TELEGRAM_CHAT_ID`).
    pub telegram: bool,
}

impl ReportSection {
    /// The configured time as seconds after UTC midnight; `None` when disabled, an error when
    /// it is not `HH:MM`.
    pub fn daily_at_secs(&self) -> anyhow::Result<Option<u64>> {
        if self.daily_at.trim().is_empty() {
            return Ok(None);
        }
        parse_hhmm(self.daily_at.trim())
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("[report] daily_at = {:?}: a UTC time of day like \"00:05\"", self.daily_at))
    }
}

fn parse_hhmm(s: &str) -> Option<u64> {
    let (h, m) = s.split_once(':')?;
    let (h, m) = (h.parse::<u64>().ok()?, m.parse::<u64>().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 3600 + m * 60)
}

/// A UTC calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Days since 1970-01-01.
    pub days: i64,
}

impl Date {
    /// Parses `YYYY-MM-DD` (a real calendar date).
    pub fn parse(s: &str) -> anyhow::Result<Date> {
        let bad = || anyhow::anyhow!("{s:?} is not a date like 2024-08-08");
        let mut it = s.split('-');
        let (y, m, d) = (it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?, it.next().ok_or_else(bad)?);
        if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d) = (y.parse::<i64>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?, d.parse::<u32>().map_err(|_| bad())?);
        let date = Date { days: days_from_civil(y, m, d) };
        if !(1..=12).contains(&m) || date.civil() != (y, m, d) {
            return Err(bad());
        }
        Ok(date)
    }

    /// The day containing `ns` (Unix nanoseconds).
    pub fn of_ns(ns: u64) -> Date {
        Date { days: (ns / DAY_NS) as i64 }
    }

    /// `(year, month, day)`.
    pub fn civil(self) -> (i64, u32, u32) {
        civil_from_days(self.days)
    }

    /// `[start, end)` in Unix nanoseconds (days before 1970 start at 0).
    pub fn window_ns(self) -> (u64, u64) {
        let start = u64::try_from(self.days).unwrap_or(0).saturating_mul(DAY_NS);
        (start, start.saturating_add(DAY_NS))
    }

    /// The day before.
    pub fn previous(self) -> Date {
        Date { days: self.days - 1 }
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix nanoseconds.
pub fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let s = secs % 86_400;
    format!("{} {:02}:{:02}:{:02} UTC", Date::of_ns(ns), s / 3600, s / 60 % 60, s % 60)
}

/// What to report on.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    /// The output journal directory.
    pub journal: PathBuf,
    /// Only outputs with event time in `[start, end)` ns; `None`: the whole journal.
    pub window: Option<(u64, u64)>,
    /// A run summary with stage latencies (`last-run.json`), if any.
    pub last_run: Option<PathBuf>,
    /// Output directory (created).
    pub out: PathBuf,
    /// Title line (e.g. the date).
    pub title: String,
}

/// A written report.
#[derive(Clone, Debug)]
pub struct Report {
    /// The output directory.
    pub dir: PathBuf,
    /// The Markdown summary (also written as `summary.md`).
    #[allow(dead_code)] // for callers that post it elsewhere
    pub summary_md: String,
    /// A short plain-text summary (the Telegram message).
    pub summary_text: String,
    /// Chart files, in report order.
    pub charts: Vec<PathBuf>,
    /// Records read and records inside the window.
    pub records: (u64, u64),
}

/// Event time of an output, where it carries one.
fn output_ts(o: &Output) -> Option<u64> {
    match &o.output {
        EngineOutput::Order(x) => Some(x.ts_event),
        EngineOutput::Exec(x) => Some(x.ts_event),
        EngineOutput::Pnl { ts_event, .. } | EngineOutput::AgentPnl { ts_event, .. } => Some(*ts_event),
        EngineOutput::Signal { signal, .. } => Some(signal.ts_event),
        EngineOutput::Risk(_) => None,
    }
}

/// Builds the report of `req`: reads the journal, writes charts, `index.html` and `summary.md`.
pub fn build(req: &ReportRequest) -> anyhow::Result<Report> {
    anyhow::ensure!(req.journal.is_dir(), "output journal {} is not a directory", req.journal.display());
    // Like `journal dump`: a directory without segments is not a journal, never "0 of 0 outputs".
    let segments = sapphire_persistence::journal::segments(&req.journal).with_context(|| format!("listing {}", req.journal.display()))?;
    anyhow::ensure!(!segments.is_empty(), "{} has no journal segments (*.seg): it is not an output journal", req.journal.display());
    std::fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    let mut m = Metrics::new(true);
    let (mut read, mut inside) = (0u64, 0u64);
    let mut clock = 0u64;
    sapphire_persistence::journal::for_each_record::<Output>(&req.journal, |_, o| {
        read += 1;
        // Refusals and alerts carry no time of their own: they take the last time seen.
        clock = output_ts(o).unwrap_or(clock);
        match req.window {
            Some((start, _)) if clock < start => {
                if let EngineOutput::Pnl { total, .. } = &o.output {
                    m.baseline = Some(total.equity);
                }
            }
            Some((_, end)) if clock >= end => {}
            _ => {
                inside += 1;
                m.add(o);
            }
        }
    })
    .with_context(|| format!("reading output journal {}", req.journal.display()))?;
    let latency = match &req.last_run {
        Some(p) if p.is_file() => Some(read_latency(p)?),
        _ => None,
    };
    let charts = write_charts(&req.out, &m, latency.as_deref())?;
    let summary_md = markdown(req, &m, latency.as_deref(), (read, inside));
    std::fs::write(req.out.join("summary.md"), &summary_md).with_context(|| format!("writing {}/summary.md", req.out.display()))?;
    let html = html_page(&req.title, &summary_md, &charts);
    std::fs::write(req.out.join("index.html"), html).with_context(|| format!("writing {}/index.html", req.out.display()))?;
    Ok(Report { dir: req.out.clone(), summary_text: text_summary(req, &m), summary_md, charts, records: (read, inside) })
}

/// Per-stage latency percentiles of a run: `(stage, [p50, p99, p99.9, max] ns, count)`.
pub type StageLatency = (String, [u64; 4], u64);

fn read_latency(path: &Path) -> anyhow::Result<Vec<StageLatency>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let stages = v.get("latency").and_then(|l| l.as_array()).cloned().unwrap_or_default();
    Ok(stages
        .iter()
        .filter_map(|s| {
            let n = |k: &str| s.get(k).and_then(serde_json::Value::as_u64);
            Some((s.get("name")?.as_str()?.to_string(), [n("p50_ns")?, n("p99_ns")?, n("p999_ns")?, n("max_ns")?], n("count").unwrap_or(0)))
        })
        .collect())
}

/// Chart x axis: time since the first sample, in minutes or hours.
struct TimeAxis {
    origin: u64,
    scale: f64,
    label: String,
}

impl TimeAxis {
    fn new(first: u64, last: u64) -> Self {
        let hours = last.saturating_sub(first) > 3 * 3_600_000_000_000;
        let (scale, unit) = if hours { (3.6e12, "hours") } else { (6e10, "minutes") };
        Self { origin: first, scale, label: format!("{unit} since {}", utc(first)) }
    }
    fn x(&self, ts: u64) -> f64 {
        ts.saturating_sub(self.origin) as f64 / self.scale
    }
}

fn write_charts(dir: &Path, m: &Metrics, latency: Option<&[StageLatency]>) -> anyhow::Result<Vec<PathBuf>> {
    let ts_all = m
        .equity
        .iter()
        .map(|e| e.0)
        .chain(m.fill_log.iter().map(|f| f.ts))
        .chain(m.agents.values().flat_map(|a| a.samples.iter().map(|s| s.0)));
    let (first, last) = ts_all.fold((u64::MAX, 0), |(a, b), t| (a.min(t), b.max(t)));
    let axis = TimeAxis::new(if first == u64::MAX { 0 } else { first }, last);
    let mut out = Vec::new();
    let mut put = |name: &str, chart: Chart| -> anyhow::Result<()> {
        let p = dir.join(name);
        charts::render(&p, &chart)?;
        out.push(p);
        Ok(())
    };
    let mut c = Chart::new("Equity", &axis.label, "equity (quote units)");
    c.series.push(Series::line("equity", m.equity.iter().map(|(t, e)| (axis.x(*t), e.to_f64_lossy())).collect()));
    put("equity.png", c)?;

    let mut peak = f64::NEG_INFINITY;
    let dd = m
        .equity
        .iter()
        .map(|(t, e)| {
            let e = e.to_f64_lossy();
            peak = peak.max(e);
            (axis.x(*t), if peak > 0.0 { -(peak - e) / peak * 100.0 } else { 0.0 })
        })
        .collect();
    let mut c = Chart::new("Drawdown from peak equity", &axis.label, "drawdown (%)");
    c.series.push(Series::line("drawdown", dd));
    put("drawdown.png", c)?;

    let mut c = Chart::new("PnL per agent", &axis.label, "equity − budget (quote units)");
    let mut u = Chart::new("Margin utilisation per agent", &axis.label, "gross exposure / budget (%)");
    for (agent, a) in &m.agents {
        if a.samples.is_empty() || !a.active() {
            continue;
        }
        c.series.push(Series::line(format!("agent {agent}"), a.samples.iter().map(|s| (axis.x(s.0), s.1.to_f64_lossy())).collect()));
        u.series.push(Series::line(format!("agent {agent}"), a.samples.iter().map(|s| (axis.x(s.0), s.2 * 100.0)).collect()));
    }
    put("agents_pnl.png", c)?;
    put("agents_margin.png", u)?;

    let title = if latency.is_some() { "Stage latency (last run)" } else { "Stage latency: no last-run.json in the data directory" };
    let mut c = Chart::new(title, "percentile", "latency (ns, log)");
    c.log_y = true;
    c.x_names = ["p50", "p99", "p99.9", "max"].map(String::from).to_vec();
    for (name, p, _) in latency.unwrap_or(&[]) {
        c.series.push(Series::line(name.clone(), p.iter().enumerate().map(|(i, v)| ((i + 1) as f64, *v as f64)).collect()));
    }
    put("latency.png", c)?;

    // The most traded instrument: prices of different instruments do not share an axis.
    let mut counts = std::collections::BTreeMap::<u32, u64>::new();
    for f in &m.fill_log {
        *counts.entry(f.instrument).or_default() += 1;
    }
    let top = counts.iter().max_by_key(|(i, n)| (**n, std::cmp::Reverse(**i))).map(|(i, _)| *i);
    let fills: Vec<_> = m.fill_log.iter().filter(|f| Some(f.instrument) == top).collect();
    let title = match top {
        Some(i) => format!("Fills of instrument {i} ({} of {})", fills.len(), m.fill_log.len()),
        None => "Fills: none".to_string(),
    };
    let mut c = Chart::new(title, &axis.label, "fill price");
    c.series.push(Series {
        color: Some((150, 150, 150)),
        ..Series::line("", fills.iter().map(|f| (axis.x(f.ts), f.price.to_f64_lossy())).collect())
    });
    let pick = |side: Side| fills.iter().filter(|f| f.side == side).map(|f| (axis.x(f.ts), f.price.to_f64_lossy())).collect();
    c.series.push(Series::markers("buy", pick(Side::Buy), Mark::Up, (30, 160, 60)));
    c.series.push(Series::markers("sell", pick(Side::Sell), Mark::Down, (210, 40, 40)));
    put("trades.png", c)?;
    Ok(out)
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.2}"))
}

fn markdown(req: &ReportRequest, m: &Metrics, latency: Option<&[StageLatency]>, (read, inside): (u64, u64)) -> String {
    let mut s = String::new();
    let (dd, dd_pct) = m.max_drawdown();
    let _ = writeln!(s, "# Sapphire report: {}\n", req.title);
    let _ = writeln!(s, "Journal `{}`: {inside} of {read} outputs in the window.\n", req.journal.display());
    let _ = writeln!(s, "| figure | value |\n|---|---|");
    let rows = [
        ("PnL", format!("{:.2}", m.pnl())),
        ("equity", m.last_total.map_or("n/a".into(), |t| format!("{:.2} on capital {:.2}", t.equity, t.capital))),
        ("fees", format!("{:.2}", m.fees())),
        ("turnover", format!("{:.2}", m.turnover())),
        ("max drawdown", format!("{dd:.2} ({dd_pct:.3}%)")),
        ("Sharpe (per-minute, annualised)", ratio(m.sharpe())),
        ("Sortino (per-minute, annualised)", ratio(m.sortino())),
        ("hit rate", m.hit_rate().map_or("n/a".into(), |h| format!("{:.1}%", h * 100.0))),
        ("orders / cancels", format!("{} / {}", m.orders, m.cancels)),
        ("fills", m.fills.to_string()),
        ("refusals / alerts", format!("{} / {}", m.refusals, m.alerts)),
        ("signals taken / ignored", format!("{} / {}", m.signals.0, m.signals.1)),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    let _ = writeln!(s, "\n## Agents\n\n| agent | PnL | fees | fills | turnover | hit rate | margin used |\n|---|---|---|---|---|---|---|");
    for (agent, a) in m.agents.iter().filter(|(_, a)| a.active()) {
        let (pnl, util) = match a.last {
            Some(l) if l.capital.raw > 0 => {
                (format!("{:.2}", l.equity - l.capital), format!("{:.1}%", l.gross_exposure.raw as f64 / l.capital.raw as f64 * 100.0))
            }
            Some(l) => (format!("{:.2}", l.equity - l.capital), "n/a".into()),
            None => ("n/a".into(), "n/a".into()),
        };
        let hit = if a.closes > 0 { format!("{:.1}%", a.wins as f64 / a.closes as f64 * 100.0) } else { "n/a".into() };
        let _ = writeln!(s, "| {agent} | {pnl} | {:.2} | {} | {:.2} | {hit} | {util} |", a.fees, a.fills, a.turnover);
    }
    let _ = writeln!(s, "\n## Stage latency\n");
    match latency {
        Some(l) if !l.is_empty() => {
            let _ = writeln!(
                s,
                "From `last-run.json`.\n\n| stage | p50 ns | p99 ns | p99.9 ns | max ns | samples |\n|---|---|---|---|---|---|"
            );
            for (name, p, n) in l {
                let _ = writeln!(s, "| {name} | {} | {} | {} | {} | {n} |", p[0], p[1], p[2], p[3]);
            }
        }
        Some(_) => s.push_str("`last-run.json` holds no latency figures.\n"),
        None => s.push_str("No `last-run.json` in the data directory: no latency figures.\n"),
    }
    s.push_str("\nDefinitions: PnL is exact fixed point; Sharpe and Sortino use per-minute equity returns annualised by √525,600 (risk-free 0); hit rate is the share of position-reducing fills with a positive realised PnL before fees.\n");
    s
}

fn text_summary(req: &ReportRequest, m: &Metrics) -> String {
    let (dd, dd_pct) = m.max_drawdown();
    let mut s = format!(
        "Sapphire report {}\nPnL {:.2}, fees {:.2}, turnover {:.2}\nmax drawdown {:.2} ({:.3}%), Sharpe {}, Sortino {}, hit rate {}\norders {}, fills {}, refusals {}",
        req.title,
        m.pnl(),
        m.fees(),
        m.turnover(),
        dd,
        dd_pct,
        ratio(m.sharpe()),
        ratio(m.sortino()),
        m.hit_rate().map_or("n/a".into(), |h| format!("{:.1}%", h * 100.0)),
        m.orders,
        m.fills,
        m.refusals
    );
    for (agent, a) in m.agents.iter().filter(|(_, a)| a.active()) {
        if let Some(l) = a.last {
            let _ = write!(s, "\nagent {agent}: PnL {:.2}, fees {:.2}", l.equity - l.capital, a.fees);
        }
    }
    s
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: the Markdown tables rendered as HTML tables, then the charts.
fn html_page(title: &str, md: &str, charts: &[PathBuf]) -> String {
    let mut body = String::new();
    let mut in_table = false;
    for line in md.lines() {
        let is_row = line.starts_with('|');
        if in_table && !is_row {
            body.push_str("</table>\n");
            in_table = false;
        }
        if is_row {
            if line.starts_with("|---") {
                continue;
            }
            let cells: Vec<_> = line.trim_matches('|').split('|').map(|c| esc(c.trim()).replace('`', "")).collect();
            let tag = if in_table { "td" } else { "th" };
            if !in_table {
                body.push_str("<table>\n");
                in_table = true;
            }
            let _ = writeln!(body, "<tr>{}</tr>", cells.iter().map(|c| format!("<{tag}>{c}</{tag}>")).collect::<String>());
        } else if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(body, "<h2>{}</h2>", esc(h));
        } else if line.starts_with("# ") {
        } else if !line.trim().is_empty() {
            let _ = writeln!(body, "<p>{}</p>", esc(line).replace('`', ""));
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    let _ = writeln!(body, "<h2>Charts</h2>");
    for c in charts {
        let name = c.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(body, "<figure><img src=\"{0}\" alt=\"{0}\" width=\"960\"><figcaption>{0}</figcaption></figure>", esc(&name));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sapphire report {t}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #eee}}</style></head>\n<body><h1>Sapphire report {t}</h1>\n{body}</body></html>\n",
        t = esc(title)
    )
}

/// The daily report of `date` from `<data_dir>/journal/output`, written to
/// `<data_dir>/reports/<date>/`. For `sapphire run`'s daily schedule.
fn daily(data_dir: &Path, date: Date, shard: &str) -> anyhow::Result<Report> {
    build(&ReportRequest {
        journal: data_dir.join("journal").join("output"),
        window: Some(date.window_ns()),
        last_run: Some(data_dir.join("last-run.json")),
        out: data_dir.join("reports").join(date.to_string()),
        title: titled(&date.to_string(), shard),
    })
}

/// A report's title: what it covers and the shard whose journal it read (a core's output
/// journal holds that shard only).
pub fn titled(what: &str, shard: &str) -> String {
    format!("{what} (shard {shard})")
}

/// Seconds from `now_unix_s` until the next `daily_at_secs` after UTC midnight, and the day
/// whose report is due then (the day before the run time).
pub fn next_daily(now_unix_s: u64, daily_at_secs: u64) -> (u64, Date) {
    let today = now_unix_s - now_unix_s % 86_400;
    let mut at = today + daily_at_secs;
    if at <= now_unix_s {
        at += 86_400;
    }
    (at - now_unix_s, Date { days: (at / 86_400) as i64 }.previous())
}

/// Starts the daily report thread of `sapphire run`: each day at `section.daily_at` (UTC) it
/// writes the previous UTC day's report with `daily` (and sends it to Telegram when
/// `section.telegram`), until `stop` is set (checked every second). `None` when no time is
/// configured. Failures are printed to stderr and the thread carries on: a report never stops
/// trading. Wall-clock time is read here, on this thread, never by the engine.
pub fn spawn_daily(
    data_dir: PathBuf,
    shard: String,
    section: &ReportSection,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(at) = section.daily_at_secs()? else { return Ok(None) };
    let telegram = if section.telegram { Some(telegram::Telegram::from_env(&|k| std::env::var(k).ok())?) } else { None };
    let handle = std::thread::Builder::new()
        .name("daily-report".into())
        .spawn(move || loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let (wait, date) = next_daily(now, at);
            for _ in 0..wait {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            match daily(&data_dir, date, &shard) {
                Ok(report) => {
                    outln!("report: {date} written to {}", report.dir.display());
                    if let Some(tg) = &telegram {
                        if let Err(e) = tg.send_report(&report) {
                            errln!("report: sending {date} to Telegram failed: {e:#}");
                        }
                    }
                }
                Err(e) => errln!("report: the daily report of {date} failed: {e:#}"),
            }
        })
        .context("starting the daily report thread")?;
    Ok(Some(handle))
}

/// `sapphire report` flags.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// UTC day to report on (YYYY-MM-DD), from `<data dir>/journal/output`.
    #[arg(long, conflicts_with = "journal", required_unless_present = "journal")]
    pub date: Option<String>,
    /// An output journal directory (the whole journal).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Data directory (journals, last-run.json).
    #[arg(long, env = "SAPPHIRE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Output directory for the charts, index.html and summary.md.
    #[arg(long)]
    pub out: PathBuf,
    /// The shard whose journal this is (named in the report's title): the core's
    /// `SAPPHIRE_SHARD`.
    #[arg(long, env = "SAPPHIRE_SHARD", default_value = "main")]
    pub shard: String,
    /// Send the summary and charts to Telegram (TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID;
    /// TELEGRAM_API_BASE overrides https://api.telegram.org).
    #[arg(long)]
    pub telegram: bool,
}

/// Runs `sapphire report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    sapphire_persistence::shard::check_shard(&args.shard).map_err(|e| crate::config::refuse("--shard (SAPPHIRE_SHARD)", e))?;
    let (journal, window, title) = match (&args.date, &args.journal) {
        (Some(d), _) => {
            let date = Date::parse(d).map_err(|e| crate::config::refuse("--date", e))?;
            (args.data_dir.join("journal").join("output"), Some(date.window_ns()), titled(&date.to_string(), &args.shard))
        }
        (None, Some(j)) => (j.clone(), None, titled(&j.display().to_string(), &args.shard)),
        (None, None) => return Err(crate::config::refuse("--date", "give --date YYYY-MM-DD or --journal DIR")),
    };
    // Check Telegram settings before the work, so a missing token fails fast.
    let tg = if args.telegram { Some(telegram::Telegram::from_env(&|k| std::env::var(k).ok())?) } else { None };
    let report =
        build(&ReportRequest { journal, window, last_run: Some(args.data_dir.join("last-run.json")), out: args.out.clone(), title })?;
    outln!("{}", report.summary_text);
    outln!("report: {} of {} outputs; written to {}", report.records.1, report.records.0, report.dir.join("index.html").display());
    if let Some(tg) = tg {
        tg.send_report(&report)?;
        outln!("report: sent to Telegram ({} charts)", report.charts.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_ones_are_refused() {
        let d = Date::parse("2024-08-08").unwrap();
        assert_eq!(d.to_string(), "2024-08-08");
        assert_eq!(d.window_ns().0, 1_723_075_200 * 1_000_000_000);
        assert_eq!(Date::parse("2024-02-29").unwrap().previous().to_string(), "2024-02-28");
        assert_eq!(Date::parse("2000-03-01").unwrap().previous().to_string(), "2000-02-29");
        for bad in ["2023-02-29", "2024-13-01", "2024-8-8", "yesterday", "2024-08-08-01", ""] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(utc(1_723_161_599_000_000_000), "2024-08-08 23:59:59 UTC");
    }

    #[test]
    fn daily_report_writes_under_the_data_dir() {
        use sapphire_core::portfolio::PnlSummary;
        let data = std::env::temp_dir().join(format!("sapphire-daily-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let journal = data.join("journal").join("output");
        let cfg = sapphire_persistence::journal::JournalConfig::new(&journal);
        let (mut w, _) = sapphire_persistence::journal::JournalWriter::<Output>::open(cfg).unwrap();
        let day = Date::parse("2024-08-08").unwrap();
        let total = PnlSummary { equity: sapphire_core::fixed::Money::from_units(5), ..PnlSummary::default() };
        w.append_record(&Output { seq: 0, output: EngineOutput::Pnl { ts_event: day.window_ns().0 + 1, total } }).unwrap();
        w.sync().unwrap();
        let report = daily(&data, day, "b").unwrap();
        assert!(report.summary_text.starts_with("Sapphire report 2024-08-08 (shard b)\n"), "{}", report.summary_text);
        let dir = report.dir;
        assert_eq!(dir, data.join("reports").join("2024-08-08"));
        for f in ["index.html", "summary.md", "equity.png"] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("1 of 1 outputs") && md.starts_with("# Sapphire report: 2024-08-08 (shard b)"), "{md}");
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn daily_schedule() {
        let section = ReportSection { daily_at: "00:05".into(), telegram: false };
        assert_eq!(section.daily_at_secs().unwrap(), Some(300));
        assert!(ReportSection { daily_at: "24:00".into(), telegram: false }.daily_at_secs().is_err());
        assert_eq!(ReportSection::default().daily_at_secs().unwrap(), None);
        // 2024-08-09 00:00:00 → due at 00:05, for 2024-08-08.
        let midnight = 1_723_161_600;
        assert_eq!(next_daily(midnight, 300), (300, Date::parse("2024-08-08").unwrap()));
        // Just after 00:05: the next one is tomorrow's, for 2024-08-09.
        assert_eq!(next_daily(midnight + 301, 300), (86_399, Date::parse("2024-08-09").unwrap()));
    }
}
