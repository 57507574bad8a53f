//! Who is acting, and what their roles let them do: the vocabulary of
//! access control, shared by the API (which authenticates callers), the
//! engine (which records and scopes what they do) and approvals (which
//! count their decisions).
//!
//! A [`Principal`] is a caller with an id (`user:alice`), a team and roles.
//! Roles are a closed set ([`Role`]); `admin` holds every other role. A
//! principal acts within its team ([`Principal::acts_for`]): what a team
//! owns (its Promises, Schedules, their runs) is changed by that team's
//! principals and by admins.
//!
//! Where access control is off (`--auth none`, `dev`), the caller is
//! [`Principal::unauthenticated`]: named by the `Fulfil-Actor` header as
//! given, with no team and every role, so nothing is scoped; approver
//! entries still match its id literally.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a principal may do. Every role may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads Promises, requests, runs, history, events and schedules.
    Viewer,
    /// Files and deletes requests, and sends events.
    Requester,
    /// Decides approvals named for the principal's team, user or role.
    Approver,
    /// Cancels and retries runs, reconciles requests, replays dead letters,
    /// pauses and resumes schedules.
    Operator,
    /// Applies Promises and Schedules owned by the principal's team.
    Author,
    /// Everything, tokens and policies included, for every team.
    Admin,
}

impl Role {
    /// Every role, least to most powerful.
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Requester,
        Role::Approver,
        Role::Operator,
        Role::Author,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Requester => "requester",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Author => "author",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; roles are viewer, requester, approver, operator, author and admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How the principal is recorded in history and compared for quorum and
    /// `allow_requester`: `user:alice`.
    pub id: String,
    /// The team it acts for; `None` only where access control is off.
    pub team: Option<String>,
    pub roles: BTreeSet<Role>,
    /// False where access control is off and the id is the caller's word.
    pub authenticated: bool,
}

impl Principal {
    /// An authenticated principal.
    pub fn new(id: impl Into<String>, team: impl Into<String>, roles: &[Role]) -> Principal {
        Principal {
            id: id.into(),
            team: Some(team.into()),
            roles: roles.iter().copied().collect(),
            authenticated: true,
        }
    }

    /// The caller where access control is off: named by a `Fulfil-Actor`
    /// header value as given, with every role and no team.
    pub fn unauthenticated(actor: &str) -> Principal {
        Principal {
            id: actor.trim().to_string(),
            team: None,
            roles: Role::ALL.into_iter().collect(),
            authenticated: false,
        }
    }

    /// A principal named by a `Fulfil-Actor` header value (access control
    /// off); the same as [`Principal::unauthenticated`].
    pub fn from_actor(actor: &str) -> Principal {
        Principal::unauthenticated(actor)
    }

    /// Whether the principal holds `role`; `admin` holds every role.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// Whether the principal may change what `owner` (a team) owns: an
    /// admin, a principal of that team, or anyone where access control is
    /// off. Something without an owner is changed by admins only.
    pub fn acts_for(&self, owner: Option<&str>) -> bool {
        if !self.authenticated || self.roles.contains(&Role::Admin) {
            return true;
        }
        matches!((self.team.as_deref(), owner), (Some(mine), Some(theirs)) if mine == theirs)
    }

    /// Whether this principal is one of `approvers` (`user:U` by id,
    /// `team:T` by team, `role:R` by a role it holds). Where access
    /// control is off, entries match the id literally.
    pub fn matches(&self, approvers: &[String]) -> bool {
        approvers.iter().any(|entry| {
            let entry = entry.trim();
            if entry == self.id {
                return true;
            }
            if !self.authenticated {
                return false;
            }
            match entry.split_once(':') {
                Some(("team", team)) => self.team.as_deref() == Some(team.trim()),
                Some(("role", role)) => role.parse().is_ok_and(|r| self.roles.contains(&r)),
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_admin_holds_them_all() {
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        let err = "root".parse::<Role>().expect_err("not a role");
        assert!(err.to_string().contains("viewer, requester"), "{err}");
        let admin = Principal::new("user:root", "platform", &[Role::Admin]);
        assert!(Role::ALL.into_iter().all(|r| admin.has(r)));
        let viewer = Principal::new("user:v", "platform", &[Role::Viewer]);
        assert!(viewer.has(Role::Viewer) && !viewer.has(Role::Requester));
    }

    #[test]
    fn a_principal_acts_for_its_own_team_only_unless_admin_or_unauthenticated() {
        let author = Principal::new("user:a", "team-data", &[Role::Author]);
        assert!(author.acts_for(Some("team-data")));
        assert!(!author.acts_for(Some("team-web")));
        assert!(!author.acts_for(None));
        let admin = Principal::new("user:root", "platform", &[Role::Admin]);
        assert!(admin.acts_for(Some("team-web")) && admin.acts_for(None));
        assert!(Principal::unauthenticated("user:x").acts_for(Some("team-web")));
    }

    #[test]
    fn approver_entries_match_by_user_team_and_role() {
        let alice = Principal::new("user:alice", "dba", &[Role::Approver]);
        assert!(alice.matches(&["user:alice".into()]));
        assert!(alice.matches(&["team:dba".into()]));
        assert!(alice.matches(&["role:approver".into()]));
        assert!(!alice.matches(&["team:web".into(), "role:admin".into(), "user:bob".into()]));
        // Off, the header's word is matched literally and nothing else.
        let header = Principal::unauthenticated(" user:alice ");
        assert!(header.matches(&["team:dba".into(), "user:alice".into()]));
        assert!(!header.matches(&["team:dba".into(), "role:approver".into()]));
    }
}
