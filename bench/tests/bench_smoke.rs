//! CI smoke run of every `ordo-bench` scenario at tiny sizes, so the benchmark cannot rot. It
//! checks that each scenario runs against a real server and reports sane figures, not how fast
//! they are (numbers come from release runs recorded in BENCHMARKS.md).

use std::process::Command;

#[test]
fn every_bench_scenario_runs_at_tiny_sizes() {
    let output = Command::new(env!("CARGO_BIN_EXE_ordo-bench"))
        .args(["--json", "--duration", "0.5", "all", "--quick"])
        .env("ORDO_SERVER_BIN", ordo_test_harness::server_binary())
        .output()
        .expect("run ordo-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ordo-bench failed:\n{stdout}\n{stderr}"
    );

    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let scenarios: Vec<&str> = rows.iter().filter_map(|r| r["scenario"].as_str()).collect();
    for expected in [
        "append",
        "append-order",
        "append-batch",
        "append-stream",
        "e2e",
        "catchup",
        "consume",
        "fanout",
        "scale",
        "metrics",
    ] {
        assert!(
            scenarios.contains(&expected),
            "no {expected} row in {scenarios:?}"
        );
    }
    for row in &rows {
        let rate = row["rate"].as_f64().unwrap_or(0.0);
        assert!(rate > 0.0, "zero rate: {row}");
        if let Some(delivered) = row["delivered"].as_str() {
            let (got, want) = delivered.split_once('/').expect("delivered is got/want");
            assert_eq!(got, want, "live subscribers missed events: {row}");
        }
        if row["scenario"] == "consume" {
            assert_eq!(row["events"], "5000", "every event acked: {row}");
        }
        if row["scenario"] == "catchup" {
            assert_eq!(
                row["events_each"], "5000",
                "catch-up read everything: {row}"
            );
        }
    }
}
