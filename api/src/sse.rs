//! The client side of Server-Sent Events, for what reads
//! `GET /v1/runs/{id}/events` (the CLI's `run watch`, tests): bytes in as
//! they arrive, whole events out. Follows the WHATWG parsing rules that
//! matter here: `\n`, `\r\n` or `\r` line ends, comment lines (`:`)
//! ignored, an empty line ends an event, `data` lines joined by `\n`.

/// One event of the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, the run's history seq for run events.
    pub id: Option<String>,
    /// `event:`; `None` means `message`.
    pub event: Option<String>,
    pub data: String,
}

/// Incremental parser: feed it chunks, take whole events.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

/// Longest line kept while waiting for its end, so a peer that never
/// ends one cannot grow memory without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// A line longer than [`MAX_LINE`].
#[derive(Debug, thiserror::Error)]
#[error("an SSE line is longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

impl SseParser {
    /// Parses `chunk`; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.pending.len() {
            let b = self.pending[i];
            if b == b'\n' || b == b'\r' {
                // A `\r` last in the chunk may be half of `\r\n`: wait.
                if b == b'\r' && i + 1 == self.pending.len() {
                    break;
                }
                let line = String::from_utf8_lossy(&self.pending[start..i]).into_owned();
                if let Some(event) = self.line(&line) {
                    events.push(event);
                }
                i += if b == b'\r' && self.pending.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            } else {
                i += 1;
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            let had = std::mem::replace(&mut self.has_data, false);
            return had.then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.current.id = Some(value.to_string()),
            "event" => self.current.event = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the peer sends, however it is split: no panic, and the
        /// same events as when it arrives whole.
        #[test]
        fn arbitrary_bytes_parse_the_same_however_split(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>()], 0..400),
            split in 0usize..400,
        ) {
            let split = split.min(bytes.len());
            let mut whole = SseParser::default();
            let expected = whole.push(&bytes).ok();
            let mut parts = SseParser::default();
            let mut got = parts.push(&bytes[..split]).ok().unwrap_or_default();
            got.extend(parts.push(&bytes[split..]).ok().unwrap_or_default());
            // A `\r` last in the input waits for a possible `\n`: compare
            // after both have seen the same end.
            let mut expected = expected.unwrap_or_default();
            expected.extend(whole.push(b"\n\n").ok().unwrap_or_default());
            got.extend(parts.push(b"\n\n").ok().unwrap_or_default());
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn events_split_anywhere_parse_whole_and_comments_are_skipped() {
        let wire = b": keep-alive\r\nid: 3\r\nevent: run.started\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid:4\ndata: x\n\n";
        for split in 0..wire.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&wire[..split]).expect("short lines");
            events.extend(parser.push(&wire[split..]).expect("short lines"));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        id: Some("3".into()),
                        event: Some("run.started".into()),
                        data: "{\"a\":\n1}".into()
                    },
                    SseEvent {
                        id: Some("4".into()),
                        event: None,
                        data: "x".into()
                    },
                ],
                "split at {split}"
            );
        }
    }
}
