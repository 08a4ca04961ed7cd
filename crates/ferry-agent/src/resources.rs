//! What this machine has and how much of it is in use: CPUs and memory through `sysinfo`, GPUs through NVML (when
//! a driver is installed) plus the GPUs the configuration declares.
//!
//! Sampling runs on a thread of its own, once a second, so that slow driver calls never hold up the agent's loop.
//! Each sample covers the node and every run the agent supervises (see `runusage`), goes to the heartbeat as the
//! node's latest usage, and is appended to the telemetry spool for the shipper. This module must never report
//! allocation as use: every number it gives was measured.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
use ferry_api::telemetry::TelemetrySample;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use sysinfo::System;
use tokio::sync::{oneshot, watch};

use crate::cgroup::CGROUP_ROOT;
use crate::config::{AgentConfig, DeclaredGpu};
use crate::rundir::now_us;
use crate::runusage::{self, DeviceReading, RunMeter, RunProbe};
use crate::spool::Spool;

/// How often usage is measured. It is also the pace of the heartbeat, and slower than `sysinfo`'s minimum CPU
/// update interval, which CPU use needs between two readings.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
const GPU_SOURCE_NVML: &str = "nvml";
const GPU_SOURCE_CONFIG: &str = "config";

/// What the node offers, as registered with the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
}

/// Where the kernel's per-process files are.
const PROC_ROOT: &str = "/proc";
/// How far back the first per-process GPU utilisation reading of a device looks.
const GPU_PROCESS_WINDOW_US: u64 = 1_000_000;

/// The measuring instruments: `sysinfo` for the host, NVML where it loaded.
struct Probe {
    system: System,
    nvml: Option<Nvml>,
    /// When each device's per-process utilisation was last read, so the next read gets only newer samples.
    gpu_process_seen_us: BTreeMap<u32, u64>,
    /// Whether it was logged that the driver gives no per-process figures.
    per_process_logged: bool,
}

impl Probe {
    fn open(nvml_library: Option<&Path>) -> Probe {
        let nvml = match nvml_library {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        };
        let nvml = match nvml {
            Ok(nvml) => Some(nvml),
            Err(e) => {
                let library = nvml_library.map_or("libnvidia-ml.so.1".to_string(), |p| p.display().to_string());
                tracing::info!(library, reason = %e, "no NVIDIA driver found; GPUs come only from the configuration");
                None
            }
        };
        let mut system = System::new();
        system.refresh_memory();
        system.refresh_cpu_usage();
        Probe { system, nvml, gpu_process_seen_us: BTreeMap::new(), per_process_logged: false }
    }

    fn capacity(&self, config: &AgentConfig) -> Capacity {
        let detected_cpu_millis = self.system.cpus().len() as u64 * 1000;
        Capacity {
            cpu_millis: config.cpu_millis.unwrap_or(detected_cpu_millis),
            memory_bytes: config.memory_bytes.unwrap_or(self.system.total_memory()),
            gpus: merge_gpus(self.nvml_gpus(), &config.declared_gpus),
        }
    }

    fn nvml_gpus(&self) -> Vec<Gpu> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!(reason = %e, "NVML loaded but cannot count the GPUs; using only configured GPUs");
                return Vec::new();
            }
        };
        let mut gpus = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(device) => device,
                Err(e) => {
                    tracing::warn!(index, reason = %e, "NVML cannot open this GPU; leaving it out");
                    continue;
                }
            };
            gpus.push(Gpu {
                index,
                model: device.name().unwrap_or_else(|_| "unknown NVIDIA GPU".to_string()),
                memory_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
                uuid: device.uuid().ok(),
                source: GPU_SOURCE_NVML.to_string(),
            });
        }
        gpus
    }

    fn sample(&mut self) -> NodeUsage {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cpus = self.system.cpus().len() as f64;
        let busy_fraction = f64::from(self.system.global_cpu_usage()) / 100.0;
        NodeUsage {
            sampled_at_us: now_us(),
            cpu_millis_used: (busy_fraction * cpus * 1000.0).round() as u64,
            memory_used_bytes: self.system.used_memory(),
            gpus: self.gpu_usage(),
        }
    }

    fn gpu_usage(&self) -> Vec<GpuUsage> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                Some(GpuUsage {
                    index,
                    utilization_percent: device.utilization_rates().map(|u| u.gpu).ok(),
                    memory_used_bytes: device.memory_info().map(|m| m.used).ok(),
                    temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
                    power_mw: device.power_usage().ok(),
                })
            })
            .collect()
    }
}

impl Probe {
    /// What NVML says about each GPU in `indices`, process by process where the driver tells, with the device's
    /// own figures from the node's sample `node_gpus`. Nothing without a driver.
    fn device_readings(&mut self, indices: &BTreeSet<u32>, node_gpus: &[GpuUsage]) -> Vec<DeviceReading> {
        let Some(nvml) = &self.nvml else { return Vec::new() };
        let mut readings = Vec::with_capacity(indices.len());
        for &index in indices {
            let Ok(device) = nvml.device_by_index(index) else { continue };
            let processes = device.running_compute_processes().map(|list| {
                let memory = |used| match used {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                };
                list.into_iter().map(|p| (p.pid, memory(p.used_gpu_memory))).collect()
            });
            let now = now_us().max(0) as u64;
            let since =
                self.gpu_process_seen_us.get(&index).copied().unwrap_or(now.saturating_sub(GPU_PROCESS_WINDOW_US));
            let utilization = match device.process_utilization_stats(since) {
                Ok(samples) => Ok(samples.into_iter().map(|s| (s.pid, s.sm_util)).collect()),
                // The driver's way of saying that no process used the device since `since`.
                Err(NvmlError::NotFound) => Ok(Vec::new()),
                Err(e) => Err(e),
            };
            self.gpu_process_seen_us.insert(index, now);
            if !self.per_process_logged {
                if let Some(reason) = processes.as_ref().err().or(utilization.as_ref().err()) {
                    tracing::info!(
                        index,
                        %reason,
                        "NVML gives no per-process GPU figures; a run's GPU figures are the device's where the run \
                         holds the device alone"
                    );
                    self.per_process_logged = true;
                }
            }
            let node = node_gpus.iter().find(|g| g.index == index);
            readings.push(DeviceReading {
                index,
                processes: processes.ok(),
                process_utilization: utilization.ok(),
                utilization_percent: node.and_then(|g| g.utilization_percent),
                memory_used_bytes: node.and_then(|g| g.memory_used_bytes),
            });
        }
        readings
    }
}

/// The node's GPUs: those NVML found, plus each declared GPU whose index NVML did not report.
pub(crate) fn merge_gpus(found: Vec<Gpu>, declared: &[DeclaredGpu]) -> Vec<Gpu> {
    let mut gpus = found;
    for gpu in declared {
        if !gpus.iter().any(|g| g.index == gpu.index) {
            gpus.push(Gpu {
                index: gpu.index,
                model: gpu.model.clone(),
                memory_bytes: gpu.memory_bytes,
                uuid: None,
                source: GPU_SOURCE_CONFIG.to_string(),
            });
        }
    }
    gpus.sort_by_key(|g| g.index);
    gpus
}

/// The latest usage sample, refreshed by the sampler thread, and the runs it measures; the thread ends when this
/// is dropped.
pub(crate) struct Sampler {
    pub usage: watch::Receiver<Option<NodeUsage>>,
    /// The runs to measure; the agent's loop sets it whenever a run starts or ends.
    pub runs: watch::Sender<Vec<RunProbe>>,
    _stop: mpsc::Sender<()>,
}

/// Starts the sampler thread and returns the node's capacity once it has been measured. Every sample is appended
/// to `spool`.
pub(crate) async fn start_sampler(config: &AgentConfig, spool: Arc<Mutex<Spool>>) -> (Capacity, Sampler) {
    let (capacity_tx, capacity_rx) = oneshot::channel();
    let (usage_tx, usage_rx) = watch::channel(None);
    let (runs_tx, runs_rx) = watch::channel(Vec::new());
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let config = config.clone();
    thread::Builder::new()
        .name("ferry-sampler".into())
        .spawn(move || {
            let mut probe = Probe::open(config.nvml_library.as_deref());
            let _ = capacity_tx.send(probe.capacity(&config));
            let mut meter = RunMeter::new(Path::new(CGROUP_ROOT), Path::new(PROC_ROOT));
            let mut spool_failing = false;
            // Waiting on the stop channel doubles as the sampling clock; it ends when the agent drops its end.
            while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(SAMPLE_INTERVAL) {
                // A copy, so that the agent's loop never waits for a sample to set the runs.
                let runs = runs_rx.borrow().clone();
                let sample = sample_all(&mut probe, &mut meter, &runs);
                // Spooled first, so that whoever sees the usage finds the sample in the spool.
                let mut spool = spool.lock().expect("no spool user panics");
                match spool.append(&sample) {
                    Ok(()) if spool_failing => {
                        tracing::info!("the telemetry spool takes samples again");
                        spool_failing = false;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !spool_failing {
                            tracing::warn!(
                                error = %e,
                                "cannot write to the telemetry spool; samples are dropped until it can"
                            );
                            spool_failing = true;
                        }
                        spool.count_dropped(1);
                    }
                }
                drop(spool);
                if usage_tx.send(Some(sample.node)).is_err() {
                    break;
                }
            }
        })
        .expect("the OS can start one more thread");
    let capacity = capacity_rx.await.expect("the sampler measures the capacity before anything else");
    (capacity, Sampler { usage: usage_rx, runs: runs_tx, _stop: stop_tx })
}

/// One sample of the node and of every run in `runs`.
fn sample_all(probe: &mut Probe, meter: &mut RunMeter, runs: &[RunProbe]) -> TelemetrySample {
    let node = probe.sample();
    meter.set_runs(runs);
    let mut measured = meter.measure();
    let devices = probe.device_readings(&runusage::held_gpus(&measured), &node.gpus);
    runusage::add_gpus(&mut measured, &devices);
    TelemetrySample { node, runs: measured.into_iter().map(|m| m.sample).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvml_gpu(index: u32) -> Gpu {
        Gpu {
            index,
            model: "NVIDIA H100".into(),
            memory_bytes: 80 << 30,
            uuid: Some(format!("GPU-{index}")),
            source: GPU_SOURCE_NVML.into(),
        }
    }

    #[test]
    fn declared_gpus_fill_only_the_indices_nvml_did_not_report() {
        let declared = [
            DeclaredGpu { index: 2, model: "Gaudi 2".into(), memory_bytes: 96 << 30 },
            DeclaredGpu { index: 0, model: "ignored: NVML has it".into(), memory_bytes: 1 },
        ];
        let merged = merge_gpus(vec![nvml_gpu(1), nvml_gpu(0)], &declared);
        let shown: Vec<(u32, &str, &str)> =
            merged.iter().map(|g| (g.index, g.model.as_str(), g.source.as_str())).collect();
        assert_eq!(shown, [(0, "NVIDIA H100", "nvml"), (1, "NVIDIA H100", "nvml"), (2, "Gaudi 2", "config")]);
        assert_eq!(merged[2].uuid, None);
    }

    #[tokio::test]
    async fn this_machine_has_cpus_and_memory_and_configuration_overrides_them() {
        let mut config = AgentConfig::new("http://x", "t", "/tmp".into(), "/bin/false".into());
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Mutex::new(Spool::open(dir.path(), 1 << 20).unwrap()));
        let (detected, sampler) = start_sampler(&config, spool.clone()).await;
        assert!(detected.cpu_millis >= 1000 && detected.cpu_millis % 1000 == 0, "{detected:?}");
        assert!(detected.memory_bytes > 0);
        drop(sampler);

        config.cpu_millis = Some(1500);
        config.memory_bytes = Some(1 << 30);
        config.declared_gpus = vec![DeclaredGpu { index: 0, model: "Declared".into(), memory_bytes: 1 << 30 }];
        let (capacity, mut sampler) = start_sampler(&config, spool.clone()).await;
        assert_eq!((capacity.cpu_millis, capacity.memory_bytes), (1500, 1 << 30));
        assert!(capacity.gpus.iter().any(|g| g.model == "Declared" || g.source == GPU_SOURCE_NVML));
        let first = tokio::time::timeout(Duration::from_secs(30), sampler.usage.wait_for(Option::is_some));
        let usage = first.await.expect("a sample comes within seconds").unwrap().clone().unwrap();
        assert!(usage.memory_used_bytes > 0 && usage.sampled_at_us > 0, "{usage:?}");
        let spooled = spool.lock().unwrap().read(600, u64::MAX).unwrap();
        assert!(spooled.samples.iter().any(|s| s.node == usage), "the sample went to the spool too");
    }

    /// Builds the stand-in for NVIDIA's libnvidia-ml.so (`crates/ferry/tests/fake_nvml/fakenvml.c`, not a real
    /// driver) into `dir` with `cc`.
    fn build_stand_in_nvml(dir: &Path) -> std::path::PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferry/tests/fake_nvml/fakenvml.c");
        let library = dir.join("libnvidia-ml.so.1");
        let out = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&library)
            .arg(&source)
            .output()
            .expect("a C compiler named `cc` (scripts/test installs one)");
        assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
        library
    }

    /// Through the stand-in NVML library and the real nvml-wrapper: on a GPU two runs share, the driver's per-process
    /// figures go to the run that owns each process; a GPU a run holds alone is measured whole, whatever processes the
    /// driver lists (its own may sit in a container, under process ids the agent cannot see).
    #[test]
    fn stand_in_nvml_figures_go_per_process_on_a_shared_gpu_and_whole_on_a_gpu_held_alone() {
        let dir = tempfile::tempdir().unwrap();
        let library = build_stand_in_nvml(dir.path());
        let me = std::process::id();
        // Another run's process: not a child of this one (whose process tree is run 7's), so started through a shell
        // that leaves it behind.
        let out = std::process::Command::new("sh").args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"]).output().unwrap();
        let other: u32 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        let processes = format!("1 {me} {} 42\n1 {other} {} 50\n", 3u64 << 30, 8u64 << 30);
        std::fs::write(dir.path().join("fake_nvml_processes"), processes).unwrap();

        let probe_for = |job_id: u64, pid: u32, gpu_ids: Vec<u32>| {
            let run = ferry_api::agent::RunRef::new(job_id, 1);
            let run_dir = dir.path().join(format!("{job_id}-1"));
            std::fs::create_dir_all(&run_dir).unwrap();
            let spec = ferry_api::agent::Assignment {
                run,
                command: vec!["sleep".into()],
                workdir: "/".into(),
                code: None,
                env: Default::default(),
                secrets: Default::default(),
                owner: String::new(),
                cpu_millis: 0,
                memory_bytes: 0,
                gpu_ids,
                max_runtime_s: None,
                grace_s: 1,
                image: None,
            };
            crate::rundir::write_json(&run_dir.join(crate::rundir::SPEC_FILE), &spec).unwrap();
            let started = crate::rundir::Started { pid, started_at_us: 1, limits: "none".into() };
            crate::rundir::write_json(&run_dir.join(crate::rundir::STARTED_FILE), &started).unwrap();
            RunProbe { run, pid, dir: run_dir }
        };
        let gpu = |index, percent, gib: u64| ferry_api::telemetry::RunGpuSample {
            index,
            utilization_percent: Some(percent),
            memory_used_bytes: Some(gib << 30),
        };

        let mut probe = Probe::open(Some(&library));
        let node = probe.sample();
        assert_eq!(node.gpus.len(), 2, "{node:?}");
        let cgroups = tempfile::tempdir().unwrap();
        let mut meter = RunMeter::new(cgroups.path(), Path::new(PROC_ROOT));
        let shared = [probe_for(7, me, vec![1]), probe_for(8, other, vec![1])];
        let sample = sample_all(&mut probe, &mut meter, &shared);
        assert_eq!(sample.runs.len(), 2);
        let measured = &sample.runs[0];
        assert_eq!(measured.source, "proc");
        assert!(measured.memory_used_bytes.is_some_and(|b| b > 0), "{measured:?}");
        assert_eq!(measured.cpu_millis_used, None, "a first sample has no CPU figure");
        assert_eq!(sample.runs[0].gpus, [gpu(1, 42, 3)]);
        assert_eq!(sample.runs[1].gpus, [gpu(1, 50, 8)]);

        // Alone on GPU 1, run 7 gets the device's own figures (13%, 20 GiB), not just its process's.
        let alone = sample_all(&mut probe, &mut meter, &[probe_for(7, me, vec![1])]);
        assert_eq!(alone.runs[0].gpus, [gpu(1, 13, 20)]);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(other as i32), nix::sys::signal::Signal::SIGKILL);
    }
}
