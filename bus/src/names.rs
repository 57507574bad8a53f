//! Subject, stream and consumer names of one Fulfil installation, and the
//! header conventions every publisher shares.

/// Subject, stream and consumer names of one Fulfil installation.
///
/// Every name starts with the installation's prefix, so several installations
/// (or parallel tests) can share one NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsNames {
    prefix: String,
}

impl NatsNames {
    /// `prefix` must be a valid subject token: letters, digits, `-` and `_`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, InvalidPrefix> {
        let prefix = prefix.into();
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InvalidPrefix(prefix));
        }
        Ok(Self { prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Subject tasks of `queue` are published on.
    pub fn task_subject(&self, queue: &str) -> String {
        format!("{}.tasks.{queue}", self.prefix)
    }

    /// Subject filter covering every queue.
    pub fn all_tasks_subject(&self) -> String {
        format!("{}.tasks.>", self.prefix)
    }

    pub fn results_subject(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// Subject of progress messages; stored in the results stream.
    pub fn progress_subject(&self) -> String {
        format!("{}.progress", self.prefix)
    }

    /// `<prefix>.events.<kind>`, for example `fulfil.events.run.succeeded`.
    pub fn event_subject(&self, kind: &str) -> String {
        format!("{}.events.{kind}", self.prefix)
    }

    pub fn all_events_subject(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// Where unparseable or orphaned messages go, with the reason in a header.
    pub fn dead_letter_subject(&self, what: &str) -> String {
        format!("{}.deadletter.{what}", self.prefix)
    }

    pub fn all_dead_letter_subject(&self) -> String {
        format!("{}.deadletter.>", self.prefix)
    }

    pub fn tasks_stream(&self) -> String {
        format!("{}_tasks", self.prefix)
    }

    pub fn results_stream(&self) -> String {
        format!("{}_results", self.prefix)
    }

    pub fn events_stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_deadletter", self.prefix)
    }

    /// Stream capturing the subjects Promise triggers listen on.
    pub fn inbound_stream(&self) -> String {
        format!("{}_inbound", self.prefix)
    }

    /// Durable consumer of the inbound stream, shared by every engine.
    pub fn inbound_consumer(&self) -> String {
        format!("{}_inbound", self.prefix)
    }

    /// Durable consumer shared by every worker serving `queue`.
    pub fn worker_consumer(&self, queue: &str) -> String {
        format!("{}_worker_{queue}", self.prefix)
    }

    /// Durable consumer shared by every engine process.
    pub fn engine_consumer(&self) -> String {
        format!("{}_engine", self.prefix)
    }
}

/// The NATS prefix is not a single subject token.
#[derive(Debug, thiserror::Error)]
#[error("invalid NATS prefix {0:?}: use letters, digits, '-' and '_' only")]
pub struct InvalidPrefix(pub String);

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "Fulfil-Dead-Letter-Reason";

/// `text` made safe for a NATS header value: control characters (which
/// would break the protocol line) become spaces, and it is cut at 1 KiB.
pub fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_refuse_multi_token_prefixes() {
        assert!(NatsNames::new("a.b").is_err());
        assert!(NatsNames::new("").is_err());
        let names = NatsNames::new("t1").expect("valid prefix");
        assert_eq!(names.task_subject("gpu"), "t1.tasks.gpu");
        assert_eq!(names.worker_consumer("gpu"), "t1_worker_gpu");
        assert_eq!(
            names.dead_letter_subject("results"),
            "t1.deadletter.results"
        );
    }

    #[test]
    fn header_text_is_one_bounded_line() {
        let text = header_text(&format!("a\nb\r{}", "x".repeat(5000)));
        assert!(!text.contains(['\n', '\r']));
        assert_eq!(text.chars().count(), 1024);
    }
}
