//! The dashboard page and its assets, embedded in the binary (it works with no internet and
//! with nothing beside the binary).
//!
//! Every response carries a strict Content-Security-Policy: scripts and styles only from
//! this origin (no inline script or style), connections only back to it (the `/ws` stream and
//! the control routes), no frames, no forms, no plugins. The page and the app's own files are
//! revalidated on every load (`no-cache` with an `ETag`, so an upgrade shows at once); the
//! vendored chart library has its version in its path and is cached for good.

use super::routes::error;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// The policy every page response carries.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    /// Path under `/assets/` (the page itself: empty).
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    /// Cached for good (versioned path) rather than revalidated.
    immutable: bool,
}

const INDEX: Asset =
    Asset { path: "", body: include_bytes!("../../assets/index.html"), content_type: "text/html; charset=utf-8", immutable: false };

const FILES: [Asset; 5] = [
    Asset { path: "app.js", body: include_bytes!("../../assets/app.js"), content_type: "text/javascript; charset=utf-8", immutable: false },
    Asset { path: "app.css", body: include_bytes!("../../assets/app.css"), content_type: "text/css; charset=utf-8", immutable: false },
    Asset { path: "favicon.svg", body: include_bytes!("../../assets/favicon.svg"), content_type: "image/svg+xml", immutable: false },
    Asset {
        path: "vendor/uplot-1.6.32/uPlot.iife.min.js",
        body: include_bytes!("../../assets/vendor/uPlot.iife.min.js"),
        content_type: "text/javascript; charset=utf-8",
        immutable: true,
    },
    Asset {
        path: "vendor/uplot-1.6.32/uPlot.min.css",
        body: include_bytes!("../../assets/vendor/uPlot.min.css"),
        content_type: "text/css; charset=utf-8",
        immutable: true,
    },
];

/// FNV-1a, for entity tags (not security: the bytes are ours).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Entity tags, computed once: `INDEX` first, then `FILES` in order.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    std::iter::once(&INDEX)
        .chain(FILES.iter())
        .map(|a| HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(a.body))).unwrap_or(HeaderValue::from_static("\"0\"")))
        .collect()
});

/// Security headers every page and asset response carries.
pub(super) fn harden(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

fn serve(asset: &Asset, etag: &HeaderValue, request: &HeaderMap) -> Response {
    let cache = if asset.immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == etag.to_str().unwrap_or(""));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, etag.clone());
    harden(headers);
    response
}

/// `GET /`: the dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    params(("if-none-match" = Option<String>, Header, description = "An ETag this client has")),
    responses(
        (status = 200, description = "The page", body = String, content_type = "text/html",
            headers(("etag" = String), ("cache-control" = String), ("content-security-policy" = String))),
        (status = 304, description = "The client's copy is current", headers(("etag" = String))),
    ))]
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &ETAGS[0], &headers)
}

/// `GET /assets/{file}`.
#[utoipa::path(get, path = "/assets/{file}", tag = "dashboard",
    params(
        ("file" = String, Path, description = "The asset's path: app.js, app.css, favicon.svg, vendor/..."),
        ("if-none-match" = Option<String>, Header, description = "An ETag this client has"),
    ),
    responses(
        (status = 200, description = "The asset", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml")),
            headers(("etag" = String), ("cache-control" = String))),
        (status = 304, description = "The client's copy is current", headers(("etag" = String))),
        (status = 404, description = "No such asset", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match FILES.iter().position(|a| a.path == path) {
        Some(i) => serve(&FILES[i], &ETAGS[i + 1], &headers),
        None => error(StatusCode::NOT_FOUND, format!("no asset {path:?}")),
    }
}

/// `GET /favicon.ico`: browsers ask for it whatever the page says; the page links the SVG.
#[utoipa::path(get, path = "/favicon.ico", tag = "dashboard", responses(
    (status = 204, description = "Nothing: the page links favicon.svg"),
))]
pub(super) async fn favicon() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vendored uPlot's version (see `gateway/assets/vendor/README.md`); part of its URL.
    const UPLOT_VERSION: &str = "1.6.32";

    #[test]
    fn the_vendor_paths_carry_the_vendored_version() {
        for a in FILES.iter().filter(|a| a.path.starts_with("vendor/")) {
            assert!(a.path.contains(&format!("uplot-{UPLOT_VERSION}/")), "{}", a.path);
            assert!(a.immutable);
        }
        let js = std::str::from_utf8(FILES.iter().find(|a| a.path.ends_with(".js") && a.immutable).unwrap().body).unwrap();
        assert!(js.starts_with(&format!("/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */")), "the file is the version named");
    }

    #[test]
    fn the_page_loads_only_what_is_served_and_has_no_inline_script() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for needle in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(needle) {
                let rest = &html[i + needle.len()..];
                let url = &rest[..rest.find('"').unwrap()];
                let path = url.strip_prefix("/assets/").unwrap_or_else(|| panic!("{url} is not an embedded asset"));
                assert!(FILES.iter().any(|a| a.path == path), "{url} is not embedded");
            }
        }
        assert!(!html.contains("<script>") && !html.contains(" style=\"") && !html.contains("onclick"), "no inline script or style");
    }
}
