//! The web console at `/ui`: a single-page application whose files are
//! embedded in the binary at build time (see `api/build.rs`), so a Fulfil
//! install serves its console with no files, CDN or internet.
//!
//! Every page URL under `/ui` answers the same `index.html` (the console
//! routes in the browser, so any page and filter can be shared as a URL);
//! `/ui/assets/...` are its scripts and styles. None of it holds data:
//! the console reads everything through `/v1` with the caller's token, so
//! it sits outside the API's authentication like `/healthz` does.
//!
//! `--console-dir` serves the files from a directory instead, re-read on
//! every request: for working on the console without rebuilding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::Problem;

/// Path under the console and bytes of each embedded file.
static EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Scripts only from the console itself, no framing, no referrer leaking
/// run ids to other sites. Inline styles are allowed: the graph and the
/// timeline position their shapes with them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// Where the console's files come from.
#[derive(Debug, Clone, Default)]
pub enum ConsoleFiles {
    /// Built into the binary (the default).
    #[default]
    Embedded,
    /// Read from this directory on every request (`--console-dir`).
    Directory(PathBuf),
}

/// The console's routes.
pub fn router(files: ConsoleFiles) -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/assets/{*path}", get(asset))
        .route("/ui/{*page}", get(index))
        .with_state(files)
}

async fn index(State(files): State<ConsoleFiles>, headers: HeaderMap) -> Response {
    serve(&files, "index.html", &headers).await
}

async fn asset(
    State(files): State<ConsoleFiles>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&files, &format!("assets/{path}"), &headers).await
}

async fn serve(files: &ConsoleFiles, path: &str, headers: &HeaderMap) -> Response {
    let found = match files {
        ConsoleFiles::Embedded => EMBEDDED
            .iter()
            .position(|(p, _)| *p == path)
            .map(|i| (Body::from(EMBEDDED[i].1), embedded_etag(i))),
        ConsoleFiles::Directory(dir) => read_from(dir, path).await,
    };
    let Some((body, etag)) = found else {
        return Problem::not_found("console file", path).into_response();
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type(path))], body).into_response()
    };
    let h = response.headers_mut();
    // Revalidated on each load (cheap with the ETag), so a new binary's
    // console is never mixed with an old one's cached scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn embedded_etag(index: usize) -> String {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS
        .get_or_init(|| EMBEDDED.iter().map(|(_, body)| etag(body)).collect())
        .get(index)
        .cloned()
        .unwrap_or_default()
}

fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// A file of the console directory; `None` for a path that is not one or
/// leaves the directory.
async fn read_from(dir: &Path, path: &str) -> Option<(Body, String)> {
    if path
        .split('/')
        .any(|part| part.is_empty() || part == ".." || part.starts_with('.'))
    {
        return None;
    }
    let body = tokio::fs::read(dir.join(path)).await.ok()?;
    let etag = etag(&body);
    Some((Body::from(body), etag))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_embedded_with_its_index_and_typed_assets() {
        let index = EMBEDDED.iter().find(|(p, _)| *p == "index.html");
        let (path, body) = index.expect("index.html is embedded");
        assert!(content_type(path).starts_with("text/html"));
        assert!(String::from_utf8_lossy(body).contains("/ui/assets/"));
        let scripts: Vec<_> = EMBEDDED
            .iter()
            .filter(|(p, _)| p.ends_with(".js"))
            .collect();
        assert!(!scripts.is_empty(), "the console has scripts");
        assert!(
            scripts
                .iter()
                .all(|(p, _)| content_type(p).starts_with("text/javascript"))
        );
    }
}
