//! Backstage's rules for what the export writes into an entity's metadata,
//! and names made to follow them.
//!
//! An entity name (and a label value) is 1 to 63 characters, `[a-z0-9A-Z]`
//! at both ends and `[-a-z0-9A-Z_.]` inside (`@backstage/catalog-model`'s
//! `KubernetesValidatorFunctions.isValidObjectName`). Names are made
//! lowercase: Backstage compares entity references without case, so two
//! names differing only in case would be one entity.

use std::collections::HashSet;

/// The longest entity name Backstage accepts.
pub const MAX_NAME: usize = 63;

/// `raw` as a valid entity name: lowercase, every run of other characters
/// turned into one `-`, trimmed to start and end alphanumeric and to
/// [`MAX_NAME`]; `fallback` when nothing is left.
pub fn entity_name(raw: &str, fallback: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(MAX_NAME));
    let mut gap = false;
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    let trimmed = trim_ends(truncate(&out, MAX_NAME));
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

/// Whether `name` follows Backstage's entity name rule.
#[cfg(test)]
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn truncate(s: &str, max: usize) -> &str {
    // ASCII only by construction, so any byte index is a char boundary;
    // `get` keeps that an assumption that cannot panic.
    s.get(..max.min(s.len())).unwrap_or(s)
}

fn trim_ends(s: &str) -> &str {
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
}

/// Names handed out for one kind of entity, each once.
#[derive(Debug, Default)]
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    /// `base` made a valid name, or, when taken, with `-2`, `-3`, ...
    /// (shortening `base` so the whole stays within [`MAX_NAME`]).
    pub fn unique(&mut self, base: &str, fallback: &str) -> String {
        let base = entity_name(base, fallback);
        if self.used.insert(base.clone()) {
            return base;
        }
        // Bounded: at most one more than the names handed out so far.
        for n in 2..=self.used.len() + 1 {
            let suffix = format!("-{n}");
            let candidate = format!(
                "{}{suffix}",
                trim_ends(truncate(&base, MAX_NAME - suffix.len()))
            );
            if self.used.insert(candidate.clone()) {
                return candidate;
            }
        }
        // Unreachable: among used.len() + 1 suffixes one is free.
        unreachable!("no free name among {} suffixes", self.used.len() + 1)
    }
}

/// A Fulfil team as the reference of the Backstage group that owns an
/// entity: `group:default/<team>`.
pub fn owner_ref(team: &str) -> String {
    format!("group:default/{}", entity_name(team, "unknown"))
}

/// "postgres-database" as "Postgres database": a title for people.
pub fn humanize(name: &str) -> String {
    let spaced: String = name
        .chars()
        .map(|c| if matches!(c, '-' | '_' | '.') { ' ' } else { c })
        .collect();
    let mut words = spaced.split_whitespace();
    let mut out = String::new();
    if let Some(first) = words.next() {
        let mut chars = first.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    for word in words {
        out.push(' ');
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_backstage_rules_whatever_the_input() {
        assert_eq!(entity_name("postgres-database", "x"), "postgres-database");
        assert_eq!(entity_name("Team Data!", "x"), "team-data");
        assert_eq!(entity_name("--a//b__", "x"), "a-b");
        assert_eq!(entity_name("ü~", "fallback"), "fallback");
        let long = "a".repeat(40) + "-" + &"b".repeat(40);
        let name = entity_name(&long, "x");
        assert_eq!(name.len(), 63);
        assert!(is_valid_name(&name));
        // Cut where a separator would end the name: trimmed again.
        let cut = "a".repeat(62) + "-b";
        assert_eq!(entity_name(&cut, "x"), "a".repeat(62));
        for raw in [
            "",
            "-",
            "a",
            "A.B_c",
            "x y z",
            "😀 smile",
            "a.-b",
            "...9...",
        ] {
            assert!(is_valid_name(&entity_name(raw, "fallback")), "{raw:?}");
        }
    }

    #[test]
    fn clashing_names_get_suffixes_within_the_length_limit() {
        let mut names = Names::default();
        assert_eq!(names.unique("Orders", "x"), "orders");
        assert_eq!(names.unique("orders", "x"), "orders-2");
        assert_eq!(names.unique("ORDERS", "x"), "orders-3");
        let long = "c".repeat(70);
        assert_eq!(names.unique(&long, "x"), "c".repeat(63));
        let second = names.unique(&long, "x");
        assert_eq!(second, format!("{}-2", "c".repeat(61)));
        assert!(is_valid_name(&second));
    }

    #[test]
    fn owners_and_titles_read_well() {
        assert_eq!(owner_ref("team-data"), "group:default/team-data");
        assert_eq!(owner_ref(""), "group:default/unknown");
        assert_eq!(humanize("postgres-database"), "Postgres database");
        assert_eq!(humanize("ml_environment.v2"), "Ml environment v2");
        assert_eq!(humanize(""), "");
    }
}
