//! W3C trace context on task messages (`docs/wire.md`, "Trace context").
//!
//! A run's trace is durable: its context is the `traceparent` its request
//! was filed with (an inbound event's, or the accepting API span's), kept
//! in the run's context in Postgres; a run filed without one has a trace
//! id derived from its run id. Either way a task dispatched after an
//! engine restart joins the same trace. The engine sends it as the
//! `traceparent` NATS header of every task message (and in the task's
//! `traceparent` field); the worker's execute span takes it as its
//! remote parent.
//!
//! Parsing and formatting cost nothing beyond a few bytes, so propagation
//! runs whether or not spans are exported.

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The NATS header carrying the trace context of a task.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A W3C `traceparent` (version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; `None` for anything else,
    /// including the all-zero ids the spec calls invalid.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; a later version may add some.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace of a run filed without a trace context: its trace id is
    /// the run id's 128 bits, its parent span id their low half, so every
    /// process derives the same trace from the run alone.
    pub fn for_run(run_id: u128) -> Self {
        let span_id = (run_id as u64).max(1);
        Self {
            trace_id: run_id.max(1),
            span_id,
            sampled: true,
        }
    }

    /// The trace context of `span`, when an OpenTelemetry layer records
    /// it; `None` without one.
    pub fn of_span(span: &tracing::Span) -> Option<Self> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| Self {
            trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
            sampled: span_context.is_sampled(),
        })
    }

    /// Makes this the remote parent of `span`, so the span joins the trace.
    /// Without an OpenTelemetry layer there is nothing to join; that is
    /// not an error.
    pub fn adopt(self, span: &tracing::Span) {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// The W3C trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// The trace context of a task message: its `traceparent` header, else
/// the task's `traceparent` field (`field`).
pub fn of_message(
    headers: Option<&async_nats::HeaderMap>,
    field: Option<&str>,
) -> Option<TraceParent> {
    headers
        .and_then(|h| h.get(TRACEPARENT_HEADER))
        .and_then(|v| TraceParent::parse(v.as_str()))
        .or_else(|| field.and_then(TraceParent::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_refuses_the_rest() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).expect("valid");
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parsed.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_run_without_a_context_has_its_id_as_trace_id() {
        let run_id = 0x01a2_0df6_c180_7723_a915_80db_2f00_06fa_u128;
        let tp = TraceParent::for_run(run_id);
        assert_eq!(tp.trace_id_hex(), "01a20df6c1807723a91580db2f0006fa");
        assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
    }
}
