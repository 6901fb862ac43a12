//! The API over real loopback TCP, spoken as raw HTTP/1.1 bytes.

use super::*;
use sapphire_core::engine::{EngineOutput, Output};
use sapphire_core::event::{AgentId, ControlKind, LimitKind, RejectReason};
use sapphire_core::fixed::Money;
use sapphire_core::latency::StageLatency;
use sapphire_core::pipeline::PipelineStats;
use sapphire_core::portfolio::PnlSummary;
use sapphire_core::ring::{ring, Consumer, Poll};
use sapphire_core::risk::{AlertKind, RiskAlert, RiskOutput, RiskRefusal, ALL_AGENTS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-token";

struct Harness {
    server: Option<ApiServer>,
    state: Arc<EdgeState>,
    /// Reads the inbound ring, like the engine would.
    engine: Consumer<Event>,
}

impl Harness {
    fn start(token: Option<&str>) -> Self {
        let (producer, mut consumers) = ring::<Event>(1_024, 1);
        let (mut rec, reader) = StageLatency::new("risk", 1);
        rec.record(120);
        rec.publish();
        let state = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), vec![reader], vec!["BTCUSDT".into(), "ETHUSDT".into()], 1));
        state.set_core_running(true);
        let config = ApiConfig { bind: "127.0.0.1:0".parse().unwrap(), token: token.and_then(ApiToken::new), core: None };
        let server = ApiServer::start(config, Arc::clone(&state), producer).expect("the API starts");
        Self { server: Some(server), state, engine: consumers.pop().unwrap() }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        send(self.addr(), &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")).await
    }

    async fn post(&self, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
        let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        send(self.addr(), &req).await
    }

    /// Control events the engine side has received.
    fn controls(&mut self) -> Vec<sapphire_core::event::Control> {
        let mut seen = Vec::new();
        while let Poll::Handled(_) = self.engine.poll(64, |e, _, _| {
            if let Event::Control(c) = e {
                seen.push(*c);
            }
        }) {}
        seen
    }
}

/// One request on a fresh connection; the status code and the body.
async fn send(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request.as_bytes()).await.expect("writes");
    read_response(&mut stream).await
}

async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("responds in time");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn summary(equity: i64, capital: i64, exposure: i64) -> PnlSummary {
    PnlSummary {
        capital: Money::from_units(capital),
        equity: Money::from_units(equity),
        gross_exposure: Money::from_units(exposure),
        fees: Money::from_units(1),
        ..PnlSummary::default()
    }
}

fn out(output: EngineOutput) -> Output {
    Output { seq: 1, output }
}

#[tokio::test]
async fn healthz_is_ok_while_serving() {
    let h = Harness::start(None);
    assert_eq!(h.get("/healthz").await, (200, "ok\n".to_string()));
}

#[tokio::test]
async fn readyz_names_each_check_and_flips_with_book_sync() {
    let h = Harness::start(None);
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["ready"], true);
    let names: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["core", "books", "journal"]);

    h.state.set_book_in_sync(1, false);
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v = json(&body);
    assert_eq!(v["failing"], serde_json::json!(["books"]));
    assert!(v["checks"][1]["detail"].as_str().unwrap().contains("ETHUSDT"), "{body}");

    h.state.set_book_in_sync(1, true);
    assert_eq!(h.get("/readyz").await.0, 200);
    h.state.set_core_running(false);
    let (status, body) = h.get("/readyz").await;
    assert_eq!((status, json(&body)["failing"].clone()), (503, serde_json::json!(["core"])));
}

#[tokio::test]
async fn metrics_use_the_old_platform_names() {
    let h = Harness::start(None);
    h.state.apply(&out(EngineOutput::AgentPnl { ts_event: 5, agent: AgentId(0), summary: summary(1_010, 1_000, 250) }));
    h.state.apply(&out(EngineOutput::Pnl { ts_event: 5, total: summary(2_000, 2_000, 250) }));
    h.state.apply(&out(EngineOutput::Pnl { ts_event: 6, total: summary(1_900, 2_000, 250) }));
    let refusal = RiskRefusal { reason: RejectReason::PriceBand, ..RiskRefusal::default() };
    h.state.apply(&out(EngineOutput::Risk(RiskOutput::Refusal(refusal))));
    h.state.pipeline().processed.store(42, std::sync::atomic::Ordering::Relaxed);

    let (status, body) = h.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "agent_margin_remaining_usd{agent_id=\"0\"} 750",
        "agent_margin_utilization_ratio{agent_id=\"0\"} 0.25",
        "risk_limits_breached_total{limit_type=\"price_band\"} 1",
        "risk_limits_breached_total{limit_type=\"kill_switch\"} 0",
        "portfolio_drawdown_pct 5",
        "sapphire_events_total 42",
        "sapphire_orders_total{action=\"new\"} 0",
        "sapphire_fills_total 0",
        "sapphire_ring_backlog 0",
        "sapphire_stage_latency_ns{stage=\"risk\",quantile=\"0.99\"} 120",
        "sapphire_journal_appended_total 0",
        "sapphire_outputs_dropped_total 0",
        "# TYPE risk_limits_breached_total counter",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }
}

#[tokio::test]
async fn dashboard_is_a_json_snapshot() {
    let h = Harness::start(None);
    h.state.apply(&out(EngineOutput::Pnl { ts_event: 7, total: summary(2_005, 2_000, 100) }));
    h.state.apply(&out(EngineOutput::AgentPnl { ts_event: 7, agent: AgentId(1), summary: summary(1_005, 1_000, 100) }));
    h.state.apply(&out(EngineOutput::Risk(RiskOutput::Alert(RiskAlert {
        kind: AlertKind::Killed,
        agent: ALL_AGENTS,
        ..RiskAlert::default()
    }))));
    h.state.apply(&out(EngineOutput::Order(sapphire_core::order::Order::default())));
    let (status, body) = h.get("/dashboard").await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["equity"], "2005.00");
    assert_eq!(v["pnl"], "5.00");
    assert_eq!(v["fees"], "1.00");
    assert_eq!(v["risk"]["killed"], true);
    assert_eq!(v["risk"]["trading"], false);
    assert_eq!(v["risk"]["halt_reason"], "kill switch");
    assert_eq!(v["orders"]["open"], 1);
    let agent = &v["agents"][0];
    assert_eq!((agent["agent_id"].as_u64(), agent["name"].as_str()), (Some(1), Some("imbalance")));
    assert_eq!((agent["margin_remaining"].as_str(), agent["margin_utilization"].as_f64()), (Some("900.00"), Some(0.1)));
}

#[tokio::test]
async fn control_needs_the_token_and_reaches_the_ring() {
    let mut h = Harness::start(Some(TOKEN));
    let (status, body) = h.post("/api/kill", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = h.post("/api/kill", Some("wrong-token"), "").await;
    assert_eq!(status, 403, "{body}");
    assert!(h.controls().is_empty(), "refused requests publish nothing");

    for (path, kind) in [("/api/kill", ControlKind::Kill), ("/api/halt", ControlKind::Halt), ("/api/resume", ControlKind::Resume)] {
        let (status, body) = h.post(path, Some(TOKEN), "").await;
        assert_eq!(status, 200, "{path}: {body}");
        let seen = h.controls();
        assert_eq!(seen.len(), 1, "{path}");
        assert_eq!((seen[0].kind, seen[0].agent), (kind, ALL_AGENTS));
        assert!(seen[0].ts_event > 1_600_000_000_000_000_000, "stamped with the wall clock");
    }
    let (status, _) = h.post("/api/agents/3/pause", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    let (status, _) = h.post("/api/agents/3/resume", Some(TOKEN), "").await;
    assert_eq!(status, 200);
    let seen: Vec<_> = h.controls().iter().map(|c| (c.kind, c.agent)).collect();
    assert_eq!(seen, [(ControlKind::PauseAgent, AgentId(3)), (ControlKind::ResumeAgent, AgentId(3))]);

    let (status, body) = h.post("/api/limits", Some(TOKEN), r#"{"limit":"max_order_usd","value":"250.5"}"#).await;
    assert_eq!(status, 200, "{body}");
    let c = h.controls()[0];
    assert_eq!((c.kind, c.limit, c.value), (ControlKind::SetLimit, LimitKind::MaxOrderNotional, Money::parse("250.5").unwrap().raw));
}

#[tokio::test]
async fn control_is_disabled_without_a_configured_token() {
    let mut h = Harness::start(None);
    let (status, body) = h.post("/api/kill", Some(TOKEN), "").await;
    assert_eq!(status, 403);
    assert!(body.contains("control is disabled"), "{body}");
    assert!(h.controls().is_empty());
}

#[tokio::test]
async fn invalid_input_gets_400_with_a_message() {
    let mut h = Harness::start(Some(TOKEN));
    for (path, body, needle) in [
        ("/api/agents/99/pause", "", "agent id \"99\""),
        ("/api/agents/momentum/pause", "", "agent id \"momentum\""),
        ("/api/limits", "{not json", "invalid JSON"),
        ("/api/limits", r#"{"limit":"leverage","value":3}"#, "unknown limit"),
        ("/api/limits", r#"{"limit":"max_order_usd","value":"-5"}"#, "max_order_usd"),
        ("/api/limits", r#"{"limit":"price_band_bps","value":1,"extra":true}"#, "extra"),
    ] {
        let (status, resp) = h.post(path, Some(TOKEN), body).await;
        assert_eq!(status, 400, "{path} {body}: {resp}");
        assert!(json(&resp)["error"].as_str().unwrap().contains(needle), "{path} {body}: {resp}");
    }
    assert!(h.controls().is_empty());
}

#[tokio::test]
async fn hostile_requests_get_4xx_not_a_panic() {
    let h = Harness::start(Some(TOKEN));
    let (status, body) = h.get("/nowhere").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(h.get("/api/kill").await.0, 405, "GET on a POST route");

    // A body far over the limit: announced, then partly sent.
    let mut stream = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let head = format!(
        "POST /api/limits HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        64 * BODY_LIMIT
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&vec![b'x'; 2 * BODY_LIMIT]).await;
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 413, "{body}");

    // Garbage instead of HTTP: the connection is refused with a 400 or closed, never a crash.
    let mut stream = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    stream.write_all(b"\x16\x03\x01 garbage\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("closed in time");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    assert_eq!(h.get("/healthz").await.0, 200, "still serving");
}

#[test]
fn the_token_never_shows_in_debug() {
    let config = ApiConfig { bind: "127.0.0.1:1".parse().unwrap(), token: ApiToken::new(TOKEN), core: None };
    let shown = format!("{config:?}");
    assert!(!shown.contains(TOKEN) && shown.contains("redacted"), "{shown}");
    let t = ApiToken::new(TOKEN).unwrap();
    assert!(t.matches(TOKEN) && !t.matches("s3cret-tokem") && !t.matches("s3cret") && !t.matches(""));
    assert!(ApiToken::new("  ").is_none());
}

#[test]
fn a_taken_address_is_an_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (producer, _consumers) = ring::<Event>(1_024, 1);
    let state = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), Vec::new(), 1));
    let err = ApiServer::start(ApiConfig { bind: addr, token: None, core: None }, state, producer).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let mut h = Harness::start(None);
    let addr = h.addr();
    let server = h.server.take().unwrap();
    tokio::task::spawn_blocking(move || server.shutdown()).await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "nothing listens after shutdown");
}
