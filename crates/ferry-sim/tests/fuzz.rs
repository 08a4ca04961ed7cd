//! Arbitrary bytes and near-miss text thrown at every parser: each must answer with a value or an error, never
//! panic. (A panic fails the property; proptest then shrinks the input to a small one that shows it.)

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
}
