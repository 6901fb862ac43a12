//! Operator alerts sent by the process itself: drawdown, margin, kill (and operator halt or
//! resume), a stale feed and a stalled engine core go to Telegram (the old platform's
//! channel) from `sapphire run`/`core`, through the daily report's Bot API client.
//!
//! Nothing here runs on the engine's path. The edge thread hands a guard alert over with a
//! non-blocking `try_send`; the status loop checks feed ages and the engine's stall time once a
//! tick; one thread of its own talks to Telegram.
//!
//! **Rate limit and digest.** At most one message per `[alerts] min_interval_ms` (10 s). The
//! first alert after a quiet interval goes out at once; alerts raised while the interval runs
//! are collected and sent together as one digest when it ends (identical lines counted, not
//! repeated; at most [`DIGEST_LINES`] lines, then how many more). A send that fails is
//! reported on stderr (never with the token) and its alerts wait for the next attempt.

use crate::report::telegram::Telegram;
use sapphire_core::risk::{AlertKind, RiskAlert};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct lines a digest lists before it only counts.
pub const DIGEST_LINES: usize = 20;
/// Alerts held for the next message at most (beyond: counted as dropped).
const MAX_PENDING: usize = 1_000;
/// Alerts the edge can hand over before the sender takes them (beyond: dropped, counted).
const QUEUE: usize = 4_096;
/// The window over which the engine's stall share is measured.
const STALL_WINDOW: Duration = Duration::from_secs(60);

/// `[alerts]`: operator alerts sent by the process.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Send alerts to Telegram: `TELEGRAM_BOT_TOKEN` (or `TELEGRAM_BOT_TOKEN_FILE`, a mounted
    /// Secret) and `TELEGRAM_CHAT_ID`, as the daily report.
    pub telegram: bool,
    /// At most one message per this many milliseconds; alerts in between go out as one digest.
    pub min_interval_ms: u64,
    /// A symbol without a market event for this long is stale (one alert; one more when it is back).
    pub feed_stale_after_ms: u64,
    /// Engine core alert: stalls of 100 µs or more took more than this share of the last
    /// minute, in basis points (100 = 1%, as the EngineCoreStalled rule).
    pub engine_stalled_bps: u32,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self { telegram: false, min_interval_ms: 10_000, feed_stale_after_ms: 10_000, engine_stalled_bps: 100 }
    }
}

impl AlertsSection {
    /// Checks the values (the key named on error).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(100..=3_600_000).contains(&self.min_interval_ms) {
            return Err(("alerts.min_interval_ms", format!("{} is not within 100..=3600000", self.min_interval_ms)));
        }
        if !(1..=86_400_000).contains(&self.feed_stale_after_ms) {
            return Err(("alerts.feed_stale_after_ms", format!("{} is not within 1..=86400000", self.feed_stale_after_ms)));
        }
        if !(1..=10_000).contains(&self.engine_stalled_bps) {
            return Err(("alerts.engine_stalled_bps", format!("{} is not within 1..=10000", self.engine_stalled_bps)));
        }
        Ok(())
    }
}

/// What an alert is about (the label of `sapphire_alerts_raised_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertClass {
    /// Drawdown warning or halt.
    Drawdown,
    /// The margin ladder moved.
    Margin,
    /// Kill switch, operator halt or resume.
    Kill,
    /// A symbol's feed went stale, or came back.
    FeedStale,
    /// The engine lost its core to stalls, or got it back.
    EngineCore,
}

impl AlertClass {
    /// Every class, in label order.
    pub const ALL: [AlertClass; 5] = [Self::Drawdown, Self::Margin, Self::Kill, Self::FeedStale, Self::EngineCore];

    /// The metric label and the message's tag.
    pub fn name(self) -> &'static str {
        match self {
            Self::Drawdown => "drawdown",
            Self::Margin => "margin",
            Self::Kill => "kill",
            Self::FeedStale => "feed_stale",
            Self::EngineCore => "engine_core",
        }
    }
}

/// One alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// What it is about.
    pub class: AlertClass,
    /// One line for people.
    pub text: String,
}

/// The class and text of a guard alert that is sent, or `None` for the ones that are not
/// (agent pause, limit changes: the operator who did it knows).
pub fn classify(a: &RiskAlert) -> Option<Alert> {
    let pct = a.value as f64 / 100.0;
    let (class, text) = match a.kind {
        AlertKind::DrawdownWarning => (AlertClass::Drawdown, format!("drawdown warning: {pct:.2}% from peak equity")),
        AlertKind::DrawdownHalt => {
            (AlertClass::Drawdown, format!("drawdown HALT: {pct:.2}% from peak equity; opening orders refused until resumed"))
        }
        AlertKind::MarginLadder => (
            AlertClass::Margin,
            match a.value {
                0 => "margin ladder back to normal".to_string(),
                1 => "margin ladder level 1: reduce-only (portfolio margin above 85%)".to_string(),
                2 => "margin ladder level 2: deleveraging (portfolio margin above 95%)".to_string(),
                v => format!("margin ladder level {v}"),
            },
        ),
        AlertKind::AgentMarginLadder => (
            AlertClass::Margin,
            match a.value {
                0 => format!("agent {}: margin back to normal", a.agent.0),
                1 => format!("agent {}: reduce-only, resting orders cancelled (its margin above 85% of its budget)", a.agent.0),
                2 => format!("agent {}: deleveraging, positions cut (its margin above 95% of its budget)", a.agent.0),
                v => format!("agent {}: margin ladder level {v}", a.agent.0),
            },
        ),
        AlertKind::Killed => (AlertClass::Kill, "KILL switch engaged: orders cancelled, nothing new is sent".to_string()),
        AlertKind::Halted => (AlertClass::Kill, "trading halted by an operator".to_string()),
        AlertKind::Resumed => (AlertClass::Kill, "trading resumed".to_string()),
        // A flatten that ends with positions open needs a person; one that ends flat closes it.
        AlertKind::Flattened if a.value > 0 => (
            AlertClass::Kill,
            format!("FLATTEN gave up: {} position(s) still open after the last pass (GET /api/orders says why)", a.value),
        ),
        AlertKind::Flattened => (AlertClass::Kill, "flatten done: flat".to_string()),
        _ => return None,
    };
    Some(Alert { class, text })
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AlertStats {
    raised: [AtomicU64; 5],
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl AlertStats {
    fn raise(&self, class: AlertClass) {
        let i = AlertClass::ALL.iter().position(|c| *c == class).unwrap_or(0);
        self.raised[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Alerts raised, by class.
    pub fn raised(&self) -> impl Iterator<Item = (AlertClass, u64)> + '_ {
        AlertClass::ALL.iter().zip(&self.raised).map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
    }

    /// Messages sent, failed sends, alerts dropped (queue or pending list full).
    pub fn outcomes(&self) -> [(&'static str, u64); 3] {
        [
            ("sent", self.sent.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
            ("dropped", self.dropped.load(Ordering::Relaxed)),
        ]
    }

    /// Writes the counters.
    pub fn encode(&self, m: &mut sapphire_gateway::api::MetricsWriter<'_>) {
        m.counters(
            "sapphire_alerts_raised_total",
            "Operator alerts raised by this process, by class (drawdown, margin, kill, feed_stale, engine_core).",
            self.raised().map(|(c, n)| ([("class", c.name())], n)),
        );
        m.counters(
            "sapphire_alert_messages_total",
            "Telegram alert messages: sent, failed (retried with the next message), alerts dropped.",
            self.outcomes().map(|(o, n)| ([("outcome", o)], n)),
        );
    }
}

/// The process's alerts: raised from any thread, sent by a thread of their own.
#[derive(Debug)]
pub struct Alerts {
    tx: Option<SyncSender<Alert>>,
    stats: Arc<AlertStats>,
    quiet: bool,
    sender: Option<std::thread::JoinHandle<()>>,
}

impl Alerts {
    /// Alerts that only count and print (no Telegram).
    pub fn local(quiet: bool) -> Alerts {
        Alerts { tx: None, stats: Arc::default(), quiet, sender: None }
    }

    /// Starts the Telegram sender when `[alerts] telegram` is on. Its settings are read now,
    /// so a missing token stops the start (exit 1) rather than the first alert.
    pub fn start(section: &AlertsSection, shard: &str, quiet: bool) -> anyhow::Result<Alerts> {
        let mut alerts = Alerts::local(quiet);
        if !section.telegram {
            return Ok(alerts);
        }
        let tg = Telegram::from_env(&|k| std::env::var(k).ok()).map_err(|e| anyhow::anyhow!("[alerts] telegram = true: {e}"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (stats, interval, shard) = (Arc::clone(&alerts.stats), Duration::from_millis(section.min_interval_ms), shard.to_string());
        let handle = std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || sender_loop(rx, tg, interval, Digest::new(shard), &stats))
            .map_err(|e| anyhow::anyhow!("starting the alerts thread: {e}"))?;
        alerts.tx = Some(tx);
        alerts.sender = Some(handle);
        Ok(alerts)
    }

    /// The counters (for `/metrics`).
    pub fn stats(&self) -> Arc<AlertStats> {
        Arc::clone(&self.stats)
    }

    /// A guard alert from the engine (the edge thread; never blocks).
    pub fn risk(&self, a: &RiskAlert) {
        if let Some(alert) = classify(a) {
            // The edge already prints guard alerts.
            self.send(alert);
        }
    }

    /// An alert found off the engine (feed, engine core): printed unless quiet, and sent.
    pub fn raise(&self, class: AlertClass, text: String) {
        if !self.quiet {
            errln!("alert: {text}");
        }
        self.send(Alert { class, text });
    }

    fn send(&self, alert: Alert) {
        self.stats.raise(alert.class);
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(alert) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends what is still pending (one attempt, whatever the rate limit) and stops the sender.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
    }
}

/// Alerts waiting for the next message.
#[derive(Debug)]
pub struct Digest {
    shard: String,
    /// Distinct lines in first-seen order, with how often each was raised.
    lines: Vec<(Alert, u32)>,
    total: u64,
    dropped: u64,
}

impl Digest {
    /// An empty digest for `shard`.
    pub fn new(shard: String) -> Digest {
        Digest { shard, lines: Vec::new(), total: 0, dropped: 0 }
    }

    /// Nothing pending.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds an alert (an identical line is counted, not repeated).
    pub fn push(&mut self, a: Alert) {
        self.total += 1;
        if let Some(line) = self.lines.iter_mut().find(|(l, _)| *l == a) {
            line.1 += 1;
        } else if self.lines.len() < MAX_PENDING {
            self.lines.push((a, 1));
        } else {
            self.dropped += 1;
        }
    }

    /// The message: one alert as one line, several as a digest.
    pub fn message(&self) -> String {
        let head = format!("Sapphire shard {}", self.shard);
        if let ([(a, 1)], 1) = (self.lines.as_slice(), self.total) {
            return format!("{head}: [{}] {}", a.class.name(), a.text);
        }
        let mut s = format!("{head}: {} alerts (digest)", self.total);
        for (a, n) in self.lines.iter().take(DIGEST_LINES) {
            let times = if *n > 1 { format!("{n}× ") } else { String::new() };
            let _ = write!(s, "\n• {times}[{}] {}", a.class.name(), a.text);
        }
        let more = self.lines.len().saturating_sub(DIGEST_LINES) as u64 + self.dropped;
        if more > 0 {
            let _ = write!(s, "\n… and {more} more (see the core's log and /metrics)");
        }
        // Telegram's limit on a message.
        s.chars().take(4_000).collect()
    }

    fn clear(&mut self) {
        self.lines.clear();
        self.total = 0;
        self.dropped = 0;
    }
}

fn sender_loop(rx: Receiver<Alert>, tg: Telegram, interval: Duration, mut digest: Digest, stats: &AlertStats) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("alerts: cannot start the Telegram client's runtime ({e}); alerts are not sent");
            return;
        }
    };
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(15)).build() {
        Ok(c) => c,
        Err(e) => {
            errln!("alerts: cannot build the HTTP client ({e}); alerts are not sent");
            return;
        }
    };
    let mut next_send = Instant::now();
    let send = |digest: &mut Digest| {
        match rt.block_on(tg.send_message(&client, &digest.message())) {
            Ok(()) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                digest.clear();
            }
            Err(e) => {
                // The error never holds the token (the client builds it without the URL).
                errln!("alerts: sending to Telegram failed ({e:#}); {} alerts wait for the next attempt", digest.total);
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    loop {
        let wait = if digest.is_empty() { Duration::from_secs(3_600) } else { next_send.saturating_duration_since(Instant::now()) };
        match rx.recv_timeout(wait) {
            Ok(a) => {
                digest.push(a);
                // Whatever else is queued right now joins the same message.
                while let Ok(a) = rx.try_recv() {
                    digest.push(a);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if !digest.is_empty() {
                    send(&mut digest);
                }
                return;
            }
        }
        if !digest.is_empty() && Instant::now() >= next_send {
            send(&mut digest);
            next_send = Instant::now() + interval;
        }
    }
}

/// Watches what the engine's outputs do not say: a feed gone quiet, an engine losing its core.
/// Called from the status loop.
#[derive(Debug)]
pub struct Watch {
    stale_after_ns: u64,
    stalled_bps: u32,
    stale: Vec<bool>,
    stalls: VecDeque<(Instant, u64)>,
    core_alerting: bool,
}

impl Watch {
    /// For `symbols` instruments.
    pub fn new(section: &AlertsSection, symbols: usize) -> Watch {
        Watch {
            stale_after_ns: section.feed_stale_after_ms * 1_000_000,
            stalled_bps: section.engine_stalled_bps,
            stale: vec![false; symbols],
            stalls: VecDeque::new(),
            core_alerting: false,
        }
    }

    /// Feed ages: each symbol's name and the age of its last market event (`None` before the
    /// first). One alert when a symbol goes stale, one when it is back; several symbols going
    /// stale together are one alert.
    pub fn feeds<'a>(&mut self, alerts: &Alerts, ages: impl IntoIterator<Item = (&'a str, Option<u64>)>) {
        let (mut went, mut back) = (Vec::new(), Vec::new());
        for (i, (name, age)) in ages.into_iter().enumerate() {
            let Some(age) = age else { continue };
            let Some(was) = self.stale.get_mut(i) else { break };
            let now = age > self.stale_after_ns;
            if now != *was {
                *was = now;
                if now {
                    went.push(format!("{name} ({})", human(age)))
                } else {
                    back.push(name.to_string())
                }
            }
        }
        if !went.is_empty() {
            alerts.raise(
                AlertClass::FeedStale,
                format!("feed stale: no market event for over {} on {}", human(self.stale_after_ns), list(&went)),
            );
        }
        if !back.is_empty() {
            alerts.raise(AlertClass::FeedStale, format!("feed back: market events again on {}", list(&back)));
        }
    }

    /// The engine's total stall time so far (`PipelineStats::stalled_ns`): one alert when
    /// stalls take more than the configured share of the last minute, one when they fall
    /// under half of it.
    pub fn engine(&mut self, alerts: &Alerts, now: Instant, stalled_ns: u64) {
        self.stalls.push_back((now, stalled_ns));
        while self.stalls.len() > 2 && now.duration_since(self.stalls[1].0) >= STALL_WINDOW {
            self.stalls.pop_front();
        }
        let (t0, s0) = self.stalls[0];
        let span = now.duration_since(t0);
        // A few seconds of history first: one early stall is not a share of anything.
        if span < Duration::from_secs(5) {
            return;
        }
        let bps = (stalled_ns.saturating_sub(s0) as f64 / span.as_nanos() as f64 * 10_000.0) as u64;
        if !self.core_alerting && bps > u64::from(self.stalled_bps) {
            self.core_alerting = true;
            alerts.raise(
                AlertClass::EngineCore,
                format!(
                    "engine core stalled {:.2}% of the last {:.0} s (stalls of 100 µs or more): something else runs on the engine's CPU (docs/runbook.md, EngineCoreStalled)",
                    bps as f64 / 100.0,
                    span.as_secs_f64()
                ),
            );
        } else if self.core_alerting && bps * 2 < u64::from(self.stalled_bps) {
            self.core_alerting = false;
            alerts.raise(
                AlertClass::EngineCore,
                format!("engine core back: stalled {:.2}% of the last {:.0} s", bps as f64 / 100.0, span.as_secs_f64()),
            );
        }
    }
}

/// `300 ms`, `12 s`, `5 min`.
fn human(ns: u64) -> String {
    match ns {
        0..=999_999_999 => format!("{} ms", ns / 1_000_000),
        1_000_000_000..=119_999_999_999 => format!("{} s", ns / 1_000_000_000),
        _ => format!("{} min", ns / 60_000_000_000),
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        let _ = write!(s, " and {} more", names.len() - SHOWN);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapphire_core::event::AgentId;

    fn alert(kind: AlertKind, value: i64) -> RiskAlert {
        RiskAlert { ts_event: 1, kind, agent: AgentId(0), value }
    }

    #[test]
    fn guard_alerts_are_classified_and_operator_housekeeping_is_not_sent() {
        assert_eq!(classify(&alert(AlertKind::DrawdownWarning, 1_050)).unwrap().text, "drawdown warning: 10.50% from peak equity");
        assert_eq!(classify(&alert(AlertKind::DrawdownHalt, 2_500)).unwrap().class, AlertClass::Drawdown);
        assert!(classify(&alert(AlertKind::MarginLadder, 1)).unwrap().text.contains("reduce-only"));
        let agent = |value| RiskAlert { ts_event: 1, kind: AlertKind::AgentMarginLadder, agent: AgentId(3), value };
        let reduce = classify(&agent(1)).unwrap();
        assert_eq!(reduce.class, AlertClass::Margin);
        assert!(reduce.text.starts_with("agent 3: reduce-only"), "{}", reduce.text);
        assert!(classify(&agent(2)).unwrap().text.starts_with("agent 3: deleveraging"));
        assert_eq!(classify(&alert(AlertKind::Killed, 0)).unwrap().class, AlertClass::Kill);
        assert!(classify(&alert(AlertKind::LimitChanged, 5)).is_none());
        assert!(classify(&alert(AlertKind::AgentPaused, 1)).is_none());
        assert!(classify(&alert(AlertKind::Flattened, 2)).unwrap().text.starts_with("FLATTEN gave up: 2 position(s)"));
        assert_eq!(classify(&alert(AlertKind::Flattened, 0)).unwrap().class, AlertClass::Kill);
        assert!(classify(&alert(AlertKind::Flattening, 1)).is_none(), "the operator who asked knows it began");
    }

    #[test]
    fn one_alert_is_one_line_and_many_are_a_digest_that_counts_repeats() {
        let mut d = Digest::new("a".into());
        d.push(Alert { class: AlertClass::Kill, text: "KILL".into() });
        assert_eq!(d.message(), "Sapphire shard a: [kill] KILL");
        for i in 0..30 {
            d.push(Alert { class: AlertClass::Margin, text: format!("margin {}", i % 25) });
        }
        d.push(Alert { class: AlertClass::Kill, text: "KILL".into() });
        let m = d.message();
        assert!(m.starts_with("Sapphire shard a: 32 alerts (digest)\n• 2× [kill] KILL\n• 2× [margin] margin 0\n"), "{m}");
        assert_eq!(m.lines().filter(|l| l.starts_with('•')).count(), DIGEST_LINES);
        assert!(m.ends_with("… and 6 more (see the core's log and /metrics)"), "{m}");
        d.clear();
        assert!(d.is_empty());
    }

    #[test]
    fn stale_feeds_alert_once_going_and_once_coming_back() {
        let section = AlertsSection { feed_stale_after_ms: 1_000, ..AlertsSection::default() };
        let (alerts, mut w) = (Alerts::local(true), Watch::new(&section, 3));
        let stale = |alerts: &Alerts| alerts.stats.raised().find(|(c, _)| *c == AlertClass::FeedStale).unwrap().1;
        w.feeds(&alerts, [("BTCUSDT", Some(10)), ("ETHUSDT", None), ("SOLUSDT", Some(10))]);
        assert_eq!(stale(&alerts), 0);
        // Two symbols stale in the same tick: one alert.
        w.feeds(&alerts, [("BTCUSDT", Some(2_000_000_000)), ("ETHUSDT", None), ("SOLUSDT", Some(3_000_000_000))]);
        assert_eq!(stale(&alerts), 1);
        w.feeds(&alerts, [("BTCUSDT", Some(5_000_000_000)), ("ETHUSDT", None), ("SOLUSDT", Some(6_000_000_000))]);
        assert_eq!(stale(&alerts), 1, "still stale: nothing new");
        w.feeds(&alerts, [("BTCUSDT", Some(1)), ("ETHUSDT", None), ("SOLUSDT", Some(7_000_000_000))]);
        assert_eq!(stale(&alerts), 2, "BTCUSDT back");
    }

    #[test]
    fn the_engine_core_alert_fires_over_the_share_and_clears_under_half_of_it() {
        let (alerts, mut w) = (Alerts::local(true), Watch::new(&AlertsSection::default(), 0));
        let core = |alerts: &Alerts| alerts.stats.raised().find(|(c, _)| *c == AlertClass::EngineCore).unwrap().1;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        w.engine(&alerts, at(0), 0);
        w.engine(&alerts, at(2), 500_000_000); // 25% of 2 s, but too early to judge
        assert_eq!(core(&alerts), 0);
        w.engine(&alerts, at(10), 500_000_000); // 5% of 10 s
        assert_eq!(core(&alerts), 1);
        w.engine(&alerts, at(20), 500_000_000);
        assert_eq!(core(&alerts), 1, "still over: nothing new");
        for s in (30..=200).step_by(10) {
            w.engine(&alerts, at(s), 500_000_000);
        }
        assert_eq!(core(&alerts), 2, "back under half the share once the stalls left the minute");
    }

    #[test]
    fn out_of_range_settings_name_their_key() {
        assert!(AlertsSection::default().check().is_ok());
        assert_eq!(AlertsSection { min_interval_ms: 0, ..AlertsSection::default() }.check().unwrap_err().0, "alerts.min_interval_ms");
        assert_eq!(AlertsSection { engine_stalled_bps: 0, ..AlertsSection::default() }.check().unwrap_err().0, "alerts.engine_stalled_bps");
    }
}
