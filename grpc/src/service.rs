//! The `fulfil.v1.Fulfil` methods: each a REST call ([`crate::rest`]) and
//! the conversion of its answer.

use std::pin::Pin;

use axum::http::Method;
use fulfil_api::watch::{WatchItem, watch_run};
use fulfil_api::{ApiState, model};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::json::{from_struct, to_proto};
use crate::proto::{self, fulfil_server::Fulfil};
use crate::rest::{Call, from_problem, segment};

/// The service, over one API's state.
#[derive(Clone)]
pub struct FulfilService {
    state: ApiState,
    router: axum::Router,
}

impl FulfilService {
    pub fn new(state: ApiState) -> Self {
        Self {
            router: fulfil_api::router(state.clone()),
            state,
        }
    }

    async fn call<T>(&self, request: &Request<T>, call: Call) -> Result<Value, Status> {
        call.send(&self.router, request.metadata()).await
    }

    async fn reply<T>(
        &self,
        request: &Request<T>,
        call: Call,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let body = self.call(request, call).await?;
        Ok(Response::new(proto::JsonReply {
            body: Some(to_proto(body)),
        }))
    }
}

fn get(path: String) -> Call {
    Call::new(Method::GET, path)
}

fn post(path: String) -> Call {
    Call::new(Method::POST, path)
}

/// A list call: the filters, cursor and limit as the query.
fn list(path: String, l: &proto::ListRequest) -> Call {
    let mut call = get(path);
    let mut filters: Vec<_> = l.filters.iter().collect();
    filters.sort();
    for (name, value) in filters {
        call = call.query(name, value);
    }
    call = call.query_if("cursor", &l.cursor);
    if l.limit != 0 {
        call = call.query("limit", l.limit);
    }
    call
}

/// The REST answer as the model type the REST client reads it as.
fn model<T: DeserializeOwned>(json: Value) -> Result<T, Status> {
    serde_json::from_value(json)
        .map_err(|e| Status::internal(format!("internal: unexpected answer: {e}")))
}

fn opt(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn run(r: model::Run) -> proto::Run {
    proto::Run {
        id: r.id.to_string(),
        request_id: r.request_id.to_string(),
        promise: r.promise,
        promise_version: r.promise_version,
        kind: r.kind,
        status: r.status,
        outputs: r.outputs.map(to_proto),
        error: r.error.unwrap_or_default(),
        created_at: r.created_at.to_rfc3339(),
        finished_at: opt(r.finished_at.map(|t| t.to_rfc3339())),
        steps: r
            .steps
            .unwrap_or_default()
            .into_iter()
            .map(|s| proto::Step {
                id: s.id,
                status: s.status,
                attempt: s.attempt,
                outputs: s.outputs.map(to_proto),
                error: s.error.unwrap_or_default(),
                waiting_for: s.waiting_for.map(to_proto),
                attempts: s.attempts.into_iter().map(attempt).collect(),
                duration_ms: s.duration_ms,
                instance_of: s.instance_of,
                index: s.index,
                item: s.item.map(to_proto),
                instances: s
                    .instances
                    .and_then(|counts| serde_json::to_value(counts).ok())
                    .map(to_proto),
                child: s.child.map(child_link),
            })
            .collect(),
        owner: r.owner.unwrap_or_default(),
        waiting_for: r.waiting_for,
        children: r.children.into_iter().map(child_link).collect(),
        parent: r.parent.map(parent_link),
    }
}

fn parent_link(p: model::ParentLink) -> proto::ParentLink {
    proto::ParentLink {
        request_id: p.request_id.to_string(),
        run_id: p.run_id.to_string(),
        step: p.step,
    }
}

fn child_link(c: model::ChildLink) -> proto::ChildLink {
    proto::ChildLink {
        request_id: c.request_id.to_string(),
        run_id: opt(c.run_id),
        promise: c.promise,
        step: c.step,
        status: c.status,
        created_at: c.created_at.to_rfc3339(),
    }
}

fn attempt(a: model::Attempt) -> proto::Attempt {
    proto::Attempt {
        attempt: a.attempt,
        kind: a.kind,
        status: a.status,
        task_id: a.task_id.to_string(),
        handler: a.handler,
        queue: a.queue,
        input: Some(to_proto(a.input)),
        dispatched_at: a.dispatched_at.to_rfc3339(),
        deadline: a.deadline.to_rfc3339(),
        started_at: opt(a.started_at.map(|t| t.to_rfc3339())),
        finished_at: opt(a.finished_at.map(|t| t.to_rfc3339())),
        worker: a.worker.unwrap_or_default(),
        error: a.error.map(to_proto),
        duration_ms: a.duration_ms,
    }
}

/// A history event as the proto message (`WatchRun`, `GetRunHistory`).
pub fn history_event(e: &model::HistoryEvent) -> proto::HistoryEvent {
    proto::HistoryEvent {
        seq: e.seq,
        r#type: e.kind.clone(),
        step: e.step_id.clone().unwrap_or_default(),
        attempt: e.attempt.unwrap_or_default(),
        actor: e.actor.clone(),
        at: e.at.to_rfc3339(),
        data: Some(to_proto(e.data.clone())),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::HistoryEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Fulfil for FulfilService {
    async fn apply_promise(
        &self,
        r: Request<proto::ApplyDocumentRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let call = Call::new(Method::PUT, format!("/v1/promises/{}", segment(&m.name)))
            .text("application/yaml", m.document.clone());
        self.reply(&r, call).await
    }

    async fn list_promises(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = list("/v1/promises".into(), r.get_ref());
        self.reply(&r, call).await
    }

    async fn get_promise(
        &self,
        r: Request<proto::NameRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = get(format!("/v1/promises/{}", segment(&r.get_ref().name)));
        self.reply(&r, call).await
    }

    async fn create_request(
        &self,
        r: Request<proto::CreateRequestRequest>,
    ) -> Result<Response<proto::Accepted>, Status> {
        let m = r.get_ref();
        let mut body =
            json!({ "params": m.params.clone().map(from_struct).unwrap_or(Value::Null) });
        if !m.idempotency_key.is_empty() {
            body["idempotency_key"] = json!(m.idempotency_key);
        }
        let call = post(format!("/v1/promises/{}/requests", segment(&m.promise))).json(&body);
        let accepted: model::Accepted = model(self.call(&r, call).await?)?;
        Ok(Response::new(proto::Accepted {
            request_id: accepted.request_id.to_string(),
            run_id: accepted.run_id.to_string(),
            replayed: accepted.replayed,
        }))
    }

    async fn get_request(
        &self,
        r: Request<proto::IdRequest>,
    ) -> Result<Response<proto::Request>, Status> {
        let call = get(format!("/v1/requests/{}", segment(&r.get_ref().id)));
        let q: model::Request = model(self.call(&r, call).await?)?;
        Ok(Response::new(proto::Request {
            id: q.id.to_string(),
            promise: q.promise,
            promise_version: q.promise_version,
            params: Some(to_proto(q.params)),
            status: q.status,
            run_id: opt(q.run_id),
            delete_run_id: opt(q.delete_run_id),
            reconcile_run_id: opt(q.reconcile_run_id),
            outputs: q.outputs.map(to_proto),
            idempotency_key: q.idempotency_key.unwrap_or_default(),
            created_by: q.created_by.unwrap_or_default(),
            created_at: q.created_at.to_rfc3339(),
            updated_at: q.updated_at.to_rfc3339(),
            parent: q.parent.map(parent_link),
            children: q.children.into_iter().map(child_link).collect(),
            pinned: q.pinned,
        }))
    }

    async fn list_requests(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = list("/v1/requests".into(), r.get_ref());
        self.reply(&r, call).await
    }

    async fn delete_request(
        &self,
        r: Request<proto::DeleteRequestRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let mut call = Call::new(Method::DELETE, format!("/v1/requests/{}", segment(&m.id)));
        if m.force {
            call = call.query("force", "true");
        }
        self.reply(&r, call).await
    }

    async fn reconcile_request(
        &self,
        r: Request<proto::IdRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = post(format!(
            "/v1/requests/{}/reconcile",
            segment(&r.get_ref().id)
        ));
        self.reply(&r, call).await
    }

    async fn list_runs(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::RunPage>, Status> {
        let call = list("/v1/runs".into(), r.get_ref());
        let page: model::Page<model::Run> = model(self.call(&r, call).await?)?;
        Ok(Response::new(proto::RunPage {
            items: page.items.into_iter().map(run).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn get_run(&self, r: Request<proto::IdRequest>) -> Result<Response<proto::Run>, Status> {
        let call = get(format!("/v1/runs/{}", segment(&r.get_ref().id)));
        Ok(Response::new(run(model(self.call(&r, call).await?)?)))
    }

    async fn get_run_history(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::HistoryPage>, Status> {
        let m = r.get_ref();
        let call = list(format!("/v1/runs/{}/history", segment(&m.id)), m);
        let page: model::Page<model::HistoryEvent> = model(self.call(&r, call).await?)?;
        Ok(Response::new(proto::HistoryPage {
            items: page.items.iter().map(history_event).collect(),
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
    }

    async fn cancel_run(
        &self,
        r: Request<proto::CancelRunRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let body = model::CancelRun {
            compensate: m.compensate,
            reason: Some(m.reason.clone()).filter(|s| !s.is_empty()),
        };
        let call = post(format!("/v1/runs/{}/cancel", segment(&m.id))).json(&json!(body));
        self.reply(&r, call).await
    }

    async fn retry_run(
        &self,
        r: Request<proto::RetryRunRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let body = model::RetryRun {
            step: Some(m.step.clone()).filter(|s| !s.is_empty()),
            dry_run: m.dry_run,
        };
        let call = post(format!("/v1/runs/{}/retry", segment(&m.id))).json(&json!(body));
        self.reply(&r, call).await
    }

    async fn approve_step(
        &self,
        r: Request<proto::DecideStepRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = decide(r.get_ref(), "approve");
        self.reply(&r, call).await
    }

    async fn reject_step(
        &self,
        r: Request<proto::DecideStepRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = decide(r.get_ref(), "reject");
        self.reply(&r, call).await
    }

    type WatchRunStream = WatchStream;

    async fn watch_run(
        &self,
        r: Request<proto::WatchRunRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let m = r.get_ref();
        // Through the REST router first, so whatever guards the run's
        // routes (and its 404) guards its stream too.
        let call = get(format!("/v1/runs/{}", segment(&m.run_id)));
        self.call(&r, call).await?;
        let stream = watch_run(&self.state, &m.run_id, m.after)
            .await
            .map_err(|p| from_problem(&p))?;
        let stream = stream.map(|item| match item {
            WatchItem::Event(e) => Ok(history_event(&e)),
            WatchItem::Failed(e) => Err(Status::unavailable(format!("unavailable: {e}"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn send_event(
        &self,
        r: Request<proto::SendEventRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let event = r
            .get_ref()
            .event
            .clone()
            .map(from_struct)
            .unwrap_or(Value::Null);
        let call =
            post("/v1/events".into()).text("application/cloudevents+json", event.to_string());
        self.reply(&r, call).await
    }

    async fn list_events(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = list("/v1/events".into(), r.get_ref());
        self.reply(&r, call).await
    }

    async fn get_event(
        &self,
        r: Request<proto::IdRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = get(format!("/v1/events/{}", segment(&r.get_ref().id)));
        self.reply(&r, call).await
    }

    async fn list_dead_letters(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = list("/v1/dead-letters".into(), r.get_ref());
        self.reply(&r, call).await
    }

    async fn replay_dead_letter(
        &self,
        r: Request<proto::IdRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = post(format!(
            "/v1/dead-letters/{}/replay",
            segment(&r.get_ref().id)
        ));
        self.reply(&r, call).await
    }

    async fn apply_schedule(
        &self,
        r: Request<proto::ApplyDocumentRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let call = Call::new(Method::PUT, format!("/v1/schedules/{}", segment(&m.name)))
            .text("application/yaml", m.document.clone());
        self.reply(&r, call).await
    }

    async fn list_schedules(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = list("/v1/schedules".into(), r.get_ref());
        self.reply(&r, call).await
    }

    async fn get_schedule(
        &self,
        r: Request<proto::NameRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = get(format!("/v1/schedules/{}", segment(&r.get_ref().name)));
        self.reply(&r, call).await
    }

    async fn delete_schedule(
        &self,
        r: Request<proto::NameRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = Call::new(
            Method::DELETE,
            format!("/v1/schedules/{}", segment(&r.get_ref().name)),
        );
        self.reply(&r, call).await
    }

    async fn list_schedule_ticks(
        &self,
        r: Request<proto::ListRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let m = r.get_ref();
        let call = list(format!("/v1/schedules/{}/ticks", segment(&m.id)), m);
        self.reply(&r, call).await
    }

    async fn pause_schedule(
        &self,
        r: Request<proto::NameRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = post(format!(
            "/v1/schedules/{}/pause",
            segment(&r.get_ref().name)
        ));
        self.reply(&r, call).await
    }

    async fn resume_schedule(
        &self,
        r: Request<proto::NameRequest>,
    ) -> Result<Response<proto::JsonReply>, Status> {
        let call = post(format!(
            "/v1/schedules/{}/resume",
            segment(&r.get_ref().name)
        ));
        self.reply(&r, call).await
    }
}

fn decide(m: &proto::DecideStepRequest, decision: &str) -> Call {
    let body = model::DecideApproval {
        comment: Some(m.comment.clone()).filter(|s| !s.is_empty()),
    };
    post(format!(
        "/v1/runs/{}/steps/{}/{decision}",
        segment(&m.id),
        segment(&m.step)
    ))
    .json(&json!(body))
}
