//! A received CloudEvent 1.0, parsed once by the `cloudevents-sdk` model
//! from either binding (structured `application/cloudevents+json`, or binary
//! with `ce-*` headers), and its JSON form: what triggers' expressions see as
//! `event` and what the ledger keeps.
//!
//! A NATS message published by a plain client often carries a structured
//! event without any header; such a body is read as structured mode too.
//!
//! Invariant: an event this module accepts can be stored. What Postgres
//! could not store (a NUL character anywhere, an `id`, `source` or `type`
//! over [`MAX_ATTRIBUTE_BYTES`]) is refused here with the reason, as is any
//! `specversion` but 1.0, so the ledger's commit never fails on input and
//! such a message is a dead letter instead of a batch retried to the end.

use cloudevents::event::SpecVersion;
use cloudevents::event::{AttributeValue, ExtensionValue};
use cloudevents::{AttributesReader, Data, Event};
use serde_json::{Map, Value, json};

/// The bytes are not a CloudEvent 1.0; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CloudEvent: {0}")]
pub struct NotACloudEvent(pub String);

/// Longest `id`, `source` or `type` accepted, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// A parsed CloudEvent and its JSON form.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    id: String,
    source: String,
    event_type: String,
    json: Value,
}

impl ReceivedEvent {
    /// Reads an event from HTTP headers and body (either binding).
    pub fn from_http(headers: &http::HeaderMap, body: &[u8]) -> Result<Self, NotACloudEvent> {
        let binary = headers.contains_key("ce-specversion");
        let structured = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/cloudevents+json"));
        let event = if binary || structured {
            cloudevents::binding::http::to_event(headers, body.to_vec())
                .map_err(|e| NotACloudEvent(e.to_string()))?
        } else {
            // A plain JSON body: structured mode without its content type.
            serde_json::from_slice::<Event>(body).map_err(|e| {
                NotACloudEvent(format!(
                    "no ce-specversion header and the body is not a structured CloudEvent: {e}"
                ))
            })?
        };
        Self::from_event(event)
    }

    /// Reads an event from a NATS message's headers and payload.
    pub fn from_nats(
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<Self, NotACloudEvent> {
        Self::from_header_map(&super::consumer::raw_headers(headers), payload)
    }

    /// Reads an event from headers kept as name → values (a dead letter's).
    pub fn from_header_map(
        headers: &std::collections::BTreeMap<String, Vec<String>>,
        payload: &[u8],
    ) -> Result<Self, NotACloudEvent> {
        let mut http_headers = http::HeaderMap::new();
        for (name, values) in headers {
            // NATS headers are case-preserving; HTTP names are lower case.
            let Ok(name) = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            else {
                continue;
            };
            for value in values {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    http_headers.append(name.clone(), value);
                }
            }
        }
        Self::from_http(&http_headers, payload)
    }

    fn from_event(event: Event) -> Result<Self, NotACloudEvent> {
        // The SDK also reads 0.3; the contract (DESIGN.md "Events") and the
        // triggers' `event` attributes are 1.0 only.
        if event.specversion() != SpecVersion::V10 {
            return Err(NotACloudEvent(format!(
                "specversion {} is not supported; send CloudEvents 1.0",
                event.specversion()
            )));
        }
        if event.id().is_empty() {
            return Err(NotACloudEvent("the id attribute is empty".into()));
        }
        if event.source().is_empty() {
            return Err(NotACloudEvent("the source attribute is empty".into()));
        }
        if event.ty().is_empty() {
            return Err(NotACloudEvent("the type attribute is empty".into()));
        }
        for (name, value) in [
            ("id", event.id()),
            ("source", event.source().as_str()),
            ("type", event.ty()),
        ] {
            // `source` and `type` are indexed in the ledger, and Postgres
            // refuses an index row much over 2 KiB: a longer one would fail
            // the batch's commit instead of being refused with a reason.
            if value.len() > MAX_ATTRIBUTE_BYTES {
                return Err(NotACloudEvent(format!(
                    "the {name} attribute is {} bytes; at most {MAX_ATTRIBUTE_BYTES} are accepted",
                    value.len()
                )));
            }
        }
        let json = json_form(&event);
        // Valid JSON, but no Postgres text or jsonb holds it: refused here
        // so the ledger insert cannot fail the whole batch.
        if let Some(pointer) = fulfil_core::pointer::find_nul(&json) {
            return Err(NotACloudEvent(format!(
                "the event holds a NUL character (U+0000) at {} (JSON pointer, NUL written \\0), which cannot be stored",
                pointer.replace('\0', "\\0")
            )));
        }
        Ok(Self {
            id: event.id().to_string(),
            source: event.source().to_string(),
            event_type: event.ty().to_string(),
            json,
        })
    }

    /// Rebuilds an event from its JSON form, as the ledger stored it.
    pub fn from_json(json: Value) -> Result<Self, NotACloudEvent> {
        let text = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| NotACloudEvent(format!("the {name} attribute is missing")))
        };
        Ok(Self {
            id: text("id")?,
            source: text("source")?,
            event_type: text("type")?,
            json,
        })
    }

    /// The CloudEvent `id`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The CloudEvent `source`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The CloudEvent `type`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The W3C `traceparent` extension, when the sender traced it.
    pub fn traceparent(&self) -> Option<&str> {
        self.json.get("traceparent").and_then(Value::as_str)
    }

    /// The event in the CloudEvents JSON format: attributes and extensions
    /// at the top level, `data` as JSON when it is JSON, else a string, else
    /// `data_base64`.
    pub fn as_json(&self) -> &Value {
        &self.json
    }
}

fn json_form(event: &Event) -> Value {
    let mut out = Map::new();
    for (name, value) in event.iter_attributes() {
        out.insert(name.to_string(), attribute_json(value));
    }
    for (name, value) in event.iter_extensions() {
        let value = match value {
            ExtensionValue::String(s) => json!(s),
            ExtensionValue::Boolean(b) => json!(b),
            ExtensionValue::Integer(i) => json!(i),
        };
        out.insert(name.to_string(), value);
    }
    let json_content = event
        .datacontenttype()
        .is_none_or(|ct| ct.starts_with("application/json") || ct.ends_with("+json"));
    match event.data() {
        None => {}
        Some(Data::Json(v)) => {
            out.insert("data".into(), v.clone());
        }
        Some(Data::String(s)) => {
            let parsed = json_content
                .then(|| serde_json::from_str::<Value>(s).ok())
                .flatten();
            out.insert("data".into(), parsed.unwrap_or_else(|| json!(s)));
        }
        Some(Data::Binary(bytes)) => {
            // Binary mode delivers a JSON body as bytes (STACK-turn2 §1).
            let parsed = json_content
                .then(|| serde_json::from_slice::<Value>(bytes).ok())
                .flatten();
            match (parsed, std::str::from_utf8(bytes)) {
                (Some(v), _) => out.insert("data".into(), v),
                (None, Ok(text)) => out.insert("data".into(), json!(text)),
                (None, Err(_)) => out.insert("data_base64".into(), json!(base64(bytes))),
            };
        }
    }
    Value::Object(out)
}

fn attribute_json(value: AttributeValue<'_>) -> Value {
    match value {
        AttributeValue::Boolean(b) => json!(b),
        AttributeValue::Integer(i) => json!(i),
        AttributeValue::Time(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        other => json!(other.to_string()),
    }
}

/// Standard base64, for payloads that are not text.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn structured_binary_and_headerless_events_read_the_same() {
        let body = br#"{"specversion":"1.0","id":"e-1","source":"/teams","type":"com.acme.team.created",
                       "time":"2026-12-02T10:00:00+01:00","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                       "datacontenttype":"application/json","data":{"team":"data","tier":"gold"}}"#;
        let structured = ReceivedEvent::from_http(
            &header_map(&[("content-type", "application/cloudevents+json")]),
            body,
        )
        .expect("structured");
        let headerless = ReceivedEvent::from_nats(None, body).expect("headerless");
        let binary = ReceivedEvent::from_http(
            &header_map(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", "/teams"),
                ("ce-type", "com.acme.team.created"),
                ("ce-time", "2026-12-02T09:00:00Z"),
                (
                    "ce-traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("content-type", "application/json"),
            ]),
            br#"{"team":"data","tier":"gold"}"#,
        )
        .expect("binary");
        for event in [&structured, &headerless, &binary] {
            assert_eq!(event.id(), "e-1");
            assert_eq!(event.source(), "/teams");
            assert_eq!(event.event_type(), "com.acme.team.created");
            assert_eq!(event.as_json()["data"]["tier"], "gold");
            assert_eq!(event.as_json()["time"], "2026-12-02T09:00:00Z");
            assert_eq!(
                event.traceparent(),
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            );
        }
        let again = ReceivedEvent::from_json(binary.as_json().clone()).expect("from ledger");
        assert_eq!(again.id(), "e-1");
    }

    #[test]
    fn what_is_not_a_cloudevent_is_refused_with_the_reason() {
        let no_source = br#"{"specversion":"1.0","id":"e-1","type":"t"}"#;
        let e = ReceivedEvent::from_nats(None, no_source).expect_err("no source");
        assert!(e.0.contains("source"), "{e}");
        let e = ReceivedEvent::from_nats(None, b"\xff\x00 not json").expect_err("bytes");
        assert!(e.0.contains("not a structured CloudEvent"), "{e}");
        let wrong_version = br#"{"specversion":"0.1","id":"e","source":"s","type":"t"}"#;
        assert!(ReceivedEvent::from_nats(None, wrong_version).is_err());
        let empty_id = br#"{"specversion":"1.0","id":"","source":"s","type":"t"}"#;
        assert!(ReceivedEvent::from_nats(None, empty_id).is_err());
    }

    #[test]
    fn binary_data_that_is_not_json_is_kept_as_text_or_base64() {
        let headers = header_map(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "s"),
            ("ce-type", "t"),
            ("content-type", "application/octet-stream"),
        ]);
        let text = ReceivedEvent::from_http(&headers, b"hello").expect("text");
        assert_eq!(text.as_json()["data"], "hello");
        let bytes = ReceivedEvent::from_http(&headers, &[0xff, 0xfe, 0x00]).expect("bytes");
        assert_eq!(bytes.as_json()["data_base64"], "//4A");
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
    }

    #[test]
    fn other_versions_nul_characters_and_oversized_attributes_are_refused_with_the_reason() {
        let v03 = br#"{"specversion":"0.3","id":"e","source":"s","type":"t"}"#;
        let e = ReceivedEvent::from_nats(None, v03).expect_err("0.3");
        assert!(e.0.contains("specversion 0.3"), "{e}");
        let nul = br#"{"specversion":"1.0","id":"e","source":"s","type":"t","data":{"a\u0000":1}}"#;
        let e = ReceivedEvent::from_nats(None, nul).expect_err("NUL in a key");
        assert!(e.0.contains("NUL") && e.0.contains("/data/a\\0"), "{e}");
        let nul_id = br#"{"specversion":"1.0","id":"e\u0000","source":"s","type":"t"}"#;
        assert!(ReceivedEvent::from_nats(None, nul_id).is_err());
        let long = json!({"specversion": "1.0", "id": "e", "source": "s".repeat(MAX_ATTRIBUTE_BYTES + 1), "type": "t"});
        let e = ReceivedEvent::from_nats(None, &serde_json::to_vec(&long).expect("json"))
            .expect_err("long source");
        assert!(e.0.contains("source attribute is 1025 bytes"), "{e}");
        let longest = json!({"specversion": "1.0", "id": "e", "source": "s", "type": "t".repeat(MAX_ATTRIBUTE_BYTES)});
        assert!(
            ReceivedEvent::from_nats(None, &serde_json::to_vec(&longest).expect("json")).is_ok()
        );
    }

    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Header names a sender might use, CloudEvents ones most of all, in
    /// the case NATS preserves and in junk.
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("ce-specversion".to_string()),
            Just("ce-id".to_string()),
            Just("ce-source".to_string()),
            Just("ce-type".to_string()),
            Just("ce-time".to_string()),
            Just("ce-subject".to_string()),
            Just("ce-dataschema".to_string()),
            Just("Ce-Traceparent".to_string()),
            Just("content-type".to_string()),
            Just("Content-Type".to_string()),
            "ce-[a-z]{0,8}",
            ".{0,12}",
        ]
    }

    /// Values: plausible ones (so the parser gets past its first checks)
    /// and anything at all.
    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("1.0".to_string()),
            Just("0.3".to_string()),
            Just("application/json".to_string()),
            Just("application/cloudevents+json".to_string()),
            Just("application/cloudevents-batch+json".to_string()),
            Just("2026-12-02T10:00:00Z".to_string()),
            "[ -~]{0,24}",
            ".{0,24}",
        ]
    }

    fn headers() -> impl Strategy<Value = BTreeMap<String, Vec<String>>> {
        proptest::collection::btree_map(
            header_name(),
            proptest::collection::vec(header_value(), 0..3),
            0..8,
        )
    }

    /// Structured events with attributes of any JSON kind, beside raw bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,16}".prop_map(Value::from),
            Just(json!("1.0")),
            Just(json!("2026-12-02T10:00:00Z")),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        let attribute = prop_oneof![
            Just("specversion".to_string()),
            Just("id".to_string()),
            Just("source".to_string()),
            Just("type".to_string()),
            Just("time".to_string()),
            Just("datacontenttype".to_string()),
            Just("data".to_string()),
            Just("data_base64".to_string()),
            Just("dataschema".to_string()),
            "[a-z]{1,8}",
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            proptest::collection::btree_map(attribute, value, 0..9).prop_map(|m| {
                let mut object: Map<String, Value> = m.into_iter().collect();
                // Mostly a valid version, so the other attributes are read.
                object.entry("specversion").or_insert_with(|| json!("1.0"));
                serde_json::to_vec(&object).unwrap_or_default()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever arrives, parsing answers an event or a reason; never a
        /// panic. An event it answers has the three required attributes
        /// and reads back from its ledger form.
        #[test]
        fn arbitrary_headers_and_bytes_never_panic_the_parser(headers in headers(), body in body()) {
            let mut http_headers = http::HeaderMap::new();
            for (name, values) in &headers {
                let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else { continue };
                for value in values {
                    if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                        http_headers.append(name.clone(), value);
                    }
                }
            }
            for parsed in [
                ReceivedEvent::from_header_map(&headers, &body),
                ReceivedEvent::from_http(&http_headers, &body),
                ReceivedEvent::from_nats(None, &body),
            ] {
                match parsed {
                    Ok(event) => {
                        prop_assert!(!event.id().is_empty());
                        prop_assert!(!event.source().is_empty());
                        prop_assert!(!event.event_type().is_empty());
                        prop_assert!(event.as_json().is_object());
                        let again = ReceivedEvent::from_json(event.as_json().clone())
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(again.id(), event.id());
                        prop_assert_eq!(again.source(), event.source());
                    }
                    Err(NotACloudEvent(reason)) => prop_assert!(!reason.is_empty()),
                }
            }
        }
    }
}
