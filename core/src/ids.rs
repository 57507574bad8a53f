//! Identifier newtypes, so a run id is never passed where a request id or a
//! task id belongs.
//!
//! Each is its value on the wire and in JSON (`#[serde(transparent)]`). The
//! store binds them with [`RunId::as_uuid`] and reads them back with
//! `From<Uuid>`: deriving `sqlx::Type` here would put sqlx into this crate
//! and so into every worker, which links `fulfil-core` but never a
//! database driver.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUID v7).
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// The id as a UUID, to bind in a query or put in a subject.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(text).map(Self)
            }
        }
    };
}

uuid_id! {
    /// A run: one execution of a request's workflow.
    RunId
}

uuid_id! {
    /// A request filed against a Promise.
    RequestId
}

uuid_id! {
    /// A rollout: a controlled upgrade of a Promise's live requests to
    /// another version (see docs/rollouts.md).
    RolloutId
}

uuid_id! {
    /// One attempt's task; results are applied by it, and it is the task
    /// message's `Nats-Msg-Id`.
    TaskId
}

/// A step's id within its Promise's workflow (`steps[].id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    /// The id as written in the Promise.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for StepId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for StepId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl std::borrow::Borrow<str> for StepId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for StepId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StepId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_value_on_the_wire() {
        let run = RunId::generate();
        let json = serde_json::to_value(run).expect("serializes");
        assert_eq!(json, serde_json::Value::String(run.to_string()));
        assert_eq!(serde_json::from_value::<RunId>(json).ok(), Some(run));
        assert_eq!(run.to_string().parse::<RunId>().ok(), Some(run));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
        let step = StepId::from("provision");
        assert_eq!(serde_json::to_value(&step).ok(), Some("provision".into()));
    }
}
