//! Every parser, through its public function: what a good file becomes, and the exact message for each kind of
//! mistake (typo, missing column, impossible value, unknown field), naming the file, the line and the field.

use expect_test::{expect, Expect};
use ferry_sim::{parse_cluster_toml, parse_trace_nodes, parse_trace_pods, parse_workload_csv};

fn check_cluster(text: &str, expected: Expect) {
    let out = match parse_cluster_toml("cluster.toml", text) {
        Ok(c) => {
            let pools: Vec<String> =
                c.pools
                    .iter()
                    .map(|p| {
                        let mut line = format!(
                            "pool {} order {} burst {} after {:?} prices {}/{}",
                            p.name, p.order, p.burst, p.burst_after_s, p.price_gpu_hour, p.price_cpu_hour
                        );
                        if let Some(e) = &p.elastic {
                            line += &format!(
                            " elastic up to {} nodes, startup {}s, idle release {}s, node {:?} model {:?} labels {:?}",
                            e.max_nodes, e.startup_s, e.idle_release_s, e.node.capacity, e.node.gpu_model, e.node.labels
                        );
                        }
                        line
                    })
                    .collect();
            let teams: Vec<String> = c
                .teams
                .iter()
                .map(|t| format!("team {} quota {:?} borrow {:?}", t.name, t.quota, t.borrow_limit.map(|b| b.gpus)))
                .collect();
            let projects: Vec<String> = c
                .projects
                .iter()
                .map(|p| format!("project {} of {} quota {:?} borrow {:?}", p.name, p.team, p.quota, p.borrow_limit))
                .collect();
            let nodes: Vec<String> = c
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "node {} pool {} {:?} gpus {:?} model {:?} labels {:?}",
                        n.name, n.pool, n.capacity, n.gpu_indices, n.gpu_model, n.labels
                    )
                })
                .collect();
            [pools, teams, projects, nodes].concat().join("\n")
        }
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&out);
}

fn check_workload(text: &str, expected: Expect) {
    let out = match parse_workload_csv("workload.csv", text) {
        Ok(w) => w.jobs.iter().map(|j| format!("{j:?}")).collect::<Vec<_>>().join("\n"),
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&out);
}

const HEADER: &str = "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share\n";

#[test]
fn reads_a_cluster_with_pools_teams_and_node_groups() {
    check_cluster(
        r#"
fair_share_half_life = "12h"

[[pool]]
name = "cloud"
order = 10
burst = true
burst_after = "30m"
price_gpu_hour = 2.5

[[pool]]
name = "onprem"
order = 0

[[team]]
name = "vision"
quota = { gpus = 4, cpus = 32, memory = "256GiB" }
borrow_limit = { gpus = 2 }

[[node]]
name_prefix = "dgx-"
count = 11
pool = "onprem"
cpus = 128
memory = "1TiB"
gpus = 8
gpu_model = "A100"
labels = { rack = "r1" }

[[node]]
name = "spot-1"
pool = "cloud"
cpus = 0.5
memory = "512MiB"
"#,
        expect![[r#"
            pool onprem order 0 burst false after None prices 0/0
            pool cloud order 10 burst true after Some(1800) prices 2.5/0
            team vision quota Resources { cpu_millis: 32000, memory_bytes: 274877906944, gpus: 4 } borrow Some(2)
            node dgx-00 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-01 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-02 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-03 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-04 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-05 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-06 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-07 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-08 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-09 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node dgx-10 pool onprem Resources { cpu_millis: 128000, memory_bytes: 1099511627776, gpus: 8 } gpus [0, 1, 2, 3, 4, 5, 6, 7] model Some("A100") labels {"rack": "r1"}
            node spot-1 pool cloud Resources { cpu_millis: 500, memory_bytes: 536870912, gpus: 0 } gpus [] model None labels {}"#]],
    );
}

const POOL: &str = "[[pool]]\nname = \"p\"\norder = 0\n\n";

#[test]
fn names_the_line_and_field_of_every_cluster_mistake() {
    // A typo in a field name.
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\ngpu = 2\n"),
        expect!["cluster.toml:10: unknown field `gpu`, expected one of `name`, `name_prefix`, `count`, `pool`, `cpus`, `memory`, `gpus`, `gpu_model`, `labels`"],
    );
    // A field left out.
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\n"),
        expect!["cluster.toml:5: missing field `memory`"],
    );
    // A value of the wrong type.
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = \"four\"\nmemory = \"8GiB\"\n"),
        expect![[r#"cluster.toml:8: field cpus: invalid type: string "four", expected f64"#]],
    );
    // Impossible values.
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = -4\nmemory = \"8GiB\"\n"),
        expect!["cluster.toml:8: field cpus: -4 is not a CPU count; write a positive number up to 100000"],
    );
    check_cluster(&format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"lots\"\n"), expect!["cluster.toml:9: field memory: `lots` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"]);
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\ngpus = 1000\n"),
        expect!["cluster.toml:10: field gpus: 1000 is not a GPU count; write 0 to 64"],
    );
    check_cluster(
        &format!("{POOL}[[node]]\nname_prefix = \"n\"\ncount = 0\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n"),
        expect!["cluster.toml:7: field count: 0 is not a node count; write 1 to 100000"],
    );
    // References and repeats.
    check_cluster(
        "[[node]]\nname = \"n\"\npool = \"gpu\"\ncpus = 4\nmemory = \"8GiB\"\n",
        expect![[r#"cluster.toml:3: field pool: pool "gpu" is not declared; add a [[pool]] table with name = "gpu""#]],
    );
    check_cluster(
        &format!("{POOL}[[node]]\nname = \"n\"\npool = \"q\"\ncpus = 4\nmemory = \"8GiB\"\n"),
        expect![[r#"cluster.toml:7: field pool: pool "q" is not declared; the pools are p"#]],
    );
    check_cluster(&format!("{POOL}[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n[[node]]\nname = \"n\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n"), expect![[r#"cluster.toml:10: field name: node "n" is already declared on line 5"#]]);
    check_cluster(
        &format!("{POOL}{POOL}"),
        expect![[r#"cluster.toml:6: field name: pool "p" is already declared on line 2"#]],
    );
    check_cluster(
        &format!(
            "{POOL}[[node]]\nname = \"n\"\nname_prefix = \"m\"\ncount = 2\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n"
        ),
        expect!["cluster.toml:6: field name: give either name, or name_prefix and count, not both"],
    );
    check_cluster(
        "[[pool]]\nname = \"p\"\norder = 0\nburst_after = \"30m\"\n",
        expect!["cluster.toml:4: field burst_after: burst_after applies only to a pool with burst = true"],
    );
    check_cluster(
        "[[pool]]\nname = \"p\"\norder = 0\nprice_gpu_hour = -1.0\n",
        expect!["cluster.toml:4: field price_gpu_hour: -1 is not a price; write zero or more, such as 2.5"],
    );
    check_cluster("[[team]]\nname = \"v\"\nquota = { gpus = 1, memory = \"lots\" }\n", expect!["cluster.toml:3: field quota: memory: `lots` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"]);
    check_cluster(POOL, expect!["cluster.toml:1: no [[node]] is declared; a cluster needs at least one node, or an elastic pool that starts nodes"]);
    check_cluster(
        &format!("gpu_placement = \"fdg\"\n{POOL}"),
        expect!["cluster.toml:1: field gpu_placement: unknown variant `fdg`, expected `best-fit` or `fgd`"],
    );
    // Not TOML at all.
    check_cluster("this is not toml", expect!["cluster.toml:1: key with no value, expected `=`"]);
}

#[test]
fn reads_projects_within_teams_and_names_their_mistakes() {
    // What a project's quota leaves out is its team's; what its borrowing limit leaves out is unlimited. Projects are
    // named within their team.
    check_cluster(
        &format!(
            r#"{POOL}[[node]]
name = "n"
pool = "p"
cpus = 4
memory = "8GiB"

[[team]]
name = "vision"
quota = {{ gpus = 8, cpus = 64 }}
borrow_limit = {{ gpus = 4 }}

[[team.project]]
name = "detect"
quota = {{ gpus = 4 }}
borrow_limit = {{ gpus = 2, memory = "1TiB" }}

[[team.project]]
name = " segment "
quota = {{ gpus = 4, cpus = 32, memory = "512GiB" }}

[[team]]
name = "nlp"
quota = {{ gpus = 2 }}

[[team.project]]
name = "detect"
quota = {{}}
"#
        ),
        expect![[r#"
            pool p order 0 burst false after None prices 0/0
            team vision quota Resources { cpu_millis: 64000, memory_bytes: 4611686018427387903, gpus: 8 } borrow Some(4)
            team nlp quota Resources { cpu_millis: 4611686018427387903, memory_bytes: 4611686018427387903, gpus: 2 } borrow None
            project detect of vision quota Resources { cpu_millis: 64000, memory_bytes: 4611686018427387903, gpus: 4 } borrow Some(Resources { cpu_millis: 4611686018427387903, memory_bytes: 1099511627776, gpus: 2 })
            project segment of vision quota Resources { cpu_millis: 32000, memory_bytes: 549755813888, gpus: 4 } borrow None
            project detect of nlp quota Resources { cpu_millis: 4611686018427387903, memory_bytes: 4611686018427387903, gpus: 2 } borrow None
            node n pool p Resources { cpu_millis: 4000, memory_bytes: 8589934592, gpus: 0 } gpus [] model None labels {}"#]],
    );
    let team = "[[team]]\nname = \"v\"\nquota = { gpus = 8, cpus = 16 }\n";
    // A project's quota is a share of its team's.
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\nquota = {{ gpus = 9 }}\n"),
        expect![[
            r#"cluster.toml:6: field quota: the project's quota is larger than its team's: 9 GPUs where team "v" has 8 GPUs; a project's quota is its share of the team's"#
        ]],
    );
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\nquota = {{ cpus = 16.5 }}\n"),
        expect![[
            r#"cluster.toml:6: field quota: the project's quota is larger than its team's: 16.5 CPUs where team "v" has 16 CPUs; a project's quota is its share of the team's"#
        ]],
    );
    // Names, repeats and the fields of a project.
    check_cluster(
        &format!("{team}[[team.project]]\nname = \" \"\nquota = {{ gpus = 1 }}\n"),
        expect![[r#"cluster.toml:5: field name: a project of team "v" needs a name"#]],
    );
    check_cluster(
        &format!(
            "{team}[[team.project]]\nname = \"det\"\nquota = {{}}\n[[team.project]]\nname = \"det\"\nquota = {{}}\n"
        ),
        expect![[r#"cluster.toml:8: field name: project "det" of team "v" is already declared on line 5"#]],
    );
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\n"),
        expect!["cluster.toml:4: missing field `quota`"],
    );
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\nquota = {{}}\nborrow = {{ gpus = 1 }}\n"),
        expect!["cluster.toml:7: unknown field `borrow`, expected one of `name`, `quota`, `borrow_limit`"],
    );
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\nquota = {{}}\nborrow_limit = {{ memory = \"lots\" }}\n"),
        expect!["cluster.toml:7: field borrow_limit: memory: `lots` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"],
    );
    check_cluster(
        &format!("{team}[[team.project]]\nname = \"det\"\nquota = {{ cpus = -1 }}\n"),
        expect!["cluster.toml:6: field quota: cpus -1 is not a CPU count; write zero or more"],
    );
    // A project table before any team, and one written with single brackets.
    check_cluster("[[team.project]]\nname = \"det\"\nquota = {}\n", expect!["cluster.toml:1: invalid type: map, expected a sequence; a [[team.project]] table belongs to the [[team]] table before it; declare that first"]);
    check_cluster(&format!("{team}[team.project]\nname = \"det\"\nquota = {{}}\n"), expect!["cluster.toml:4: invalid type: map, expected a sequence; write [[team.project]], with double brackets, as each table of a list is written"]);
}

const ELASTIC: &str = "[[pool]]\nname = \"cloud\"\norder = 10\nburst = true\nmax_nodes = 4\nstartup = \"3m\"\n\
                       idle_release = \"10m\"\n";

#[test]
fn reads_an_elastic_pool_and_names_its_mistakes() {
    // An elastic pool alone makes a cluster: its nodes start on demand.
    check_cluster(
        &format!(
            "{ELASTIC}price_gpu_hour = 3.5\nnode = {{ cpus = 96, memory = \"768GiB\", gpus = 8, gpu_model = \"A100\", labels = {{ zone = \"b\" }} }}\n"
        ),
        expect![[r#"pool cloud order 10 burst true after None prices 3.5/0 elastic up to 4 nodes, startup 180s, idle release 600s, node Resources { cpu_millis: 96000, memory_bytes: 824633720832, gpus: 8 } model Some("A100") labels {"zone": "b"}"#]],
    );
    let template = "node = { cpus = 8, memory = \"64GiB\", gpus = 1 }\n";
    // A machine's own price replaces the GPU and CPU prices for the pool's nodes; it means nothing without max_nodes.
    let priced = parse_cluster_toml(
        "cluster.toml",
        &format!("{ELASTIC}price_gpu_hour = 3.5\nprice_node_hour = 1.25\n{template}"),
    )
    .unwrap();
    let pool = &priced.pools[0];
    assert_eq!(pool.node_price_hour(&pool.elastic.as_ref().unwrap().node.capacity), 1.25);
    check_cluster(
        "[[pool]]\nname = \"a\"\norder = 1\nprice_node_hour = 2.0\n",
        expect![
            "cluster.toml:4: field price_node_hour: price_node_hour applies only to an elastic pool; set max_nodes too"
        ],
    );
    check_cluster(
        &format!("{ELASTIC}price_node_hour = -1.0\n{template}"),
        expect!["cluster.toml:8: field price_node_hour: -1 is not a price; write zero or more, such as 2.5"],
    );
    // Every elastic setting is needed, and none means anything without max_nodes.
    check_cluster(
        ELASTIC,
        expect![[
            r#"cluster.toml:5: field max_nodes: an elastic pool needs node, the node it starts, such as node = { cpus = 96, memory = "768GiB", gpus = 8 }"#
        ]],
    );
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("startup = \"3m\"\n", "")),
        expect![[
            r#"cluster.toml:5: field max_nodes: an elastic pool needs startup, how long a new node takes to start, such as startup = "3m""#
        ]],
    );
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("max_nodes = 4\n", "")),
        expect!["cluster.toml:5: field startup: startup applies only to an elastic pool; set max_nodes too"],
    );
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("burst = true\n", "")),
        expect!["cluster.toml:4: field max_nodes: an elastic pool is burst capacity; set burst = true"],
    );
    // How its nodes fail to start, and when the core gives up on them.
    check_cluster(
        &format!("{ELASTIC}start_failure_rate = 1.5\n{template}"),
        expect!["cluster.toml:8: field start_failure_rate: 1.5 is not a chance; write 0 to 1, such as 0.1"],
    );
    check_cluster(
        &format!("{ELASTIC}join_failure_rate = 0.2\n{template}"),
        expect![[
            r#"cluster.toml:8: field join_failure_rate: nodes that never join are given up on only after a startup_timeout; set one, such as startup_timeout = "15m""#
        ]],
    );
    check_cluster(&format!("{ELASTIC}startup_timeout = \"2m\"\n{template}"), expect!["cluster.toml:8: field startup_timeout: 2m is not longer than startup (180s): no node could ever join in time; make it longer"]);
    check_cluster(
        "[[pool]]\nname = \"own\"\norder = 0\nstart_failure_rate = 0.1\n",
        expect!["cluster.toml:4: field start_failure_rate: start_failure_rate applies only to an elastic pool; set max_nodes too"],
    );
    // Impossible values, in the template too.
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("max_nodes = 4", "max_nodes = 0")),
        expect!["cluster.toml:5: field max_nodes: 0 is not a node count; write 1 to 100000"],
    );
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("\"3m\"", "\"0s\"")),
        expect!["cluster.toml:6: field startup: `0s` is zero; give a positive duration such as 30m"],
    );
    check_cluster(
        &format!("{}{template}", ELASTIC.replace("\"10m\"", "\"30d\"")),
        expect!["cluster.toml:7: field idle_release: 30d is longer than a week; is the unit right?"],
    );
    check_cluster(
        &format!("{ELASTIC}node = {{ cpus = 8, memory = \"64GiB\", gpus = 99 }}\n"),
        expect!["cluster.toml:8: field node.gpus: 99 is not a GPU count; write 0 to 64"],
    );
    check_cluster(
        &format!("{ELASTIC}node = {{ cpus = 8, memory = \"64GiB\", gpu = 1 }}\n"),
        expect!["cluster.toml:8: unknown field `gpu`, expected one of `cpus`, `memory`, `gpus`, `gpu_model`, `labels`"],
    );
    let huge = ELASTIC.replace("max_nodes = 4", "max_nodes = 99999");
    check_cluster(
        &format!("{huge}{template}[[pool]]\nname = \"b\"\norder = 11\nburst = true\nmax_nodes = 99999\n"),
        expect!["cluster.toml:13: field max_nodes: the elastic pools may start more than 100000 nodes together"],
    );
    // Its nodes are its own to start and to name.
    let node = "[[node]]\nname = \"n\"\npool = \"cloud\"\ncpus = 4\nmemory = \"8GiB\"\n";
    check_cluster(
        &format!("{ELASTIC}{template}{node}"),
        expect![[
            r#"cluster.toml:11: field pool: pool "cloud" is elastic: it starts its nodes on demand from its node template; declare fixed nodes in another pool"#
        ]],
    );
    let node = "[[node]]\nname = \"cloud-7\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n";
    check_cluster(
        &format!("{POOL}{ELASTIC}{template}{node}"),
        expect![[
            r#"cluster.toml:13: field name: node name "cloud-7" is kept for the nodes elastic pool cloud starts; choose another"#
        ]],
    );
}

#[test]
fn reads_the_simple_workload_format() {
    check_workload(
        "# a comment line\narrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority\n\
         0,3600,2,8,64GiB,alice,vision,A100|H100,,10\n\
         1.5,90.25,0,0.5,512MiB,bob,nlp,,250,\n",
        expect![[r#"
            JobSpec { line: 3, arrival_ms: 0, duration_ms: 3600000, resources: Resources { cpu_millis: 8000, memory_bytes: 68719476736, gpus: 2 }, gpu_share_milli: 0, gpu_models: ["A100", "H100"], priority: 10, user: "alice", name: "", team: "vision", project: "", nodes: 1, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }
            JobSpec { line: 4, arrival_ms: 1500, duration_ms: 90250, resources: Resources { cpu_millis: 500, memory_bytes: 536870912, gpus: 0 }, gpu_share_milli: 250, gpu_models: [], priority: 0, user: "bob", name: "", team: "nlp", project: "", nodes: 1, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }"#]],
    );
    // A gang of four workers of 8 GPUs each, in project llm of team research.
    check_workload(
        "arrival_s,duration_s,gpus,cpus,memory,user,team,nodes,project\n0,600,8,32,256GiB,dana,research,4,llm\n\
         5,60,1,1,1GiB,eli,research,,\n",
        expect![[r#"
            JobSpec { line: 2, arrival_ms: 0, duration_ms: 600000, resources: Resources { cpu_millis: 32000, memory_bytes: 274877906944, gpus: 8 }, gpu_share_milli: 0, gpu_models: [], priority: 0, user: "dana", name: "", team: "research", project: "llm", nodes: 4, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }
            JobSpec { line: 3, arrival_ms: 5000, duration_ms: 60000, resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 1 }, gpu_share_milli: 0, gpu_models: [], priority: 0, user: "eli", name: "", team: "research", project: "", nodes: 1, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }"#]],
    );
    // Optional columns may be left out of the header entirely, and columns may come in any order.
    check_workload(
        "team,user,memory,cpus,gpus,duration_s,arrival_s\nml,carol,1GiB,1,0,60,5\n",
        expect![[
            r#"JobSpec { line: 2, arrival_ms: 5000, duration_ms: 60000, resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 0 }, gpu_share_milli: 0, gpu_models: [], priority: 0, user: "carol", name: "", team: "ml", project: "", nodes: 1, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }"#
        ]],
    );
}

#[test]
fn names_the_line_and_column_of_every_workload_mistake() {
    check_workload(
        &format!("{HEADER}0,60,1,1,1GiB,a,t,,\n0,60,two,1,1GiB,a,t,,\n"),
        expect![[r#"workload.csv:3: column gpus: "two" is not a whole number"#]],
    );
    check_workload(
        "arrival_s,duration_s,gpus,cpus,memory,user\n0,60,1,1,1GiB,a\n",
        expect![
            "workload.csv:1: missing column team; the header must name arrival_s,duration_s,gpus,cpus,memory,user,team"
        ],
    );
    check_workload(
        "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_typ\n",
        expect![[
            r#"workload.csv:1: unknown column "gpu_typ"; the columns are arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority,nodes,project,selector,pool,image,max_runtime_s,outcome,exit_code,fail_at_s,fails,retries,checkpoint_every_s,name"#
        ]],
    );
    check_workload(
        &format!("{HEADER}0,60,1,1,1GiB,a,t\n"),
        expect!["workload.csv:2: 7 fields, but the header names 9 columns"],
    );
    check_workload(
        &format!("{HEADER}-5,60,1,1,1GiB,a,t,,\n"),
        expect!["workload.csv:2: column arrival_s: -5 is negative; times and durations are seconds from 0 upwards"],
    );
    check_workload(
        &format!("{HEADER}0,0,1,1,1GiB,a,t,,\n"),
        expect!["workload.csv:2: column duration_s: a job must run for some time; write a duration above 0"],
    );
    check_workload(
        &format!("{HEADER}0,inf,1,1,1GiB,a,t,,\n"),
        expect![[
            r#"workload.csv:2: column duration_s: "inf" is not a number of seconds; write a decimal such as 90 or 1.5"#
        ]],
    );
    check_workload(
        &format!("{HEADER}0,60,1,0,1GiB,a,t,,\n"),
        expect!["workload.csv:2: column cpus: `0` is zero CPUs; every job needs some CPU, such as 0.1 or 1"],
    );
    check_workload(&format!("{HEADER}0,60,1,1,1GB?,a,t,,\n"), expect!["workload.csv:2: column memory: `1GB?` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"]);
    check_workload(
        &format!("{HEADER}0,60,1,1,1GiB,,t,,\n"),
        expect!["workload.csv:2: column user: empty; every job needs a user"],
    );
    check_workload(&format!("{HEADER}0,60,1,1,1GiB,a,t,,500\n"), expect!["workload.csv:2: column gpu_share: a job asks for whole GPUs or a share of one, never both; set gpus to 0 for a share"]);
    check_workload(
        &format!("{HEADER}0,60,0,1,1GiB,a,t,,1000\n"),
        expect!["workload.csv:2: column gpu_share: 1000 is more thousandths of a GPU than allowed (at most 999)"],
    );
    check_workload(
        &format!("{HEADER}0,60,100,1,1GiB,a,t,,\n"),
        expect!["workload.csv:2: column gpus: 100 is more GPUs than allowed (at most 64)"],
    );
    let gangs = "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_share,nodes\n";
    check_workload(&format!("{gangs}0,60,1,1,1GiB,a,t,,0\n"), expect!["workload.csv:2: column nodes: 0 is not a worker count; write 1 for a single-node job, up to 1024 for a gang"]);
    check_workload(
        &format!("{gangs}0,60,1,1,1GiB,a,t,,1025\n"),
        expect!["workload.csv:2: column nodes: 1025 is more workers than allowed (at most 1024)"],
    );
    check_workload(
        &format!("{gangs}0,60,1,1,1GiB,a,t,,two\n"),
        expect![[r#"workload.csv:2: column nodes: "two" is not a whole number"#]],
    );
    check_workload(&format!("{gangs}0,60,0,1,1GiB,a,t,500,2\n"), expect!["workload.csv:2: column gpu_share: a gang's workers hold whole GPUs; a share of one GPU is for a single-node job (nodes 1)"]);
    check_workload("", expect!["workload.csv:1: no header; the first line must name the columns: arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority,nodes,project,selector,pool,image,max_runtime_s,outcome,exit_code,fail_at_s,fails,retries,checkpoint_every_s,name"]);
    check_workload("arrival_s,arrival_s\n", expect![[r#"workload.csv:1: column "arrival_s" appears twice"#]]);
}

#[test]
fn reads_the_alibaba_trace_and_names_its_mistakes() {
    let nodes = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,32000,131072,0,\n";
    let cluster = parse_trace_nodes("nodes.csv", nodes).unwrap();
    expect![[r#"
        [
            NodeInfo {
                name: "n0",
                pool: "trace",
                capacity: Resources {
                    cpu_millis: 64000,
                    memory_bytes: 274877906944,
                    gpus: 2,
                },
                gpu_indices: [
                    0,
                    1,
                ],
                gpu_model: Some(
                    "P100",
                ),
                labels: {},
            },
            NodeInfo {
                name: "n1",
                pool: "trace",
                capacity: Resources {
                    cpu_millis: 32000,
                    memory_bytes: 137438953472,
                    gpus: 0,
                },
                gpu_indices: [],
                gpu_model: None,
                labels: {},
            },
        ]
    "#]]
    .assert_debug_eq(&cluster.nodes);
    let bad = |text: &str| parse_trace_nodes("nodes.csv", text).unwrap_err().to_string();
    expect![[r#"nodes.csv:3: column sn: node "n0" is already listed on line 2"#]]
        .assert_eq(&bad("sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn0,64000,262144,2,P100\n"));
    expect!["nodes.csv:1: missing column gpu; the header must name sn,cpu_milli,memory_mib,gpu"]
        .assert_eq(&bad("sn,cpu_milli,memory_mib,model\nn0,64000,262144,P100\n"));
    expect!["nodes.csv:2: column cpu_milli: 0 is not allowed; a node or job needs some CPU"]
        .assert_eq(&bad("sn,cpu_milli,memory_mib,gpu,model\nn0,0,262144,2,P100\n"));

    let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n";
    let pods = format!(
        "{header}p0,12000,16384,1,1000,,LS,Running,0,100,10\np1,6000,12288,1,460,V100M16|V100M32,BE,Pending,5,50,\n\
         p2,8000,30517,0,0,,BE,Running,7,7,7\n"
    );
    let workload = parse_trace_pods("pods.csv", &pods).unwrap();
    expect![[r#"
        [
            JobSpec {
                line: 2,
                arrival_ms: 0,
                duration_ms: 90000,
                resources: Resources {
                    cpu_millis: 12000,
                    memory_bytes: 17179869184,
                    gpus: 1,
                },
                gpu_share_milli: 0,
                gpu_models: [],
                priority: 0,
                user: "LS",
                name: "",
                team: "LS",
                project: "",
                nodes: 1,
                selector: {},
                pool: None,
                image: false,
                max_runtime_s: None,
                outcome: None,
                exit_code: None,
                lifecycle: Lifecycle {
                    fail_at_ms: None,
                    fails: None,
                    retries: 0,
                    checkpoint_every_ms: None,
                },
            },
            JobSpec {
                line: 3,
                arrival_ms: 5000,
                duration_ms: 45000,
                resources: Resources {
                    cpu_millis: 6000,
                    memory_bytes: 12884901888,
                    gpus: 0,
                },
                gpu_share_milli: 460,
                gpu_models: [
                    "V100M16",
                    "V100M32",
                ],
                priority: 0,
                user: "BE",
                name: "",
                team: "BE",
                project: "",
                nodes: 1,
                selector: {},
                pool: None,
                image: false,
                max_runtime_s: None,
                outcome: None,
                exit_code: None,
                lifecycle: Lifecycle {
                    fail_at_ms: None,
                    fails: None,
                    retries: 0,
                    checkpoint_every_ms: None,
                },
            },
            JobSpec {
                line: 4,
                arrival_ms: 7000,
                duration_ms: 1,
                resources: Resources {
                    cpu_millis: 8000,
                    memory_bytes: 31999393792,
                    gpus: 0,
                },
                gpu_share_milli: 0,
                gpu_models: [],
                priority: 0,
                user: "BE",
                name: "",
                team: "BE",
                project: "",
                nodes: 1,
                selector: {},
                pool: None,
                image: false,
                max_runtime_s: None,
                outcome: None,
                exit_code: None,
                lifecycle: Lifecycle {
                    fail_at_ms: None,
                    fails: None,
                    retries: 0,
                    checkpoint_every_ms: None,
                },
            },
        ]
    "#]]
    .assert_debug_eq(&workload.jobs);
    let bad = |text: String| parse_trace_pods("pods.csv", &text).unwrap_err().to_string();
    expect!["pods.csv:2: column deletion_time: 50 is before creation_time 100"]
        .assert_eq(&bad(format!("{header}p0,12000,16384,1,1000,,LS,Running,100,50,\n")));
    expect!["pods.csv:2: column deletion_time: empty; write a number of seconds such as 90 or 1.5"]
        .assert_eq(&bad(format!("{header}p0,12000,16384,1,1000,,LS,Running,0,,0\n")));
    expect![[r#"pods.csv:2: column num_gpu: "-1" is not a whole number"#]]
        .assert_eq(&bad(format!("{header}p0,12000,16384,-1,1000,,LS,Running,0,5,0\n")));
}

/// The columns `ferry history export` adds: node labels, a pinned pool, an image, a runtime limit and how the job
/// ended there, which a replay carries; every one optional, so older workloads read as before.
#[test]
fn reads_the_columns_of_an_exported_history_and_names_their_mistakes() {
    let header =
        "arrival_s,duration_s,gpus,cpus,memory,user,team,selector,pool,image,max_runtime_s,outcome,exit_code\n";
    check_workload(
        &format!("{header}0,60,1,2,4GiB,a,t,rack=r1|zone=b,onprem,yes,3600,failed,3\n5,1,0,1,1GiB,b,t,,,,,,\n"),
        expect![[r#"
            JobSpec { line: 2, arrival_ms: 0, duration_ms: 60000, resources: Resources { cpu_millis: 2000, memory_bytes: 4294967296, gpus: 1 }, gpu_share_milli: 0, gpu_models: [], priority: 0, user: "a", name: "", team: "t", project: "", nodes: 1, selector: {"rack": "r1", "zone": "b"}, pool: Some("onprem"), image: true, max_runtime_s: Some(3600), outcome: Some(Failed), exit_code: Some(3), lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }
            JobSpec { line: 3, arrival_ms: 5000, duration_ms: 1000, resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 0 }, gpu_share_milli: 0, gpu_models: [], priority: 0, user: "b", name: "", team: "t", project: "", nodes: 1, selector: {}, pool: None, image: false, max_runtime_s: None, outcome: None, exit_code: None, lifecycle: Lifecycle { fail_at_ms: None, fails: None, retries: 0, checkpoint_every_ms: None } }"#]],
    );
    check_workload(
        &format!("{header}0,60,1,2,4GiB,a,t,rack,,,,,\n"),
        expect![[
            r#"workload.csv:2: column selector: "rack" is not a label; write NAME=VALUE pairs separated by |, such as rack=r1|zone=b"#
        ]],
    );
    check_workload(
        &format!("{header}0,60,1,2,4GiB,a,t,,,maybe,,,\n"),
        expect![[
            r#"workload.csv:2: column image: "maybe" is not yes or no; write yes for a job in a container image"#
        ]],
    );
    check_workload(&format!("{header}0,60,1,2,4GiB,a,t,,,,0,,\n"), expect!["workload.csv:2: column max_runtime_s: 0 is not a runtime limit; write whole seconds above 0, or leave it empty for none"]);
    check_workload(
        &format!("{header}0,60,1,2,4GiB,a,t,,,,,exploded,\n"),
        expect![[
            r#"workload.csv:2: column outcome: "exploded" is not an outcome; write one of succeeded, failed, cancelled, timed_out, lost, or leave it empty"#
        ]],
    );
    check_workload(
        &format!("{header}0,60,1,2,4GiB,a,t,,,,,failed,three\n"),
        expect![[
            r#"workload.csv:2: column exit_code: "three" is not an exit code; write a whole number such as 0 or 3"#
        ]],
    );
}

/// A job pinned to a pool the cluster does not have, or one without nodes, could never start: it is bad input, not a
/// replay that never ends; a selector no node matches names its column.
#[test]
fn a_pinned_pool_and_a_selector_must_exist_in_the_cluster() {
    let cluster = "[[pool]]\nname = \"a\"\norder = 0\n\n[[pool]]\nname = \"empty\"\norder = 1\n\n\
                   [[node]]\nname = \"n\"\npool = \"a\"\ncpus = 8\nmemory = \"32GiB\"\nlabels = { rack = \"r1\" }\n";
    let cluster = parse_cluster_toml("cluster.toml", cluster).unwrap();
    let check = |jobs: &str, expected: Expect| {
        let text = format!("arrival_s,duration_s,gpus,cpus,memory,user,team,selector,pool\n{jobs}\n");
        let workload = parse_workload_csv("jobs.csv", &text).unwrap();
        let out = match ferry_sim::workload::check_fits(&workload, &cluster) {
            Ok(()) => "fits".to_string(),
            Err(e) => e.to_string(),
        };
        expected.assert_eq(&out);
    };
    check("0,60,0,1,1GiB,u,t,rack=r1,a", expect!["fits"]);
    check("0,60,0,1,1GiB,u,t,,b", expect!["jobs.csv:2: column pool: the job is pinned to pool b, which the cluster file does not declare (it has a, empty)"]);
    check("0,60,0,1,1GiB,u,t,,empty", expect!["jobs.csv:2: column pool: the job is pinned to pool empty, which has no [[node]] in the cluster file; it could never start"]);
    check(
        "0,60,0,1,1GiB,u,t,rack=r2,",
        expect![
            "jobs.csv:2: column selector: this job fits no node of the cluster: no node in any pool has labels rack=r2"
        ],
    );
}
