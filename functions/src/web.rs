//! The web app: the user's side of the pool in a browser (`functions/web/`, TypeScript built
//! with esbuild into `functions/web/dist/`, which is committed and embedded here, so neither
//! `cargo build` nor a user's machine needs npm). One page (`index.html`) answers every
//! route of the app, each of which has a URL of its own; the app reads the gateway API of
//! the same host with the session as a bearer token (never a cookie).
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles from this
//! origin only (no inline code, no CDN, no fonts from elsewhere), connections to this origin
//! and to the store's (presigned transfers), no frames, no forms posting elsewhere.

use bytes::Bytes;
use hyper::{Response, StatusCode};

/// One file of the app.
pub struct Page {
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// The assets' names do not change with their content: revalidate them.
    pub cache: &'static str,
}

const INDEX: &[u8] = include_bytes!("../web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../web/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../web/dist/app.css");
const ICON: &[u8] = include_bytes!("../web/dist/icon.svg");

/// The app's routes: each is the page, which shows the route.
fn is_route(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segs.as_slice(),
        [""] | ["jobs"]
            | ["jobs", _]
            | ["new"]
            | ["data"]
            | ["deployments"]
            | ["deployments", _]
            | ["pool"]
            | ["signin"]
    )
}

/// The file answering `path`, if the app has one.
pub fn page(path: &str) -> Option<Page> {
    let html = "text/html; charset=utf-8";
    Some(match path {
        "/app.js" => Page { content_type: "text/javascript; charset=utf-8", body: APP_JS, cache: "no-cache" },
        "/app.css" => Page { content_type: "text/css; charset=utf-8", body: APP_CSS, cache: "no-cache" },
        "/icon.svg" => Page { content_type: "image/svg+xml", body: ICON, cache: "max-age=86400" },
        p if is_route(p) => Page { content_type: html, body: INDEX, cache: "no-cache" },
        _ => return None,
    })
}

/// The policy for the app's pages: `store` is the origin presigned transfers go to.
pub fn policy(store: Option<&str>) -> String {
    let connect = match store {
        Some(o) => format!("'self' {o}"),
        None => "'self'".into(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The page's answer (its body as it is built in: the host frames it).
pub fn response(page: Page, store: Option<&str>) -> Response<Bytes> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", page.content_type)
        .header("cache-control", page.cache)
        .header("content-security-policy", policy(store))
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .body(Bytes::from_static(page.body))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_the_page_and_nothing_else_is() {
        for p in ["/", "/jobs", "/jobs/01j", "/new", "/data", "/deployments", "/deployments/x", "/pool", "/signin"] {
            assert_eq!(page(p).unwrap().body, INDEX, "{p}");
        }
        for p in ["/v1/info", "/d/x/", "/jobs/a/b", "/events", "/healthz", "/app.js.map", "/../etc/passwd"] {
            assert!(page(p).is_none_or(|pg| pg.body != INDEX), "{p}");
        }
        assert!(page("/nope").is_none());
    }

    #[test]
    fn the_policy_allows_this_origin_and_the_store_only() {
        let p = policy(Some("http://s3.local:4566"));
        assert!(p.contains("script-src 'self';"));
        assert!(p.contains("connect-src 'self' http://s3.local:4566;"));
        assert!(!p.contains("unsafe"));
    }
}
