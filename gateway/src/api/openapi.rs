//! The API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the bodies they send, served at `GET /openapi.json` and checked in as
//! `docs/openapi.json`.
//!
//! A test keeps the three equal: it fails when the checked-in file differs from what the
//! handlers generate (`UPDATE_OPENAPI=1 cargo test -p sapphire-gateway --lib openapi`
//! rewrites it), and when a route of the router has no path in the document.
//! `scripts/api-fuzz.sh` runs schemathesis from the document against a live server.

use super::{assets, commands, control, page, routes, ws};
use serde::Serialize;
use serde_json::Value;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The body of every error: what was wrong, for a person to read.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorBody {
    /// What was wrong.
    pub(super) error: String,
}

/// A control request taken: its event is in the inbound ring.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Accepted {
    /// The action (`kill`, `halt`, `resume`, `pause_agent`, `resume_agent`, `set_limit`).
    pub(super) accepted: String,
    /// The inbound sequence the control event got (the journal records it there).
    pub(super) seq: i64,
}

/// One page of recent history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Page {
    /// The records, newest first.
    #[schema(value_type = Vec<Object>)]
    pub(super) items: Vec<Value>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    #[schema(minimum = 1)]
    pub(super) next_before: Option<u64>,
    /// The newest record's id (0 before the first).
    pub(super) latest: u64,
    /// The page size used (the request's, capped).
    #[schema(minimum = 1, maximum = 500)]
    pub(super) limit: usize,
}

/// `/readyz`: whether the process is ready, and each check.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// Every check passes.
    pub(super) ready: bool,
    /// The names of the checks that fail.
    pub(super) failing: Vec<String>,
    /// Each check: `{"name", "ok", "detail"}`.
    #[schema(value_type = Vec<Object>)]
    pub(super) checks: Vec<Value>,
}

/// A decimal as the order routes take it: a string of digits with an optional fraction, or a
/// JSON number.
pub(super) struct Decimal;

impl utoipa::PartialSchema for Decimal {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{1,12}(\\.[0-9]{1,9})?$")))
            .item(ObjectBuilder::new().schema_type(Type::Number).minimum(Some(0)))
            .description(Some("A positive decimal"))
            .into()
    }
}

impl ToSchema for Decimal {}

/// Adds the control routes' bearer scheme.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The API token (SAPPHIRE_API_TOKEN or [api] token_file); control is disabled (403) without one."))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds what every route may answer, so each handler lists only its own answers: a 408 (the
/// request took too long) and a 503 (every connection place busy) everywhere; 401, 403 and
/// 429 on the routes that need the bearer token.
struct SharedRefusals;

impl Modify for SharedRefusals {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let refusal = |description: &str, header: Option<(&str, Type, &str)>| {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let mut r = ResponseBuilder::new().description(description).content("application/json", body);
            if let Some((name, kind, about)) = header {
                r = r.header(name, HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(kind)).description(Some(about)).build());
            }
            r.build()
        };
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, response: utoipa::openapi::Response| {
                    responses.entry(status.to_string()).or_insert(response.into());
                };
                add("408", refusal("The request took longer than 5 s", None));
                add("503", refusal("Every connection place is busy: retry", Some(("retry-after", Type::Integer, "Seconds to wait"))));
                if secured {
                    add("401", refusal("No bearer token", Some(("www-authenticate", Type::String, "`Bearer`"))));
                    add("403", refusal("The bearer token is wrong, or control is disabled (no token configured)", None));
                    add(
                        "429",
                        refusal(
                            "Too many refused tokens from this client address: retry after `Retry-After` seconds",
                            Some(("retry-after", Type::Integer, "Seconds to wait")),
                        ),
                    );
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sapphire HTTP API",
        description = "The dashboard, probes, metrics, recent history and operator control of a Sapphire process. \
Every error is a JSON `{\"error\": \"...\"}`. Every request may also get a 503 when every connection place is busy, \
a 408 when it takes longer than 5 s, and a 404 for a path not listed here. Control routes need the bearer token; \
bursts of refused tokens from one client address are answered 429 for a while.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        assets::index,
        assets::file,
        assets::favicon,
        ws::upgrade,
        page::orders,
        page::trades,
        page::signals,
        page::risk,
        routes::healthz,
        routes::readyz,
        routes::metrics_text,
        routes::dashboard,
        routes::openapi_json,
        control::kill,
        control::halt,
        control::resume,
        control::pause_agent,
        control::resume_agent,
        control::set_limit,
        commands::manual_order,
        commands::flatten,
    ),
    components(schemas(ErrorBody, Accepted, Page, Readiness, control::LimitChange, commands::ManualOrder, commands::FlattenScope, commands::KillBody)),
    modifiers(&BearerToken, &SharedRefusals),
    tags(
        (name = "dashboard", description = "The page, its assets and its stream"),
        (name = "probes", description = "Liveness, readiness and metrics"),
        (name = "history", description = "Recent records, paged"),
        (name = "control", description = "Operator control: bearer token; each request is one Control event in the inbound ring"),
    )
)]
struct ApiDoc;

/// The document as served and checked in: pretty JSON with a final newline.
pub(super) fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    });
    &DOCUMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    #[test]
    fn openapi_document_equals_the_checked_in_file() {
        let path = checked_in_path();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, document()).expect("writes docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == document(),
            "docs/openapi.json differs from what the handlers generate: regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p sapphire-gateway --lib openapi` and review the diff"
        );
    }

    /// Every `.route("PATH", METHOD(...))` of the router in routes.rs, as the document names it.
    fn routed() -> Vec<(String, String)> {
        let source = include_str!("routes.rs");
        let body = source.split("fn router(").nth(1).and_then(|s| s.split("\n}\n").next()).expect("routes.rs has fn router");
        let mut found = Vec::new();
        for piece in body.split(".route(\"").skip(1) {
            let (path, rest) = piece.split_once('"').expect("a quoted path");
            let methods = rest.split(").route(").next().unwrap_or(rest);
            let path = path.replace("{*", "{");
            for method in ["get", "post", "put", "delete", "patch"] {
                if methods.contains(&format!(" {method}("))
                    || methods.contains(&format!(",{method}("))
                    || methods.contains(&format!(".{method}("))
                {
                    found.push((path.clone(), method.to_string()));
                }
            }
        }
        found
    }

    #[test]
    fn openapi_document_has_every_route_of_the_router_and_no_other() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let paths = doc["paths"].as_object().expect("paths");
        let routed = routed();
        assert!(routed.len() >= 19, "the router's routes were found in routes.rs: {routed:?}");
        for (path, method) in &routed {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is routed but not in the OpenAPI document");
        }
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                assert!(routed.contains(&(path.clone(), method.clone())), "{method} {path} is documented but not routed");
            }
        }
    }

    #[test]
    fn control_routes_need_the_bearer_token_and_document_their_refusals() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        let mut control = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            let Some(post) = item.get("post") else { continue };
            control += 1;
            assert_eq!(post["security"], serde_json::json!([{ "bearer": [] }]), "{path}");
            for status in ["200", "401", "403", "429"] {
                assert!(post["responses"].get(status).is_some(), "{path} documents {status}");
            }
        }
        assert!(control >= 6, "{control} control routes");
    }
}
