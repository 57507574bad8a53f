//! The role gate: one table from (method, route) to what the route needs,
//! decided by the lead and relied on by the handlers' team checks.
//!
//! Deny by default: a route the table has no row for answers 403 to every
//! caller, even with access control off, and the unit test below fails
//! naming it; another test checks every operation of the OpenAPI document
//! has a row. A method the table lists no row for on a route it knows
//! answers 405 with the table's methods as `Allow`.
//!
//! `viewer` is "reads": every principal with any role passes it. Every
//! other role is held by the principal or implied by `admin`. Where access
//! control is off the caller holds every role, so only missing rows deny.
//!
//! | access | routes |
//! |---|---|
//! | public | `GET /healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/ui` |
//! | viewer | every `GET` under `/v1` but `/v1/tokens` |
//! | requester | `POST /v1/promises/{name}/requests`, `DELETE /v1/requests/{id}`, `POST /v1/events` |
//! | approver | `POST /v1/runs/{id}/steps/{step}/approve` and `/reject` |
//! | operator | `POST /v1/runs/{id}/cancel`, `/retry`, `POST /v1/requests/{id}/reconcile`, `POST` and `DELETE /v1/requests/{id}/pin`, `POST /v1/dead-letters/{id}/replay`, `POST /v1/schedules/{name}/pause` and `/resume` |
//! | author | `PUT /v1/promises/{name}`, `PUT` and `DELETE /v1/schedules/{name}`, `POST /v1/promises/{name}/rollout`, `POST /v1/rollouts/{id}/pause`, `/resume` and `/cancel` |
//! | admin | `/v1/tokens` (every method), `PUT` and `DELETE /v1/policies/{name}` |

use axum::http::Method;
use fulfil_core::access::{Principal, Role};

use crate::{Problem, ProblemCode};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// A principal holding the role (`viewer`: any role at all).
    Role(Role),
}

use Access::{Public, Role as R};

/// The table: method, route as axum matches it, access.
pub const TABLE: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/openapi.json", Public),
    ("GET", "/ui", Public),
    // Promises and requests.
    ("GET", "/v1/promises", R(Role::Viewer)),
    ("GET", "/v1/promises/{name}", R(Role::Viewer)),
    ("PUT", "/v1/promises/{name}", R(Role::Author)),
    ("POST", "/v1/promises/{name}/requests", R(Role::Requester)),
    ("GET", "/v1/requests", R(Role::Viewer)),
    ("GET", "/v1/requests/{id}", R(Role::Viewer)),
    ("DELETE", "/v1/requests/{id}", R(Role::Requester)),
    ("POST", "/v1/requests/{id}/reconcile", R(Role::Operator)),
    ("POST", "/v1/requests/{id}/pin", R(Role::Operator)),
    ("DELETE", "/v1/requests/{id}/pin", R(Role::Operator)),
    // Rollouts.
    ("POST", "/v1/promises/{name}/rollout", R(Role::Author)),
    ("GET", "/v1/promises/{name}/rollouts", R(Role::Viewer)),
    ("GET", "/v1/rollouts/{id}", R(Role::Viewer)),
    ("POST", "/v1/rollouts/{id}/pause", R(Role::Author)),
    ("POST", "/v1/rollouts/{id}/resume", R(Role::Author)),
    ("POST", "/v1/rollouts/{id}/cancel", R(Role::Author)),
    // Runs.
    ("GET", "/v1/runs", R(Role::Viewer)),
    ("GET", "/v1/runs/{id}", R(Role::Viewer)),
    ("GET", "/v1/runs/{id}/history", R(Role::Viewer)),
    ("GET", "/v1/runs/{id}/events", R(Role::Viewer)),
    ("POST", "/v1/runs/{id}/cancel", R(Role::Operator)),
    ("POST", "/v1/runs/{id}/retry", R(Role::Operator)),
    (
        "POST",
        "/v1/runs/{id}/steps/{step}/approve",
        R(Role::Approver),
    ),
    (
        "POST",
        "/v1/runs/{id}/steps/{step}/reject",
        R(Role::Approver),
    ),
    // Events.
    ("GET", "/v1/events", R(Role::Viewer)),
    ("POST", "/v1/events", R(Role::Requester)),
    ("GET", "/v1/events/{id}", R(Role::Viewer)),
    ("GET", "/v1/dead-letters", R(Role::Viewer)),
    ("POST", "/v1/dead-letters/{id}/replay", R(Role::Operator)),
    // Schedules.
    ("GET", "/v1/schedules", R(Role::Viewer)),
    ("GET", "/v1/schedules/{name}", R(Role::Viewer)),
    ("PUT", "/v1/schedules/{name}", R(Role::Author)),
    ("DELETE", "/v1/schedules/{name}", R(Role::Author)),
    ("GET", "/v1/schedules/{name}/ticks", R(Role::Viewer)),
    ("POST", "/v1/schedules/{name}/pause", R(Role::Operator)),
    ("POST", "/v1/schedules/{name}/resume", R(Role::Operator)),
    // Admission policies.
    ("GET", "/v1/policies", R(Role::Viewer)),
    ("GET", "/v1/policies/{name}", R(Role::Viewer)),
    ("PUT", "/v1/policies/{name}", R(Role::Admin)),
    ("DELETE", "/v1/policies/{name}", R(Role::Admin)),
    // Tokens.
    ("GET", "/v1/tokens", R(Role::Admin)),
    ("POST", "/v1/tokens", R(Role::Admin)),
    ("DELETE", "/v1/tokens/{id_or_name}", R(Role::Admin)),
];

/// What `method` on `route` needs; `None` if the table has no row.
/// `HEAD` is `GET`'s.
pub fn access(method: &Method, route: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    TABLE
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, access)| *access)
}

/// Whether `principal` may call `method` on `route`, which needs `access`;
/// else the problem to answer (403 `forbidden` naming the missing role,
/// 403 for a route the table does not know, 405 for a method it lists no
/// row for).
pub fn check(
    access: Option<Access>,
    method: &Method,
    route: &str,
    principal: &Principal,
) -> Result<(), Problem> {
    match access {
        Some(Access::Public) => Ok(()),
        Some(Access::Role(Role::Viewer)) if !principal.roles.is_empty() => Ok(()),
        Some(Access::Role(role)) if role != Role::Viewer && principal.has(role) => Ok(()),
        Some(Access::Role(role)) => Err(Problem::missing_role(role, &format!("{method} {route}"))),
        None => {
            let allowed: Vec<&str> = TABLE
                .iter()
                .filter(|(_, r, _)| *r == route)
                .map(|(m, _, _)| *m)
                .collect();
            if allowed.is_empty() {
                Err(Problem::new(
                    axum::http::StatusCode::FORBIDDEN,
                    ProblemCode::Forbidden,
                    "Forbidden",
                    format!(
                        "{method} {route} is in no row of the permission table, so nobody may call it"
                    ),
                ))
            } else {
                Err(Problem::new(
                    axum::http::StatusCode::METHOD_NOT_ALLOWED,
                    ProblemCode::MethodNotAllowed,
                    "Method not allowed",
                    format!(
                        "this route does not take that method; it takes: {}",
                        allowed.join(", ")
                    ),
                )
                .with("allowed", serde_json::json!(allowed.join(", "))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_openapi_operation_and_every_served_route_has_a_row() {
        let document = crate::openapi::document();
        let mut missing = Vec::new();
        for (path, item) in &document.paths.paths {
            let operations = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
            ];
            for (method, present) in operations {
                let method: Method = method.parse().expect("a method");
                if present && access(&method, path).is_none() {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "routes with no row in the permission table (they answer 403 to everyone): {missing:?}"
        );
    }

    #[test]
    fn the_table_has_one_row_per_route_and_every_v1_read_is_a_viewer_read() {
        let mut seen = BTreeSet::new();
        for (method, route, access) in TABLE {
            assert!(
                seen.insert((method, route)),
                "two rows for {method} {route}"
            );
            if *method == "GET" && route.starts_with("/v1/") && !route.starts_with("/v1/tokens") {
                assert_eq!(*access, Access::Role(Role::Viewer), "{route}");
            }
            if !route.starts_with("/v1/") {
                assert_eq!(*access, Access::Public, "{route}");
            }
        }
    }

    #[test]
    fn the_gate_admits_by_role_and_names_the_missing_one() {
        let get = Method::GET;
        let viewer = Principal::new("user:v", "team-a", &[Role::Viewer]);
        let requester = Principal::new("user:r", "team-a", &[Role::Requester]);
        let admin = Principal::new("user:root", "platform", &[Role::Admin]);
        let anonymous = Principal {
            id: "anonymous".into(),
            team: None,
            roles: BTreeSet::new(),
            authenticated: true,
        };
        let runs = access(&get, "/v1/runs");
        assert!(
            check(runs, &get, "/v1/runs", &requester).is_ok(),
            "every role reads"
        );
        assert!(
            check(runs, &get, "/v1/runs", &anonymous).is_err(),
            "no role, no read"
        );
        let tokens = access(&get, "/v1/tokens");
        let problem = check(tokens, &get, "/v1/tokens", &viewer).expect_err("admin only");
        assert_eq!(problem.status, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(problem.extra["missing_role"], "admin");
        assert!(check(tokens, &get, "/v1/tokens", &admin).is_ok());
        let cancel = "/v1/runs/{id}/cancel";
        let post = Method::POST;
        let problem =
            check(access(&post, cancel), &post, cancel, &requester).expect_err("operator");
        assert_eq!(problem.extra["missing_role"], "operator");
        assert!(
            check(
                access(&post, cancel),
                &post,
                cancel,
                &Principal::unauthenticated("x")
            )
            .is_ok()
        );
        assert_eq!(access(&Method::HEAD, "/healthz"), Some(Access::Public));

        // Deny by default, even with access control off.
        let off = Principal::unauthenticated("x");
        let unknown =
            check(access(&post, "/v1/secret"), &post, "/v1/secret", &off).expect_err("no row");
        assert_eq!(unknown.status, axum::http::StatusCode::FORBIDDEN);
        let patch = Method::PATCH;
        let wrong =
            check(access(&patch, cancel), &patch, cancel, &off).expect_err("no such method");
        assert_eq!(wrong.status, axum::http::StatusCode::METHOD_NOT_ALLOWED);
    }
}
