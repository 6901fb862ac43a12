//! Operator control: bearer-token checks, then one [`Control`] event into the inbound ring.
//!
//! The event is the whole action: the journal records it and the risk stage acts on it, so
//! a replay reproduces every kill, halt and pause. Publishing never waits: a full ring
//! (the engine is behind) is a 503 the operator can retry.

use super::openapi::{Accepted, ErrorBody};
use super::routes::{error, Ctx};
use super::throttle::AuthRefused;
use super::ApiContext;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sapphire_core::aggregate::MAX_AGENTS;
use sapphire_core::event::{AgentId, Control, ControlKind, Event, LimitKind};
use sapphire_core::fixed::Money;
use sapphire_core::latency::unix_nanos;
use sapphire_core::risk::ALL_AGENTS;

/// Checks the bearer token; the refusal to send, if any: 403 when control is disabled or
/// the token is wrong, 401 when there is none. A wrong token's refusal carries
/// [`AuthRefused`], which the router's throttle counts against the client address.
fn refusal(ctx: &ApiContext, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &ctx.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "control is disabled: no API token is configured (set SAPPHIRE_API_TOKEN or [api] token_file)",
        ));
    };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => {
            let mut r = error(StatusCode::UNAUTHORIZED, "control needs an `Authorization: Bearer <token>` header");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            Some(r)
        }
        Some(p) if token.matches(p) => None,
        Some(_) => {
            let mut r = error(StatusCode::FORBIDDEN, "the bearer token is not the configured API token");
            r.extensions_mut().insert(AuthRefused);
            Some(r)
        }
    }
}

/// A request body's JSON object as `T`. serde also builds a struct from a JSON array of its
/// fields in order, so `[null, null]` was a flatten of everything and `[true]` a kill with
/// flatten (schemathesis found it): only an object is taken.
pub(super) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom(format!("the body is a JSON {}, not an object", json_kind(&value))));
    }
    serde_json::from_value(value)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Publishes the control, never waiting; 200 with the inbound sequence it got.
fn publish(ctx: &ApiContext, action: &str, kind: ControlKind, agent: AgentId, limit: LimitKind, value: i64) -> Response {
    let now = unix_nanos();
    let event = Event::Control(Control { ts_event: now, ts_recv: now, kind, limit, agent, value, ..Control::default() });
    let Ok(mut inbound) = ctx.inbound.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the inbound ring's producer is unavailable");
    };
    match inbound.try_publish(event) {
        Ok(seq) => (StatusCode::OK, Json(Accepted { accepted: action.to_string(), seq })).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the inbound ring is full (the engine is behind); retry"),
    }
}

fn global(State(ctx): Ctx, headers: HeaderMap, action: &str, kind: ControlKind) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    publish(&ctx, action, kind, ALL_AGENTS, LimitKind::None, 0)
}

/// `POST /api/kill`: cancel everything, refuse every new order.
#[utoipa::path(post, path = "/api/kill", tag = "control", security(("bearer" = [])),
    params(("flatten" = Option<bool>, Query, description = "Also close every position")),
    request_body(content = Option<super::commands::KillBody>, content_type = "application/json", description = "Optional: `{\"flatten\": true}`"),
    responses(
        (status = 200, description = "The kill is in the inbound ring", body = Accepted),
        (status = 400, description = "A bad `flatten` or body", body = ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = ErrorBody),
    ))]
pub(super) async fn kill(ctx: Ctx, headers: HeaderMap, uri: axum::http::Uri, body: super::commands::Body) -> Response {
    // `?flatten=true` (or `{"flatten": true}`) also closes every position: see `commands`.
    super::commands::kill(ctx, headers, uri, body).await
}

/// `POST /api/halt`: reduce-only; resting orders stay.
#[utoipa::path(post, path = "/api/halt", tag = "control", security(("bearer" = [])), responses(
    (status = 200, description = "The halt is in the inbound ring", body = Accepted),
))]
pub(super) async fn halt(ctx: Ctx, headers: HeaderMap) -> Response {
    global(ctx, headers, "halt", ControlKind::Halt)
}

/// `POST /api/resume`: lift a halt, kill or drawdown halt.
#[utoipa::path(post, path = "/api/resume", tag = "control", security(("bearer" = [])), responses(
    (status = 200, description = "The resume is in the inbound ring", body = Accepted),
))]
pub(super) async fn resume(ctx: Ctx, headers: HeaderMap) -> Response {
    global(ctx, headers, "resume", ControlKind::Resume)
}

fn agent_id(raw: &str) -> Result<AgentId, String> {
    match raw.parse::<u16>() {
        Ok(n) if usize::from(n) < MAX_AGENTS => Ok(AgentId(n)),
        _ => Err(format!("agent id {raw:?} is not a number from 0 to {}", MAX_AGENTS - 1)),
    }
}

fn per_agent(State(ctx): Ctx, headers: HeaderMap, id: &str, action: &str, kind: ControlKind) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    match agent_id(id) {
        Ok(agent) => publish(&ctx, action, kind, agent, LimitKind::None, 0),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// `POST /api/agents/{id}/pause`: cancel the agent's orders and refuse its new ones.
#[utoipa::path(post, path = "/api/agents/{id}/pause", tag = "control", security(("bearer" = [])),
    params(("id" = u16, Path, minimum = 0, maximum = 15, description = "The agent id (0 to 15)")),
    responses(
        (status = 200, description = "The pause is in the inbound ring", body = Accepted),
        (status = 400, description = "The id is not an agent id", body = ErrorBody),
    ))]
pub(super) async fn pause_agent(ctx: Ctx, headers: HeaderMap, Path(id): Path<String>) -> Response {
    per_agent(ctx, headers, &id, "pause_agent", ControlKind::PauseAgent)
}

/// `POST /api/agents/{id}/resume`.
#[utoipa::path(post, path = "/api/agents/{id}/resume", tag = "control", security(("bearer" = [])),
    params(("id" = u16, Path, minimum = 0, maximum = 15, description = "The agent id (0 to 15)")),
    responses(
        (status = 200, description = "The resume is in the inbound ring", body = Accepted),
        (status = 400, description = "The id is not an agent id", body = ErrorBody),
    ))]
pub(super) async fn resume_agent(ctx: Ctx, headers: HeaderMap, Path(id): Path<String>) -> Response {
    per_agent(ctx, headers, &id, "resume_agent", ControlKind::ResumeAgent)
}

/// Body of `POST /api/limits`. Its OpenAPI schema is [`LIMITS`], one shape per limit.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitChange {
    /// A name of [`LIMITS`] (the configuration's names).
    limit: String,
    /// A dollar amount for dollar limits, a whole number otherwise ([`LimitValue`]).
    value: serde_json::Value,
    /// For `agent_budget_usd`: one agent (default: every agent).
    agent: Option<u16>,
}

/// What a limit's value may be. The same rule checks a request and writes the OpenAPI
/// schema, so the two cannot drift apart (schemathesis holds the server to the schema).
#[derive(Clone, Copy, Debug)]
enum LimitValue {
    /// Dollars: a JSON integer `0..=999_999_999` or a string of up to 9 digits (no leading
    /// zero) with up to 9 decimals.
    Usd,
    /// A whole number in `min..=max` (a JSON integer, or its digits in a string, no leading
    /// zero), times `scale` in the engine's units.
    Whole { min: i64, max: i64, pattern: &'static str, scale: i64 },
}

/// Dollar strings [`LimitValue::Usd`] takes.
const USD_PATTERN: &str = "^(0|[1-9][0-9]{0,8})(\\.[0-9]{1,9})?$";
/// The largest whole dollar amount taken (a billion dollars less one).
const MAX_USD: i64 = 999_999_999;

/// Every limit `POST /api/limits` changes: its name, the engine's kind, its value.
const LIMITS: [(&str, LimitKind, LimitValue); 7] = [
    ("agent_budget_usd", LimitKind::AgentBudget, LimitValue::Usd),
    ("max_position_usd", LimitKind::MaxPositionNotional, LimitValue::Usd),
    ("max_order_usd", LimitKind::MaxOrderNotional, LimitValue::Usd),
    ("price_band_bps", LimitKind::PriceBandBps, LimitValue::Whole { min: 1, max: 10_000, pattern: "^([1-9][0-9]{0,3}|10000)$", scale: 1 }),
    (
        "max_open_orders",
        LimitKind::MaxOpenOrders,
        LimitValue::Whole { min: 0, max: 1_000_000, pattern: "^(0|[1-9][0-9]{0,5}|1000000)$", scale: 1 },
    ),
    (
        "stale_after_ms",
        LimitKind::StaleAfterNs,
        LimitValue::Whole { min: 0, max: 99_999_999, pattern: "^(0|[1-9][0-9]{0,7})$", scale: 1_000_000 },
    ),
    ("drawdown_halt_pct", LimitKind::DrawdownHaltBps, LimitValue::Whole { min: 0, max: 100, pattern: "^(0|[1-9][0-9]?|100)$", scale: 100 }),
];

/// A JSON number that is a whole number (`5` or `5.0`: JSON Schema's integers), exactly.
fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0).map(|f| f as i64))
}

/// Digits without a leading zero (or `0`), up to `max_len` of them.
fn plain_digits(s: &str, max_len: usize) -> bool {
    !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

impl LimitValue {
    /// The value in the engine's units; `None` when it is not one this limit takes.
    fn parse(self, v: &serde_json::Value) -> Option<i64> {
        match (self, v) {
            (LimitValue::Usd, serde_json::Value::Number(n)) => {
                whole_number(n).filter(|n| (0..=MAX_USD).contains(n)).and_then(|n| Money::parse(&n.to_string()).ok()).map(|m| m.raw)
            }
            (LimitValue::Usd, serde_json::Value::String(s)) => {
                let (units, cents) = s.split_once('.').map_or((s.as_str(), None), |(u, c)| (u, Some(c)));
                let fraction_ok = cents.is_none_or(|c| !c.is_empty() && c.len() <= 9 && c.bytes().all(|b| b.is_ascii_digit()));
                (plain_digits(units, 9) && fraction_ok).then(|| Money::parse(s).ok().map(|m| m.raw)).flatten()
            }
            (LimitValue::Usd, _) => None,
            (LimitValue::Whole { min, max, scale, .. }, v) => {
                let n = match v {
                    serde_json::Value::Number(n) => whole_number(n),
                    serde_json::Value::String(s) if plain_digits(s, 18) => s.parse().ok(),
                    _ => None,
                };
                n.filter(|n| (min..=max).contains(n)).map(|n| n * scale)
            }
        }
    }

    fn what(self) -> String {
        match self {
            LimitValue::Usd => format!("a dollar amount from 0 to {MAX_USD} (up to 9 decimals)"),
            LimitValue::Whole { min, max, .. } => format!("a whole number from {min} to {max}"),
        }
    }

    /// The value's OpenAPI schema: a JSON integer, or the same in a string.
    fn schema(self) -> utoipa::openapi::schema::OneOf {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let (min, max, pattern) = match self {
            LimitValue::Usd => (0, MAX_USD, USD_PATTERN),
            LimitValue::Whole { min, max, pattern, .. } => (min, max, pattern),
        };
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max)))
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)))
            .description(Some(self.what()))
            .build()
    }
}

impl utoipa::PartialSchema for LimitChange {
    /// One object per kind of value: `limit` names which, `agent` is only for
    /// `agent_budget_usd` (elsewhere it may only be `null`), nothing else is allowed.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let mut shapes = OneOfBuilder::new().description(Some("Body of `POST /api/limits`: one risk limit and its new value."));
        for (name, _, value) in LIMITS {
            let agent = if name == "agent_budget_usd" {
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                    .minimum(Some(0))
                    .maximum(Some(MAX_AGENTS as u64 - 1))
                    .description(Some("One agent (default: every agent)"))
            } else {
                ObjectBuilder::new().schema_type(Type::Null)
            };
            shapes = shapes.item(
                ObjectBuilder::new()
                    .property("limit", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([name])))
                    .required("limit")
                    .property("value", utoipa::openapi::schema::Schema::OneOf(value.schema()))
                    .required("value")
                    .property("agent", agent)
                    .additional_properties(Some(AdditionalProperties::FreeForm(false))),
            );
        }
        shapes.into()
    }
}

impl utoipa::ToSchema for LimitChange {}

impl LimitChange {
    /// The limit kind and its value in the engine's units, or what is wrong.
    fn resolve(&self) -> Result<(LimitKind, i64), String> {
        let Some(&(_, kind, value)) = LIMITS.iter().find(|(name, _, _)| *name == self.limit) else {
            let names: Vec<&str> = LIMITS.iter().map(|(name, _, _)| *name).collect();
            let shown: String = self.limit.chars().take(40).collect();
            return Err(format!("unknown limit {shown:?}: {}", names.join(", ")));
        };
        let parsed = value.parse(&self.value);
        parsed.map(|v| (kind, v)).ok_or_else(|| format!("limit {:?}: the value is not {}", self.limit, value.what()))
    }
}

/// `POST /api/limits`: change one risk limit.
#[utoipa::path(post, path = "/api/limits", tag = "control", security(("bearer" = [])),
    request_body(content = LimitChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The change is in the inbound ring", body = Accepted),
        (status = 400, description = "The body is not a limit change, or the value does not fit the limit", body = ErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = ErrorBody),
    ))]
pub(super) async fn set_limit(State(ctx): Ctx, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Some(r) = refusal(&ctx, &headers) {
        return r;
    }
    // axum's own rejection (a body over the limit: 413) is plain text; ours are JSON.
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let change: LimitChange = match json_object(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let agent = match change.agent {
        None => ALL_AGENTS,
        Some(_) if change.limit != "agent_budget_usd" => {
            return error(StatusCode::BAD_REQUEST, format!("limit {:?} applies to every agent; drop \"agent\"", change.limit))
        }
        Some(a) => match agent_id(&a.to_string()) {
            Ok(a) => a,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    match change.resolve() {
        Ok((limit, value)) => publish(&ctx, "set_limit", ControlKind::SetLimit, agent, limit, value),
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// The bearer-token check of the control routes, for the operator orders in `commands`.
pub(super) fn bearer_refusal(ctx: &ApiContext, headers: &HeaderMap) -> Option<Response> {
    refusal(ctx, headers)
}
