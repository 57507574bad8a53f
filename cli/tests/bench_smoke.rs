//! `fulfil bench` completes at a small size and writes parseable JSON with
//! the fields scripts rely on. No timing is asserted: figures vary by machine.

use fulfil_integration_tests::{database_url, nats_url};

#[test]
fn bench_runs_every_scenario_and_writes_its_report() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("fulfil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (scenario, extra) in [
        ("three-step", vec![]),
        ("chain", vec!["--steps", "5"]),
        ("fanout", vec!["--steps", "4"]),
    ] {
        let json = dir.join(format!("{scenario}.json"));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
            .args([
                "bench",
                "--scenario",
                scenario,
                "--workflows",
                "12",
                "--concurrency",
                "4",
                "--warmup",
                "2",
                "--stats-settle",
                "0s",
            ])
            .args(&extra)
            .arg("--json")
            .arg(&json)
            .env("DATABASE_URL", database_url())
            .env("NATS_URL", nats_url())
            .output()?;
        assert!(
            output.status.success(),
            "{scenario}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        assert_eq!(report["scenario"], scenario);
        assert_eq!(report["workflows"], 12);
        assert_eq!(report["failed"], 0);
        for field in [
            "workflows_per_s",
            "steps_per_s",
            "per_step_overhead_ms",
            "pg_xact_per_step",
        ] {
            assert!(
                report[field]
                    .as_f64()
                    .is_some_and(|v| v.is_finite() && v >= 0.0),
                "{scenario}: {field} in {report:#}"
            );
        }
        for field in ["p50", "p95", "p99", "max"] {
            assert!(
                report["latency_ms"][field]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{scenario}: latency {field}"
            );
        }
        assert!(report["accept_ms"]["p99"].as_f64().is_some_and(|v| v > 0.0));
        let processes = report["processes"].as_array().cloned().unwrap_or_default();
        assert_eq!(processes.len(), 2, "split topology runs two processes");
        for p in processes {
            assert!(p["peak_rss_mib"].as_f64().is_some_and(|v| v > 0.0), "{p}");
            assert!(p["role"].is_string());
        }
    }

    // Events published by a plain NATS client into a trigger, a tenth of
    // them twice: none may file a second request.
    let json = dir.join("events.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfil"))
        .args([
            "bench",
            "--scenario",
            "events",
            "--workflows",
            "20",
            "--rate",
            "200",
        ])
        .args(["--warmup", "2", "--stats-settle", "0s", "--json"])
        .arg(&json)
        .env("DATABASE_URL", database_url())
        .env("NATS_URL", nats_url())
        .output()?;
    assert!(
        output.status.success(),
        "events: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    assert_eq!(report["scenario"], "events");
    assert_eq!(report["events"], 20);
    assert_eq!(report["resent"], 2);
    assert_eq!(report["duplicates_filed"], 0);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["ledger_entries_per_message"], 1.0);
    for field in ["p50", "p99", "max"] {
        assert!(
            report["published_to_started_ms"][field]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "published_to_started_ms.{field} in {report:#}"
        );
    }
    assert!(report["events_per_s"].as_f64().is_some_and(|v| v > 0.0));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
