//! Operator orders: `POST /api/orders` (a manual order through the same risk checks as any
//! signal) and `POST /api/flatten` (close positions), each one [`Control`] event in the
//! inbound ring, so the journal holds the command and a replay reproduces what it did.
//!
//! The answer to a manual order is its outcome, not just "queued": the handler publishes the
//! command, then watches the engine's outputs for its inbound sequence (the engine stamps it on
//! every output the command caused; the order's intent id carries it too) for at most
//! [`OUTCOME_WAIT`]:
//!
//! | status | body `status` | when |
//! |---|---|---|
//! | 200 | `filled`, `partially_filled`, `canceled` (nothing filled: the IOC's rest is cancelled), `open` | risk approved it; the order and what the venue has said so far |
//! | 422 | `refused` | a risk limit refused it: `reason` names the limit (`risk_limits_breached_total{limit_type}`'s label) |
//! | 422 | `rejected` | the venue (or the paper venue) rejected it: `reason` names why |
//! | 202 | `pending` | no outcome within the wait (the engine is behind): look the `seq` up in `GET /api/orders` or `GET /api/risk` |
//!
//! Outcomes are known only where the API publishes into the engine's own ring (`sapphire run`);
//! a gateway that forwards control to cores elsewhere refuses manual orders and one-symbol
//! flattens (501): instrument ids there are the gateway's, not a core's.

use super::control::json_object;
use super::routes::{error, Ctx};
use super::state::{OrderRecord, RiskRecord};
use super::ApiContext;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::event::{AgentId, Control, ControlKind, Event, ExecKind, LimitKind};
use sapphire_core::fixed::{Price, Quantity};
use sapphire_core::instrument::InstrumentId;
use sapphire_core::latency::unix_nanos;
use sapphire_core::order::OrderAction;
use sapphire_core::risk::{AlertKind, RiskOutput, ALL_AGENTS, ALL_INSTRUMENTS};
use serde_json::{json, Value};
use std::time::Duration;

/// A request body as the handlers take it (a rejection, e.g. over the size limit, is
/// answered as JSON).
pub(super) type Body = Result<Bytes, BytesRejection>;

/// Longest a manual order's answer waits for the engine's outcome (an IOC ends within a few
/// events; the request timeout is longer).
pub const OUTCOME_WAIT: Duration = Duration::from_secs(2);
/// How often the outcome is looked for while waiting.
const POLL_EVERY: Duration = Duration::from_millis(2);
/// Newest records searched for a sequence.
const SCAN: usize = 512;

/// Body of `POST /api/orders`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ManualOrder {
    /// A traded symbol, e.g. `BTCUSDT`.
    symbol: String,
    /// `buy` or `sell`.
    #[schema(pattern = "^(buy|sell)$")]
    side: String,
    /// Quantity in base units, a decimal string or number; whole lots.
    #[schema(value_type = super::openapi::Decimal)]
    qty: Value,
    /// Limit price; absent: at the touch (the best ask for a buy, bid for a sell). Either way
    /// the order is immediate-or-cancel.
    #[schema(value_type = Option<super::openapi::Decimal>)]
    price: Option<Value>,
    /// The agent the order (and its position) is attributed to.
    #[schema(minimum = 0, maximum = 15)]
    agent: u16,
}

/// Body of `POST /api/flatten` (every field optional; none: everything).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FlattenScope {
    /// Only this agent's positions.
    #[schema(minimum = 0, maximum = 15)]
    agent: Option<u16>,
    /// Only this symbol's positions.
    symbol: Option<String>,
}

/// Body of `POST /api/kill` (optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct KillBody {
    /// Also flatten every position.
    flatten: Option<bool>,
}

/// `flatten=` in a query string: `Ok(None)` when absent.
fn flatten_query(uri: &Uri) -> Result<Option<bool>, String> {
    let Some(query) = uri.query() else { return Ok(None) };
    let mut flatten = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        match (key, value) {
            ("flatten", "true" | "1") => flatten = Some(true),
            ("flatten", "false" | "0") => flatten = Some(false),
            ("flatten", other) => return Err(format!("flatten={other:?} is not true or false")),
            (other, _) => return Err(format!("unknown query parameter {other:?} (only flatten=true|false)")),
        }
    }
    Ok(flatten)
}

fn decimal(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn agent_id(raw: u16) -> Result<AgentId, String> {
    if usize::from(raw) < MAX_AGENTS {
        Ok(AgentId(raw))
    } else {
        Err(format!("agent {raw} is not an agent id from 0 to {}", MAX_AGENTS - 1))
    }
}

fn instrument(ctx: &ApiContext, symbol: &str) -> Result<InstrumentId, String> {
    let symbols = ctx.state.symbols();
    symbols.iter().position(|s| s.eq_ignore_ascii_case(symbol.trim())).map(|i| InstrumentId(i as u32)).ok_or_else(|| {
        let shown: Vec<&str> = symbols.iter().take(20).map(String::as_str).collect();
        let more = if symbols.len() > shown.len() { format!(" and {} more", symbols.len() - shown.len()) } else { String::new() };
        format!("unknown symbol {symbol:?}: this process trades {}{more}", shown.join(", "))
    })
}

/// The request body, or the JSON error to answer (axum's own rejection is plain text).
fn body_bytes(body: Body) -> Result<Bytes, Box<Response>> {
    body.map_err(|e| Box::new(error(e.status(), e.body_text())))
}

/// Publishes one command; its inbound sequence, or the error to answer.
fn publish(ctx: &ApiContext, control: Control) -> Result<i64, Box<Response>> {
    let Ok(mut inbound) = ctx.inbound.lock() else {
        return Err(Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, "the inbound ring's producer is unavailable")));
    };
    inbound
        .try_publish(Event::Control(control))
        .map_err(|_| Box::new(error(StatusCode::SERVICE_UNAVAILABLE, "the inbound ring is full (the engine is behind); retry")))
}

fn command(kind: ControlKind, agent: AgentId, instrument: InstrumentId, value: i64, price: Price) -> Control {
    let now = unix_nanos();
    Control { ts_event: now, ts_recv: now, kind, limit: LimitKind::None, agent, instrument, value, price }
}

fn not_here(what: &str) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} needs the engine in this process (sapphire run); in a sharded deployment send it to the core's own API"),
    )
}

/// `POST /api/orders`: one manual order, checked by risk like any signal's; answers with
/// the outcome (see the module docs).
#[utoipa::path(post, path = "/api/orders", tag = "control", security(("bearer" = [])),
    request_body(content = ManualOrder, content_type = "application/json"),
    responses(
        (status = 200, description = "Risk approved it: `status` is filled, partially_filled, canceled or open, with the order", body = Object),
        (status = 202, description = "No outcome within 2 s (`status` pending): look `seq` up in /api/orders or /api/risk", body = Object),
        (status = 400, description = "Not an order: an unknown symbol, a bad side, quantity, price or agent", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = super::openapi::ErrorBody),
        (status = 422, description = "Refused by a risk limit or rejected by the venue (`status`, `reason`)", body = Object),
        (status = 501, description = "The engine is not in this process (a forwarding gateway)", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn manual_order(State(ctx): Ctx, headers: HeaderMap, body: Body) -> Response {
    if let Some(r) = super::control::bearer_refusal(&ctx, &headers) {
        return r;
    }
    if !ctx.state.engine_in_process() {
        return not_here("a manual order");
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let order: ManualOrder = match json_object(&body) {
        Ok(o) => o,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {e} (expected {{\"symbol\", \"side\", \"qty\", \"agent\"}} and optionally \"price\")"),
            )
        }
    };
    let parsed = (|| -> Result<Control, String> {
        let inst = instrument(&ctx, &order.symbol)?;
        let agent = agent_id(order.agent)?;
        let sign = match order.side.to_ascii_lowercase().as_str() {
            "buy" => 1,
            "sell" => -1,
            other => return Err(format!("side {other:?} is not \"buy\" or \"sell\"")),
        };
        let qty = decimal(&order.qty)
            .and_then(|q| Quantity::parse(&q).ok())
            .filter(|q| q.raw > 0)
            .ok_or_else(|| format!("qty {} is not a positive decimal quantity", order.qty))?;
        let price = match &order.price {
            None | Some(Value::Null) => Price::ZERO,
            Some(p) => decimal(p)
                .and_then(|p| Price::parse(&p).ok())
                .filter(|p| p.raw > 0)
                .ok_or_else(|| format!("price {p} is not a positive decimal price"))?,
        };
        Ok(command(ControlKind::ManualOrder, agent, inst, qty.raw * sign, price))
    })();
    let control = match parsed {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let seq = match publish(&ctx, control) {
        Ok(seq) => seq,
        Err(r) => return *r,
    };
    outcome(&ctx, seq, &order.symbol.to_ascii_uppercase()).await
}

/// What the engine did with the manual order at `seq`, once it is known or the wait is over.
async fn outcome(ctx: &ApiContext, seq: i64, symbol: &str) -> Response {
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut order: Option<OrderRecord> = None;
    loop {
        if order.is_none() {
            if let Some(refusal) = find_risk(ctx, seq) {
                let reason = refusal.reason.label();
                let body = json!({
                    "status": "refused",
                    "seq": seq,
                    "reason": reason,
                    "error": format!("refused by the risk check: {reason}"),
                    "symbol": symbol,
                    "side": side(refusal.side),
                    "qty": refusal.qty.to_string(),
                    "price": refusal.price.to_string(),
                    "agent": refusal.agent.0,
                });
                return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
            }
        }
        order = find_order(ctx, seq).or(order);
        let ended = order.is_some_and(|o| matches!(o.status, Some(ExecKind::Fill | ExecKind::Canceled | ExecKind::Rejected)));
        if ended || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let Some(rec) = order else {
        let body = json!({
            "status": "pending",
            "seq": seq,
            "error": format!("no outcome within {} s (the engine is behind); look seq {seq} up in GET /api/orders or GET /api/risk", OUTCOME_WAIT.as_secs()),
        });
        return (StatusCode::ACCEPTED, Json(body)).into_response();
    };
    let o = rec.order;
    let status = match rec.status {
        None | Some(ExecKind::Ack) => "open",
        Some(ExecKind::PartialFill) => "partially_filled",
        Some(ExecKind::Fill) => "filled",
        Some(ExecKind::Canceled) if rec.filled.raw > 0 => "partially_filled",
        Some(ExecKind::Canceled) => "canceled",
        Some(ExecKind::Rejected) => "rejected",
    };
    let mut body = json!({
        "status": status,
        "seq": seq,
        "client_order_id": o.client_order_id.to_string(),
        "symbol": symbol,
        "side": side(o.side),
        "qty": o.qty.to_string(),
        "price": o.price.to_string(),
        "filled": rec.filled.to_string(),
        "reduce_only": o.reduce_only,
        "agent": o.agent.0,
    });
    if status == "rejected" {
        body["reason"] = json!(rec.reason.label());
        body["error"] = json!(format!("rejected by the venue: {}", rec.reason.label()));
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    (StatusCode::OK, Json(body)).into_response()
}

fn side(s: sapphire_core::event::Side) -> &'static str {
    match s {
        sapphire_core::event::Side::Buy => "buy",
        sapphire_core::event::Side::Sell => "sell",
    }
}

/// The new order the command at `seq` made, if the edge has seen it.
fn find_order(ctx: &ApiContext, seq: i64) -> Option<OrderRecord> {
    let mut found = None;
    ctx.state.orders_history().update_recent(SCAN, |rec| {
        let hit = rec.seq == seq && rec.order.action == OrderAction::New;
        if hit {
            found = Some(*rec);
        }
        hit
    });
    found
}

/// The refusal the command at `seq` got, if any.
fn find_risk(ctx: &ApiContext, seq: i64) -> Option<sapphire_core::risk::RiskRefusal> {
    let mut found = None;
    ctx.state.risk_history().update_recent(SCAN, |rec: &mut RiskRecord| match rec.risk {
        RiskOutput::Refusal(r) if rec.seq == seq => {
            found = Some(r);
            true
        }
        _ => false,
    });
    found
}

/// What the flatten at `seq` did at once: its first alert (a pass began, or already flat)
/// and the orders it sent, when the engine is in this process.
async fn flatten_started(ctx: &ApiContext, seq: i64) -> Value {
    if !ctx.state.engine_in_process() {
        return json!({});
    }
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    loop {
        let mut alert = None;
        ctx.state.risk_history().update_recent(SCAN, |rec: &mut RiskRecord| match rec.risk {
            RiskOutput::Alert(a) if rec.seq == seq && matches!(a.kind, AlertKind::Flattening | AlertKind::Flattened) => {
                alert = Some(a);
                true
            }
            _ => false,
        });
        if let Some(a) = alert {
            let mut orders = 0;
            ctx.state.orders_history().update_recent(SCAN, |rec| {
                if rec.seq == seq && rec.order.action == OrderAction::New {
                    orders += 1;
                }
                false
            });
            return match a.kind {
                AlertKind::Flattened => json!({ "status": "flat", "open_positions": a.value }),
                _ => json!({ "status": "flattening", "pass": a.value, "orders": orders }),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return json!({ "status": "pending" });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn accepted(action: &str, seq: i64, mut extra: Value) -> Response {
    extra["accepted"] = json!(action);
    extra["seq"] = json!(seq);
    (StatusCode::OK, Json(extra)).into_response()
}

#[utoipa::path(post, path = "/api/flatten", tag = "control", security(("bearer" = [])),
    request_body(content = Option<FlattenScope>, content_type = "application/json", description = "Nothing (or `{}`): everything"),
    responses(
        (status = 200, description = "The flatten is in the inbound ring; what its first pass did", body = super::openapi::Accepted),
        (status = 400, description = "An unknown symbol or agent, or a body that is not a scope", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = super::openapi::ErrorBody),
        (status = 501, description = "A one-symbol flatten where the engine is not in this process", body = super::openapi::ErrorBody),
    ))]
/// `POST /api/flatten`: close positions — all, one agent's, one symbol's, or one agent's in
/// one symbol — with reduce-only IOC orders through the book, retried until flat (see
/// `[risk] flatten_attempts`). Progress: the `flattening` / `flattened` alerts in
/// `GET /api/risk`.
pub(super) async fn flatten(State(ctx): Ctx, headers: HeaderMap, body: Body) -> Response {
    if let Some(r) = super::control::bearer_refusal(&ctx, &headers) {
        return r;
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let scope: FlattenScope = if body.iter().all(u8::is_ascii_whitespace) {
        FlattenScope::default()
    } else {
        match json_object(&body) {
            Ok(s) => s,
            Err(e) => {
                return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e} (expected {{\"agent\"?, \"symbol\"?}} or nothing)"))
            }
        }
    };
    let agent = match scope.agent.map(agent_id).transpose() {
        Ok(a) => a.unwrap_or(ALL_AGENTS),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let inst = match &scope.symbol {
        None => ALL_INSTRUMENTS,
        Some(_) if !ctx.state.engine_in_process() => return not_here("a one-symbol flatten"),
        Some(s) => match instrument(&ctx, s) {
            Ok(i) => i,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    let seq = match publish(&ctx, command(ControlKind::Flatten, agent, inst, 0, Price::ZERO)) {
        Ok(seq) => seq,
        Err(r) => return *r,
    };
    let mut extra = flatten_started(&ctx, seq).await;
    extra["agent"] = scope.agent.map_or(json!("all"), |a| json!(a));
    extra["symbol"] = scope.symbol.map_or(json!("all"), |s| json!(s.to_ascii_uppercase()));
    accepted("flatten", seq, extra)
}

/// `POST /api/kill[?flatten=true]` (routed through `control::kill`): cancel everything and refuse every new order; with
/// `flatten=true` (or a body `{"flatten": true}`), also close every position.
pub(super) async fn kill(State(ctx): Ctx, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    if let Some(r) = super::control::bearer_refusal(&ctx, &headers) {
        return r;
    }
    let body = match body_bytes(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match json_object::<KillBody>(&body) {
            Ok(k) => k.flatten,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e} (expected {{\"flatten\": true}} or nothing)")),
        }
    };
    let flatten = match flatten_query(&uri) {
        Ok(q) => q.or(from_body).unwrap_or(false),
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let seq = match publish(&ctx, command(ControlKind::Kill, ALL_AGENTS, InstrumentId(0), i64::from(flatten), Price::ZERO)) {
        Ok(seq) => seq,
        Err(r) => return *r,
    };
    if flatten {
        let extra = flatten_started(&ctx, seq).await;
        return accepted("kill_flatten", seq, extra);
    }
    accepted("kill", seq, json!({}))
}

#[cfg(test)]
mod tests {
    //! The routes over real loopback TCP against a real engine (paper venue) fed by a market
    //! thread: what a trading desk sees.

    use super::super::{ApiConfig, ApiServer, ApiToken, EdgeState};
    use sapphire_core::engine::{Engine, EngineConfig, Output};
    use sapphire_core::event::{Event, Quote, Timer};
    use sapphire_core::fixed::{Money, Price, Quantity};
    use sapphire_core::instrument::{Instrument, InstrumentId, InstrumentRegistry, InstrumentSpec, MarketType};
    use sapphire_core::latency::unix_nanos;
    use sapphire_core::order::Order;
    use sapphire_core::pipeline::PipelineStats;
    use sapphire_core::ring::{ring, Poll};
    use serde_json::Value;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "desk-token";

    fn instruments() -> Vec<Instrument> {
        let mut reg = InstrumentRegistry::new();
        for symbol in ["BTCUSDT", "ETHUSDT"] {
            reg.intern(InstrumentSpec {
                venue: "paper",
                symbol,
                market: MarketType::Spot,
                tick_size: Price::parse("0.01").unwrap(),
                lot_size: Quantity::parse("0.001").unwrap(),
                min_notional: Money::from_units(5),
            })
            .unwrap();
        }
        reg.iter().cloned().collect()
    }

    /// The API, an engine thread taking its ring, and a market thread quoting BTC 100.00/100.02
    /// and ETH 10.00/10.02 with a timer every millisecond (event time is the wall clock, as
    /// the operator's commands are stamped with it).
    struct Desk {
        server: Option<ApiServer>,
        state: Arc<EdgeState>,
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Desk {
        fn start() -> Self {
            Self::start_with(true)
        }

        /// `in_process` false: the API as a gateway that forwards control to cores elsewhere.
        fn start_with(in_process: bool) -> Self {
            let instruments = instruments();
            let symbols: Vec<String> = instruments.iter().map(|i| i.symbol.clone()).collect();
            let (producer, mut consumers) = ring::<Event>(4_096, 1);
            let state = Arc::new(EdgeState::new(Arc::new(PipelineStats::default()), Vec::new(), symbols, 1));
            state.set_core_running(true);
            state.set_engine_in_process(in_process);
            let stop = Arc::new(AtomicBool::new(false));
            let mut engine = Engine::new(&EngineConfig { agents: 4, ..EngineConfig::default() }, &instruments);
            let mut consumer = consumers.pop().unwrap();
            let (edge, halt) = (Arc::clone(&state), Arc::clone(&stop));
            let engine_thread = std::thread::spawn(move || {
                let (mut outbound, mut outputs, mut events) = (Vec::<Order>::new(), Vec::<Output>::new(), Vec::new());
                while !halt.load(Ordering::Relaxed) {
                    events.clear();
                    if let Poll::Handled(_) = consumer.poll(256, |e, seq, _| events.push((seq, *e))) {
                        for (seq, e) in &events {
                            engine.process(*seq, e, &mut outbound, &mut outputs);
                        }
                        for out in outputs.drain(..) {
                            edge.apply(&out);
                        }
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            });
            let (mut market, halt) = (producer.clone(), Arc::clone(&stop));
            // Rounds of quotes published: an order sent after the first is behind it in the
            // ring, so the engine has a market for it (else a loaded machine could refuse the
            // test's first order as no_market).
            let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let published = Arc::clone(&rounds);
            let market_thread = std::thread::spawn(move || {
                let quote = |ts: u64, i: u32, bid: &str, ask: &str| {
                    Event::Quote(Quote {
                        ts_event: ts,
                        ts_recv: ts,
                        instrument: InstrumentId(i),
                        bid_price: Price::parse(bid).unwrap(),
                        ask_price: Price::parse(ask).unwrap(),
                        bid_qty: Quantity::from_units(50),
                        ask_qty: Quantity::from_units(50),
                        ..Quote::default()
                    })
                };
                while !halt.load(Ordering::Relaxed) {
                    let ts = unix_nanos();
                    for e in [
                        quote(ts, 0, "100", "100.02"),
                        quote(ts, 1, "10", "10.02"),
                        Event::Timer(Timer { ts_event: ts, ts_recv: ts, ..Timer::default() }),
                    ] {
                        let _ = market.try_publish(e);
                    }
                    published.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while rounds.load(Ordering::Relaxed) < 2 {
                assert!(Instant::now() < deadline, "the test market never published");
                std::thread::sleep(Duration::from_millis(1));
            }
            let config = ApiConfig { bind: "127.0.0.1:0".parse().unwrap(), token: Some(ApiToken::new(TOKEN).unwrap()), core: None };
            let server = ApiServer::start(config, Arc::clone(&state), producer).expect("the API starts");
            Self { server: Some(server), state, stop, threads: vec![engine_thread, market_thread] }
        }

        async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
            let addr = self.server.as_ref().unwrap().addr();
            let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("answers in time").unwrap();
            let text = String::from_utf8_lossy(&raw).to_string();
            let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}")))
        }

        async fn order(&self, body: &str) -> (u16, Value) {
            self.post("/api/orders", Some(TOKEN), body).await
        }

        /// The position of `agent` in `symbol` (0 BTC, 1 ETH) as the edge booked it from fills.
        fn position(&self, agent: u16, instrument: u32) -> Quantity {
            let p = self.state.positions().into_iter().find(|p| p.agent.0 == agent && p.instrument == InstrumentId(instrument));
            p.map_or(Quantity::ZERO, |p| p.position.qty)
        }

        /// Waits (bounded) until `agent`'s position in `instrument` is `want`.
        async fn position_becomes(&self, agent: u16, instrument: u32, want: Quantity) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.position(agent, instrument) != want {
                assert!(
                    Instant::now() < deadline,
                    "agent {agent} instrument {instrument}: {} never became {want}",
                    self.position(agent, instrument)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    impl Drop for Desk {
        fn drop(&mut self) {
            if let Some(s) = self.server.take() {
                s.shutdown();
            }
            self.stop.store(true, Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_manual_order_trades_through_risk_and_a_refusal_names_its_limit() {
        let desk = Desk::start();
        desk.position_becomes(0, 0, Quantity::ZERO).await;
        // At the touch: buys 2 BTC at the ask, immediate-or-cancel, filled by the paper venue.
        let (status, v) = desk.order(r#"{"symbol":"btcusdt","side":"buy","qty":"2","agent":3}"#).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!((v["status"].as_str(), v["side"].as_str(), v["agent"].as_u64()), (Some("filled"), Some("buy"), Some(3)), "{v}");
        assert_eq!(Price::parse(v["price"].as_str().unwrap()).unwrap(), Price::parse("100.02").unwrap(), "{v}");
        assert_eq!(Quantity::parse(v["filled"].as_str().unwrap()).unwrap(), Quantity::from_units(2), "{v}");
        assert!(v["seq"].as_i64().is_some() && v["client_order_id"].is_string(), "{v}");
        desk.position_becomes(3, 0, Quantity::from_units(2)).await;
        // Each limit says its name: the same labels as risk_limits_breached_total{limit_type}.
        for (body, reason) in [
            (r#"{"symbol":"BTCUSDT","side":"buy","qty":"20","agent":3}"#, "order_notional"),
            (r#"{"symbol":"BTCUSDT","side":"sell","qty":"1","price":"80","agent":3}"#, "price_band"),
            (r#"{"symbol":"ETHUSDT","side":"buy","qty":"0.1","agent":2}"#, "min_notional"),
            (r#"{"symbol":"BTCUSDT","side":"buy","qty":"0.0001","agent":2}"#, "lot_size"),
        ] {
            let (status, v) = desk.order(body).await;
            assert_eq!(status, 422, "{body}: {v}");
            assert_eq!((v["status"].as_str(), v["reason"].as_str()), (Some("refused"), Some(reason)), "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(reason), "{v}");
        }
        // A limit order inside the band that reduces: sells 1 at 99.99 or better.
        let (status, v) = desk.order(r#"{"symbol":"BTCUSDT","side":"sell","qty":1,"price":"99.99","agent":3}"#).await;
        assert_eq!((status, v["status"].as_str(), v["reduce_only"].as_bool()), (200, Some("filled"), Some(true)), "{v}");
        desk.position_becomes(3, 0, Quantity::from_units(1)).await;
        // Bad input is a 400 naming what is wrong; no token, no order.
        for (body, needle) in [
            (r#"{"symbol":"DOGEUSDT","side":"buy","qty":"1","agent":3}"#, "unknown symbol"),
            (r#"{"symbol":"BTCUSDT","side":"hold","qty":"1","agent":3}"#, "side"),
            (r#"{"symbol":"BTCUSDT","side":"buy","qty":"-1","agent":3}"#, "qty"),
            (r#"{"symbol":"BTCUSDT","side":"buy","qty":"1","agent":99}"#, "agent 99"),
            (r#"{"symbol":"BTCUSDT","side":"buy","qty":"1"}"#, "agent"),
        ] {
            let (status, v) = desk.order(body).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
        }
        assert_eq!(desk.post("/api/orders", None, r#"{"symbol":"BTCUSDT","side":"buy","qty":"1","agent":3}"#).await.0, 401);
        assert_eq!(desk.position(3, 0), Quantity::from_units(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn flatten_closes_one_scope_and_kill_with_flatten_closes_everything() {
        let desk = Desk::start();
        for body in [
            r#"{"symbol":"BTCUSDT","side":"buy","qty":"3","agent":2}"#,
            r#"{"symbol":"ETHUSDT","side":"buy","qty":"20","agent":2}"#,
            r#"{"symbol":"BTCUSDT","side":"buy","qty":"4","agent":3}"#,
        ] {
            let (status, v) = desk.order(body).await;
            assert_eq!((status, v["status"].as_str()), (200, Some("filled")), "{body}: {v}");
        }
        desk.position_becomes(3, 0, Quantity::from_units(4)).await;
        // One agent in one symbol: only that position is closed.
        let (status, v) = desk.post("/api/flatten", Some(TOKEN), r#"{"agent":2,"symbol":"BTCUSDT"}"#).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["accepted"].as_str(), v["status"].as_str(), v["pass"].as_i64(), v["orders"].as_i64()),
            (Some("flatten"), Some("flattening"), Some(1), Some(1)),
            "{v}"
        );
        desk.position_becomes(2, 0, Quantity::ZERO).await;
        assert_eq!(desk.position(2, 1), Quantity::from_units(20));
        assert_eq!(desk.position(3, 0), Quantity::from_units(4));
        // Nothing left in that scope: the next flatten there is flat at once.
        let (status, v) = desk.post("/api/flatten", Some(TOKEN), r#"{"agent":2,"symbol":"BTCUSDT"}"#).await;
        assert_eq!((status, v["status"].as_str(), v["open_positions"].as_i64()), (200, Some("flat"), Some(0)), "{v}");
        // Kill with flatten: everything is closed and nothing new passes.
        assert_eq!(desk.post("/api/kill?flatten=maybe", Some(TOKEN), "").await.0, 400);
        assert_eq!(desk.post("/api/flatten", None, "").await.0, 401);
        let (status, v) = desk.post("/api/kill?flatten=true", Some(TOKEN), "").await;
        assert_eq!(
            (status, v["accepted"].as_str(), v["status"].as_str(), v["orders"].as_i64()),
            (200, Some("kill_flatten"), Some("flattening"), Some(2)),
            "{v}"
        );
        desk.position_becomes(2, 1, Quantity::ZERO).await;
        desk.position_becomes(3, 0, Quantity::ZERO).await;
        assert!(desk.state.risk_flags().killed);
        let (status, v) = desk.order(r#"{"symbol":"BTCUSDT","side":"buy","qty":"1","agent":3}"#).await;
        assert_eq!((status, v["reason"].as_str()), (422, Some("kill_switch")), "{v}");
        // The flatten's end is an alert: flat, nothing left open.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut flat = false;
            desk.state.risk_history().update_recent(64, |r| {
                flat |= matches!(r.risk, sapphire_core::risk::RiskOutput::Alert(a) if a.kind == sapphire_core::risk::AlertKind::Flattened && a.value == 0);
                false
            });
            if flat {
                break;
            }
            assert!(Instant::now() < deadline, "no flattened alert");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_gateway_forwarding_control_refuses_what_needs_the_engines_ids() {
        let desk = Desk::start_with(false);
        let (status, v) = desk.order(r#"{"symbol":"BTCUSDT","side":"buy","qty":"1","agent":3}"#).await;
        assert_eq!(status, 501, "{v}");
        assert!(v["error"].as_str().unwrap().contains("core's own API"), "{v}");
        assert_eq!(desk.post("/api/flatten", Some(TOKEN), r#"{"symbol":"BTCUSDT"}"#).await.0, 501);
        // An agent's or everything's flatten names no symbol: forwarded like a kill.
        let (status, v) = desk.post("/api/flatten", Some(TOKEN), r#"{"agent":3}"#).await;
        assert_eq!((status, v["accepted"].as_str()), (200, Some("flatten")), "{v}");
        assert_eq!(desk.position(3, 0), Quantity::ZERO, "nothing was traded");
    }
}
