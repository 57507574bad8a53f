//! How a failed command reports its error on stderr: each cause once, and,
//! when a service could not be reached, how to start it.
//!
//! Error types here often print their source inside their own message
//! (`database error: pool timed out: pool timed out`), so printing the
//! chain joined by `: ` repeated causes; [`render`] cuts each message's
//! copy of the next. The service that was being reached is named by a
//! [`Reaching`] context at the connecting call, not guessed from text.

use std::fmt;

/// A service the command was connecting to; attached as context.
#[derive(Debug, Clone)]
pub enum Reaching {
    /// Postgres, at a URL already redacted.
    Postgres(String),
    Nats(String),
    /// The Fulfil HTTP API.
    Api(String),
}

impl fmt::Display for Reaching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(url) => write!(f, "cannot connect to Postgres at {url}"),
            Self::Nats(url) => write!(f, "cannot connect to NATS at {url}"),
            Self::Api(url) => write!(f, "cannot reach the Fulfil API at {url}"),
        }
    }
}

impl Reaching {
    fn hint(&self) -> String {
        match self {
            Self::Postgres(url) => format!(
                "hint: is Postgres running and accepting connections at {}? Start it (e.g. \
                 `pg_ctlcluster {} main start` or `systemctl start postgresql`), or \
                 point --database-url / DATABASE_URL at a running server.",
                host_port(url),
                postgres_version()
            ),
            Self::Nats(url) => format!(
                "hint: is nats-server running at {}, with JetStream? Start it with \
                 `nats-server -js`, or point --nats-url / NATS_URL at a running server.",
                host_port(url)
            ),
            Self::Api(url) => format!(
                "hint: is `fulfil dev` or `fulfil serve` running at {url}? Start one, or point \
                 --api-url / FULFIL_API_URL at it."
            ),
        }
    }
}

/// The installed Postgres version for `pg_ctlcluster` when there is exactly
/// one (Debian and Ubuntu keep one directory per version under
/// /etc/postgresql); `<version>` otherwise.
fn postgres_version() -> String {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match versions.as_slice() {
        [one] => one.clone(),
        _ => "<version>".to_string(),
    }
}

/// `host:port` of a URL, for the hints.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// The error as printed on stderr: `error: ` and each cause once, then a
/// hint when a service was unreachable.
pub fn render(error: &anyhow::Error) -> String {
    // Unreachable: what was being reached and the root cause say it all;
    // the layers between (pool, HTTP client, connector) add only noise.
    if let Some(reaching) = error.downcast_ref::<Reaching>()
        && unreachable(error)
    {
        return format!(
            "error: {reaching}: {}\n{}",
            error.root_cause(),
            reaching.hint()
        );
    }
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    let mut parts: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        // Drop the copy of the next cause this message carries at its end.
        let own = match messages.get(i + 1) {
            Some(next) if message.ends_with(next.as_str()) && message.len() > next.len() => {
                message[..message.len() - next.len()].trim_end_matches([':', ' '])
            }
            _ => message.as_str(),
        };
        if !own.is_empty() && !parts.iter().any(|p| p == own) {
            parts.push(own.to_string());
        }
    }
    format!("error: {}", parts.join(": "))
}

/// Whether the chain says the service did not answer at all (as opposed
/// to answering with a refusal: a wrong password, a missing database).
fn unreachable(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind;
    error.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::TimedOut
                    | ErrorKind::NotFound
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            );
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_));
        }
        if let Some(e) = cause.downcast_ref::<reqwest::Error>() {
            return e.is_connect() || e.is_timeout();
        }
        if let Some(e) = cause.downcast_ref::<async_nats::ConnectError>() {
            return matches!(
                e.kind(),
                async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
            );
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let error = anyhow::anyhow!("pool timed out")
            .context("database error: pool timed out")
            .context("applying migrations");
        assert_eq!(
            render(&error),
            "error: applying migrations: database error: pool timed out"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = anyhow::Error::new(io)
            .context("tcp connect error: refused")
            .context(Reaching::Postgres("postgres://u@127.0.0.1:1/x".into()));
        let text = render(&error);
        assert_eq!(
            text.lines().next(),
            Some("error: cannot connect to Postgres at postgres://u@127.0.0.1:1/x: refused")
        );
        assert!(text.contains("hint: is Postgres running"), "{text}");
        assert!(text.contains("127.0.0.1:1?"), "{text}");
    }

    #[test]
    fn a_refusal_gets_no_start_hint() {
        let error = Err::<(), _>(anyhow::anyhow!("database \"x\" does not exist"))
            .context(Reaching::Postgres("postgres://127.0.0.1/x".into()))
            .expect_err("error");
        assert!(!render(&error).contains("hint"), "{}", render(&error));
    }
}
