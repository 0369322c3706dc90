//! The status page on the admin listener: `/` (HTML), `/status.css` and `/status.js`, built
//! into the binary, no other asset.
//!
//! The files hold no data, so they are served without the admin token; the page's script
//! reads `api/node`, `api/streams`, `api/pulls` and `api/upstreams` every 1.5 s with
//! `Authorization: Bearer TOKEN`. The operator gives the token once: in the page's form, or
//! as `/#token=TOKEN` (a fragment never leaves the browser), or `/?token=TOKEN` (sent with
//! the page request, which needs no token and is not logged here, but a proxy in between
//! may log it). The script keeps it in the tab's `sessionStorage` and takes it out of the
//! address bar and history.
//!
//! Every value from the API is put into the page as text (`textContent`), never as markup:
//! stream names come from publishers. The Content-Security-Policy allows only this origin's
//! script and style (no inline script), so markup that got in anyway could not run.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const PAGE: &str = include_str!("status/index.html");
const STYLE: &str = include_str!("status/status.css");
const SCRIPT: &str = include_str!("status/status.js");

/// Only this origin's script and style; fetches to this origin only; not framed; no
/// referrer (the player links leave for the HTTP listener).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page's routes (outside the token check).
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/status.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/status.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // A new binary may bring a new page: never a stale copy.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
