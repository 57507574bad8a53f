use std::time::{Duration, Instant};

use fulfil_core::wire::TaskMessage;
use serde_json::{Value, json};

use super::*;
use crate::handler::RetryDecision;

fn task(deadline_in: Duration) -> TaskContext {
    let deadline_in = chrono::Duration::from_std(deadline_in).unwrap_or(chrono::Duration::MAX);
    TaskContext::from_task(&TaskMessage {
        attempt: 2,
        idempotency_key: "run-1:render".into(),
        ..crate::test_support::task_message(Exec::NAME, "render", deadline_in)
    })
}

fn exec() -> Exec {
    Exec::new(ExecAllowList::from_entries(["cat", "sh"]).expect("cat and sh are on PATH"))
}

async fn call(input: Value) -> Result<Value, StepError> {
    exec().handle(&task(Duration::from_secs(30)), input).await
}

fn sh(script: &str) -> Value {
    json!({ "command": "sh", "args": ["-c", script] })
}

/// Whether `pid` is a live process (a zombie is not: it has exited and
/// only waits for its parent to reap it).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // `pid (comm) S ...`: the state follows the last ')'.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with(['Z', 'X'])
        }
    }
}

/// Whether `pid` is gone from the process table altogether.
fn reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &std::path::Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

#[tokio::test]
async fn json_goes_in_on_stdin_and_comes_out_of_stdout_in_a_clean_environment() {
    // Input on stdin, stdout parsed: `cat` gives back what it was given.
    let input = json!({"name": "orders", "sizes": [1, 2], "nested": {"ok": true}});
    let output = call(json!({"command": "cat", "input": input})).await;
    assert_eq!(output, Ok(input));

    // Arguments are passed as they are (no shell), numbers as their text;
    // the environment is the step's plus the task's identity, and nothing
    // else of the worker's (cargo sets CARGO_MANIFEST_DIR for this test).
    let script = r#"printf '{"args":"%s|%s","greeting":"%s","n":%s,"run":"%s","step":"%s","attempt":%s,"key":"%s","leak":"%s","path_set":%s}' "$1" "$2" "$GREETING" "$N" "$FULFIL_RUN_ID" "$FULFIL_STEP_ID" "$FULFIL_ATTEMPT" "$FULFIL_IDEMPOTENCY_KEY" "${CARGO_MANIFEST_DIR-unset}" "$([ -n "$PATH" ] && echo true || echo false)""#;
    let ctx = task(Duration::from_secs(30));
    let output = exec()
        .handle(
            &ctx,
            json!({
                "command": "sh",
                "args": ["-c", script, "sh", "a b; rm -rf /", 7],
                "env": {"GREETING": "hi there", "N": 3},
            }),
        )
        .await
        .expect("the script succeeds");
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok(), "cargo sets it");
    assert_eq!(
        output,
        json!({"args": "a b; rm -rf /|7", "greeting": "hi there", "n": 3,
               "run": ctx.run_id.to_string(), "step": "render", "attempt": 2,
               "key": "run-1:render", "leak": "unset", "path_set": true})
    );

    // Empty stdout is null; the default working directory is new, empty
    // and gone afterwards.
    assert_eq!(call(sh("true")).await, Ok(Value::Null));
    let output = call(sh(
        r#"printf '{"cwd":"%s","entries":%s}' "$PWD" "$(ls -A | wc -l)""#,
    ))
    .await
    .expect("the script succeeds");
    assert_eq!(output["entries"], 0, "{output}");
    let cwd = output["cwd"].as_str().unwrap_or_default();
    assert!(cwd.contains("fulfil-exec-"), "{output}");
    assert!(!std::path::Path::new(cwd).exists(), "{cwd} was removed");
}

#[tokio::test]
async fn what_is_not_allowed_or_malformed_is_refused_for_good() {
    let refused = call(json!({"command": "terraform", "args": ["apply"]}))
        .await
        .expect_err("not allowed");
    assert_eq!(refused.code(), Some("exec_not_allowed"));
    assert_eq!(refused.decision(), RetryDecision::Permanent);
    assert!(refused.message().contains("\"terraform\""), "{refused}");
    assert!(refused.message().contains("[cat, sh]"), "{refused}");

    // A worker started without an allow-list runs nothing, not even what
    // is on its PATH, nor a path given as the command.
    for command in ["sh", "/bin/sh", "../sh"] {
        let refused = Exec::default()
            .handle(
                &task(Duration::from_secs(5)),
                json!({"command": command, "args": ["-c", "echo 1"]}),
            )
            .await
            .expect_err("nothing is allowed");
        assert_eq!(refused.code(), Some("exec_not_allowed"), "{command}");
        assert!(
            refused.message().contains("allows no commands"),
            "{refused}"
        );
    }

    for (input, field) in [
        (json!({"command": "cat", "args": [{"a": 1}]}), "args[0]"),
        (json!({"command": "cat", "env": {"1X": "v"}}), "env.1X"),
        (json!({"command": "cat", "env": {"X": "a\u{0}b"}}), "env.X"),
        (json!({"command": "cat", "cwd": "relative/dir"}), "cwd"),
        (json!({"command": "cat", "argz": []}), "argz"),
        (json!({"args": []}), "command"),
    ] {
        let refused = call(input.clone()).await.expect_err("invalid input");
        assert_eq!(refused.code(), Some("invalid_input"), "{input}");
        assert!(refused.message().contains(field), "{input}: {refused}");
    }
}

#[tokio::test]
async fn failures_carry_exit_code_stderr_tail_and_quoted_output() {
    let failed = call(sh("echo starting; echo 'role \"x\" exists' >&2; exit 3"))
        .await
        .expect_err("exit 3");
    assert_eq!(failed.code(), Some("exec_failed"));
    assert!(failed.is_retryable());
    assert!(failed.message().contains("exited with code 3"), "{failed}");
    assert!(failed.message().contains("role \"x\" exists"), "{failed}");

    // Only the tail of a long stderr is kept.
    let failed = call(sh(
        "i=0; while [ $i -lt 3000 ]; do echo \"line-$i\" >&2; i=$((i+1)); done; exit 1",
    ))
    .await
    .expect_err("exit 1");
    assert!(failed.message().contains("line-2999"), "the end is kept");
    assert!(!failed.message().contains("line-10\n"), "the start is not");
    assert!(
        failed.message().len() < STDERR_TAIL_BYTES + 300,
        "bounded: {} bytes",
        failed.message().len()
    );
    assert!(failed.message().contains("last 4096 bytes"), "{failed}");

    let killed = call(sh("kill -9 $$")).await.expect_err("killed");
    assert_eq!(killed.code(), Some("exec_killed"));
    assert!(killed.message().contains("signal 9"), "{killed}");

    let not_json = call(sh("echo 'CREATE DATABASE'; echo done"))
        .await
        .expect_err("not JSON");
    assert_eq!(not_json.code(), Some("exec_output_not_json"));
    assert_eq!(not_json.decision(), RetryDecision::Permanent);
    assert!(not_json.message().contains("CREATE DATABASE"), "{not_json}");

    // Endless output is cut off at the limit, and the command with it.
    let started = Instant::now();
    let flood = call(sh("yes '{}'")).await.expect_err("too much");
    assert_eq!(flood.code(), Some("exec_output_too_large"));
    assert_eq!(flood.decision(), RetryDecision::Permanent);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_deadline_kills_the_whole_process_group_and_leaves_no_zombie() {
    let dir = ScratchDir::create("exec-test").expect("temp dir");
    let cwd = dir.path().to_string_lossy().into_owned();
    // The shell starts a grandchild that would sleep for five minutes,
    // then waits for it.
    let script = "sleep 300 & echo $! > grandchild; echo $$ > child; wait";
    let started = Instant::now();
    let late = exec()
        .handle(
            &task(Duration::from_millis(1500)),
            json!({"command": "sh", "args": ["-c", script], "cwd": cwd}),
        )
        .await
        .expect_err("still running at the deadline");
    assert_eq!(late.code(), Some("timeout"));
    assert!(late.is_retryable());
    assert!(
        late.message().contains("process group was killed"),
        "{late}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (child, grandchild) = (
        read_pid(&dir.path().join("child")),
        read_pid(&dir.path().join("grandchild")),
    );
    eventually("the grandchild is killed", || !running(grandchild)).await;
    // The shell was this process's child: reaped here, not left a zombie.
    eventually("the child is reaped", || reaped(child)).await;

    // Dropped by the runtime (its deadline, a shutdown): the same.
    let script = "sleep 300 & echo $! > grandchild2; echo $$ > child2; wait";
    let handler = exec();
    let ctx = task(Duration::from_secs(60));
    let input = json!({"command": "sh", "args": ["-c", script], "cwd": cwd});
    let dropped =
        tokio::time::timeout(Duration::from_millis(700), handler.handle(&ctx, input)).await;
    assert!(dropped.is_err(), "still running when dropped");
    let (child, grandchild) = (
        read_pid(&dir.path().join("child2")),
        read_pid(&dir.path().join("grandchild2")),
    );
    eventually("the dropped step's grandchild is killed", || {
        !running(grandchild)
    })
    .await;
    eventually("the dropped step's child is reaped", || reaped(child)).await;

    // A command that finishes but leaves a background process behind:
    // that goes too.
    let script = "sleep 300 & echo $! > leftover; echo '{\"ok\":true}'";
    let input = json!({"command": "sh", "args": ["-c", script], "cwd": cwd});
    assert_eq!(exec().handle(&ctx, input).await, Ok(json!({"ok": true})));
    let leftover = read_pid(&dir.path().join("leftover"));
    eventually("the leftover is killed", || !running(leftover)).await;
}

#[test]
fn allow_list_entries_resolve_at_start_or_are_refused() {
    let list = ExecAllowList::from_entries(["sh", "shell=/bin/sh"]).expect("valid entries");
    assert_eq!(list.names().collect::<Vec<_>>(), ["sh", "shell"]);
    assert!(list.path_of("sh").is_some_and(Path::is_absolute));
    assert_eq!(list.path_of("shell"), Some(Path::new("/bin/sh")));

    let bad = |entry: &str| {
        ExecAllowList::from_entries([entry])
            .expect_err(entry)
            .to_string()
    };
    assert!(bad("no-such-command-here").contains("no executable"));
    assert!(bad("x=/etc/passwd").contains("not an executable file"));
    assert!(bad("-rf").contains("not a valid command name"));
    assert!(bad("a/b").contains("not a valid command name"));

    let scripts = ScratchDir::create("exec-scripts").expect("temp dir");
    let script = scripts.path().join("make-db.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{}'\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(scripts.path().join("README.md"), "not executable").expect("write");
    let mut list = ExecAllowList::new();
    list.allow_scripts_in(scripts.path()).expect("listed");
    assert_eq!(list.names().collect::<Vec<_>>(), ["make-db.sh"]);
}
