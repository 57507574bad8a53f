//! Who may change what a team owns: the ownership lookups and the decisions
//! the API makes once the route's role gate has let a caller through
//! (docs/access.md "Teams and ownership").
//!
//! Contract:
//! * Only authenticated principals are scoped. Where access control is off
//!   the caller is `Principal::unauthenticated` and every decision here
//!   allows; an admin acts for every team ([`Principal::acts_for`]).
//! * A Promise or Schedule document names its owner team in
//!   `metadata.owner`. An author may apply one only if it names the
//!   author's team, and only over an existing one the author's team owns
//!   ([`may_apply`]). Something stored without an owner is changed by
//!   admins only, so turning access control on never hands an unowned
//!   Promise to whichever team applies it first.
//! * A request belongs to two teams: the owner team of its Promise and the
//!   team of the principal who filed it (`requests.team`). Either may
//!   delete or reconcile it, and cancel or retry its runs ([`may_act`]).
//!   A run's owner team is `runs.owner`, copied from the Promise when the
//!   run was created.
//! * `spec.access.teams` narrows which teams may file requests
//!   ([`may_file`]); absent, every team may.
//! * The lookups answer `None` for something that does not exist, so the
//!   caller answers 404 before deciding anything: existence is not a
//!   secret (every authenticated principal reads everything), but a refusal
//!   must never stand in for a not-found.
//! * Nothing here writes. A refusal is decided before the action starts,
//!   so a refused caller has changed nothing.

use fulfil_core::Promise;
use fulfil_core::access::Principal;
use fulfil_core::ids::{RequestId, RunId};
use sqlx::PgPool;

/// Why a principal may not do what it asked. Each names the teams involved
/// so the caller can tell who could.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The document names no `metadata.owner`; with access control on,
    /// everything a team applies is owned by that team.
    #[error(
        "{kind} {name} has no metadata.owner: set `metadata.owner: {}` to apply it as a member of that team",
        team.as_deref().unwrap_or("<team>")
    )]
    MissingOwner {
        kind: &'static str,
        name: String,
        team: Option<String>,
    },
    /// The caller acts outside its team: the document or the stored thing
    /// belongs to another team.
    #[error("{detail}")]
    OutsideTeam {
        detail: String,
        team: Option<String>,
        owner: Option<String>,
    },
    /// `spec.access.teams` does not list the caller's team.
    #[error(
        "Promise {promise} takes requests only from the teams {}; this caller is of team {}",
        allowed.join(", "),
        team.as_deref().unwrap_or("(none)")
    )]
    NotOpenToTeam {
        promise: String,
        allowed: Vec<String>,
        team: Option<String>,
    },
}

/// What a Promise or Schedule is, in refusal texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Promise,
    Schedule,
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Promise => "Promise",
            DocumentKind::Schedule => "Schedule",
        }
    }
}

/// May `principal` apply a `kind` document called `name` naming `owner` as
/// its `metadata.owner`, over what is stored under that name (`stored`:
/// `None` when nothing is, else the stored owner)?
pub fn may_apply(
    principal: &Principal,
    kind: DocumentKind,
    name: &str,
    owner: Option<&str>,
    stored: Option<Option<&str>>,
) -> Result<(), Refusal> {
    if !principal.authenticated || principal.acts_for(None) {
        // Off, or an admin: `acts_for(None)` holds only for those.
        return Ok(());
    }
    let team = principal.team.clone();
    let Some(owner) = owner.map(str::trim).filter(|o| !o.is_empty()) else {
        return Err(Refusal::MissingOwner {
            kind: kind.as_str(),
            name: name.to_string(),
            team,
        });
    };
    if !principal.acts_for(Some(owner)) {
        return Err(Refusal::OutsideTeam {
            detail: format!(
                "{} {name} names metadata.owner {owner}, but this caller acts for team {}; \
                 apply it with metadata.owner: {}",
                kind.as_str(),
                team.as_deref().unwrap_or("(none)"),
                team.as_deref().unwrap_or("<team>"),
            ),
            team,
            owner: Some(owner.to_string()),
        });
    }
    if let Some(stored) = stored
        && !principal.acts_for(stored)
    {
        return Err(Refusal::OutsideTeam {
            detail: format!(
                "{} {name} already exists and is owned by {}; only that team or an admin may \
                 change it",
                kind.as_str(),
                stored.map_or("no team (admins only)".to_string(), |s| format!("team {s}")),
            ),
            team,
            owner: stored.map(str::to_string),
        });
    }
    Ok(())
}

/// May `principal` remove or pause/resume the stored `kind` called `name`,
/// owned by `owner`?
pub fn may_change(
    principal: &Principal,
    kind: DocumentKind,
    name: &str,
    owner: Option<&str>,
) -> Result<(), Refusal> {
    if principal.acts_for(owner) {
        return Ok(());
    }
    Err(Refusal::OutsideTeam {
        detail: format!(
            "{} {name} is owned by {}, and this caller acts for team {}",
            kind.as_str(),
            owner.map_or("no team (admins only)".to_string(), |o| format!("team {o}")),
            principal.team.as_deref().unwrap_or("(none)"),
        ),
        team: principal.team.clone(),
        owner: owner.map(str::to_string),
    })
}

/// May `principal` file a request for `promise` (its `spec.access`)?
pub fn may_file(principal: &Principal, promise: &Promise) -> Result<(), Refusal> {
    let Some(access) = &promise.spec.access else {
        return Ok(());
    };
    if !principal.authenticated || principal.acts_for(None) {
        return Ok(());
    }
    match principal.team.as_deref() {
        Some(team) if access.admits(team) => Ok(()),
        team => Err(Refusal::NotOpenToTeam {
            promise: promise.metadata.name.clone(),
            allowed: access.teams.clone(),
            team: team.map(str::to_string),
        }),
    }
}

/// The teams a request or run belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// The Promise's owner team (`metadata.owner`; for a run, `runs.owner`).
    pub owner: Option<String>,
    /// The team of the principal who filed the request.
    pub request_team: Option<String>,
}

/// May `principal` act (`action`, e.g. `cancel run 0192…`) on what
/// `owners` describes: it acts for the owner team or the request's team.
pub fn may_act(principal: &Principal, action: &str, owners: &Owners) -> Result<(), Refusal> {
    let for_request_team =
        owners.request_team.is_some() && principal.acts_for(owners.request_team.as_deref());
    if principal.acts_for(owners.owner.as_deref()) || for_request_team {
        return Ok(());
    }
    let team_of = |t: &Option<String>| {
        t.as_deref()
            .map_or("no team".to_string(), |t| format!("team {t}"))
    };
    Err(Refusal::OutsideTeam {
        detail: format!(
            "{action} is for the Promise's owner ({}) or the request's filing team ({}); this \
             caller acts for team {}",
            team_of(&owners.owner),
            team_of(&owners.request_team),
            principal.team.as_deref().unwrap_or("(none)"),
        ),
        team: principal.team.clone(),
        owner: owners.owner.clone(),
    })
}

/// The owner team of Promise `name`'s head version: `None` if there is no
/// such Promise, `Some(None)` if it has no owner.
pub async fn promise_owner(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT p.owner FROM fulfil.promise_heads h
         JOIN fulfil.promises p ON p.name = h.name AND p.version = h.version
         WHERE h.name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// The owner team of Schedule `name` (its document's `metadata.owner`):
/// `None` if there is no such Schedule.
pub async fn schedule_owner(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT document #>> '{metadata,owner}' FROM fulfil.schedules WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// The teams request `id` belongs to: its Promise's current owner and its
/// filing team; `None` if there is no such request.
pub async fn request_owners(pool: &PgPool, id: RequestId) -> Result<Option<Owners>, sqlx::Error> {
    owners(
        pool,
        "SELECT p.owner, q.team FROM fulfil.requests q
         LEFT JOIN fulfil.promise_heads h ON h.name = q.promise
         LEFT JOIN fulfil.promises p ON p.name = h.name AND p.version = h.version
         WHERE q.id = $1",
        id.as_uuid(),
    )
    .await
}

/// The teams run `id` belongs to: `runs.owner` and its request's filing
/// team; `None` if there is no such run.
pub async fn run_owners(pool: &PgPool, id: RunId) -> Result<Option<Owners>, sqlx::Error> {
    owners(
        pool,
        "SELECT r.owner, q.team FROM fulfil.runs r
         LEFT JOIN fulfil.requests q ON q.id = r.request_id
         WHERE r.id = $1",
        id.as_uuid(),
    )
    .await
}

/// Runs `sql`, which selects (owner, request team) of the row keyed `id`.
async fn owners(
    pool: &PgPool,
    sql: &'static str,
    id: uuid::Uuid,
) -> Result<Option<Owners>, sqlx::Error> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as(sql).bind(id).fetch_optional(pool).await?;
    Ok(row.map(|(owner, request_team)| Owners {
        owner,
        request_team,
    }))
}

#[cfg(test)]
mod tests {
    use fulfil_core::access::Role;

    use super::*;

    fn alice() -> Principal {
        Principal::new("user:alice", "team-a", &[Role::Author, Role::Operator])
    }

    fn bob() -> Principal {
        Principal::new("user:bob", "team-b", &[Role::Author, Role::Operator])
    }

    fn root() -> Principal {
        Principal::new("user:root", "platform", &[Role::Admin])
    }

    const PROMISE: DocumentKind = DocumentKind::Promise;

    #[test]
    fn an_author_applies_what_its_team_owns() {
        assert_eq!(
            may_apply(&alice(), PROMISE, "db", Some("team-a"), None),
            Ok(())
        );
        assert_eq!(
            may_apply(
                &alice(),
                PROMISE,
                "db",
                Some("team-a"),
                Some(Some("team-a"))
            ),
            Ok(())
        );
    }

    #[test]
    fn an_author_cannot_overwrite_another_teams_promise() {
        let refused = may_apply(&bob(), PROMISE, "db", Some("team-b"), Some(Some("team-a")));
        assert!(
            matches!(&refused, Err(Refusal::OutsideTeam { owner: Some(o), team: Some(t), .. })
                if o == "team-a" && t == "team-b"),
            "{refused:?}"
        );
    }

    #[test]
    fn an_author_cannot_name_another_team_as_owner() {
        let refused = may_apply(&bob(), PROMISE, "db", Some("team-a"), None);
        assert!(
            matches!(refused, Err(Refusal::OutsideTeam { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_document_without_owner_is_refused_saying_how_to_set_it() {
        let refused = may_apply(&alice(), PROMISE, "db", None, None).expect_err("refused");
        assert!(
            refused.to_string().contains("metadata.owner: team-a"),
            "{refused}"
        );
        assert!(matches!(refused, Refusal::MissingOwner { .. }));
    }

    #[test]
    fn an_unowned_stored_promise_is_changed_by_admins_only() {
        let refused = may_apply(&alice(), PROMISE, "db", Some("team-a"), Some(None));
        assert!(matches!(
            refused,
            Err(Refusal::OutsideTeam { owner: None, .. })
        ));
        assert_eq!(may_apply(&root(), PROMISE, "db", None, Some(None)), Ok(()));
    }

    #[test]
    fn an_admin_and_an_unauthenticated_caller_apply_anything() {
        assert_eq!(
            may_apply(&root(), PROMISE, "db", Some("team-b"), Some(Some("team-a"))),
            Ok(())
        );
        let off = Principal::unauthenticated("cli:alice");
        assert_eq!(
            may_apply(&off, PROMISE, "db", None, Some(Some("team-a"))),
            Ok(())
        );
    }

    #[test]
    fn either_the_owner_team_or_the_filing_team_may_act_on_a_request() {
        let owners = Owners {
            owner: Some("team-a".into()),
            request_team: Some("team-b".into()),
        };
        assert_eq!(may_act(&alice(), "cancel", &owners), Ok(()));
        assert_eq!(may_act(&bob(), "cancel", &owners), Ok(()));
        let carol = Principal::new("user:carol", "team-c", &[Role::Operator]);
        let refused = may_act(&carol, "cancel run x", &owners).expect_err("refused");
        assert!(refused.to_string().contains("team-a"), "{refused}");
        assert_eq!(may_act(&root(), "cancel", &owners), Ok(()));
    }

    #[test]
    fn a_request_filed_by_the_engine_belongs_to_the_owner_team_only() {
        let owners = Owners {
            owner: Some("team-a".into()),
            request_team: None,
        };
        assert_eq!(may_act(&alice(), "delete", &owners), Ok(()));
        assert!(may_act(&bob(), "delete", &owners).is_err());
    }

    #[test]
    fn schedules_are_paused_by_their_owner_team() {
        let kind = DocumentKind::Schedule;
        assert_eq!(
            may_change(&alice(), kind, "nightly", Some("team-a")),
            Ok(())
        );
        assert!(may_change(&bob(), kind, "nightly", Some("team-a")).is_err());
        assert!(may_change(&bob(), kind, "nightly", None).is_err());
        assert_eq!(may_change(&root(), kind, "nightly", None), Ok(()));
    }

    fn promise(access: &str) -> Promise {
        Promise::parse(&format!(
            "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {{ name: db, version: 1.0.0, owner: team-a }}\nspec:\n  workflow:\n    steps:\n      - {{ id: create, uses: echo }}\n{access}"
        ))
        .expect("valid Promise")
    }

    #[test]
    fn spec_access_admits_only_the_listed_teams() {
        let p = promise("  access: { teams: [team-a] }\n");
        assert_eq!(may_file(&alice(), &p), Ok(()));
        let refused = may_file(&bob(), &p).expect_err("refused");
        assert_eq!(
            refused,
            Refusal::NotOpenToTeam {
                promise: "db".into(),
                allowed: vec!["team-a".into()],
                team: Some("team-b".into()),
            }
        );
        assert!(refused.to_string().contains("team-b"));
        assert_eq!(may_file(&root(), &p), Ok(()));
        assert_eq!(may_file(&Principal::unauthenticated("api"), &p), Ok(()));
    }

    #[test]
    fn without_spec_access_every_team_files() {
        assert_eq!(may_file(&bob(), &promise("")), Ok(()));
    }
}
