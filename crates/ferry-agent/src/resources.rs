//! What this machine has and how much of it is in use: CPUs and memory through `sysinfo`, GPUs through NVML (when
//! a driver is installed) plus the GPUs the configuration declares.
//!
//! Sampling runs on a thread of its own, once a second, so that slow driver calls never hold up the agent's loop.
//! This module must never report allocation as use: every number it gives was measured.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::Nvml;
use sysinfo::System;
use tokio::sync::{oneshot, watch};

use crate::config::{AgentConfig, DeclaredGpu};
use crate::rundir::now_us;

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

/// The measuring instruments: `sysinfo` for the host, NVML where it loaded.
struct Probe {
    system: System,
    nvml: Option<Nvml>,
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
        Probe { system, nvml }
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

/// The latest usage sample, refreshed by the sampler thread; the thread ends when this is dropped.
pub(crate) struct Sampler {
    pub usage: watch::Receiver<Option<NodeUsage>>,
    _stop: mpsc::Sender<()>,
}

/// Starts the sampler thread and returns the node's capacity once it has been measured.
pub(crate) async fn start_sampler(config: &AgentConfig) -> (Capacity, Sampler) {
    let (capacity_tx, capacity_rx) = oneshot::channel();
    let (usage_tx, usage_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let config = config.clone();
    thread::Builder::new()
        .name("ferry-sampler".into())
        .spawn(move || {
            let mut probe = Probe::open(config.nvml_library.as_deref());
            let _ = capacity_tx.send(probe.capacity(&config));
            // Waiting on the stop channel doubles as the sampling clock; it ends when the agent drops its end.
            while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(SAMPLE_INTERVAL) {
                if usage_tx.send(Some(probe.sample())).is_err() {
                    break;
                }
            }
        })
        .expect("the OS can start one more thread");
    let capacity = capacity_rx.await.expect("the sampler measures the capacity before anything else");
    (capacity, Sampler { usage: usage_rx, _stop: stop_tx })
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
        let (detected, sampler) = start_sampler(&config).await;
        assert!(detected.cpu_millis >= 1000 && detected.cpu_millis % 1000 == 0, "{detected:?}");
        assert!(detected.memory_bytes > 0);
        drop(sampler);

        config.cpu_millis = Some(1500);
        config.memory_bytes = Some(1 << 30);
        config.declared_gpus = vec![DeclaredGpu { index: 0, model: "Declared".into(), memory_bytes: 1 << 30 }];
        let (capacity, mut sampler) = start_sampler(&config).await;
        assert_eq!((capacity.cpu_millis, capacity.memory_bytes), (1500, 1 << 30));
        assert!(capacity.gpus.iter().any(|g| g.model == "Declared" || g.source == GPU_SOURCE_NVML));
        let first = tokio::time::timeout(Duration::from_secs(30), sampler.usage.wait_for(Option::is_some));
        let usage = first.await.expect("a sample comes within seconds").unwrap().clone().unwrap();
        assert!(usage.memory_used_bytes > 0 && usage.sampled_at_us > 0, "{usage:?}");
    }
}
