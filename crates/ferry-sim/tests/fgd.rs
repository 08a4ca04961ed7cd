//! The FGD experiment: on a small made-up trace, seeds replay exactly and differ from each other; on the real
//! Alibaba v2023 trace (in ../shared/traces beside the repository), one seed completes and allocates a share of the
//! GPUs in a plausible range.

use ferry_sim::engine::CheckConfig;
use ferry_sim::fgd;
use ferry_sim::{parse_trace_nodes, parse_trace_pods};

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\n\
    n0,32000,131072,2,P100\nn1,64000,262144,4,V100M16\nn2,96000,393216,8,G2\nn3,16000,65536,1,T4\nn4,32000,131072,0,\n";

fn pods() -> String {
    let mut text = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time,deletion_time\n");
    for i in 0..40u32 {
        let (gpus, milli) = match i % 4 {
            0 => (1, 200 + i * 13 % 700),
            1 => (1, 1000),
            2 => (2 + i % 3, 1000),
            _ => (0, 0),
        };
        let spec = if i % 9 == 0 { "V100M16|G2" } else { "" };
        text += &format!("p{i},{},{},{gpus},{milli},{spec},0,10\n", 2000 + i * 500 % 8000, 4096 + i * 1024 % 16384);
    }
    text
}

#[test]
fn seeds_replay_exactly_and_differ_from_each_other() {
    let cluster = parse_trace_nodes("nodes.csv", NODES).unwrap();
    let tasks = parse_trace_pods("pods.csv", &pods()).unwrap().jobs;
    fgd::check_inputs(&cluster, &tasks).unwrap();
    let check = CheckConfig::default();
    let runs: Vec<fgd::FgdRun> = (1..=4).map(|seed| fgd::run(&cluster, &tasks, seed, &check).unwrap()).collect();
    assert_eq!(runs[0], fgd::run(&cluster, &tasks, 1, &check).unwrap());
    let json = |r: &fgd::FgdRun| serde_json::to_string(&fgd::FgdRun { seed: 0, ..r.clone() }).unwrap();
    assert!(runs.iter().skip(1).any(|r| json(r) != json(&runs[0])), "different seeds gave the same run: {runs:?}");
    for run in &runs {
        // Arrivals stop once they ask for every GPU, and the last one is what took them there.
        assert!(run.gpu_milli_requested >= 15_000, "{run:?}");
        assert!(run.gpu_milli_allocated <= 15_000 && run.allocation_share <= 1.0, "{run:?}");
        assert_eq!(run.tasks_arrived, run.tasks_placed + run.tasks_failed);
    }
}

#[test]
fn the_real_alibaba_trace_allocates_a_plausible_share_of_its_gpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("the trace should be at {path}: {e}"))
    };
    let cluster = parse_trace_nodes("gpu_node.csv", &read("alibaba_v2023_openb_node_list_gpu_node.csv")).unwrap();
    let tasks = parse_trace_pods("pod_list.csv", &read("alibaba_v2023_openb_pod_list_default.csv")).unwrap().jobs;
    assert_eq!((cluster.nodes.len(), cluster.gpus(), tasks.len()), (1213, 6212, 8152));
    // The core asserts its own invariants after every cycle in this (debug) build, and calling `check_invariants`
    // again after each of the ~8,000 steps would walk every running task each time; the outside checks still run
    // after every step.
    let check = CheckConfig { core_check_every: 0, ..CheckConfig::default() };
    let run = fgd::run(&cluster, &tasks, 1, &check).unwrap();
    println!("FGD experiment, seed 1: {run:?}");
    println!("share of GPUs allocated: {:.1}%", run.allocation_share * 100.0);
    assert!((0.5..=1.0).contains(&run.allocation_share), "{run:?}");
    assert!(run.gpu_milli_requested >= 6_212_000);
}
