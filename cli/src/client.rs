//! Operator commands: thin clients of the HTTP API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fulfil_api::model;
use fulfil_core::ids::RunId;
use serde_json::{Map, Value, json};

use crate::output::{at, opt, print_history, print_run, print_structured, print_table};
use crate::{ClientArgs, Format};

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
}

impl Api {
    pub(crate) fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(auth_headers(args)?)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: args.api_url.trim_end_matches('/').to_string(),
        })
    }

    /// Sends `request`. A request the API shed (503 `.../overloaded` with
    /// `Retry-After`: turned away before anything was stored) is sent again
    /// after the wait it names, up to [`SEND_TRIES`] times in all. Other
    /// 503s are reported, not retried: a connection lost during a commit
    /// cannot say whether the commit happened.
    pub(crate) async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut tries = 1;
        loop {
            let again = request.try_clone();
            let response = request
                .send()
                .await
                .with_context(|| crate::report::Reaching::Api(self.base.clone()))?;
            let status = response.status();
            let wait = retry_after(&response);
            let text = response.text().await.context("reading the API response")?;
            let body: Value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            let shed = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && body["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/overloaded"));
            if shed
                && tries < SEND_TRIES
                && let (Some(again), Some(wait)) = (again, wait)
            {
                let wait = wait.min(MAX_RETRY_WAIT);
                eprintln!(
                    "the API is overloaded and stored nothing; retrying in {} s",
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                request = again;
                tries += 1;
                continue;
            }
            if status.is_client_error() || status.is_server_error() {
                return Err(anyhow!(describe_problem(status, &body)));
            }
            return Ok((status, body));
        }
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .1)
    }
}

/// `Authorization: Bearer <token>` when `--token`/`FULFIL_TOKEN` is set,
/// for every client the CLI builds (the SSE stream's too).
pub(crate) fn auth_headers(args: &ClientArgs) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("--token/FULFIL_TOKEN holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// An API answer read as its model; the raw value stays for `--output json`,
/// which prints fields this CLI does not know too.
pub(crate) fn model<T: serde::de::DeserializeOwned>(body: &Value, what: &str) -> anyhow::Result<T> {
    T::deserialize(body).with_context(|| format!("the API answered an unexpected {what}: {body}"))
}

/// Sends of one CLI request, the first included, while the API answers 503.
const SEND_TRIES: u32 = 4;
/// Longest wait between them, whatever `Retry-After` says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// The wait a `Retry-After` header names, in seconds.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

fn describe_problem(status: reqwest::StatusCode, body: &Value) -> String {
    let mut out = format!(
        "{} ({}): {}",
        body["title"].as_str().unwrap_or("request failed"),
        status.as_u16(),
        body["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string())
    );
    if status == reqwest::StatusCode::UNAUTHORIZED {
        out.push_str(
            "\n  (pass a token with --token or FULFIL_TOKEN; `fulfil token create` makes one)",
        );
    }
    if let Some(errors) = body["errors"].as_array() {
        for e in errors {
            let at = e["path"].as_str().or(e["pointer"].as_str()).unwrap_or("");
            let what = e["message"].as_str().or(e["detail"].as_str()).unwrap_or("");
            out.push_str(&format!("\n  - {at}: {what}"));
        }
    }
    out
}

/// Files a directory holds that look like Promises, sorted; or the file itself.
pub fn promise_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .yaml, .yml or .json files", path.display());
    }
    Ok(files)
}

pub async fn promise_apply(args: &ClientArgs, path: &Path) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let mut failed = 0;
    for file in promise_files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        // The name is needed for the URL; the server validates everything.
        let name = fulfil_core::document::read(&text)
            .ok()
            .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string));
        let Some(name) = name else {
            eprintln!(
                "{}: not a Promise: metadata.name is missing",
                file.display()
            );
            failed += 1;
            continue;
        };
        let request = api
            .http
            .put(format!("{}/v1/promises/{name}", api.base))
            .header("content-type", "application/yaml")
            .body(text);
        match api.send(request).await {
            Ok((_, body)) => println!(
                "{}: promise {name} version {} {}",
                file.display(),
                body["version"].as_str().unwrap_or("?"),
                body["outcome"].as_str().unwrap_or("applied")
            ),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn promise_list(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    // The API pages the list; the command shows all of it, as one list.
    let api = Api::new(args)?;
    let mut all = Vec::new();
    let mut path = "/v1/promises?limit=500".to_string();
    loop {
        let page = api.get(&path).await?;
        all.extend(items(&page).iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/promises?limit=500&cursor={cursor}"),
            None => break,
        }
    }
    let body = serde_json::json!({ "items": all, "next_cursor": null });
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let rows = items(&body)
        .iter()
        .map(|p| {
            vec![
                text(&p["name"]),
                text(&p["version"]),
                text(&p["owner"]),
                text(&p["steps"]),
                p["versions"]
                    .as_array()
                    .map(|v| v.len())
                    .unwrap_or(0)
                    .to_string(),
            ]
        })
        .collect();
    print_table(&["NAME", "VERSION", "OWNER", "STEPS", "VERSIONS"], rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn promise_get(
    args: &ClientArgs,
    name: &str,
    version: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let path = match version {
        Some(v) => format!("/v1/promises/{name}?version={v}"),
        None => format!("/v1/promises/{name}"),
    };
    let body = Api::new(args)?.get(&path).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    print!(
        "{}",
        serde_saphyr::to_string(&body["promise"]).context("rendering YAML")?
    );
    Ok(ExitCode::SUCCESS)
}

/// `--param k=v` (JSON when it parses, else a string) over `--params-json`.
pub fn parse_params(pairs: &[String], json_text: Option<&str>) -> anyhow::Result<Value> {
    let mut params = match json_text {
        Some(text) => {
            match serde_json::from_str::<Value>(text).context("--params-json is not valid JSON")? {
                Value::Object(map) => map,
                _ => bail!("--params-json must be a JSON object"),
            }
        }
        None => Map::new(),
    };
    for pair in pairs {
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--param {pair:?} is not KEY=VALUE"))?;
        if key.is_empty() {
            bail!("--param {pair:?} has an empty key");
        }
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        params.insert(key.to_string(), value);
    }
    Ok(Value::Object(params))
}

pub async fn request_create(
    args: &ClientArgs,
    promise: &str,
    params: Value,
    idempotency_key: Option<String>,
    principal: Option<String>,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let body = model::CreateRequest {
        params,
        idempotency_key,
    };
    let mut request = api
        .http
        .post(format!("{}/v1/promises/{promise}/requests", api.base))
        .json(&body);
    if let Some(principal) = principal
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
    {
        request = request.header("Fulfil-Actor", principal);
    }
    let (_, answer) = api.send(request).await?;
    let accepted: model::Accepted = model(&answer, "answer to a new request")?;
    if args.output != Format::Table && !wait {
        return print_structured(args.output, &answer);
    }
    eprintln!(
        "request {} accepted{}; run {}",
        accepted.request_id,
        if accepted.replayed {
            " (idempotent replay)"
        } else {
            ""
        },
        accepted.run_id
    );
    if !wait {
        println!("{}", accepted.request_id);
        return Ok(ExitCode::SUCCESS);
    }
    follow_run(&api, accepted.run_id, timeout, args.output).await
}

/// Prints each step's status changes until the run finishes.
async fn follow_run(
    api: &Api,
    run_id: RunId,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut poll = Duration::from_millis(5);
    loop {
        let body = api.get(&format!("/v1/runs/{run_id}")).await?;
        let run: model::Run = model(&body, "run")?;
        for step in run.steps() {
            if seen.get(&step.id) != Some(&step.status) {
                let error = step
                    .error
                    .as_deref()
                    .map(|e| format!("  {e}"))
                    .unwrap_or_default();
                eprintln!(
                    "  {:>7.1}s  {:<20} {:<10} attempt {}{error}",
                    started.elapsed().as_secs_f64(),
                    step.id,
                    step.status,
                    step.attempt
                );
                seen.insert(step.id.clone(), step.status.clone());
            }
        }
        let status = run.status.as_str();
        if run.is_finished() {
            if format != Format::Table {
                print_structured(format, &body)?;
            } else {
                eprintln!(
                    "run {run_id} {status} in {:.2}s",
                    started.elapsed().as_secs_f64()
                );
                if let Some(error) = &run.error {
                    eprintln!("  error: {error}");
                }
                if let Some(outputs) = &run.outputs {
                    println!("{}", serde_json::to_string_pretty(outputs)?);
                }
            }
            return Ok(if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if started.elapsed() > timeout {
            eprintln!("run {run_id} still {status} after {timeout:?}; stopped waiting");
            return Ok(ExitCode::from(2));
        }
        // Quick runs are seen finishing within milliseconds; long ones are
        // polled five times a second.
        poll = (poll * 2).min(Duration::from_millis(200));
        tokio::time::sleep(poll).await;
    }
}

pub async fn request_get(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let body = Api::new(args)?.get(&format!("/v1/requests/{id}")).await?;
    print_request(args, &body)
}

/// A request answer, as a table of its fields or as `--output` asks.
pub(crate) fn print_request(args: &ClientArgs, body: &Value) -> anyhow::Result<ExitCode> {
    if args.output != Format::Table {
        return print_structured(args.output, body);
    }
    let request: model::Request = model(body, "request")?;
    for (key, value) in [
        ("id", request.id.to_string()),
        ("promise", request.promise),
        ("promise_version", request.promise_version),
        ("pinned", request.pinned.to_string()),
        ("status", request.status),
        ("run_id", opt(request.run_id)),
        ("delete_run_id", opt(request.delete_run_id)),
        ("reconcile_run_id", opt(request.reconcile_run_id)),
        ("created_at", at(Some(request.created_at))),
    ] {
        println!("{key:<16} {value}");
    }
    println!("params           {}", request.params);
    if let Some(outputs) = &request.outputs {
        println!("outputs          {outputs}");
    }
    if let Some(parent) = &request.parent {
        println!("{}", crate::output::parent_line(parent));
    }
    crate::output::print_children(&request.children);
    Ok(ExitCode::SUCCESS)
}

/// `DELETE /v1/requests/{id}`; with `wait`, follows the request until
/// the delete ends.
pub async fn request_delete(
    args: &ClientArgs,
    id: &str,
    force: bool,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let q = query(&[("force", force.then(|| "true".to_string()))]);
    let request = api
        .http
        .delete(format!("{}/v1/requests/{}{q}", api.base, encode(id)))
        .header("Fulfil-Actor", actor());
    let (_, answer) = api.send(request).await?;
    let deletion: model::Deletion = model(&answer, "answer to a delete")?;
    if args.output != Format::Table && !wait {
        return print_structured(args.output, &answer);
    }
    eprintln!(
        "request {}: {}{}{}",
        deletion.request_id,
        deletion.status,
        match deletion.run_id {
            Some(run) => format!("; delete run {run}"),
            None => "; no delete run".to_string(),
        },
        match (deletion.forced, deletion.replayed) {
            (true, _) => " (forced: no teardown)",
            (false, true) => " (already being deleted)",
            (false, false) => "",
        }
    );
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_delete(&api, id, timeout, args.output).await
}

/// `POST /v1/requests/{id}/reconcile`; with `wait`, waits for a queued
/// reconcile to start, then follows its run until it finishes.
pub async fn request_reconcile(
    args: &ClientArgs,
    id: &str,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let path = format!("/v1/requests/{}", encode(id));
    // The latest reconcile run before this one: a queued reconcile has
    // started once the request names another.
    let before = if wait {
        model::<model::Request>(&api.get(&path).await?, "request")?.reconcile_run_id
    } else {
        None
    };
    let request = api
        .http
        .post(format!("{}{path}/reconcile", api.base))
        .header("Fulfil-Actor", actor());
    let (_, answer) = api.send(request).await?;
    let reconcile: model::Reconcile = model(&answer, "answer to a reconcile")?;
    if args.output != Format::Table && !wait {
        return print_structured(args.output, &answer);
    }
    match (reconcile.run_id, reconcile.waiting_for_run) {
        (Some(run), _) => eprintln!(
            "request {}: reconcile run {run} started",
            reconcile.request_id
        ),
        (None, Some(waiting)) => eprintln!(
            "request {}: reconcile queued behind run {waiting}",
            reconcile.request_id
        ),
        (None, None) => eprintln!("request {}: reconcile queued", reconcile.request_id),
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let run_id = match reconcile.run_id {
        Some(run) => run,
        None => {
            let mut poll = Duration::from_millis(50);
            loop {
                let request: model::Request = model(&api.get(&path).await?, "request")?;
                match request.reconcile_run_id {
                    Some(run) if Some(run) != before => break run,
                    _ => {}
                }
                if started.elapsed() > timeout {
                    eprintln!(
                        "the reconcile of request {id} still queued after {timeout:?}; stopped waiting"
                    );
                    return Ok(ExitCode::from(2));
                }
                poll = (poll * 2).min(Duration::from_millis(500));
                tokio::time::sleep(poll).await;
            }
        }
    };
    eprintln!("reconcile run {run_id}");
    follow_run(
        &api,
        run_id,
        timeout.saturating_sub(started.elapsed()),
        args.output,
    )
    .await
}

/// Polls a request until it is `deleted` or `delete_failed`. The request,
/// not the delete run, is followed: a delete run waits to exist until a
/// configure run still going has stopped.
async fn follow_delete(
    api: &Api,
    id: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut poll = Duration::from_millis(5);
    loop {
        let body = api.get(&format!("/v1/requests/{}", encode(id))).await?;
        let request: model::Request = model(&body, "request")?;
        let status = request.status.as_str();
        if status == "deleted" || status == "delete_failed" {
            if format != Format::Table {
                print_structured(format, &body)?;
            } else {
                eprintln!(
                    "request {id} {status} in {:.2}s",
                    started.elapsed().as_secs_f64()
                );
                if let (Some(run), "delete_failed") = (request.delete_run_id, status) {
                    let run: model::Run =
                        model(&api.get(&format!("/v1/runs/{run}")).await?, "run")?;
                    if let Some(error) = &run.error {
                        eprintln!("  error: {error}");
                    }
                    eprintln!("  retry with: fulfil run retry {}", run.id);
                }
            }
            return Ok(if status == "deleted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if started.elapsed() > timeout {
            eprintln!("request {id} still {status} after {timeout:?}; stopped waiting");
            return Ok(ExitCode::from(2));
        }
        poll = (poll * 2).min(Duration::from_millis(200));
        tokio::time::sleep(poll).await;
    }
}

pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn request_list(
    args: &ClientArgs,
    promise: Option<String>,
    status: Option<String>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let q = query(&[
        ("promise", promise),
        ("status", status),
        ("limit", Some(limit.to_string())),
    ]);
    print_list(
        args,
        &format!("/v1/requests{q}"),
        &["ID", "PROMISE", "STATUS", "RUN", "CREATED"],
        |r: &model::Request| {
            vec![
                r.id.to_string(),
                r.promise.clone(),
                r.status.clone(),
                opt(r.run_id),
                at(Some(r.created_at)),
            ]
        },
    )
    .await
}

/// Prints a list endpoint's items as a table, a row per item, or the whole
/// answer as JSON.
pub(crate) async fn print_list<T: serde::de::DeserializeOwned>(
    args: &ClientArgs,
    path: &str,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<ExitCode> {
    let body = Api::new(args)?.get(path).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let page: model::Page<T> = model(&body, "list")?;
    print_table(headers, page.items.iter().map(row).collect());
    Ok(ExitCode::SUCCESS)
}

pub async fn run_get(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let body = Api::new(args)?.get(&format!("/v1/runs/{id}")).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    print_run(&model(&body, "run")?);
    Ok(ExitCode::SUCCESS)
}

pub async fn run_list(args: &ClientArgs, f: &crate::RunListArgs) -> anyhow::Result<ExitCode> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let q = query(&[
        ("status", f.status.map(|v| v.to_string())),
        ("promise", f.promise.clone()),
        ("request", f.request.map(|v| v.to_string())),
        ("kind", f.kind.map(|v| v.to_string())),
        ("owner", f.owner.clone()),
        ("waiting_for", f.waiting_for.map(|v| v.to_string())),
        ("since", time(f.since)),
        ("until", time(f.until)),
        ("cursor", f.cursor.clone()),
        ("limit", Some(f.limit.to_string())),
    ]);
    let body = Api::new(args)?.get(&format!("/v1/runs{q}")).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let page: model::Page<model::Run> = model(&body, "list")?;
    crate::output::print_run_list(&page, chrono::Utc::now());
    Ok(ExitCode::SUCCESS)
}

pub async fn run_history(args: &ClientArgs, id: &str) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let mut all = Vec::new();
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    // History pages are bounded; a run's whole history is a few pages at most.
    for _ in 0..1000 {
        let q = query(&[("cursor", cursor.clone())]);
        let body = api.get(&format!("/v1/runs/{id}/history{q}")).await?;
        // Raw items for --output json, which keeps fields this CLI does not know.
        all.extend(items(&body).iter().cloned());
        let page: model::Page<model::HistoryEvent> = model(&body, "history page")?;
        events.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if args.output != Format::Table {
        return print_structured(args.output, &json!({ "items": all }));
    }
    print_history(&events);
    Ok(ExitCode::SUCCESS)
}

/// Who the CLI acts as in run history: `cli:<user>`.
pub(crate) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

pub async fn run_cancel(
    args: &ClientArgs,
    id: &str,
    compensate: bool,
    reason: Option<String>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let request = api
        .http
        .post(format!("{}/v1/runs/{id}/cancel", api.base))
        .header("Fulfil-Actor", actor())
        .json(&model::CancelRun {
            compensate: Some(compensate),
            reason,
        });
    let (_, body) = api.send(request).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let cancelled: model::Cancelled = model(&body, "answer to a cancel")?;
    println!(
        "run {id}: {}{}",
        cancelled.status,
        if compensate && cancelled.status != "cancelled" {
            " (compensating succeeded steps; it ends cancelled)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run_retry(
    args: &ClientArgs,
    id: &str,
    step: Option<String>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let request = api
        .http
        .post(format!("{}/v1/runs/{id}/retry", api.base))
        .header("Fulfil-Actor", actor())
        .json(&model::RetryRun { step, dry_run });
    let (_, body) = api.send(request).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let retried: model::Retried = model(&body, "answer to a retry")?;
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(", ")
        }
    };
    let verb = if retried.applied {
        "re-running"
    } else {
        "would re-run"
    };
    println!("run {id}: {verb}: {}", list(&retried.rerun));
    println!("keeping outputs of: {}", list(&retried.kept));
    Ok(ExitCode::SUCCESS)
}

/// The principal an approval decision is made as: `--as` /
/// `FULFIL_ACTOR`, else `user:<login name>`.
fn principal(given: Option<String>) -> String {
    given
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            let user = std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into());
            format!("user:{user}")
        })
}

/// `POST /v1/runs/{id}/steps/{step}/approve|reject` as `principal`.
pub async fn run_decide(
    args: &ClientArgs,
    id: &str,
    step: &str,
    verb: &str,
    comment: Option<String>,
    principal_given: Option<String>,
) -> anyhow::Result<ExitCode> {
    let api = Api::new(args)?;
    let by = principal(principal_given);
    let request = api
        .http
        .post(format!(
            "{}/v1/runs/{}/steps/{}/{verb}",
            api.base,
            encode(id),
            encode(step)
        ))
        .header("Fulfil-Actor", by.as_str())
        .json(&model::DecideApproval { comment });
    let (_, body) = api.send(request).await?;
    if args.output != Format::Table {
        return print_structured(args.output, &body);
    }
    let outcome: model::ApprovalOutcome = model(&body, "answer to a decision")?;
    let verb_done = if verb == "approve" {
        "approved"
    } else {
        "rejected"
    };
    println!(
        "run {id} step {}: {verb_done} by {}; {} of {} approvals; step {}",
        outcome.step, outcome.by, outcome.approvals, outcome.quorum, outcome.step_status
    );
    Ok(ExitCode::SUCCESS)
}

fn items(body: &Value) -> &[Value] {
    body["items"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A JSON scalar as plain text; null as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::post;

    use super::*;

    const OVERLOADED: &str =
        r#"{"type":"https://fulfil.dev/problems/overloaded","title":"Overloaded"}"#;
    const UNAVAILABLE: &str =
        r#"{"type":"https://fulfil.dev/problems/unavailable","title":"Service unavailable"}"#;

    /// An API answering 503 with `problem` (and `Retry-After: 0` when
    /// `retry_after`) to its first `busy` requests, then 202; returns a
    /// client of it and the count of requests it received.
    async fn busy_api(
        busy: u32,
        retry_after: bool,
        problem: &'static str,
    ) -> anyhow::Result<(Api, Arc<AtomicU32>)> {
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().route(
            "/requests",
            post(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut headers = HeaderMap::new();
                    if n <= busy {
                        if retry_after {
                            headers.insert(header::RETRY_AFTER, "0".parse().expect("header"));
                        }
                        (StatusCode::SERVICE_UNAVAILABLE, headers, problem)
                    } else {
                        (StatusCode::ACCEPTED, headers, r#"{"run_id":"r"}"#)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = Api {
            http: reqwest::Client::new(),
            base,
        };
        Ok((api, seen))
    }

    async fn post_to(api: &Api) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        api.send(api.http.post(format!("{}/requests", api.base)).body("{}"))
            .await
    }

    #[tokio::test]
    async fn a_shed_request_is_sent_again_after_the_wait_it_names() -> anyhow::Result<()> {
        let (api, seen) = busy_api(2, true, OVERLOADED).await?;
        let (status, body) = post_to(&api).await?;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
        assert_eq!(body["run_id"], "r");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        Ok(())
    }

    #[tokio::test]
    async fn retries_stop_after_the_last_try_and_the_problem_is_reported() -> anyhow::Result<()> {
        let (api, seen) = busy_api(100, true, OVERLOADED).await?;
        let error = post_to(&api).await.expect_err("still overloaded");
        assert!(error.to_string().contains("Overloaded (503)"), "{error}");
        assert_eq!(seen.load(Ordering::SeqCst), SEND_TRIES);
        Ok(())
    }

    #[tokio::test]
    async fn other_503s_are_reported_not_retried() -> anyhow::Result<()> {
        // Without Retry-After, and a database outage, which may have hit a
        // commit that happened.
        for (retry_after, problem) in [(false, OVERLOADED), (true, UNAVAILABLE)] {
            let (api, seen) = busy_api(1, retry_after, problem).await?;
            assert!(post_to(&api).await.is_err());
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{problem}");
        }
        Ok(())
    }
}
