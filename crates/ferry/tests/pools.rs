//! Pools managed at run time: `ferry pool add`, `update` and `remove`, against a real server and agents. A pool added
//! takes nodes and jobs at once and survives a restart; every definition is checked as the configuration file's pools
//! are; the file's own pools and pools still holding nodes are refused with the reason.

mod common;

use common::{stderr, Ferry, NodeSpec};

/// The server's configuration: one pool in the file, and the address cloud machines would reach it at.
const CONFIG: &str = "public_url = \"http://127.0.0.1:7750\"\n[[pool]]\nname = \"local\"\norder = 0\n";

fn write(f: &Ferry, name: &str, text: &str) -> String {
    let path = f.root.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn pool_names(f: &Ferry) -> Vec<String> {
    let pools = f.json(&["pools", "--json"])["pools"].as_array().cloned().unwrap_or_default();
    pools.iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect()
}

/// Runs the CLI and returns its standard error, failing the test if it succeeded.
fn refused(f: &Ferry, args: &[&str]) -> String {
    let out = f.cli(args);
    assert!(!out.status.success(), "ferry {args:?} should have been refused");
    stderr(&out)
}

#[test]
fn a_pool_added_at_run_time_takes_nodes_and_jobs_at_once_and_survives_a_restart() {
    let mut f = Ferry::start_with_server_config(NodeSpec::default(), "pool = \"local\"\n", CONFIG);
    let extra = write(&f, "extra.toml", "[[pool]]\nname = \"extra\"\norder = 5\nprice_gpu_hour = 1.5\n");
    assert_eq!(f.ok(&["pool", "add", &extra]).trim(), "pool added");
    assert_eq!(pool_names(&f), ["local", "extra"]);
    // A node joins it, and a job pinned to it runs there.
    f.start_extra_agent("gpu-x", "extra", 1);
    let job = f.submit(&["--pool", "extra", "--gpus", "1", "--", "true"]);
    let done = f.wait_state(job, "succeeded");
    assert_eq!(done["node"], "gpu-x");
    // Its definition is the store's, so a restart keeps it.
    f.kill_server();
    f.start_server();
    assert_eq!(pool_names(&f), ["local", "extra"]);
    // An update changes it; the name is the definition's.
    let moved = write(&f, "extra2.toml", "name = \"extra\"\norder = 20\n");
    assert_eq!(f.ok(&["pool", "update", &moved]).trim(), "pool extra updated");
    let pools = f.json(&["pools", "--json"]);
    let order = pools["pools"].as_array().unwrap().iter().find(|p| p["name"] == "extra").unwrap()["order"].clone();
    assert_eq!(order, 20);
    // A pool with a node left is not removed; the refusal names the node.
    assert!(refused(&f, &["pool", "remove", "extra"]).contains("still has nodes or machines (gpu-x)"));
}

#[test]
fn definitions_are_checked_as_the_configuration_files_pools_are_and_only_run_time_pools_change() {
    let f = Ferry::start_with_server_config(NodeSpec::default(), "pool = \"local\"\n", CONFIG);
    let cloud = |extra: &str| {
        format!(
            "[[pool]]\nname = \"aws\"\norder = 10\nburst = true\nmax_nodes = 2\n{extra}\n[pool.cloud]\nprovider = \"aws\"\n\
             region = \"us-east-1\"\nzones = [\"us-east-1a\"]\ninstance_type = \"m5.large\"\nimage = \"ami-12c6146b\"\n\
             endpoint = \"http://127.0.0.1:9\"\n"
        )
    };
    let cases = [
        (
            cloud("").replace("\"aws\"\nregion", "\"moon\"\nregion"),
            "[pool.cloud] provider: provider \"moon\" is not one this build knows",
        ),
        (cloud("").replace("m5.large", "m5.larg"), "[pool.cloud] instance_type: instance type \"m5.larg\""),
        (cloud("").replace("us-east-1a", "eu-west-1a"), "[pool.cloud] zones: zone \"eu-west-1a\" is not a zone of"),
        (cloud("node = { cpus = 64 }"), "node.cpus is 64, more than an instance of m5.large has (2)"),
        (cloud("startup_timeout = \"3h\""), "`startup_timeout` is 3h; write a duration from 10s to 2h"),
        (cloud("").replace("image", "market = \"spot\"\nimage"), "[pool.cloud] price_hour: a spot pool needs one"),
        (cloud("").replace("image", "price_hour = -1.0\nimage"), "[pool.cloud] price_hour: -1 is not a price"),
        (
            "name = \"hpc\"\norder = 1\nkind = \"ray\"\n[engine]\naddress = \"http://127.0.0.1:8265\"\n".to_string(),
            "is set in the server's configuration file",
        ),
        ("name = \"x y\"\norder = 1\n".to_string(), "`name` must be a non-empty word"),
        (
            "[[pool]]\nname = \"a\"\norder = 1\n[[pool]]\nname = \"b\"\norder = 2\n".to_string(),
            "the definition has 2 [[pool]] tables",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = write(&f, &format!("bad-{i}.toml"), text);
        let error = refused(&f, &["pool", "add", &path]);
        assert!(error.contains(expected), "case {i}: expected {expected:?} in {error:?}");
    }
    assert_eq!(pool_names(&f), ["local"], "nothing refused was added");
    // A valid elastic pool is added, and `ferry pools` shows its cloud at once.
    let aws = write(&f, "aws.toml", &cloud(""));
    f.ok(&["pool", "add", &aws]);
    let pools = f.json(&["pools", "--json"]);
    let elastic = &pools["pools"].as_array().unwrap().iter().find(|p| p["name"] == "aws").unwrap()["elastic"];
    assert_eq!(
        (elastic["instance_type"].as_str(), elastic["max_nodes"].as_u64()),
        (Some("m5.large"), Some(2)),
        "{pools}"
    );
    // Twice is a conflict; the file's pool is the file's; an unknown pool is not found.
    assert!(refused(&f, &["pool", "add", &aws]).contains("there is already a pool `aws`"));
    let local = write(&f, "local.toml", "name = \"local\"\norder = 3\n");
    assert!(refused(&f, &["pool", "update", &local]).contains("defined in the server's configuration file"));
    assert!(refused(&f, &["pool", "remove", "local"]).contains("defined in the server's configuration file"));
    assert!(refused(&f, &["pool", "remove", "nope"]).contains("no pool `nope` was added at run time"));
    // A user who is not an installation admin may not change pools.
    f.ok(&["user", "add", "ann"]);
    let user_token = f.token_for("ann", "admin");
    let out = f.cli_as(Some(&user_token), &["pool", "remove", "aws"], "");
    assert!(stderr(&out).contains("only an installation admin"), "{}", stderr(&out));
    // The elastic pool has no machines: it goes.
    assert_eq!(f.ok(&["pool", "remove", "aws"]).trim(), "pool aws removed");
    assert_eq!(pool_names(&f), ["local"]);
}
