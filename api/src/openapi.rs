//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! It is generated from the code: each handler carries its
//! `#[utoipa::path]` (route, parameters, body, answers) and the route table
//! (`routes::router`) is an `OpenApiRouter` that registers a handler and
//! its description in one call, so a route cannot be served without being
//! described, nor described without being served. The bodies are the
//! [`crate::model`] types; [`crate::Problem`] is every error.
//!
//! What every route can answer whatever its handler does (the edge layers
//! of `lib.rs`: a bad query or path, the body limit, the timeout, a failing
//! dependency) is added to each operation by [`EdgeAnswers`], so no
//! annotation repeats it and none can forget it.
//!
//! Routes declared here by hand instead of on their handler are those whose
//! handler lives outside this crate's route table for now (see
//! [`ApiDoc`]).

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed parts: title, version, tags, the shared answers
/// and the routes served by handlers outside the route table.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fulfil",
        version = env!("CARGO_PKG_VERSION"),
        description = "Fulfil's HTTP/JSON API: apply Promises, file requests, follow and operate \
                       their runs, send events, manage Schedules. Every error is \
                       `application/problem+json` (RFC 9457) with a stable `code`.",
        license(name = "Apache-2.0")
    ),
        components(schemas(crate::Problem, crate::ProblemCode)),
    tags(
        (name = "promises", description = "Promises and filing requests for them"),
        (name = "requests", description = "Requests: read, delete, reconcile, pin"),
        (name = "runs", description = "Runs: read, follow, cancel, retry, approve"),
        (name = "events", description = "Inbound CloudEvents, the event ledger and dead letters"),
        (name = "schedules", description = "Schedules and their tick ledgers"),
        (name = "rollouts", description = "Controlled upgrades of a Promise's requests to another version"),
        (name = "policies", description = "Admission policies every new request must pass"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
        (name = "tokens", description = "API tokens (admin): create, list, revoke"),
    )
)]
pub struct ApiDoc;

/// The whole document, built once from the route table.
pub fn document() -> &'static Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document = crate::routes::router().split_for_parts().1;
        // After the routes are in: a modifier of `ApiDoc` would run before.
        EdgeAnswers.modify(&mut document);
        BearerAuth.modify(&mut document);
        Links.modify(&mut document);
        document
    })
}

/// This document (OpenAPI 3.1), from which clients can be generated.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn serve() -> Json<&'static Document> {
    Json(document())
}

/// Routes of the document not served by this crate's router yet: the
/// completeness test expects exactly these to answer "no such route", so
/// wiring one makes the test ask for its removal from this list.
pub const NOT_SERVED_HERE: &[(&str, &str)] = &[];

/// Adds the answers the edge layers can give to every operation: 400 (a
/// query, path or NUL the extractors refuse), 413 and 415 (bodies), 500,
/// 503 and 504; `/healthz` and this document touch no dependency and take
/// no input, so they only get 500 and 504.
pub struct EdgeAnswers;

impl EdgeAnswers {
    const ANSWERS: [(&'static str, &'static str, &'static str); 6] = [
        (
            "400",
            "BadRequest",
            "The request is malformed: a query or path parameter, a NUL character, or a header the detail names",
        ),
        (
            "413",
            "PayloadTooLarge",
            "The body is over the limit every route has",
        ),
        (
            "415",
            "UnsupportedMediaType",
            "The body is labelled with a media type the route does not take",
        ),
        (
            "500",
            "Internal",
            "A server bug; `error_id` names its log line",
        ),
        (
            "503",
            "Unavailable",
            "A dependency failed or the server sheds load; retry after `Retry-After`",
        ),
        (
            "504",
            "Timeout",
            "No answer within 30 s; the outcome is unknown",
        ),
    ];

    fn add(operation: &mut Operation, path: &str) {
        let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
            || operation.request_body.is_some();
        let has_body = operation.request_body.is_some();
        let touches_dependencies = !matches!(path, "/healthz" | "/openapi.json");
        for (status, name, _) in Self::ANSWERS {
            let applies = match status {
                "400" => takes_input,
                "413" => has_body,
                // A route that reads its body as text takes any label.
                // Only the JSON extractor checks the label: the routes that
                // read text (Promises, Schedules) or CloudEvents take any.
                "415" => matches!(
                    &operation.request_body,
                    Some(RefOr::T(body))
                        if body.content.keys().eq(["application/json"].iter())
                ),
                "503" => touches_dependencies,
                _ => true,
            };
            if applies {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
            }
        }
    }
}

impl Modify for EdgeAnswers {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description) in Self::ANSWERS {
            components
                .responses
                .insert(name.to_string(), problem_response(description));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                Self::add(operation, path);
            }
        }
    }
}

/// A shared answer whose body is a [`crate::Problem`].
fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(crate::Problem::name())))
                    .build(),
            )
            .build(),
    )
}

/// The `bearer` security scheme, required by every `/v1` operation
/// (`serve` without `--auth none`), with the 401 and 403 the role gate
/// answers (see `auth::permissions`).
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`fulfil token create`) or, where configured, an OIDC JWT",
                    ))
                    .build(),
            ),
        );
        for (name, description) in [
            (
                "Unauthenticated",
                "`unauthenticated`: no bearer token, or one that is malformed, unknown, revoked or expired; `WWW-Authenticate: Bearer`",
            ),
            (
                "Forbidden",
                "`forbidden`: the caller lacks the role the route needs (`missing_role`) or acts outside its team",
            ),
        ] {
            components
                .responses
                .insert(name.to_string(), problem_response(description));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                for (status, name) in [("401", "Unauthenticated"), ("403", "Forbidden")] {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
                }
            }
        }
    }
}

/// OpenAPI links from an answer to the operations that take what it
/// names (a request's run, an applied Schedule), so a client (and
/// schemathesis's stateful phase) can follow a request to its run.
pub struct Links;

impl Links {
    /// (operation, status, link name, target operation, its parameter,
    /// the runtime expression giving it).
    const LINKS: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )] = &[
        (
            "create_request",
            "202",
            "GetRun",
            "get_run",
            "id",
            "$response.body#/run_id",
        ),
        (
            "create_request",
            "202",
            "RunHistory",
            "run_history",
            "id",
            "$response.body#/run_id",
        ),
        (
            "create_request",
            "202",
            "CancelRun",
            "cancel_run",
            "id",
            "$response.body#/run_id",
        ),
        (
            "create_request",
            "202",
            "RetryRun",
            "retry_run",
            "id",
            "$response.body#/run_id",
        ),
        (
            "create_request",
            "202",
            "GetRequest",
            "get_request",
            "id",
            "$response.body#/request_id",
        ),
        (
            "create_request",
            "202",
            "ReconcileRequest",
            "reconcile_request",
            "id",
            "$response.body#/request_id",
        ),
        (
            "create_request",
            "202",
            "DeleteRequest",
            "delete_request",
            "id",
            "$response.body#/request_id",
        ),
        (
            "create_request",
            "202",
            "PinRequest",
            "pin_request",
            "id",
            "$response.body#/request_id",
        ),
        (
            "create_rollout",
            "202",
            "GetRollout",
            "get_rollout",
            "id",
            "$response.body#/id",
        ),
        (
            "create_rollout",
            "202",
            "PauseRollout",
            "pause_rollout",
            "id",
            "$response.body#/id",
        ),
        (
            "create_rollout",
            "202",
            "ResumeRollout",
            "resume_rollout",
            "id",
            "$response.body#/id",
        ),
        (
            "create_rollout",
            "202",
            "CancelRollout",
            "cancel_rollout",
            "id",
            "$response.body#/id",
        ),
        (
            "send_event",
            "202",
            "GetEvent",
            "get_event",
            "id",
            "$response.body#/ledger_id",
        ),
        (
            "apply_promise",
            "201",
            "GetPromise",
            "get_promise",
            "name",
            "$request.path.name",
        ),
        (
            "apply_promise",
            "201",
            "CreateRequest",
            "create_request",
            "name",
            "$request.path.name",
        ),
        (
            "apply_schedule",
            "201",
            "GetSchedule",
            "get_schedule",
            "name",
            "$request.path.name",
        ),
        (
            "apply_schedule",
            "201",
            "PauseSchedule",
            "pause_schedule",
            "name",
            "$request.path.name",
        ),
        (
            "apply_schedule",
            "201",
            "ResumeSchedule",
            "resume_schedule",
            "name",
            "$request.path.name",
        ),
        (
            "apply_schedule",
            "201",
            "ListTicks",
            "list_ticks",
            "name",
            "$request.path.name",
        ),
        (
            "apply_schedule",
            "201",
            "DeleteSchedule",
            "delete_schedule",
            "name",
            "$request.path.name",
        ),
    ];
}

impl Modify for Links {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let Some(id) = operation.operation_id.clone() else {
                    continue;
                };
                for (from, status, name, to, parameter, expression) in Self::LINKS {
                    if *from != id {
                        continue;
                    }
                    if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                    {
                        response.links.insert(
                            (*name).to_string(),
                            RefOr::T(
                                utoipa::openapi::link::LinkBuilder::new()
                                    .operation_id(*to)
                                    .parameter(*parameter, *expression)
                                    .build(),
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Schemas of values the model keeps as text or as types of other crates
/// (`fulfil_core`, `fulfil_engine`), which do not derive `ToSchema`: the
/// closed vocabularies as string enums, the engine's event views as
/// objects.
pub(crate) mod schemas {
    use fulfil_core::RunStatus;
    use fulfil_core::status::{
        AttemptStatus, Decision, EventOutcome, EventVia, OverlapPolicy, RequestStatus,
        RolloutStatus, RunKind, StepStatus, TaskKind, TickOutcome,
    };
    use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Type};

    fn one_of(values: impl IntoIterator<Item = &'static str>) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values))
            .build()
    }

    pub fn run_status() -> Object {
        one_of(RunStatus::ALL.iter().map(|s| s.as_str()))
    }

    pub fn run_kind() -> Object {
        one_of(RunKind::ALL.iter().map(|s| s.as_str()))
    }

    pub fn rollout_status() -> Object {
        one_of(RolloutStatus::ALL.iter().map(|s| s.as_str()))
    }

    pub fn request_status() -> Object {
        one_of(RequestStatus::ALL.iter().map(|s| s.as_str()))
    }

    pub fn step_status() -> Object {
        one_of(StepStatus::ALL.iter().map(|s| s.as_str()))
    }

    pub fn attempt_kind() -> Object {
        one_of(TaskKind::ALL.iter().map(|s| s.as_str()))
    }

    pub fn waiting_for() -> Object {
        one_of(
            fulfil_engine::inspect::WaitingFor::ALL
                .iter()
                .map(|s| s.as_str()),
        )
    }

    pub fn attempt_status() -> Object {
        one_of(AttemptStatus::ALL.iter().map(|s| s.as_str()))
    }

    pub fn decision() -> Object {
        one_of(Decision::ALL.iter().map(|s| s.as_str()))
    }

    pub fn overlap_policy() -> Object {
        one_of(OverlapPolicy::ALL.iter().map(|s| s.as_str()))
    }

    pub fn tick_outcome() -> Object {
        one_of(TickOutcome::ALL.iter().map(|s| s.as_str()))
    }

    pub fn event_outcome() -> Object {
        one_of(EventOutcome::ALL.iter().map(|s| s.as_str()))
    }

    pub fn event_via() -> Object {
        one_of(EventVia::ALL.iter().map(|s| s.as_str()))
    }

    pub fn schedule_outcome() -> Object {
        one_of(["created", "updated", "unchanged"])
    }

    pub fn promise_outcome() -> Object {
        one_of(["created", "unchanged"])
    }

    /// `[{by, decision, comment?, at}]`, `fulfil_core::wait::ApprovalDecision`.
    pub fn approval_decisions() -> utoipa::openapi::schema::Array {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .property("by", string())
                    .required("by")
                    .property("decision", decision())
                    .required("decision")
                    .property("comment", string())
                    .property(
                        "at",
                        string().format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                            utoipa::openapi::KnownFormat::DateTime,
                        ))),
                    )
                    .required("at"),
            )
            .build()
    }
}

/// The shapes of answers built from types of other crates or from JSON
/// (the engine's event views, health), described here; the integration
/// test `openapi` checks real answers against them, so they cannot drift
/// unnoticed.
#[allow(dead_code)] // Only their descriptions are used.
pub(crate) mod views {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use serde_json::Value;
    use utoipa::ToSchema;
    use uuid::Uuid;

    use super::schemas;

    /// `GET /healthz`.
    #[derive(ToSchema)]
    pub struct Health {
        /// Always `ok`.
        pub status: String,
    }

    /// `GET /readyz`: 200 when ready, 503 naming what is not.
    #[derive(ToSchema)]
    pub struct Readiness {
        /// `ready` or `not ready`.
        pub status: String,
        /// `{ok, error?}`.
        #[schema(value_type = Object)]
        pub postgres: Value,
        /// `{ok, state}`.
        #[schema(value_type = Object)]
        pub nats: Value,
        /// `{ok, down, all}`: the roles of the process and which are down.
        #[schema(value_type = Object)]
        pub roles: Value,
    }

    /// A schema violation of rendered params, at its JSON pointer.
    #[derive(ToSchema)]
    pub struct Violation {
        pub pointer: String,
        pub message: String,
    }

    /// What one trigger did with an event.
    #[derive(ToSchema)]
    pub struct TriggerOutcome {
        pub trigger: String,
        pub promise: String,
        #[schema(schema_with = schemas::event_outcome)]
        pub outcome: String,
        pub request_id: Option<Uuid>,
        pub run_id: Option<Uuid>,
        pub reason: Option<String>,
        pub violations: Option<Vec<Violation>>,
    }

    /// A waiting step an event completed.
    #[derive(ToSchema)]
    pub struct WaitCompleted {
        pub run_id: Uuid,
        pub step: String,
    }

    /// The answer to `POST /v1/events` and to a dead letter's replay.
    #[derive(ToSchema)]
    pub struct EventReceipt {
        /// The event's CloudEvent `id`.
        pub id: String,
        /// The event's CloudEvent `source`.
        pub source: String,
        /// Where the ledger keeps it (`GET /v1/events/{ledger_id}`).
        pub ledger_id: Uuid,
        pub outcomes: Vec<TriggerOutcome>,
        pub waits_completed: Vec<WaitCompleted>,
        /// Set when the event was also kept as a dead letter.
        pub dead_letter_id: Option<Uuid>,
    }

    /// One received event in the ledger.
    #[derive(ToSchema)]
    pub struct LedgerEntry {
        pub ledger_id: Uuid,
        pub received_at: DateTime<Utc>,
        #[schema(schema_with = schemas::event_via)]
        pub via: String,
        /// The NATS subject it arrived on (bus events).
        pub nats_subject: Option<String>,
        pub id: String,
        pub source: String,
        pub r#type: String,
        /// The whole CloudEvent in JSON format.
        #[schema(value_type = Object)]
        pub event: Value,
        pub outcomes: Vec<TriggerOutcome>,
        pub waits_completed: Vec<WaitCompleted>,
        pub dead_letter_id: Option<Uuid>,
        /// Who posted it over HTTP (a principal id, `user:alice`); null for
        /// bus events and replays.
        pub received_by: Option<String>,
    }

    /// An inbound message that could not be used.
    #[derive(ToSchema)]
    pub struct DeadLetter {
        pub id: Uuid,
        pub received_at: DateTime<Utc>,
        /// The NATS subject it arrived on; null for an HTTP event.
        pub subject: Option<String>,
        /// Why it could not be used.
        pub reason: String,
        /// Its headers as received, each name with its values.
        pub headers: BTreeMap<String, Vec<String>>,
        /// Its bytes: UTF-8 text, or base64 when `payload_encoding` says so.
        pub payload: String,
        /// `utf8` or `base64`.
        pub payload_encoding: String,
        pub ledger_id: Option<Uuid>,
        pub replays: i32,
        pub replayed_at: Option<DateTime<Utc>>,
        /// What the last replay did.
        #[schema(value_type = Option<Object>)]
        pub last_replay: Option<Value>,
    }

    /// A CloudEvent 1.0 in structured mode (`application/cloudevents+json`).
    #[derive(ToSchema)]
    pub struct CloudEvent {
        /// `1.0`.
        pub specversion: String,
        pub id: String,
        pub source: String,
        pub r#type: String,
        pub subject: Option<String>,
        pub time: Option<DateTime<Utc>>,
        pub datacontenttype: Option<String>,
        #[schema(value_type = Option<Object>)]
        pub data: Option<Value>,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn json() -> Value {
        serde_json::to_value(document()).unwrap_or_default()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_problem_code() {
        let doc = json();
        if let Ok(path) = std::env::var("FULFIL_OPENAPI_OUT") {
            let _ = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Fulfil");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let codes: Vec<&str> = doc["components"]["schemas"]["ProblemCode"]["enum"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let all: Vec<&str> = crate::ProblemCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, all);
    }

    /// Every operation answers something that is not an error, and every
    /// error it declares is a problem.
    #[test]
    fn every_operation_declares_a_success_and_only_problem_errors() {
        let doc = json();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                operations += 1;
                let responses = operation["responses"].as_object();
                let statuses: Vec<&String> = responses.into_iter().flatten().map(|r| r.0).collect();
                assert!(
                    statuses.iter().any(|s| s.starts_with('2')),
                    "{method} {path}: {statuses:?}"
                );
                for (status, response) in responses.into_iter().flatten() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    let readiness = path == "/readyz" && status == "503";
                    if !is_error || readiness {
                        continue;
                    }
                    let problem = response["content"]["application/problem+json"]["schema"]["$ref"]
                        .as_str()
                        .or_else(|| response["$ref"].as_str());
                    assert!(problem.is_some(), "{method} {path} {status}: {response}");
                }
            }
        }
        assert!(operations >= 30, "{operations} operations");
    }

    /// Operation ids are unique (generated clients name methods after
    /// them) and every link names one that exists, from the status it is on.
    #[test]
    fn operation_ids_are_unique_and_links_resolve() {
        let doc = json();
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        for item in doc["paths"].as_object().into_iter().flatten().map(|p| p.1) {
            for operation in item.as_object().into_iter().flatten().map(|o| o.1) {
                ids.push(
                    operation["operationId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                for response in operation["responses"].as_object().into_iter().flatten() {
                    for link in response.1["links"].as_object().into_iter().flatten() {
                        targets.push(
                            link.1["operationId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                }
            }
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        assert_eq!(targets.len(), Links::LINKS.len());
        for target in targets {
            assert!(ids.contains(&target), "link to unknown {target}");
        }
    }
}
