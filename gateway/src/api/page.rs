//! Recent history, paged: `GET /api/orders`, `/api/trades`, `/api/signals`, `/api/risk`.
//!
//! Newest first. `limit` (default [`DEFAULT_PAGE`], capped at [`MAX_PAGE`]) and `before` (a
//! record id: only older records) are the only parameters; anything else, or a value that is
//! not a positive whole number, is a 400 naming it. The body is
//! `{"items": [...], "next_before": <id or null>, "latest": <newest id>, "limit": <n>}`; pass
//! `next_before` as `before` for the next page. Ids belong to the history (each kind counts
//! from 1 when the process starts); the edge keeps the last few thousand of each.

use super::history::History;
use super::openapi::{ErrorBody, Page};
use super::routes::{error, Ctx};
use super::state::EdgeState;
use super::{view, DEFAULT_PAGE, MAX_PAGE};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

/// The page parameters as the OpenAPI document shows them (the handlers parse the raw query
/// themselves, to name the parameter that is wrong): whole numbers from 1, of any size.
struct PageParams;

impl utoipa::IntoParams for PageParams {
    fn into_params(_: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let whole = |name: &str, about: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .description(Some(about))
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1))))
                .build()
        };
        vec![
            whole("limit", "Records per page (default 100; more than 500 is taken as 500)"),
            whole("before", "Only records older than this id (a page's `next_before`)"),
        ]
    }
}

/// A page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PageQuery {
    pub(super) limit: usize,
    pub(super) before: Option<u64>,
}

/// Parses `limit=&before=`; the message for a 400 otherwise.
pub(super) fn parse(query: Option<&str>) -> Result<PageQuery, String> {
    let mut q = PageQuery { limit: DEFAULT_PAGE, before: None };
    let (mut seen_limit, mut seen_before) = (false, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Digits only; a number past u64 counts as u64::MAX (a limit is capped anyway, and no
        // record id is that large), so any whole number from 1 is taken, as the spec says.
        let number = |name: &str| -> Result<u64, String> {
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            match value.parse::<u64>() {
                Ok(n) if digits && n > 0 => Ok(n),
                Err(_) if digits && value.bytes().any(|b| b != b'0') => Ok(u64::MAX),
                _ => Err(format!("{name}={value:?} is not a whole number above zero")),
            }
        };
        match key {
            "limit" if !seen_limit => {
                seen_limit = true;
                q.limit = usize::try_from(number("limit")?).unwrap_or(usize::MAX).min(MAX_PAGE);
            }
            "before" if !seen_before => {
                seen_before = true;
                q.before = Some(number("before")?);
            }
            "limit" | "before" => return Err(format!("{key} is given twice")),
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!("unknown parameter {shown:?}: only limit (1..) and before (a record id) are accepted"));
            }
        }
    }
    Ok(q)
}

fn page<T: Copy + Default>(
    s: &EdgeState,
    history: &History<T>,
    query: Option<String>,
    render: fn(&EdgeState, u64, &T) -> Value,
) -> Response {
    let q = match parse(query.as_deref()) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let mut records = Vec::new();
    let more = history.page(q.before, q.limit, &mut records);
    let next_before = if more { records.last().map(|(id, _)| *id) } else { None };
    let items: Vec<Value> = records.iter().map(|(id, r)| render(s, *id, r)).collect();
    (StatusCode::OK, Json(Page { items, next_before, latest: history.latest_id(), limit: q.limit })).into_response()
}

/// `GET /api/orders`: orders and cancels sent, with their status from execution reports.
#[utoipa::path(get, path = "/api/orders", tag = "history", params(PageParams), responses(
    (status = 200, description = "Orders and cancels sent, with their status, newest first", body = Page),
    (status = 400, description = "An unknown or repeated parameter, or a value that is not a whole number above zero", body = ErrorBody),
))]
pub(super) async fn orders(State(ctx): Ctx, RawQuery(query): RawQuery) -> Response {
    page(&ctx.state, ctx.state.orders_history(), query, view::order)
}

/// `GET /api/trades`: fills.
#[utoipa::path(get, path = "/api/trades", tag = "history", params(PageParams), responses(
    (status = 200, description = "Fills, newest first", body = Page),
    (status = 400, description = "An unknown or repeated parameter, or a value that is not a whole number above zero", body = ErrorBody),
))]
pub(super) async fn trades(State(ctx): Ctx, RawQuery(query): RawQuery) -> Response {
    page(&ctx.state, ctx.state.fills_history(), query, view::fill)
}

/// `GET /api/signals`: agents' signals, taken or ignored.
#[utoipa::path(get, path = "/api/signals", tag = "history", params(PageParams), responses(
    (status = 200, description = "Agents' signals, taken or ignored, newest first", body = Page),
    (status = 400, description = "An unknown or repeated parameter, or a value that is not a whole number above zero", body = ErrorBody),
))]
pub(super) async fn signals(State(ctx): Ctx, RawQuery(query): RawQuery) -> Response {
    page(&ctx.state, ctx.state.signals_history(), query, view::signal)
}

/// `GET /api/risk`: refusals and guard alerts.
#[utoipa::path(get, path = "/api/risk", tag = "history", params(PageParams), responses(
    (status = 200, description = "Risk refusals and guard alerts, newest first", body = Page),
    (status = 400, description = "An unknown or repeated parameter, or a value that is not a whole number above zero", body = ErrorBody),
))]
pub(super) async fn risk(State(ctx): Ctx, RawQuery(query): RawQuery) -> Response {
    page(&ctx.state, ctx.state.risk_history(), query, view::risk)
}
