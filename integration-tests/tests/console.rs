//! `/ui`, the web console, as the API serves it: the embedded files, every
//! page URL answering the single page, revalidation by ETag, security
//! headers, no token needed for the files while `/v1` still needs one,
//! and `--console-dir` refusing paths that leave its directory.
//! (What the console does in a browser: cli/tests/console_e2e.rs.)

use fulfil_integration_tests::TestStack;
use fulfil_integration_tests::auth::serve_with_tokens;
use reqwest::header;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_without_a_token() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let (api, _) = serve_with_tokens(&stack).await?;
    let http = reqwest::Client::new();

    for page in [
        "/ui",
        "/ui/",
        "/ui/runs",
        "/ui/runs/0192?status=failed&sort=duration",
    ] {
        let response = http.get(format!("{api}{page}")).send().await?;
        assert_eq!(response.status(), 200, "{page}");
        let headers = response.headers().clone();
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()?
                .starts_with("text/html"),
            "{page}: {headers:?}"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str()?;
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let body = response.text().await?;
        assert!(
            body.contains("/ui/assets/main.js"),
            "{page} is the single page"
        );
    }

    let script = http.get(format!("{api}/ui/assets/main.js")).send().await?;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()[header::CONTENT_TYPE]
            .to_str()?
            .starts_with("text/javascript")
    );
    assert_eq!(script.headers()[header::CACHE_CONTROL], "no-cache");
    let etag = script.headers()[header::ETAG].clone();
    let again = http
        .get(format!("{api}/ui/assets/main.js"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await?;
    assert_eq!(
        again.status(),
        304,
        "an unchanged file is revalidated, not resent"
    );

    let missing = http.get(format!("{api}/ui/assets/nope.js")).send().await?;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    // The files hold no data; the data still needs a token.
    let runs = http.get(format!("{api}/v1/runs")).send().await?;
    assert_eq!(runs.status(), 401);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_directory_serves_its_files_and_nothing_outside() -> anyhow::Result<()> {
    let stack = TestStack::start().await?;
    let dir = std::env::temp_dir().join(format!("fulfil-console-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("assets"))?;
    std::fs::write(dir.join("index.html"), "<p>from the directory</p>")?;
    std::fs::write(dir.join("assets/app.css"), "body { color: red }")?;
    std::fs::write(dir.join("secret.txt"), "not an asset")?;
    let state = fulfil_api::ApiState {
        console: fulfil_api::console::ConsoleFiles::Directory(dir.clone()),
        ..fulfil_api::ApiState::new(stack.engine.clone(), Some(stack.nats.clone()))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(fulfil_api::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::new();

    let page = http.get(format!("{api}/ui/promises")).send().await?;
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await?, "<p>from the directory</p>");
    let css = http.get(format!("{api}/ui/assets/app.css")).send().await?;
    assert!(
        css.headers()[header::CONTENT_TYPE]
            .to_str()?
            .starts_with("text/css")
    );
    assert_eq!(css.text().await?, "body { color: red }");
    // A client may normalise the dots away (then the URL names a console
    // page and gets the single page); either way, never the file.
    for escape in [
        "/ui/assets/%2e%2e/secret.txt",
        "/ui/assets/.%2e/secret.txt",
        "/ui/assets/%2e%2e/%2e%2e/etc/passwd",
        "/ui/assets/..%2fsecret.txt",
    ] {
        let response = http.get(format!("{api}{escape}")).send().await?;
        let status = response.status();
        let body = response.text().await?;
        assert!(
            status == 404 || body == "<p>from the directory</p>",
            "{escape}: {status} {body}"
        );
        assert!(!body.contains("not an asset"), "{escape}");
    }

    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await
}
