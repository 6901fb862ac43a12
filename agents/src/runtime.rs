//! The agent runtime: one tokio task per agent, sampling the market context at its cadence
//! and publishing signals into the sink; the arbitrator watches every published signal.

use crate::arbitrator::Arbitrator;
use crate::config::{AgentConfig, AgentKind, AgentsConfig, ConfigError};
use crate::context::{Clock, ContextSource, MarketWindow, SignalSink};
use crate::llm::answers::{RegimeAnswer, SentimentAnswer, TradeAnswer, VerdictAnswer};
use crate::llm::{ChatRequest, LlmClient, LlmError};
use crate::metrics::{AgentCounters, AgentsMetrics, Refusal};
use crate::rules::{Proposal, Rule};
use crate::transcript::{SignalSummary, Transcript, TranscriptRecord};
use sapphire_core::event::{AgentId, Signal};
use sapphire_core::fixed::Money;
use sapphire_core::instrument::InstrumentId;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// An instrument agents may trade: its id and venue symbol (LLM prompts use the symbol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentRef {
    /// Interned id.
    pub id: InstrumentId,
    /// Venue symbol, e.g. `BTCUSDT`.
    pub symbol: String,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// A configuration value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An LLM provider could not be set up (missing key, bad URL).
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// An agent names a symbol the run does not have.
    #[error("configuration key `agent[{index}].symbols`: {symbol:?} is not one of the run's instruments")]
    UnknownSymbol {
        /// Index of the agent in the roster.
        index: usize,
        /// The symbol.
        symbol: String,
    },
    /// The transcript file could not be opened.
    #[error("agents transcript {path}: {why}")]
    Transcript {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// Publishes into the sink and lets the arbitrator see every signal.
struct Publisher {
    sink: Mutex<Box<dyn SignalSink>>,
    tap: Option<mpsc::Sender<Signal>>,
    arbitrator: Option<AgentId>,
    metrics: Arc<AgentsMetrics>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("arbitrator", &self.arbitrator).finish_non_exhaustive()
    }
}

impl Publisher {
    fn publish(&self, c: &AgentCounters, s: Signal) -> bool {
        let ok = self.sink.lock().unwrap_or_else(|p| p.into_inner()).publish(s);
        if !ok {
            c.sink_full.fetch_add(1, Relaxed);
            return false;
        }
        c.signals.fetch_add(1, Relaxed);
        if s.strength_bps != 0 {
            c.directional.fetch_add(1, Relaxed);
        }
        if let Some(tap) = &self.tap {
            if Some(s.agent) != self.arbitrator && tap.try_send(s).is_err() {
                self.metrics.arbitrator_dropped.fetch_add(1, Relaxed);
            }
        }
        true
    }
}

/// What every agent task carries.
struct AgentCore {
    id: AgentId,
    counters: Arc<AgentCounters>,
    instruments: Vec<InstrumentRef>,
    windows: Vec<MarketWindow>,
    ctx: Arc<dyn ContextSource>,
    publisher: Arc<Publisher>,
    transcript: Transcript,
    clock: Clock,
    budget: Money,
    ttl_ns: u64,
    cadence: Duration,
    next_signal_id: u64,
}

impl AgentCore {
    /// Samples every instrument's top of book into its window.
    fn sample(&mut self, now: u64) {
        for (inst, w) in self.instruments.iter().zip(self.windows.iter_mut()) {
            let stored = self.ctx.top(inst.id).is_some_and(|t| w.push_top(now, &t));
            if !stored {
                self.counters.skipped_samples.fetch_add(1, Relaxed);
            }
        }
    }

    /// True when the agent's PnL has lost its whole budget (it goes flat and stays flat).
    fn over_budget(&self, instrument: InstrumentId) -> bool {
        let state = self.ctx.agent_state(self.id, instrument);
        let out = state.pnl.raw <= -self.budget.raw;
        if out {
            self.counters.budget_exhausted.fetch_add(1, Relaxed);
        }
        out
    }

    fn signal(&mut self, now: u64, instrument: InstrumentId, strength_bps: i32, confidence_bps: u16, ttl_ns: u64) -> Signal {
        self.next_signal_id += 1;
        Signal {
            ts_event: now,
            ts_recv: now,
            instrument,
            agent: self.id,
            strength_bps: strength_bps.clamp(-10_000, 10_000),
            confidence_bps: confidence_bps.min(10_000),
            ttl_ns,
            signal_id: self.next_signal_id,
            ..Signal::default()
        }
    }

    fn emit(&mut self, s: Signal) -> bool {
        self.publisher.publish(&self.counters, s)
    }

    /// Emits and records a signal that came from a model (with its reason).
    fn emit_recorded(&mut self, s: Signal, reason: &str) {
        let published = self.emit(s);
        self.transcript.record(TranscriptRecord {
            ts_ns: s.ts_event,
            agent: self.id.0,
            kind: self.counters.kind,
            record: "signal",
            outcome: if published { "ok" } else { "sink_full" },
            detail: reason.to_string(),
            cost_usd: "0".into(),
            signal: Some(SignalSummary::from(&s)),
            ..TranscriptRecord::default()
        });
    }

    fn interval(&self) -> tokio::time::Interval {
        let mut iv = tokio::time::interval(self.cadence);
        iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
        iv
    }
}

/// A compact, rounded market summary for prompts (rounding lets the cache hit in quiet
/// markets).
fn market_summary(symbol: &str, w: &MarketWindow, position: &str, pnl: &str) -> String {
    let mut s = String::with_capacity(256);
    let Some(last) = w.last() else { return s };
    let mid = sapphire_core::fixed::Price::from_raw(last.mid);
    let spread_bps = if last.mid > 0 { last.spread as f64 * 10_000.0 / last.mid as f64 } else { 0.0 };
    let r = |n: usize| w.return_bps(n.min(w.len().saturating_sub(1))).unwrap_or(0.0);
    let _ = write!(
        s,
        "symbol={symbol} mid={mid} spread_bps={spread_bps:.1} imbalance_bps={} ret_1_bps={:+.1} ret_10_bps={:+.1} ret_50_bps={:+.1} vol_bps={:.1} position={position} pnl_usd={pnl}",
        last.imbalance_bps / 100 * 100,
        r(1),
        r(10),
        r(50),
        w.volatility_bps(50).unwrap_or(0.0),
    );
    s
}

const TRADER_SYSTEM: &str = "You are a short-horizon crypto trading signal generator. From the market summary, \
answer with a JSON object: strength_bps (-10000 all-in short .. 10000 all-in long, 0 flat), confidence_bps (0..10000), \
ttl_seconds (how long the view holds) and reasoning (one or two sentences). Be conservative: stay near 0 without a clear edge.";

const SENTIMENT_SYSTEM: &str = "You rate crypto news sentiment. For each listed symbol the headlines concern, give \
sentiment_bps (-10000 very bearish .. 10000 very bullish), confidence_bps (0..10000) and a one-sentence reason. \
Use only the listed symbols; omit symbols the headlines do not concern.";

const STRATEGY_SYSTEM: &str = "You classify the crypto market regime (trending, mean_reverting, volatile, quiet) from \
per-symbol statistics and weight four rule-based agents (momentum, mean_reversion, imbalance, breakout), each 0..20000 bps \
where 10000 is neutral. Give a one-sentence reason.";

const ARBITER_SYSTEM: &str = "Agents disagree on a crypto instrument. Given their signals, their performance weights and \
the market summary, give the resolved strength_bps (-10000..10000), confidence_bps (0..10000) and a short explanation.";

/// A rule-based agent: what it last said per instrument, and its decision each tick.
struct RuleTask {
    a: AgentCore,
    rule: Box<dyn Rule>,
    /// Last emitted (strength, confidence, time) per instrument: unchanged views are
    /// refreshed at half their TTL, not every tick.
    last: Vec<Option<(i32, u16, u64)>>,
}

impl RuleTask {
    fn new(a: AgentCore, rule: Box<dyn Rule>) -> Self {
        let last = vec![None; a.instruments.len()];
        Self { a, rule, last }
    }

    /// Samples the market at `now` and publishes what changed. Pure in `now` and the
    /// context, so a rehearsal on event time decides exactly as a run does.
    fn tick(&mut self, now: u64) {
        let a = &mut self.a;
        a.sample(now);
        let weight = i64::from(a.counters.weight_bps.load(Relaxed));
        for (i, last) in self.last.iter_mut().enumerate() {
            let Some(Proposal { strength_bps, confidence_bps, reason }) = self.rule.evaluate(&a.windows[i]) else { continue };
            let inst = a.instruments[i].id;
            let (strength, conf, reason) = if a.over_budget(inst) {
                (0, 10_000, "budget exhausted: flat")
            } else {
                ((i64::from(strength_bps) * weight / 10_000).clamp(-10_000, 10_000) as i32, confidence_bps, reason)
            };
            if let Some((s, c, at)) = *last {
                if s == strength && c == conf && now.saturating_sub(at) < a.ttl_ns / 2 {
                    continue;
                }
            }
            let sig = a.signal(now, inst, strength, conf, a.ttl_ns);
            if a.emit(sig) {
                a.counters.record_reason(inst, strength, reason);
                *last = Some((strength, conf, now));
            }
        }
    }
}

async fn run_rule(a: AgentCore, rule: Box<dyn Rule>) {
    let mut iv = a.interval();
    let mut task = RuleTask::new(a, rule);
    loop {
        iv.tick().await;
        let now = (task.a.clock)();
        task.tick(now);
    }
}

async fn run_fast_trader(mut a: AgentCore, client: Arc<LlmClient>) {
    let mut iv = a.interval();
    loop {
        iv.tick().await;
        let now = (a.clock)();
        a.sample(now);
        for i in 0..a.instruments.len() {
            if a.windows[i].len() < 2 {
                continue;
            }
            let inst = a.instruments[i].id;
            if a.over_budget(inst) {
                let s = a.signal(now, inst, 0, 10_000, a.ttl_ns);
                a.emit_recorded(s, "budget exhausted: flat");
                continue;
            }
            let st = a.ctx.agent_state(a.id, inst);
            let summary = market_summary(&a.instruments[i].symbol, &a.windows[i], &st.position.to_string(), &st.pnl.to_string());
            let req = ChatRequest { system: TRADER_SYSTEM, user: &summary, deadline: a.cadence };
            if let Ok(ans) = client.ask::<TradeAnswer>(&a.counters, &req).await {
                let v = ans.value;
                let ttl = (v.ttl_seconds as u64).saturating_mul(1_000_000_000).min(a.ttl_ns);
                let s = a.signal((a.clock)(), inst, v.strength_bps as i32, v.confidence_bps as u16, ttl);
                a.emit_recorded(s, &v.reasoning);
            }
        }
    }
}

async fn run_sentiment(mut a: AgentCore, client: Arc<LlmClient>, news: crate::config::NewsConfig) {
    let http = reqwest::Client::new();
    let mut iv = a.interval();
    let symbols: Vec<&str> = a.instruments.iter().map(|i| i.symbol.as_str()).collect();
    let symbol_list = symbols.join(", ");
    let by_symbol: HashMap<String, InstrumentId> = a.instruments.iter().map(|i| (i.symbol.clone(), i.id)).collect();
    loop {
        iv.tick().await;
        let headlines = match crate::news::fetch(&news, &http).await {
            Ok(h) if !h.is_empty() => h,
            Ok(_) => continue,
            Err(e) => {
                a.transcript.record(TranscriptRecord {
                    ts_ns: (a.clock)(),
                    agent: a.id.0,
                    kind: a.counters.kind,
                    record: "news",
                    outcome: "news_error",
                    detail: e.to_string(),
                    cost_usd: "0".into(),
                    ..TranscriptRecord::default()
                });
                continue;
            }
        };
        let mut user = format!("Symbols: {symbol_list}\nHeadlines, oldest first:\n");
        for h in &headlines {
            let _ = writeln!(user, "- {h}");
        }
        let req = ChatRequest { system: SENTIMENT_SYSTEM, user: &user, deadline: a.cadence };
        let Ok(ans) = client.ask::<SentimentAnswer>(&a.counters, &req).await else { continue };
        let now = (a.clock)();
        // Strict: one unknown symbol refuses the whole answer.
        if let Some(bad) = ans.value.items.iter().find(|it| !by_symbol.contains_key(&it.symbol)) {
            a.counters.refuse(Refusal::OutOfRange);
            a.transcript.record(TranscriptRecord {
                ts_ns: now,
                agent: a.id.0,
                kind: a.counters.kind,
                record: "signal",
                outcome: Refusal::OutOfRange.label(),
                detail: format!("unknown symbol {:?}", bad.symbol),
                cost_usd: "0".into(),
                ..TranscriptRecord::default()
            });
            continue;
        }
        for it in &ans.value.items {
            let inst = by_symbol[&it.symbol];
            let (strength, reason) =
                if a.over_budget(inst) { (0, "budget exhausted: flat") } else { (it.sentiment_bps as i32, it.reason.as_str()) };
            let s = a.signal(now, inst, strength, it.confidence_bps as u16, a.ttl_ns);
            a.emit_recorded(s, reason);
        }
    }
}

async fn run_strategy(mut a: AgentCore, client: Arc<LlmClient>, targets: Vec<(AgentKind, Arc<AgentCounters>)>) {
    let mut iv = a.interval();
    loop {
        iv.tick().await;
        let now = (a.clock)();
        a.sample(now);
        let mut user = String::from("Per-symbol statistics:\n");
        for (inst, w) in a.instruments.iter().zip(&a.windows) {
            if w.len() >= 2 {
                let _ = writeln!(user, "{}", market_summary(&inst.symbol, w, "0", "0"));
            }
        }
        let req = ChatRequest { system: STRATEGY_SYSTEM, user: &user, deadline: a.cadence };
        let Ok(ans) = client.ask::<RegimeAnswer>(&a.counters, &req).await else { continue };
        let w = ans.value.weights;
        for (kind, c) in &targets {
            let bps = match kind {
                AgentKind::Momentum => w.momentum_bps,
                AgentKind::MeanReversion => w.mean_reversion_bps,
                AgentKind::Imbalance => w.imbalance_bps,
                AgentKind::Breakout => w.breakout_bps,
                _ => continue,
            };
            c.weight_bps.store(bps as i32, Relaxed);
        }
        a.transcript.record(TranscriptRecord {
            ts_ns: (a.clock)(),
            agent: a.id.0,
            kind: a.counters.kind,
            record: "weights",
            outcome: "ok",
            detail: format!("{:?}: {:?}; {}", ans.value.regime, w, ans.value.reason),
            cost_usd: "0".into(),
            ..TranscriptRecord::default()
        });
    }
}

/// The arbitrator task's settings.
struct ArbiterTask {
    core: AgentCore,
    arb: Arbitrator,
    rx: mpsc::Receiver<Signal>,
    all: Vec<Arc<AgentCounters>>,
    metrics: Arc<AgentsMetrics>,
    client: Option<Arc<LlmClient>>,
    llm_conflict_bps: i32,
}

async fn run_arbitrator(mut t: ArbiterTask) {
    let mut iv = t.core.interval();
    // Last weighted verdict per instrument (strength, time): a verdict is emitted (and the
    // LLM asked) again only when it moves by 500 bps or half its TTL has passed.
    let mut last: HashMap<InstrumentId, (i32, u64)> = HashMap::new();
    let symbols: HashMap<InstrumentId, String> = t.core.instruments.iter().map(|i| (i.id, i.symbol.clone())).collect();
    loop {
        tokio::select! {
            s = t.rx.recv() => {
                let Some(s) = s else { return };
                let mid = t.core.ctx.top(s.instrument).and_then(|top| top.mid()).map(|p| p.raw);
                t.arb.observe(&s, mid);
            }
            _ = iv.tick() => {
                let now = (t.core.clock)();
                let ctx = t.core.ctx.clone();
                t.arb.score(now, |i| ctx.top(i).and_then(|top| top.mid()).map(|p| p.raw));
                for c in &t.all {
                    c.brier_ppm.store((t.arb.brier(c.agent) * 1e6).round() as u64, Relaxed);
                    c.skill_weight_bps.store(t.arb.weight_bps(c.agent), Relaxed);
                }
                let instruments: Vec<InstrumentId> = t.arb.instruments().collect();
                for inst in instruments {
                    let Some(v) = t.arb.resolve(inst, now) else { continue };
                    if let Some((s, at)) = last.get(&inst) {
                        if (s - v.strength_bps).abs() < 500 && now.saturating_sub(*at) < t.core.ttl_ns / 2 {
                            continue;
                        }
                    }
                    let (mut strength, mut conf, mut why) = (v.strength_bps, v.confidence_bps, v.explanation.clone());
                    if let Some(client) = t.client.as_ref().filter(|_| v.conflict_bps() >= t.llm_conflict_bps) {
                        let symbol = symbols.get(&inst).cloned().unwrap_or_else(|| format!("#{}", inst.0));
                        let mut user = format!("instrument {symbol}\n{}\n", v.explanation);
                        if let Some(top) = t.core.ctx.top(inst) {
                            let mut w = MarketWindow::new(2);
                            w.push_top(now, &top);
                            let _ = writeln!(user, "{}", market_summary(&symbol, &w, "0", "0"));
                        }
                        let req = ChatRequest { system: ARBITER_SYSTEM, user: &user, deadline: t.core.cadence.max(Duration::from_secs(5)) };
                        if let Ok(ans) = client.ask::<VerdictAnswer>(&t.core.counters, &req).await {
                            strength = ans.value.strength_bps as i32;
                            conf = ans.value.confidence_bps as u16;
                            why = format!("llm: {} ({})", ans.value.explanation, v.explanation);
                        }
                    }
                    let now = (t.core.clock)();
                    let sig = t.core.signal(now, inst, strength, conf, t.core.ttl_ns);
                    t.metrics.arbitrations.fetch_add(1, Relaxed);
                    let mut rec = TranscriptRecord {
                        ts_ns: now,
                        agent: t.core.id.0,
                        kind: "arbitrator",
                        record: "arbitration",
                        outcome: "ok",
                        detail: why,
                        cost_usd: "0".into(),
                        signal: Some(SignalSummary::from(&sig)),
                        ..TranscriptRecord::default()
                    };
                    if !t.core.emit(sig) {
                        rec.outcome = "sink_full";
                    }
                    t.core.transcript.record(rec);
                    // Keyed on the weighted verdict, so an LLM answer does not make every tick look new.
                    last.insert(inst, (v.strength_bps, now));
                }
            }
        }
    }
}

/// One agent ready to start.
enum Plan {
    Rule(Box<dyn Rule>),
    FastTrader(Arc<LlmClient>),
    Sentiment(Arc<LlmClient>, crate::config::NewsConfig),
    Strategy(Arc<LlmClient>),
}

/// The next `per_agent` instruments for an agent without a symbol list: consecutive shares
/// of the run's instruments, wrapping to the top once every one is covered, so agents spread
/// over all of them (not all on the first `per_agent`). Marks what it hands out in `covered`.
fn spread_share(instruments: &[InstrumentRef], per_agent: usize, next: &mut usize, covered: &mut [bool]) -> Vec<InstrumentRef> {
    let n = instruments.len();
    if n <= per_agent {
        covered.iter_mut().for_each(|c| *c = true);
        return instruments.to_vec();
    }
    let share: Vec<InstrumentRef> = (0..per_agent).map(|k| instruments[(*next + k) % n].clone()).collect();
    for k in 0..per_agent {
        covered[(*next + k) % n] = true;
    }
    *next = (*next + per_agent) % n;
    share
}

/// The agents runtime, built and ready to run. Read [`AgentsRuntime::metrics`] before
/// [`AgentsRuntime::run`] to export counters while it runs.
pub struct AgentsRuntime {
    config: AgentsConfig,
    metrics: Arc<AgentsMetrics>,
    plans: Vec<(AgentConfig, Arc<AgentCounters>, Vec<InstrumentRef>, Plan)>,
    arbiter: Option<(Arc<AgentCounters>, Option<Arc<LlmClient>>)>,
    universe: Vec<InstrumentRef>,
    transcript: Transcript,
    transcript_thread: Option<std::thread::JoinHandle<()>>,
    clock: Clock,
    notes: Vec<String>,
    coverage: String,
}

impl std::fmt::Debug for AgentsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentsRuntime").field("agents", &self.plans.len()).field("notes", &self.notes).finish_non_exhaustive()
    }
}

impl AgentsRuntime {
    /// Validates the configuration, reads credentials, opens the transcript.
    ///
    /// `instruments` is the run's universe. LLM agents without a provider and a sentiment
    /// agent without a news source are skipped, each with a note ([`Self::notes`]).
    pub fn new(config: AgentsConfig, instruments: Vec<InstrumentRef>, clock: Clock) -> Result<Self, AgentsError> {
        config.validate()?;
        let mut metrics = AgentsMetrics::default();
        let mut notes = Vec::new();
        let cache_ttl = Duration::from_secs(config.cache_ttl_seconds);

        // Counters first (the metrics struct is shared once built).
        let mut counters: Vec<Arc<AgentCounters>> = Vec::new();
        for a in config.agent.iter().filter(|a| a.enabled && config.enabled) {
            counters.push(Arc::new(AgentCounters::new(AgentId(a.id), a.kind.label())));
        }
        let arb_counters = (config.enabled && config.arbitrator.enabled)
            .then(|| Arc::new(AgentCounters::new(AgentId(config.arbitrator.id), "arbitrator")));
        metrics.agents = counters.iter().cloned().chain(arb_counters.iter().cloned()).collect();
        let metrics = Arc::new(metrics);

        let (transcript, transcript_thread) = match &config.transcript_path {
            Some(path) => {
                let (t, h) = Transcript::open(path, config.transcript_capacity, metrics.clone())
                    .map_err(|e| AgentsError::Transcript { path: path.display().to_string(), why: e.to_string() })?;
                (t, Some(h))
            }
            None => (Transcript::disabled(metrics.clone()), None),
        };

        let mut clients: HashMap<String, Arc<LlmClient>> = HashMap::new();
        let mut client_for = |name: &str| -> Result<Option<Arc<LlmClient>>, AgentsError> {
            let name = if name.is_empty() { config.default_provider.as_str() } else { name };
            if name.is_empty() || name == "none" {
                return Ok(None);
            }
            if let Some(c) = clients.get(name) {
                return Ok(Some(c.clone()));
            }
            let Some(p) = config.providers.iter().find(|p| p.name == name) else { return Ok(None) };
            let c = Arc::new(LlmClient::new(p, cache_ttl, transcript.clone(), clock.clone())?.with_metrics(Arc::clone(&metrics.llm)));
            clients.insert(name.to_string(), c.clone());
            Ok(Some(c))
        };

        let mut plans = Vec::new();
        let (mut spread_next, mut spread_covered, mut coverage) = (0usize, vec![false; instruments.len()], Vec::new());
        let mut it = counters.iter();
        for (index, a) in config.agent.iter().enumerate().filter(|(_, a)| a.enabled && config.enabled) {
            let Some(c) = it.next().cloned() else { break };
            // Agents without a symbol list share the instruments (in the run's order: a venue's
            // most traded first) by MAX_SYMBOLS_PER_AGENT, set at the end of the loop.
            let insts = if a.symbols.is_empty() {
                Vec::new()
            } else {
                let mut v = Vec::new();
                for s in &a.symbols {
                    let Some(i) = instruments.iter().find(|i| &i.symbol == s) else {
                        return Err(AgentsError::UnknownSymbol { index, symbol: s.clone() });
                    };
                    v.push(i.clone());
                }
                v
            };
            let plan = match a.kind {
                AgentKind::Momentum => Plan::Rule(Box::new(a.momentum.clone())),
                AgentKind::MeanReversion => Plan::Rule(Box::new(a.mean_reversion.clone())),
                AgentKind::Imbalance => Plan::Rule(Box::new(a.imbalance.clone())),
                AgentKind::Breakout => Plan::Rule(Box::new(a.breakout.clone())),
                kind => {
                    let Some(client) = client_for(&a.provider)? else {
                        notes.push(format!("agent {} ({}): no LLM provider configured; not started", a.id, kind.label()));
                        continue;
                    };
                    match kind {
                        AgentKind::FastTrader => Plan::FastTrader(client),
                        AgentKind::Strategy => Plan::Strategy(client),
                        _ => {
                            if a.news.file.is_none() && a.news.url.is_empty() {
                                notes.push(format!("agent {} (sentiment): no news source (news.file or news.url); not started", a.id));
                                continue;
                            }
                            Plan::Sentiment(client, a.news.clone())
                        }
                    }
                }
            };
            let insts = if a.symbols.is_empty() {
                spread_share(&instruments, config.max_symbols_per_agent, &mut spread_next, &mut spread_covered)
            } else {
                insts
            };
            coverage.push(format!("{} {}: {}", a.id, a.kind.label(), insts.len()));
            plans.push((a.clone(), c, insts, plan));
        }
        let uncovered = spread_covered.iter().filter(|c| !**c).count();
        let coverage = if coverage.is_empty() {
            String::new()
        } else {
            format!(
                "symbols per agent (of {}, at most {} each, MAX_SYMBOLS_PER_AGENT): {}{}",
                instruments.len(),
                config.max_symbols_per_agent,
                coverage.join(", "),
                if uncovered > 0 {
                    format!("; {uncovered} symbols covered by no agent (raise MAX_SYMBOLS_PER_AGENT or add agents)")
                } else {
                    String::new()
                }
            )
        };
        let arbiter = match arb_counters {
            Some(c) => Some((c, client_for(&config.arbitrator.provider)?)),
            None => None,
        };
        Ok(Self { config, metrics, plans, arbiter, universe: instruments, transcript, transcript_thread, clock, notes, coverage })
    }

    /// The agents that start: configured, enabled and able to run (an LLM agent needs a
    /// provider), and the arbitrator.
    pub fn started(&self) -> Vec<AgentId> {
        self.plans.iter().map(|(a, ..)| AgentId(a.id)).chain(self.arbiter.iter().map(|(c, _)| c.agent)).collect()
    }

    /// The counters, readable from any thread while the runtime runs.
    pub fn metrics(&self) -> Arc<AgentsMetrics> {
        self.metrics.clone()
    }

    /// What was configured but not started, and why.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// How many symbols each agent covers (`symbols per agent (of 80, at most 50 each, …):
    /// 2 momentum: 50, …`), and how many no agent does; empty when no agent starts.
    pub fn coverage(&self) -> &str {
        &self.coverage
    }

    /// Runs the rule-based agents on event time, without tokio: from `start_ns` for
    /// `duration_ns`, each ticks at its cadence in time order (ties in roster order), after
    /// `advance(now)` has brought the market the context reads up to `now`. The same market
    /// and configuration give the same signals, whatever the machine. LLM agents and the
    /// arbitrator are not run. Returns the counters.
    pub fn rehearse(
        mut self,
        ctx: Arc<dyn ContextSource>,
        sink: Box<dyn SignalSink>,
        start_ns: u64,
        duration_ns: u64,
        advance: &mut dyn FnMut(u64),
    ) -> Arc<AgentsMetrics> {
        let budget = self.config.budget().unwrap_or(Money::from_units(1_000));
        let publisher = Arc::new(Publisher { sink: Mutex::new(sink), tap: None, arbitrator: None, metrics: self.metrics.clone() });
        let mut tasks: Vec<(u64, u64, RuleTask)> = Vec::new();
        for (a, c, insts, plan) in self.plans.drain(..) {
            // A rehearsal never asks a model.
            let Plan::Rule(rule) = plan else { continue };
            let cadence_ns = a.effective_cadence_ms().max(1).saturating_mul(1_000_000);
            let core = AgentCore {
                id: AgentId(a.id),
                counters: c,
                windows: insts.iter().map(|_| MarketWindow::new(a.window)).collect(),
                instruments: insts,
                ctx: ctx.clone(),
                publisher: publisher.clone(),
                transcript: self.transcript.clone(),
                clock: self.clock.clone(),
                budget: if a.budget_usd.is_empty() { budget } else { Money::parse(a.budget_usd.trim()).unwrap_or(budget) },
                ttl_ns: a.effective_ttl_ns(),
                cadence: Duration::from_nanos(cadence_ns),
                next_signal_id: 0,
            };
            tasks.push((start_ns, cadence_ns, RuleTask::new(core, rule)));
        }
        let end = start_ns.saturating_add(duration_ns);
        // The earliest due task; `min_by_key` keeps the first of equals (roster order).
        while let Some((due, cadence, task)) = tasks.iter_mut().min_by_key(|(due, ..)| *due) {
            if *due > end {
                break;
            }
            let now = *due;
            advance(now);
            task.tick(now);
            *due = now.saturating_add(*cadence);
        }
        self.metrics.clone()
    }

    /// Runs every agent until `stop` turns true (or its sender is dropped), then stops them
    /// and flushes the transcript.
    pub async fn run(mut self, ctx: Arc<dyn ContextSource>, sink: Box<dyn SignalSink>, mut stop: watch::Receiver<bool>) {
        let mut tasks = self.spawn_all(ctx, sink);
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        tasks.shutdown().await;
        // Every transcript sender is gone once the tasks, their clients and `self` are: the
        // writer drains what is queued and ends.
        let thread = self.transcript_thread.take();
        drop(self);
        if let Some(h) = thread {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// Starts every agent task. Nothing here may outlive the tasks holding a transcript
    /// sender, or the writer would never end.
    fn spawn_all(&mut self, ctx: Arc<dyn ContextSource>, sink: Box<dyn SignalSink>) -> JoinSet<()> {
        let budget = self.config.budget().unwrap_or(Money::from_units(1_000));
        let (tap, rx) = match &self.arbiter {
            Some(_) => {
                let (tx, rx) = mpsc::channel(4_096);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let publisher = Arc::new(Publisher {
            sink: Mutex::new(sink),
            tap,
            arbitrator: self.arbiter.as_ref().map(|(c, _)| c.agent),
            metrics: self.metrics.clone(),
        });
        let (transcript, clock) = (self.transcript.clone(), self.clock.clone());
        let make_core = |a_id: AgentId,
                         c: Arc<AgentCounters>,
                         insts: Vec<InstrumentRef>,
                         window: usize,
                         budget: Money,
                         ttl_ns: u64,
                         cadence_ms: u64| {
            AgentCore {
                id: a_id,
                counters: c,
                windows: insts.iter().map(|_| MarketWindow::new(window)).collect(),
                instruments: insts,
                ctx: ctx.clone(),
                publisher: publisher.clone(),
                transcript: transcript.clone(),
                clock: clock.clone(),
                budget,
                ttl_ns,
                cadence: Duration::from_millis(cadence_ms),
                next_signal_id: 0,
            }
        };
        let rule_targets: Vec<(AgentKind, Arc<AgentCounters>)> =
            self.plans.iter().filter(|(a, ..)| !a.kind.uses_llm()).map(|(a, c, ..)| (a.kind, c.clone())).collect();
        let mut tasks = JoinSet::new();
        for (a, c, insts, plan) in self.plans.drain(..) {
            let b = if a.budget_usd.is_empty() { budget } else { Money::parse(a.budget_usd.trim()).unwrap_or(budget) };
            let core = make_core(AgentId(a.id), c, insts, a.window, b, a.effective_ttl_ns(), a.effective_cadence_ms());
            match plan {
                Plan::Rule(rule) => tasks.spawn(run_rule(core, rule)),
                Plan::FastTrader(client) => tasks.spawn(run_fast_trader(core, client)),
                Plan::Sentiment(client, news) => tasks.spawn(run_sentiment(core, client, news)),
                Plan::Strategy(client) => tasks.spawn(run_strategy(core, client, rule_targets.clone())),
            };
        }
        if let (Some((c, client)), Some(rx)) = (self.arbiter.take(), rx) {
            let cfg = &self.config.arbitrator;
            let core = make_core(c.agent, c, self.universe.clone(), 2, budget, cfg.ttl_ms.saturating_mul(1_000_000), cfg.cadence_ms);
            let all = self.metrics.agents.clone();
            tasks.spawn(run_arbitrator(ArbiterTask {
                core,
                arb: Arbitrator::new(cfg),
                rx,
                all,
                metrics: self.metrics.clone(),
                client,
                llm_conflict_bps: cfg.llm_conflict_bps,
            }));
        }
        tasks
    }
}

/// Builds the runtime and runs it until `stop`; returns the final counters.
/// To export counters while it runs, use [`AgentsRuntime`] directly.
pub async fn run_agents(
    config: AgentsConfig,
    instruments: Vec<InstrumentRef>,
    ctx: Arc<dyn ContextSource>,
    sink: Box<dyn SignalSink>,
    clock: Clock,
    stop: watch::Receiver<bool>,
) -> Result<Arc<AgentsMetrics>, AgentsError> {
    let rt = AgentsRuntime::new(config, instruments, clock)?;
    let metrics = rt.metrics();
    rt.run(ctx, sink, stop).await;
    Ok(metrics)
}

#[cfg(test)]
mod spread_tests {
    use super::*;

    fn refs(n: u32) -> Vec<InstrumentRef> {
        (0..n).map(|i| InstrumentRef { id: InstrumentId(i), symbol: format!("S{i}") }).collect()
    }

    fn ids(v: &[InstrumentRef]) -> Vec<u32> {
        v.iter().map(|i| i.id.0).collect()
    }

    #[test]
    fn agents_share_the_symbols_by_max_symbols_per_agent_and_wrap_once_all_are_covered() {
        let all = refs(5);
        let (mut next, mut covered) = (0, vec![false; 5]);
        assert_eq!(ids(&spread_share(&all, 2, &mut next, &mut covered)), [0, 1]);
        assert_eq!(ids(&spread_share(&all, 2, &mut next, &mut covered)), [2, 3]);
        assert!(!covered[4], "not yet");
        assert_eq!(ids(&spread_share(&all, 2, &mut next, &mut covered)), [4, 0], "the last share wraps to the most traded");
        assert!(covered.iter().all(|c| *c));
        // Fewer symbols than the cap: every agent covers them all.
        let (mut next, mut covered) = (0, vec![false; 3]);
        assert_eq!(ids(&spread_share(&refs(3), 50, &mut next, &mut covered)), [0, 1, 2]);
        assert_eq!(ids(&spread_share(&refs(3), 50, &mut next, &mut covered)), [0, 1, 2]);
    }

    #[test]
    fn the_notes_say_how_many_symbols_each_agent_covers() {
        let config = AgentsConfig { max_symbols_per_agent: 2, ..AgentsConfig::default() };
        let rt = AgentsRuntime::new(config, refs(9), crate::context::wall_clock()).unwrap();
        let note = rt.coverage();
        // Four rule agents start (the LLM ones have no provider): 8 of the 9 symbols covered.
        assert!(note.starts_with("symbols per agent (of 9, at most 2 each, MAX_SYMBOLS_PER_AGENT): 2 "), "{note}");
        assert_eq!(note.matches(": 2").count(), 5, "the header and four agents of 2: {note}");
        assert!(note.ends_with("; 1 symbols covered by no agent (raise MAX_SYMBOLS_PER_AGENT or add agents)"), "{note}");
    }
}
