//! The agents runtime end to end: scripted markets in, signals out.

mod mock;

use mock::Reply;
use sapphire_agents::config::{AgentConfig, AgentKind, AgentsConfig, ArbitratorConfig};
use sapphire_agents::llm::{ProviderConfig, ProviderKind};
use sapphire_agents::metrics::Refusal;
use sapphire_agents::{AgentState, AgentsRuntime, Clock, ContextSource, InstrumentRef, SignalSink, Top};
use sapphire_core::event::{AgentId, Signal};
use sapphire_core::fixed::{Money, Price, Quantity, PRICE_SCALE};
use sapphire_core::instrument::InstrumentId;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A market whose mid rises `slope_per_sec` (raw price units) a second of tokio time.
struct Trend {
    start: tokio::time::Instant,
    slope_per_sec: i64,
    losing_agent: Option<AgentId>,
}

impl Trend {
    fn mid(&self) -> i64 {
        10_000 * PRICE_SCALE + self.slope_per_sec * self.start.elapsed().as_millis() as i64 / 1_000
    }
}

impl ContextSource for Trend {
    fn top(&self, _: InstrumentId) -> Option<Top> {
        let mid = self.mid();
        Some(Top {
            bid: Price::from_raw(mid - PRICE_SCALE / 100),
            ask: Price::from_raw(mid + PRICE_SCALE / 100),
            bid_qty: Quantity::from_units(3),
            ask_qty: Quantity::from_units(1),
            ts_event: 0,
            in_sync: true,
        })
    }

    fn agent_state(&self, agent: AgentId, _: InstrumentId) -> AgentState {
        let pnl = if Some(agent) == self.losing_agent { Money::from_units(-1_000) } else { Money::ZERO };
        AgentState { position: Quantity::ZERO, pnl }
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Signal>>>, bool);

impl SignalSink for Collect {
    fn publish(&mut self, s: Signal) -> bool {
        if self.1 {
            return false;
        }
        self.0.lock().unwrap().push(s);
        true
    }
}

impl Collect {
    fn of(&self, agent: u16) -> Vec<Signal> {
        self.0.lock().unwrap().iter().filter(|s| s.agent == AgentId(agent)).copied().collect()
    }
}

fn tokio_clock() -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || 1_000_000_000_000 + start.elapsed().as_nanos() as u64)
}

fn btc() -> Vec<InstrumentRef> {
    vec![InstrumentRef { id: InstrumentId(0), symbol: "BTCUSDT".into() }]
}

fn roster(kinds: &[(u16, AgentKind)]) -> Vec<AgentConfig> {
    kinds.iter().map(|(id, k)| AgentConfig::new(*id, *k)).collect()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sapphire-agents-rt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(start_paused = true)]
async fn uptrend_makes_momentum_long_mean_reversion_short_and_the_arbitrator_side_with_momentum() {
    let mut agent = roster(&[(2, AgentKind::Momentum), (3, AgentKind::MeanReversion), (4, AgentKind::Imbalance)]);
    // One-second samples: the numbers below are worked out for them.
    agent[0].cadence_ms = 1_000;
    agent[1].cadence_ms = 1_000;
    let config = AgentsConfig {
        agent,
        arbitrator: ArbitratorConfig { horizon_ms: 5_000, learning_rate: 0.2, ..ArbitratorConfig::default() },
        ..AgentsConfig::default()
    };
    let clock = tokio_clock();
    let rt = AgentsRuntime::new(config, btc(), clock.clone()).unwrap();
    let metrics = rt.metrics();
    // 0.5 a second on 10_000: 0.5 bps a one-second step.
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: PRICE_SCALE / 2, losing_agent: None });
    let sink = Collect::default();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(sink.clone()), stop));
    tokio::time::sleep(Duration::from_secs(90)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap();

    let momentum = sink.of(2);
    // Samples at t = 0, 1, ...: the 21st (t = 20 s) completes the 20-step lookback.
    assert_eq!(momentum[0].ts_event, 1_000_000_000_000 + 20_000_000_000);
    // 20 steps × 0.5 = 10 on 10_000: 10 bps of a 20 bps full scale.
    assert_eq!((momentum[0].strength_bps, momentum[0].confidence_bps), (5_000, 10_000));
    assert!(momentum.iter().all(|s| s.strength_bps > 4_900), "long all along");
    assert_eq!(momentum[0].ttl_ns, 3_000_000_000, "three cadences");
    assert!(momentum.windows(2).all(|w| w[1].signal_id == w[0].signal_id + 1));
    let reversion = sink.of(3);
    assert!(!reversion.is_empty() && reversion.iter().all(|s| s.strength_bps < 0), "short all along");
    let imbalance = sink.of(4);
    // Bids 3 vs asks 1: +5000 bps of pressure of a full scale of 6000.
    assert_eq!(imbalance[0].strength_bps, 8_333);
    // An unchanged view is refreshed at half its TTL (375 ms of 750 ms), not every 250 ms
    // tick: every other tick, twice a second.
    assert!((175..=182).contains(&imbalance.len()), "{}", imbalance.len());

    // The arbitrator resolved the momentum/mean-reversion conflict, learning that momentum
    // was right.
    let verdicts = sink.of(9);
    assert!(!verdicts.is_empty());
    assert!(verdicts.last().unwrap().strength_bps > 0, "{:?}", verdicts.last());
    assert!(metrics.arbitrations.load(Relaxed) > 0);
    let m = metrics.agent(AgentId(2)).unwrap();
    let r = metrics.agent(AgentId(3)).unwrap();
    assert!(m.skill_weight_bps.load(Relaxed) > 10_000 && r.skill_weight_bps.load(Relaxed) < 10_000);
    assert!(m.brier_ppm.load(Relaxed) < 250_000 && r.brier_ppm.load(Relaxed) > 250_000);
    assert_eq!(m.signals.load(Relaxed) as usize, momentum.len());
    // Every momentum signal was long, each counted as directional, and its reason kept.
    assert_eq!(m.directional.load(Relaxed) as usize, momentum.len());
    assert_eq!(m.reasons().last_trigger, Some(("momentum: price rising", InstrumentId(0))));
    assert_eq!(r.reasons().last_trigger, Some(("mean reversion: stretched above the mean", InstrumentId(0))));
    let text = metrics.render_prometheus();
    assert!(text.contains("agent_signals_total{agent_id=\"2\",kind=\"momentum\"}"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn budget_exhausted_goes_flat_and_a_full_sink_is_counted() {
    let config = AgentsConfig { agent: roster(&[(2, AgentKind::Momentum)]), ..AgentsConfig::default() };
    let rt = AgentsRuntime::new(config.clone(), btc(), tokio_clock()).unwrap();
    let metrics = rt.metrics();
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: PRICE_SCALE, losing_agent: Some(AgentId(2)) });
    let sink = Collect::default();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(sink.clone()), stop));
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap();
    let sigs = sink.of(2);
    assert!(!sigs.is_empty() && sigs.iter().all(|s| s.strength_bps == 0), "flat: the $1000 budget is lost");
    assert!(metrics.agent(AgentId(2)).unwrap().budget_exhausted.load(Relaxed) > 0);

    let rt = AgentsRuntime::new(config, btc(), tokio_clock()).unwrap();
    let metrics = rt.metrics();
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: PRICE_SCALE, losing_agent: None });
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(Collect(Arc::default(), true)), stop));
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(stop_tx); // a dropped sender stops the runtime too
    run.await.unwrap();
    let c = metrics.agent(AgentId(2)).unwrap();
    assert_eq!(c.signals.load(Relaxed), 0);
    assert!(c.sink_full.load(Relaxed) >= 9, "{}", c.sink_full.load(Relaxed));
}

#[test]
fn bad_rosters_are_refused_and_llm_agents_without_a_provider_are_noted() {
    let clock: Clock = Arc::new(|| 0);
    let mut config = AgentsConfig::default();
    config.agent[0].symbols = vec!["DOGEUSDT".into()];
    let e = AgentsRuntime::new(config, btc(), clock.clone()).unwrap_err();
    assert!(e.to_string().contains("agent[0].symbols") && e.to_string().contains("DOGEUSDT"), "{e}");
    let rt = AgentsRuntime::new(AgentsConfig::default(), btc(), clock).unwrap();
    assert_eq!(rt.notes().len(), 3, "{:?}", rt.notes());
    assert!(rt.notes().iter().any(|n| n.contains("fast_trader") && n.contains("no LLM provider")));
    assert_eq!(rt.metrics().agents.len(), 8, "seven agents and the arbitrator");
}

fn llm_config(base: &str, agents: Vec<AgentConfig>, transcript: std::path::PathBuf) -> AgentsConfig {
    AgentsConfig {
        agent: agents,
        providers: vec![ProviderConfig {
            base_url: format!("{base}/v1"),
            input_usd_per_million: "1".into(),
            output_usd_per_million: "1".into(),
            ..ProviderConfig::named("local", ProviderKind::OpenaiCompatible)
        }],
        default_provider: "local".into(),
        transcript_path: Some(transcript),
        arbitrator: ArbitratorConfig { enabled: false, ..ArbitratorConfig::default() },
        ..AgentsConfig::default()
    }
}

#[tokio::test]
async fn llm_agents_trade_answers_set_weights_and_record_everything() {
    let (base, mock) = mock::start().await;
    mock.by_schema.lock().unwrap().insert(
        "trade_signal".into(),
        Reply::Content(r#"{"strength_bps":-2500,"confidence_bps":6000,"ttl_seconds":30,"reasoning":"fading the bid"}"#.into(), 100, 20),
    );
    mock.by_schema.lock().unwrap().insert(
        "news_sentiment".into(),
        Reply::Content(
            r#"{"items":[{"symbol":"BTCUSDT","sentiment_bps":4000,"confidence_bps":5000,"reason":"ETF inflows"}]}"#.into(),
            50,
            10,
        ),
    );
    mock.by_schema.lock().unwrap().insert(
        "market_regime".into(),
        Reply::Content(
            r#"{"regime":"trending","weights":{"momentum_bps":15000,"mean_reversion_bps":4000,"imbalance_bps":10000,"breakout_bps":12000},"reason":"steady climb"}"#.into(),
            80,
            15,
        ),
    );
    let dir = temp_dir("llm");
    std::fs::write(dir.join("news.json"), r#"[{"title":"Spot BTC ETF sees record inflows"},{"title":"Exchange outage resolved"}]"#)
        .unwrap();
    let mut trader = AgentConfig::new(8, AgentKind::FastTrader);
    trader.cadence_ms = 40;
    trader.ttl_ms = 10_000;
    let mut sentiment = AgentConfig::new(6, AgentKind::Sentiment);
    sentiment.cadence_ms = 40;
    sentiment.news.file = Some(dir.join("news.json"));
    let mut strategy = AgentConfig::new(7, AgentKind::Strategy);
    strategy.cadence_ms = 40;
    let momentum = AgentConfig::new(2, AgentKind::Momentum);
    let transcript = dir.join("transcript.jsonl");
    let config = llm_config(&base, vec![trader, sentiment, strategy, momentum], transcript.clone());
    let rt = AgentsRuntime::new(config, btc(), sapphire_agents::context::wall_clock()).unwrap();
    assert!(rt.notes().is_empty(), "{:?}", rt.notes());
    let metrics = rt.metrics();
    // A flat market: the prompts repeat, so the cache answers after the first call.
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: 0, losing_agent: None });
    let sink = Collect::default();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(sink.clone()), stop));
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap();

    let t = sink.of(8);
    assert!(!t.is_empty());
    assert_eq!((t[0].strength_bps, t[0].confidence_bps, t[0].ttl_ns), (-2_500, 6_000, 10_000_000_000), "ttl capped by the agent's");
    let s = sink.of(6);
    assert!(!s.is_empty());
    assert_eq!((s[0].strength_bps, s[0].confidence_bps, s[0].instrument), (4_000, 5_000, InstrumentId(0)));
    assert!(sink.of(7).is_empty(), "the strategy agent sets weights, it does not trade");
    let weight = |id| metrics.agent(AgentId(id)).unwrap().weight_bps.load(Relaxed);
    assert_eq!(weight(2), 15_000);

    let trader = metrics.agent(AgentId(8)).unwrap();
    assert!(trader.cache_hits.load(Relaxed) >= 1);
    let trade_calls =
        mock.chats.lock().unwrap().iter().filter(|c| c.body["response_format"]["json_schema"]["name"] == "trade_signal").count();
    assert_eq!(trade_calls as u64, trader.llm_calls.load(Relaxed));
    assert_eq!(trade_calls, 1, "the same summary is answered from the cache");
    assert_eq!(trader.prompt_tokens.load(Relaxed), 100);
    assert_eq!(trader.cost_raw.load(Relaxed), 120_000, "120 tokens at $1 per million");

    let text = std::fs::read_to_string(&transcript).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let call = lines.iter().find(|l| l["record"] == "llm_call" && l["agent"] == 8 && l["cached"] == false).unwrap();
    assert!(call["prompt"][1]["content"].as_str().unwrap().contains("symbol=BTCUSDT mid=10000"), "{call}");
    assert_eq!(Money::parse(call["cost_usd"].as_str().unwrap()).unwrap().raw, 120_000);
    let signal = lines.iter().find(|l| l["record"] == "signal" && l["agent"] == 8).unwrap();
    assert_eq!(signal["detail"], "fading the bid");
    assert_eq!(signal["signal"]["strength_bps"], -2500);
    assert!(lines.iter().any(|l| l["record"] == "weights" && l["detail"].as_str().unwrap().contains("Trending")));
    let sent = lines.iter().find(|l| l["record"] == "llm_call" && l["agent"] == 6).unwrap();
    assert!(sent["prompt"][1]["content"].as_str().unwrap().contains("- Spot BTC ETF sees record inflows"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sentiment_about_an_unknown_symbol_is_refused() {
    let (base, mock) = mock::start().await;
    mock.by_schema.lock().unwrap().insert(
        "news_sentiment".into(),
        Reply::Content(r#"{"items":[{"symbol":"DOGEUSDT","sentiment_bps":9000,"confidence_bps":9000,"reason":"hype"}]}"#.into(), 1, 1),
    );
    let dir = temp_dir("unknown");
    std::fs::write(dir.join("news.jsonl"), "{\"title\":\"Doge to the moon\"}\n").unwrap();
    let mut sentiment = AgentConfig::new(6, AgentKind::Sentiment);
    sentiment.cadence_ms = 30;
    sentiment.news.file = Some(dir.join("news.jsonl"));
    let rt =
        AgentsRuntime::new(llm_config(&base, vec![sentiment], dir.join("t.jsonl")), btc(), sapphire_agents::context::wall_clock()).unwrap();
    let metrics = rt.metrics();
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: 0, losing_agent: None });
    let sink = Collect::default();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(sink.clone()), stop));
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap();
    assert!(sink.0.lock().unwrap().is_empty(), "never traded");
    assert!(metrics.agent(AgentId(6)).unwrap().refused(Refusal::OutOfRange) >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_large_conflict_is_escalated_to_the_llm_and_its_verdict_recorded() {
    let (base, mock) = mock::start().await;
    mock.by_schema.lock().unwrap().insert(
        "arbitration_verdict".into(),
        Reply::Content(r#"{"strength_bps":1234,"confidence_bps":4000,"explanation":"trend beats the stretch"}"#.into(), 10, 5),
    );
    let dir = temp_dir("arb");
    let mut momentum = AgentConfig::new(2, AgentKind::Momentum);
    momentum.cadence_ms = 20;
    momentum.momentum.lookback = 3;
    momentum.momentum.threshold_bps = 0.01;
    momentum.momentum.full_scale_bps = 0.1;
    let mut reversion = AgentConfig::new(3, AgentKind::MeanReversion);
    reversion.cadence_ms = 20;
    reversion.mean_reversion.lookback = 5;
    reversion.mean_reversion.entry_z = 0.5;
    reversion.mean_reversion.full_z = 1.0;
    let mut config = llm_config(&base, vec![momentum, reversion], dir.join("t.jsonl"));
    config.arbitrator = ArbitratorConfig { cadence_ms: 20, conflict_bps: 2_000, llm_conflict_bps: 5_000, ..ArbitratorConfig::default() };
    let rt = AgentsRuntime::new(config, btc(), sapphire_agents::context::wall_clock()).unwrap();
    let metrics = rt.metrics();
    // 100 a second: about 0.2 bps per 20 ms step.
    let ctx = Arc::new(Trend { start: tokio::time::Instant::now(), slope_per_sec: 100 * PRICE_SCALE, losing_agent: None });
    let sink = Collect::default();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(rt.run(ctx, Box::new(sink.clone()), stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    run.await.unwrap();

    assert!(sink.of(2).iter().any(|s| s.strength_bps == 10_000), "momentum long");
    assert!(sink.of(3).iter().any(|s| s.strength_bps <= -5_000), "mean reversion short");
    let verdicts = sink.of(9);
    assert!(!verdicts.is_empty());
    // (Any verdict of a smaller conflict would be the weighted one; a loaded machine's
    // irregular samples can make one, so only the LLM's presence is required.)
    assert!(verdicts.iter().any(|s| (s.strength_bps, s.confidence_bps) == (1_234, 4_000)), "{verdicts:?}");
    assert!(metrics.agent(AgentId(9)).unwrap().llm_calls.load(Relaxed) >= 1);
    let text = std::fs::read_to_string(dir.join("t.jsonl")).unwrap();
    let rec: serde_json::Value =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|l| l["record"] == "arbitration").unwrap();
    let detail = rec["detail"].as_str().unwrap();
    assert!(detail.starts_with("llm: trend beats the stretch") && detail.contains("agent 2 +10000"), "{detail}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A market whose mid rises 1.0 a second of event time, the time a rehearsal sets.
struct EventTrend(Arc<std::sync::atomic::AtomicU64>);

const REHEARSAL_START: u64 = 1_000_000_000_000;

impl ContextSource for EventTrend {
    fn top(&self, _: InstrumentId) -> Option<Top> {
        let secs_ms = (self.0.load(Relaxed) - REHEARSAL_START) as i64 / 1_000_000;
        let mid = 10_000 * PRICE_SCALE + PRICE_SCALE * secs_ms / 1_000;
        Some(Top {
            bid: Price::from_raw(mid - PRICE_SCALE / 100),
            ask: Price::from_raw(mid + PRICE_SCALE / 100),
            bid_qty: Quantity::from_units(3),
            ask_qty: Quantity::from_units(1),
            ts_event: 0,
            in_sync: true,
        })
    }

    fn agent_state(&self, _: AgentId, _: InstrumentId) -> AgentState {
        AgentState::default()
    }
}

fn rehearse(seconds: u64) -> (Vec<Signal>, Arc<sapphire_agents::AgentsMetrics>) {
    let config = AgentsConfig {
        agent: roster(&[
            (2, AgentKind::Momentum),
            (3, AgentKind::MeanReversion),
            (4, AgentKind::Imbalance),
            (5, AgentKind::Breakout),
            (8, AgentKind::FastTrader),
        ]),
        ..AgentsConfig::default()
    };
    let now = Arc::new(std::sync::atomic::AtomicU64::new(REHEARSAL_START));
    let clock_now = now.clone();
    let rt = AgentsRuntime::new(config, btc(), Arc::new(move || clock_now.load(Relaxed))).unwrap();
    let sink = Collect::default();
    let ctx = Arc::new(EventTrend(now.clone()));
    let metrics = rt.rehearse(ctx, Box::new(sink.clone()), REHEARSAL_START, seconds * 1_000_000_000, &mut |t| now.store(t, Relaxed));
    let signals = sink.0.lock().unwrap().clone();
    (signals, metrics)
}

#[test]
fn a_rehearsal_runs_the_rule_agents_on_event_time_and_repeats_exactly() {
    let (signals, metrics) = rehearse(10);
    let of = |agent: u16| signals.iter().filter(|s| s.agent == AgentId(agent)).copied().collect::<Vec<_>>();
    let momentum = of(2);
    // Samples every 200 ms from the start: the 21st (4 s) completes the 20-step lookback.
    assert_eq!(momentum[0].ts_event, REHEARSAL_START + 4_000_000_000);
    // 20 steps of 0.2 on 10_000: 4 bps, a fifth of the 20 bps full scale.
    assert_eq!(momentum[0].strength_bps, 2_000);
    assert!(momentum.iter().all(|s| s.strength_bps > 0));
    assert!(of(3).iter().all(|s| s.strength_bps < 0) && !of(3).is_empty(), "mean reversion fades the rise");
    assert_eq!(of(4)[0].strength_bps, 8_333, "bids 3 against asks 1");
    // A steady rise has no volatility burst: breakout speaks, flat, and says why.
    let breakout = metrics.agent(AgentId(5)).unwrap();
    assert!(!of(5).is_empty() && of(5).iter().all(|s| s.strength_bps == 0));
    assert_eq!(breakout.directional.load(Relaxed), 0);
    assert_eq!(breakout.reasons().last, Some(("breakout: volatility within its range", InstrumentId(0))));
    assert_eq!(breakout.reasons().last_trigger, None);
    assert!(of(8).is_empty(), "an LLM agent is never rehearsed");
    assert_eq!(metrics.agent(AgentId(2)).unwrap().directional.load(Relaxed) as usize, momentum.len());
    // Event time only: a second rehearsal is the same, signal for signal.
    assert_eq!(rehearse(10).0, signals);
}
