//! The extractors every route uses, in place of axum's: their rejections are
//! problems (`application/problem+json`) naming what was wrong, where (a
//! JSON pointer, a query or path parameter) and what is accepted, where
//! axum's answer `text/plain`.
//!
//! They also refuse text Postgres cannot store: a NUL character (U+0000) is
//! valid JSON (`"\u0000"`) and valid percent-encoding (`%00`), but no `text`
//! or `jsonb` value may hold one, so letting it through turns a caller's
//! mistake into a database error (a 500). Every string that reaches a
//! handler through these extractors, object keys included, is free of NUL.
//!
//! Bodies are read within the router's limit (`ApiState::max_body_bytes`,
//! [`MAX_BODY_BYTES`] unless configured, set once by the router's
//! `DefaultBodyLimit` and named to the extractors by [`BodyLimit`]); a
//! larger one is a 413 from every route alike, naming the limit.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use fulfil_core::pointer::find_nul;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Problem, ProblemCode};

/// The largest request body any route reads unless configured otherwise
/// (`--max-body`): 1 MiB holds any sane Promise, request or event, and
/// keeps what one caller can make the server buffer small.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The router's body limit, in every request's extensions, so a 413 names
/// the limit the router was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

/// A JSON request body (`Content-Type: application/json` or `...+json`),
/// free of NUL characters, deserialized into `T`.
///
/// As `Option<Json<T>>`, an empty body is `None`, whatever its content
/// type, and so is a JSON `null`, so `POST .../cancel` with no body takes
/// the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = body_bytes(req, state).await?;
        decode_json(&bytes).map(Json)
    }
}

impl<T, S> OptionalFromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        require_json(&headers)?;
        // A JSON `null` is how generated clients send an optional body they
        // were given none for: the same as no body.
        if bytes.trim_ascii() == b"null" {
            return Ok(None);
        }
        decode_json(&bytes).map(|v| Some(Json(v)))
    }
}

/// A body of UTF-8 text without NUL characters (a Promise as YAML or JSON).
/// Its content type is not checked: `curl --data-binary @promise.yaml`
/// labels it `application/x-www-form-urlencoded`, and the parser decides.
#[derive(Debug, Clone)]
pub struct Text(pub String);

impl<S> FromRequest<S> for Text
where
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            Problem::bad_request(format!(
                "the body is not UTF-8 text: invalid byte at offset {at} ({}); send the document as UTF-8",
                position(&bytes[..at])
            ))
            .with("offset", json!(at))
        })?;
        if let Some(at) = text.find('\0') {
            return Err(nul_problem(format!(
                "the body holds a NUL byte at offset {at} ({}); remove it",
                position(&bytes[..at])
            ))
            .with("offset", json!(at)));
        }
        Ok(Text(text))
    }
}

/// The body as bytes, within the router's limit (a 413 over it), for
/// routes that read it themselves (a CloudEvent in either binding).
#[derive(Debug, Clone)]
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        body_bytes(req, state).await.map(Body)
    }
}

/// The query string deserialized into `T`; unknown parameters are refused
/// when `T` denies unknown fields (every query type here does).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Decoded pairs first, to name the parameter that holds a NUL.
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| invalid_query(&e.body_text()))?;
        for (name, value) in &pairs.0 {
            if name.contains('\0') || value.contains('\0') {
                return Err(nul_problem(format!(
                    "query parameter {:?} holds a NUL character (%00); remove it",
                    name.replace('\0', "\\0")
                ))
                .with("parameter", json!(name.replace('\0', "\\0"))));
            }
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| invalid_query(&e.body_text()))
    }
}

/// Path parameters deserialized into `T`, each free of NUL characters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let pairs = axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| invalid_path(&e.body_text()))?;
        for (name, value) in &pairs.0 {
            if value.contains('\0') {
                return Err(nul_problem(format!(
                    "the {name} in the URL path holds a NUL character (%00); remove it"
                ))
                .with("parameter", json!(name)));
            }
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| invalid_path(&e.body_text()))
    }
}

fn invalid_query(detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        ProblemCode::InvalidQuery,
        "Invalid query string",
        detail.replace(
            "Failed to deserialize query string: ",
            "invalid query string: ",
        ),
    )
}

fn invalid_path(detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        ProblemCode::InvalidPath,
        "Invalid path",
        format!("the URL path is invalid: {detail}"),
    )
}

fn nul_problem(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        ProblemCode::NulCharacter,
        "NUL character",
        detail,
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    if is_json(headers) {
        return Ok(());
    }
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ProblemCode::UnsupportedMediaType,
        "Unsupported media type",
        match got {
            Some(got) => format!(
                "the body is {got:?}; this route takes JSON: send Content-Type: application/json"
            ),
            None => {
                "the body has no Content-Type; this route takes JSON: send Content-Type: application/json"
                    .to_string()
            }
        },
    ))
}

/// The body, within the router's limit; over it, a 413.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Problem> {
    let limit = req
        .extensions()
        .get::<BodyLimit>()
        .map_or(MAX_BODY_BYTES, |limit| limit.0);
    Bytes::from_request(req, state)
        .await
        .map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(limit)
            } else {
                Problem::bad_request(format!("could not read the body: {}", e.body_text()))
            }
        })
}

/// The one answer to a body over the limit (`limit` bytes), from every
/// route.
pub fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ProblemCode::PayloadTooLarge,
        "Payload too large",
        format!("the body is larger than the {limit} bytes a request may carry"),
    )
    .with("limit_bytes", json!(limit))
}

/// Parses, refuses NUL characters, then shapes into `T`, naming the JSON
/// pointer of whatever is wrong.
fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // serde_json stops at 128 levels of nesting, so a hostile body cannot
    // exhaust the stack here or in the walk below.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            ProblemCode::InvalidJson,
            "Invalid JSON",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if let Some(pointer) = find_nul(&value) {
        return Err(nul_problem(format!(
            "{} holds a NUL character (\\u0000), which cannot be stored; remove it",
            describe(&pointer)
        ))
        .with("pointer", json!(pointer)));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let pointer = pointer_of(e.path());
        let detail = e.inner().to_string();
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::InvalidBody,
            "Invalid body",
            format!(
                "{} does not have the expected shape: {detail}",
                describe(&pointer)
            ),
        )
        .with("errors", json!([{ "pointer": pointer, "detail": detail }]))
    })
}

/// Refuses a document (already parsed, e.g. a Promise read from YAML, where
/// `"\0"` is a NUL too) holding a NUL character in any string or key;
/// `what` names the document in the answer.
pub fn refuse_nul(value: &Value, what: &str) -> Result<(), Problem> {
    match find_nul(value) {
        None => Ok(()),
        Some(pointer) => Err(nul_problem(format!(
            "{what} holds a NUL character (U+0000) at {pointer:?}, which cannot be stored; remove it"
        ))
        .with("pointer", json!(pointer))),
    }
}

/// A JSON pointer for a message: the root (`""`) is "the body".
pub fn describe(pointer: &str) -> String {
    if pointer.is_empty() {
        "the body".to_string()
    } else {
        format!("{pointer} in the body")
    }
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&fulfil_core::pointer::escape_token(key));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// `line L, column C` of the end of `before`, for errors in a text body.
fn position(before: &[u8]) -> String {
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    format!("line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_in_values_and_keys_with_its_pointer() {
        let cases = [
            (
                json!({ "params": { "name": "a\u{0}b" } }),
                Some("/params/name"),
            ),
            (
                json!({ "params": { "list": [1, "x", "\u{0}"] } }),
                Some("/params/list/2"),
            ),
            (
                json!({ "params": { "a/b~\u{0}": 1 } }),
                Some("/params/a~1b~0\\0"),
            ),
            (json!("\u{0}"), Some("")),
            (json!({ "params": { "name": "ab" } }), None),
        ];
        for (value, expected) in cases {
            assert_eq!(find_nul(&value).as_deref(), expected, "{value}");
        }
    }

    #[test]
    fn json_errors_name_where_and_what() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            reason: Option<String>,
            nested: Option<Vec<u32>>,
        }
        let wrong = decode_json::<Body>(br#"{"nested": [1, "two"]}"#).expect_err("shape");
        assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(wrong.extra["errors"][0]["pointer"], "/nested/1");
        let nul = decode_json::<Body>(br#"{"reason": "a\u0000"}"#).expect_err("nul");
        assert_eq!(
            (nul.status, nul.code),
            (StatusCode::BAD_REQUEST, ProblemCode::NulCharacter)
        );
        assert_eq!(nul.extra["pointer"], "/reason");
        let syntax = decode_json::<Body>(b"{\"reason\": ").expect_err("syntax");
        assert_eq!(syntax.code, ProblemCode::InvalidJson);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            decode_json::<Value>(deep.as_bytes())
                .expect_err("too deep")
                .code,
            ProblemCode::InvalidJson
        );
        let unknown = decode_json::<Body>(br#"{"colour": 1}"#).expect_err("unknown");
        assert!(unknown.detail.contains("reason"), "{}", unknown.detail);
    }

    #[test]
    fn text_positions_count_lines_and_columns() {
        assert_eq!(position(b""), "line 1, column 1");
        assert_eq!(position(b"ab\ncd"), "line 2, column 3");
    }
}
