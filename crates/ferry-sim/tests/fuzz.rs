//! Arbitrary bytes and near-miss text thrown at every parser: each must answer with a value or an error, never
//! panic. (A panic fails the property; proptest then shrinks the input to a small one that shows it.) Teams with
//! projects of near-miss names and amounts, too: what the cluster parser accepts keeps every project's quota within
//! its team's.

use ferry_sim::{parse_cluster_toml, parse_trace_nodes, parse_trace_pods, parse_workload_csv};
use proptest::prelude::*;

fn all_parsers(text: &str) {
    let _ = parse_cluster_toml("cluster.toml", text);
    let _ = parse_workload_csv("workload.csv", text);
    let _ = parse_trace_nodes("nodes.csv", text);
    let _ = parse_trace_pods("pods.csv", text);
}

/// Text made of the pieces these files are made of, so that inputs get past the header and into the values.
fn near_miss() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority\n",
        "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_share,nodes,project\n",
        "sn,cpu_milli,memory_mib,gpu,model\n",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,creation_time,deletion_time,scheduled_time\n",
        "[[pool]]\n",
        "[[node]]\n",
        "[[team]]\n",
        "[[team.project]]\n",
        "[team.project]\n",
        "name = \"\"\n",
        "quota = {}\n",
        "quota = { gpus = 99, cpus = 1e300, memory = \"16EiB\" }\n",
        "borrow_limit = { gpus = 1 }\n",
        "borrow_limit = { gpus = 4294967295, memory = \"x\" }\n",
        "name = \"p\"\n",
        "pool = \"p\"\n",
        "order = 0\n",
        "burst = true\n",
        "burst_after = \"1h\"\n",
        "max_nodes = 3\n",
        "max_nodes = -1\n",
        "startup = \"3m\"\n",
        "idle_release = \"10m\"\n",
        "node = { cpus = 8, memory = \"64GiB\", gpus = 1 }\n",
        "node = { cpus = 0, memory = \"x\", gpus = 99, gpu_model = \"\" }\n",
        "name = \"p-1\"\n",
        "cpus = 4\n",
        "memory = \"8GiB\"\n",
        "gpus = 2\n",
        "count = 3\n",
        "name_prefix = \"n\"\n",
        "quota = { gpus = 1 }\n",
        "labels = { a = \"b\" }\n",
        "price_gpu_hour = 1e308\n",
        "cpus = -0.0\n",
        "count = 99999999999\n",
        "0",
        "1",
        "-1",
        "1.5",
        "1e400",
        "NaN",
        "inf",
        "18446744073709551616",
        "9223372036854775808",
        "-9223372036854775808",
        "1024",
        "1025",
        "8GiB",
        "0.5",
        "250m",
        "GiB",
        "",
        ",",
        ",,",
        "\n",
        "\r\n",
        "\"",
        "#",
        "|",
        "A100|",
        " ",
        "\u{feff}",
        "é",
        "\u{0}",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

/// An amount written as in a quota or a borrowing limit: each field left out, a common value, or one from the edges
/// of its range (those are rarer, so that many files get past them).
fn amount() -> impl Strategy<Value = String> {
    let field = |common: &'static [&'static str], edges: &'static [&'static str]| {
        let common = prop::sample::select(common);
        let edges = prop::sample::select(edges);
        prop::option::of(prop_oneof![6 => common, 1 => edges])
    };
    let gpus = field(&["0", "1", "2", "8"], &["-1", "4294967295", "4294967296"]);
    let cpus = field(&["0", "0.5", "16"], &["-1", "1e300", "nan", "inf"]);
    let memory = field(&["\"8GiB\"", "\"1TiB\""], &["\"16EiB\"", "\"x\"", "\"\"", "3"]);
    (gpus, cpus, memory).prop_map(|(gpus, cpus, memory)| {
        let fields: Vec<String> = [("gpus", gpus), ("cpus", cpus), ("memory", memory)]
            .into_iter()
            .filter_map(|(field, value)| value.map(|v| format!("{field} = {v}")))
            .collect();
        format!("{{ {} }}", fields.join(", "))
    })
}

/// A cluster of one node and teams with projects, their names and amounts drawn from near misses.
fn teams_and_projects() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        6 => prop::sample::select(vec!["\"a\"", "\"b\""]),
        1 => prop::sample::select(vec!["\"\"", "\" \"", "1"]),
    ];
    let project = (name.clone(), amount(), prop::option::of(amount()));
    let team = (name, amount(), prop::option::of(amount()), prop::collection::vec(project, 0..4));
    prop::collection::vec(team, 0..4).prop_map(|teams| {
        let mut text = String::from(
            "[[pool]]\nname = \"p\"\norder = 0\n[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n",
        );
        let limit = |borrow: Option<String>| borrow.map(|b| format!("borrow_limit = {b}\n")).unwrap_or_default();
        for (name, quota, borrow, projects) in teams {
            text += &format!("[[team]]\nname = {name}\nquota = {quota}\n{}", limit(borrow));
            for (name, quota, borrow) in projects {
                text += &format!("[[team.project]]\nname = {name}\nquota = {quota}\n{}", limit(borrow));
            }
        }
        text
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        all_parsers(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_strings_never_panic(text in ".{0,300}") {
        all_parsers(&text);
    }

    #[test]
    fn near_miss_files_never_panic(text in near_miss()) {
        all_parsers(&text);
    }

    #[test]
    fn projects_never_panic_and_stay_within_their_teams(text in teams_and_projects()) {
        if let Ok(cluster) = parse_cluster_toml("cluster.toml", &text) {
            for project in &cluster.projects {
                let team = cluster.teams.iter().find(|t| t.name == project.team);
                prop_assert!(team.is_some_and(|t| project.quota.fits_in(&t.quota)), "{text}");
            }
        }
    }
}
