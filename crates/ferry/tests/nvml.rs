//! GPUs found through NVML, end to end: the agent loads a stand-in for NVIDIA's `libnvidia-ml.so` through the real
//! nvml-wrapper crate, and what it reads reaches `ferry nodes` and the scheduler.
//!
//! No NVIDIA driver is needed: the stand-in is `tests/fake_nvml/fakenvml.c`, compiled here with `cc` into a file
//! named `libnvidia-ml.so.1` that the agent's `nvml_library` setting points at. It reports two "Fake H100 80GB"
//! GPUs with 80 GiB each, 20 GiB in use, busy 87% and 13%, at 55 C drawing 312000 mW.

mod common;

use common::{build_fake_nvml, stderr, Ferry, NodeSpec};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// The cell under `column` in the row of `node` in the `ferry nodes` table, whose columns are left-aligned.
fn table_cell(table: &str, node: &str, column: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let start = header.find(column).unwrap_or_else(|| panic!("no {column:?} column in:\n{table}"));
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no row for {node} in:\n{table}"));
    row.get(start..).unwrap_or_default().split("  ").next().unwrap_or_default().trim().to_string()
}

#[test]
fn gpus_found_through_nvml_are_reported_measured_and_schedulable() {
    let library_dir = tempfile::tempdir().unwrap();
    let library = build_fake_nvml(library_dir.path(), &[]);
    // No GPU is declared in the configuration: every GPU the node has must come from NVML.
    let f = Ferry::start_with_agent_config(
        NodeSpec { gpus: 0, ..NodeSpec::default() },
        &format!("nvml_library = '{}'", library.display()),
        "30s",
    );

    let nodes = f.json(&["nodes", "--json"]);
    let node = &nodes["nodes"][0];
    assert_eq!(node["name"], "node-a", "{nodes:#}");
    assert_eq!(
        node["gpus"],
        json!([
            {
                "index": 0,
                "model": "Fake H100 80GB",
                "memory_bytes": 80 * GIB,
                "uuid": "GPU-fa4e0000-0000-4000-8000-000000000000",
                "source": "nvml",
            },
            {
                "index": 1,
                "model": "Fake H100 80GB",
                "memory_bytes": 80 * GIB,
                "uuid": "GPU-fa4e0000-0000-4000-8000-000000000001",
                "source": "nvml",
            },
        ]),
        "{nodes:#}\n{}",
        f.logs_for_failure()
    );

    // Usage is sampled once a second and comes with the agent's next report.
    let gpu_usage = |f: &Ferry| -> Value { f.json(&["nodes", "--json"])["nodes"][0]["usage"]["gpus"].clone() };
    f.wait_for("the node to report GPU usage", |f| gpu_usage(f).as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        gpu_usage(&f),
        json!([
            {
                "index": 0,
                "utilization_percent": 87,
                "memory_used_bytes": 20 * GIB,
                "temperature_c": 55,
                "power_mw": 312000,
            },
            {
                "index": 1,
                "utilization_percent": 13,
                "memory_used_bytes": 20 * GIB,
                "temperature_c": 55,
                "power_mw": 312000,
            },
        ])
    );

    let table = f.ok(&["nodes"]);
    assert_eq!(table_cell(&table, "node-a", "GPU UTIL"), "50%", "the mean of 87% and 13%:\n{table}");
    assert_eq!(table_cell(&table, "node-a", "GPUS ALLOC"), "0/2", "{table}");

    // A GPU that NVML found is one the scheduler can give to a job.
    let out = f.cli(&["run", "--gpus", "1", "--follow", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), f.logs_for_failure());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
}
