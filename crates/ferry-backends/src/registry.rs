//! The explicit list of compute backends this build contains, and the one place that builds a pool's backend from
//! its kind and settings. Adding a backend means its own module and one line in [`KINDS`], behind its feature;
//! nothing in the core or the server changes, since they read what a backend can do from its [`Capabilities`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::bridge::Host;
use crate::engine::Engine;
use crate::{Capabilities, ComputeBackend};

/// How a kind's backend comes to be.
#[derive(Clone, Copy)]
// A build without agents, or without any engine, leaves a variant unused.
#[cfg_attr(
    not(all(feature = "agent", any(feature = "slurm", feature = "ray", feature = "spark", feature = "kubernetes"))),
    allow(dead_code)
)]
enum Make {
    /// Pools of Ferry agents: one backend serves them all, since each agent asks it for its node's work.
    Agents(Capabilities),
    /// Compute with a scheduler of its own, connected from the pool's settings and driven by a bridge
    /// (`bridge.rs`). Connecting checks the settings without contacting the engine.
    Engine(fn(serde_json::Value) -> Result<Box<dyn Engine>, String>),
}

/// One kind of compute, as pools name it in the configuration (`kind = "slurm"`).
#[derive(Clone, Copy)]
struct Kind {
    pub name: &'static str,
    make: Make,
}

/// Every kind this build has: one line each, behind its feature.
const KINDS: &[Kind] = &[
    #[cfg(feature = "agent")]
    Kind { name: "agent", make: Make::Agents(crate::agent::CAPABILITIES) },
    #[cfg(feature = "slurm")]
    Kind { name: "slurm", make: Make::Engine(|s| crate::slurm::connect(settings(s)?)) },
    #[cfg(feature = "ray")]
    Kind { name: "ray", make: Make::Engine(|s| crate::ray::connect(settings(s)?)) },
    #[cfg(feature = "spark")]
    Kind { name: "spark", make: Make::Engine(|s| crate::spark::connect(settings(s)?)) },
    #[cfg(feature = "kubernetes")]
    Kind { name: "kubernetes", make: Make::Engine(|s| crate::kubernetes::connect(settings(s)?)) },
];

/// A kind's own settings, read from the pool's `[pool.engine]` table.
#[cfg_attr(not(any(feature = "slurm", feature = "ray", feature = "spark", feature = "kubernetes")), allow(dead_code))]
fn settings<T: serde::de::DeserializeOwned>(settings: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(settings).map_err(|e| e.to_string())
}

/// Every backend kind this build knows, for messages that list the choices.
pub fn kinds() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

fn find(kind: &str) -> Result<&'static Kind, String> {
    KINDS
        .iter()
        .find(|k| k.name == kind)
        .ok_or_else(|| format!("there is no pool kind `{kind}`; this build has {}", kinds().join(", ")))
}

fn connect(
    kind: &str,
    connect: fn(serde_json::Value) -> Result<Box<dyn Engine>, String>,
    settings: serde_json::Value,
) -> Result<Box<dyn Engine>, String> {
    connect(settings).map_err(|e| format!("the settings of a {kind} pool: {e}"))
}

/// Checks a pool's kind and settings without contacting anything, and says what its backend will be able to do. The
/// error names the unknown kind (with the kinds there are) or what is wrong with the settings.
pub fn check(kind: &str, settings: serde_json::Value) -> Result<Capabilities, String> {
    match find(kind)?.make {
        Make::Agents(capabilities) if settings.is_null() => Ok(capabilities),
        Make::Agents(_) => Err(format!("a pool of kind `{kind}` takes no settings")),
        Make::Engine(make) => Ok(connect(kind, make, settings)?.capabilities()),
    }
}

/// One pool as the configuration describes it.
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: String,
    pub kind: String,
    /// The kind's own settings (the `[pool.engine]` table, as JSON); `null` for a pool of agents.
    pub settings: serde_json::Value,
    /// How often a bridge asks its engine for news.
    pub poll_interval: Duration,
    /// Where a bridge unpacks shipped code for the engine's nodes.
    pub code_dir: PathBuf,
}

/// What every pool's backend is built with.
#[derive(Clone)]
pub struct Context {
    /// The one backend of every pool of agents (agents long-poll it through the server's routes).
    pub agents: Arc<dyn ComputeBackend>,
    /// The server, as bridges reach it.
    pub host: Arc<dyn Host>,
    /// Tells this installation's runs on a shared engine from another's; stable across restarts.
    pub tag: String,
}

/// Work a backend needs done in a task of its own (an engine's bridge).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A pool's backend, and its task, to be spawned once the driver takes commands.
pub struct Built {
    pub backend: Arc<dyn ComputeBackend>,
    pub task: Option<Task>,
}

/// Builds a pool's backend from its kind and settings. The error names the pool, and says which kinds there are or
/// what is wrong with the settings.
pub fn build(pool: &PoolSpec, context: &Context) -> Result<Built, String> {
    let fail = |e: String| format!("pool {}: {e}", pool.name);
    match find(&pool.kind).map_err(fail)?.make {
        Make::Agents(_) if pool.settings.is_null() => Ok(Built { backend: context.agents.clone(), task: None }),
        Make::Agents(_) => Err(fail(format!("a pool of kind `{}` takes no settings", pool.kind))),
        Make::Engine(make) => {
            let engine = connect(&pool.kind, make, pool.settings.clone()).map_err(fail)?;
            let (backend, bridge) = crate::bridge::start(engine, pool, context.host.clone(), &context.tag);
            Ok(Built { backend, task: Some(Box::pin(bridge.run())) })
        }
    }
}

#[cfg(all(test, feature = "agent"))]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bridge::tests::FakeHost;

    fn context() -> Context {
        Context {
            agents: Arc::new(crate::agent::AgentBackend::new("epoch".into())),
            host: Arc::new(FakeHost::default()),
            tag: "t1".into(),
        }
    }

    fn pool(kind: &str, settings: serde_json::Value) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            kind: kind.into(),
            settings,
            poll_interval: Duration::from_secs(2),
            code_dir: PathBuf::from("/nonexistent/code"),
        }
    }

    #[test]
    fn an_unknown_kind_is_refused_with_the_kinds_there_are() {
        let all = kinds().join(", ");
        assert_eq!(
            check("moon", serde_json::Value::Null).unwrap_err(),
            format!("there is no pool kind `moon`; this build has {all}")
        );
        let err = build(&pool("moon", serde_json::Value::Null), &context()).err().unwrap();
        assert_eq!(err, format!("pool p: there is no pool kind `moon`; this build has {all}"));
        #[cfg(all(feature = "agent", feature = "slurm", feature = "ray", feature = "spark", feature = "kubernetes"))]
        assert_eq!(all, "agent, slurm, ray, spark, kubernetes");
    }

    #[test]
    fn bad_settings_name_the_kind_and_the_field() {
        let err = check("ray", json!({"adress": "http://127.0.0.1:8265"})).unwrap_err();
        assert!(err.starts_with("the settings of a ray pool: unknown field `adress`"), "{err}");
        let err = build(&pool("agent", json!({"x": 1})), &context()).err().unwrap();
        assert_eq!(err, "pool p: a pool of kind `agent` takes no settings");
    }

    /// Every kind builds from settings alone (nothing is contacted), and its backend can do what the registry says.
    #[tokio::test]
    async fn each_kind_builds_and_states_its_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
        )
        .unwrap();
        let work = dir.path().to_string_lossy().into_owned();
        // (kind, settings, images, gangs, GPUs measured, native view, node pinning, GPU pinning)
        let cases = [
            ("agent", serde_json::Value::Null, [true, true, true, false, true, true]),
            ("slurm", json!({"work_dir": work}), [false, true, false, true, true, false]),
            (
                "slurm",
                json!({"work_dir": work, "rest_url": "http://127.0.0.1:6820", "user": "root", "token": "t"}),
                [false, true, false, true, false, false],
            ),
            ("ray", json!({"address": "http://127.0.0.1:8265"}), [false, false, false, true, true, false]),
            (
                "spark",
                json!({"master": "spark://127.0.0.1:7077", "master_ui": "http://127.0.0.1:8080", "work_dir": work}),
                [false, true, false, true, false, false],
            ),
            ("kubernetes", json!({"kubeconfig": kubeconfig}), [true, true, false, true, true, false]),
        ];
        let context = context();
        for (kind, settings, want) in cases.into_iter().filter(|(kind, ..)| kinds().contains(kind)) {
            let checked = check(kind, settings.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let built = build(&pool(kind, settings), &context).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let c = built.backend.capabilities();
            assert_eq!(c, checked, "{kind}: the built backend and the check agree");
            let got = [c.images, c.gangs, c.gpus_measured, c.native_view, c.node_pinning, c.gpu_pinning];
            assert_eq!(got, want, "{kind}: {c:?}");
            assert_eq!(built.backend.kind(), kind);
            // Engines come with the bridge that drives them; agents' pools share the one agent backend.
            assert_eq!(built.task.is_some(), kind != "agent", "{kind}");
        }
    }
}
