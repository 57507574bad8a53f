use serde_json::json;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fulfil-secrets-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, value: &str) {
        std::fs::write(self.0.join(name), value).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn slot(pointer: &str, parts: Vec<SecretPart>) -> SecretSlot {
    SecretSlot {
        pointer: pointer.into(),
        parts,
    }
}

fn secret(name: &str) -> SecretPart {
    SecretPart::Secret(name.into())
}

fn text(t: &str) -> SecretPart {
    SecretPart::Text(t.into())
}

#[tokio::test]
async fn env_source_reads_prefixed_uppercased_variables() {
    // Cargo sets CARGO_PKG_NAME for the test process; the workspace forbids
    // the unsafe set_var, so a known variable stands in for a secret.
    let cargo = EnvSecrets::with_prefix("CARGO_PKG_");
    assert_eq!(
        cargo.lookup("name").await.unwrap(),
        Some(SecretValue::new("fulfil-worker"))
    );
    let env = EnvSecrets::new();
    assert_eq!(env.lookup("surely_not_set_4711").await.unwrap(), None);
    assert_eq!(
        env.describe("api_token"),
        "environment variable FULFIL_SECRET_API_TOKEN"
    );
}

#[tokio::test]
async fn dir_source_reads_one_file_per_secret_trimming_one_newline() {
    let dir = TempDir::new();
    dir.write("api_token", "s3cr3t\n");
    dir.write("crlf", "v\r\n");
    dir.write("two", "v\n\n");
    let source = DirSecrets::new(&dir.0);
    let get = |name: &'static str| {
        let source = source.clone();
        async move {
            source
                .lookup(name)
                .await
                .unwrap()
                .map(|v| v.expose().to_string())
        }
    };
    assert_eq!(get("api_token").await.as_deref(), Some("s3cr3t"));
    assert_eq!(get("crlf").await.as_deref(), Some("v"));
    assert_eq!(get("two").await.as_deref(), Some("v\n"));
    assert_eq!(get("absent").await, None);
}

#[tokio::test]
async fn the_first_source_holding_a_name_wins() {
    let first = TempDir::new();
    let second = TempDir::new();
    first.write("a", "from-first");
    second.write("a", "from-second");
    second.write("b", "only-second");
    let sources = SecretSources::empty()
        .then(DirSecrets::new(&first.0))
        .then(DirSecrets::new(&second.0));
    let mut input = json!({"a": "x", "b": "y"});
    sources
        .resolve(
            &mut input,
            &[slot("/a", vec![secret("a")]), slot("/b", vec![secret("b")])],
        )
        .await
        .unwrap();
    assert_eq!(input, json!({"a": "from-first", "b": "only-second"}));
    // The standard chain puts the directory before the environment.
    let standard = format!("{:?}", SecretSources::standard(Some(first.0.clone())));
    let dir_at = standard.find("file ").unwrap();
    let env_at = standard.find("environment variable").unwrap();
    assert!(dir_at < env_at, "{standard}");
}

#[tokio::test]
async fn a_missing_secret_is_a_permanent_secret_missing_naming_it_and_where() {
    let dir = TempDir::new();
    let sources = SecretSources::standard(Some(dir.0.clone()));
    let mut input = json!({"token": "${{ secrets.api_token }}"});
    let err = sources
        .resolve(&mut input, &[slot("/token", vec![secret("api_token")])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(SECRET_MISSING));
    assert!(!err.is_retryable());
    for needle in ["\"api_token\"", "FULFIL_SECRET_API_TOKEN", "api_token"] {
        assert!(err.message().contains(needle), "{}", err.message());
    }
    assert!(
        err.message().contains(&dir.0.display().to_string()),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn only_slots_are_resolved_and_names_off_the_wire_are_checked() {
    let dir = TempDir::new();
    dir.write("api_token", "s3cr3t");
    let sources = SecretSources::empty().then(DirSecrets::new(&dir.0));
    let mut input = json!({
        "headers": {"authorization": "Bearer ${{ secrets.api_token }}"},
        "injected": "${{ secrets.api_token }}",
        "list": ["${{ secrets.api_token }}"],
    });
    sources
        .resolve(
            &mut input,
            &[slot(
                "/headers/authorization",
                vec![text("Bearer "), secret("api_token")],
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        input,
        json!({
            "headers": {"authorization": "Bearer s3cr3t"},
            "injected": "${{ secrets.api_token }}",
            "list": ["${{ secrets.api_token }}"],
        })
    );

    let mut input = json!({"a": "x"});
    let escape = sources
        .resolve(&mut input, &[slot("/a", vec![secret("../etc/passwd")])])
        .await
        .unwrap_err();
    assert_eq!(escape.code(), Some(INVALID_SECRET_SLOT));
    let nowhere = sources
        .resolve(&mut input, &[slot("/nope", vec![secret("api_token")])])
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Some(INVALID_SECRET_SLOT));
    assert_eq!(input, json!({"a": "x"}), "a refused task changes nothing");
}

#[tokio::test]
async fn output_error_and_keys_are_redacted_but_empty_values_are_not() {
    let dir = TempDir::new();
    dir.write("long", "abc-123-xyz");
    dir.write("short", "123");
    dir.write("empty", "");
    let sources = SecretSources::empty().then(DirSecrets::new(&dir.0));
    let mut input = json!({"a": "", "b": "", "c": ""});
    let redactor = sources
        .resolve(
            &mut input,
            &[
                slot("/a", vec![secret("long")]),
                slot("/b", vec![secret("short")]),
                slot("/c", vec![secret("empty")]),
            ],
        )
        .await
        .unwrap();
    let output = redactor.value(json!({
        "echo": "got abc-123-xyz and 123",
        "nested": [{"abc-123-xyz": 123, "n": "x123y"}],
        "empty": "",
    }));
    assert_eq!(
        output,
        json!({
            "echo": "got [redacted:long] and [redacted:short]",
            "nested": [{"[redacted:long]": 123, "n": "x[redacted:short]y"}],
            "empty": "",
        })
    );
    let failure = redactor.failure(StepFailure {
        message: "server said: bad token abc-123-xyz".into(),
        code: Some("http_status_401".into()),
        retryable: false,
        retry_after_ms: None,
    });
    assert_eq!(failure.message, "server said: bad token [redacted:long]");
    assert_eq!(format!("{:?}", SecretValue::new("abc")), "[redacted]");
    assert!(!format!("{redactor:?}").contains("abc-123-xyz"));
}
