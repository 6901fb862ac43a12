//! The router: the page and its stream, probes, metrics, the dashboard snapshot, paged
//! history, control, and the limits every request gets.

use super::openapi::{self, ErrorBody, Readiness};
use super::throttle::AuthRefused;
use super::{assets, control, metrics, page, view, ws, ApiContext, BODY_LIMIT, REQUEST_TIMEOUT};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub(super) type Ctx = State<Arc<ApiContext>>;

/// Every route, with the body limit, the request timeout and a JSON 404.
pub(super) fn router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{*file}", get(assets::file))
        .route("/favicon.ico", get(assets::favicon))
        .route("/ws", get(ws::upgrade))
        .route("/api/orders", get(page::orders).post(super::commands::manual_order))
        .route("/api/trades", get(page::trades))
        .route("/api/signals", get(page::signals))
        .route("/api/risk", get(page::risk))
        .route("/api/flatten", post(super::commands::flatten))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/dashboard", get(dashboard))
        .route("/openapi.json", get(openapi_json))
        .route("/api/kill", post(control::kill))
        .route("/api/halt", post(control::halt))
        .route("/api/resume", post(control::resume))
        .route("/api/agents/{id}/pause", post(control::pause_agent))
        .route("/api/agents/{id}/resume", post(control::resume_agent))
        .route("/api/limits", post(control::set_limit))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&ctx), auth_throttle))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(timeout))
        .with_state(ctx)
}

/// The probe lane's router (every place under the connection cap is busy): the probes, and a
/// 503 for anything else.
pub(super) fn probe_router(ctx: Arc<ApiContext>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(too_busy)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(timeout))
        .with_state(ctx)
}

async fn too_busy(State(ctx): Ctx) -> Response {
    ctx.stats.http_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "too many connections; retry shortly");
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// A JSON error body: `{"error": "..."}` ([`ErrorBody`]).
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, format!("the request took longer than {}s", REQUEST_TIMEOUT.as_secs())),
    }
}

/// Control requests (`POST /api/...`) presenting a bearer token, from an address with too
/// many wrong tokens, get a 429 before their token is looked at; a wrong-token refusal of the
/// handler is counted against the address. A request without a token guesses nothing: it
/// gets its 401 whatever the address did.
async fn auth_throttle(State(ctx): Ctx, req: Request, next: Next) -> Response {
    let presents_token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer "));
    let control = presents_token && req.method() == Method::POST && req.uri().path().starts_with("/api/");
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).filter(|_| control);
    if let Some(ip) = peer {
        if let Some(wait) = ctx.auth_throttle.blocked(ip, Instant::now()) {
            ctx.stats.auth_throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let secs = wait.as_secs_f64().ceil() as u64;
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, format!("too many refused tokens from {ip}; retry in {secs}s"));
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            return r;
        }
    }
    let response = next.run(req).await;
    if let (Some(ip), Some(_)) = (peer, response.extensions().get::<AuthRefused>()) {
        ctx.auth_throttle.refused(ip, Instant::now());
    }
    response
}

async fn not_found(req: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()))
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses(
    (status = 200, description = "The process serves", body = String, content_type = "text/plain", example = "ok\n"),
))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the core runs, every book is in sync, the journal appends and every health
/// source is ready; the body names each check.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready (`failing` names why), or every connection place is busy", body = Readiness),
))]
async fn readyz(State(ctx): Ctx) -> Response {
    let checks = view::checks(&ctx.state);
    let failing: Vec<String> = checks.iter().filter(|c| c["ok"] == false).filter_map(|c| c["name"].as_str().map(str::to_string)).collect();
    let ready = failing.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, failing, checks })).into_response()
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses(
    (status = 200, description = "Every metric family", body = String, content_type = "text/plain"),
))]
async fn metrics_text(State(ctx): Ctx) -> Response {
    let backlog = ctx.inbound.lock().map(|p| p.backlog()).unwrap_or(0);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&ctx, backlog)).into_response()
}

/// The dashboard as one JSON snapshot: equity, PnL, fees, per-agent PnL and margin, risk
/// state, orders, positions, latency, feeds.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard", responses(
    (status = 200, description = "The snapshot", body = Object),
))]
async fn dashboard(State(ctx): Ctx) -> Json<Value> {
    Json(view::snapshot(&ctx, true))
}

/// This API's OpenAPI document (the same as `docs/openapi.json`).
#[utoipa::path(get, path = "/openapi.json", tag = "probes", responses(
    (status = 200, description = "The OpenAPI 3.1 document", body = Object),
))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}
