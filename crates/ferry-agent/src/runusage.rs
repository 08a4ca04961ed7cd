//! What each run uses: CPU and memory from the run's control group (or from `/proc` where it has none), and its
//! share of the GPUs it holds, attributed to it process by process from what NVML reports.
//!
//! Every figure is read from the few files that hold it, never from a scan of every process on the machine, so
//! sampling eight runs once a second costs a few dozen small reads. This module must never report allocation as
//! use: a figure it cannot read is `None`, and a run's first sample has no CPU figure (CPU use is a difference).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_api::agent::RunRef;
use ferry_api::telemetry::{RunGpuSample, RunSample};

use crate::cgroup::FERRY_GROUP;
use crate::rundir::RunDir;
use crate::shim::cgroup_name;

const SOURCE_CGROUP_V2: &str = "cgroup-v2";
const SOURCE_CGROUP_V1: &str = "cgroup-v1";
const SOURCE_PROC: &str = "proc";
/// The most processes of one run followed through `/proc`; a run with more is measured by its first ones.
const RUN_PROCESSES_MAX: usize = 4096;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A run the agent supervises, as the sampler needs it: the job's process and the run's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunProbe {
    pub run: RunRef,
    /// The job's first process, also its process group.
    pub pid: u32,
    pub dir: PathBuf,
}

/// Where a run's figures are read from, decided once per run from what its supervisor did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Counters {
    /// A cgroup v2 group: `cpu.stat`, `memory.current`, `cgroup.procs`.
    V2 { group: PathBuf },
    /// cgroup v1 groups: memory (and membership) from the memory hierarchy, CPU from `cpuacct.usage` where the
    /// cpu hierarchy carries cpuacct, otherwise from the group's processes in `/proc`.
    V1 { memory: PathBuf, cpuacct_usage: Option<PathBuf> },
    /// No group: the job's process and its descendants in `/proc`.
    Proc,
}

/// One reading of a run's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// CPU used since the run started, in nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// The run's processes, to attribute GPU processes to it.
    pub pids: Vec<u32>,
}

struct Tracked {
    probe: RunProbe,
    counters: Counters,
    gpu_ids: Vec<u32>,
    previous: Option<(u64, Instant)>,
}

/// The runs being measured, each with its previous CPU reading.
pub(crate) struct RunMeter {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    ticks_per_sec: u64,
    page_bytes: u64,
    runs: BTreeMap<RunRef, Tracked>,
}

/// One run's CPU and memory at one moment, with what GPU attribution needs.
pub(crate) struct Measured {
    pub sample: RunSample,
    pub pids: Vec<u32>,
    pub gpu_ids: Vec<u32>,
}

impl RunMeter {
    pub fn new(cgroup_root: &Path, proc_root: &Path) -> RunMeter {
        let sysconf = |var| nix::unistd::sysconf(var).ok().flatten().filter(|v| *v > 0).map(|v| v as u64);
        RunMeter {
            cgroup_root: cgroup_root.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            ticks_per_sec: sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100),
            page_bytes: sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
            runs: BTreeMap::new(),
        }
    }

    /// Follows exactly the runs in `probes`: new ones are looked up once, gone ones forgotten.
    pub fn set_runs(&mut self, probes: &[RunProbe]) {
        // A run whose job process changed (a new supervisor after a restart) is looked up afresh.
        self.runs.retain(|_, tracked| probes.contains(&tracked.probe));
        for probe in probes {
            if self.runs.contains_key(&probe.run) {
                continue;
            }
            let dir = RunDir::new(&probe.dir);
            let limits = dir.read_started().ok().flatten().map(|s| s.limits).unwrap_or_default();
            let counters = counters_for(&self.cgroup_root, &limits, &cgroup_name(probe.run, &probe.dir));
            let gpu_ids = dir.read_spec().map(|spec| spec.gpu_ids).unwrap_or_default();
            self.runs.insert(probe.run, Tracked { probe: probe.clone(), counters, gpu_ids, previous: None });
        }
    }

    /// Measures every run once.
    pub fn measure(&mut self) -> Vec<Measured> {
        let mut measured = Vec::with_capacity(self.runs.len());
        for (run, tracked) in &mut self.runs {
            let reading = read_counters(
                &tracked.counters,
                tracked.probe.pid,
                &self.proc_root,
                self.ticks_per_sec,
                self.page_bytes,
            );
            let now = Instant::now();
            let cpu_millis_used = match (reading.cpu_ns, tracked.previous) {
                (Some(ns), Some((previous_ns, at))) => {
                    cpu_millis(previous_ns, ns, now.duration_since(at).as_nanos() as u64)
                }
                _ => None,
            };
            tracked.previous = reading.cpu_ns.map(|ns| (ns, now));
            measured.push(Measured {
                sample: RunSample {
                    run: *run,
                    cpu_millis_used,
                    memory_used_bytes: reading.memory_bytes,
                    source: source_of(&tracked.counters).to_string(),
                    gpus: Vec::new(),
                },
                pids: reading.pids,
                gpu_ids: tracked.gpu_ids.clone(),
            });
        }
        measured
    }
}

fn source_of(counters: &Counters) -> &'static str {
    match counters {
        Counters::V2 { .. } => SOURCE_CGROUP_V2,
        Counters::V1 { .. } => SOURCE_CGROUP_V1,
        Counters::Proc => SOURCE_PROC,
    }
}

/// Where a run's counters are, from the limits its supervisor recorded (`cgroup-v2`, `cgroup-v1` or `none`) and
/// the name it gave the run's group. A group that is not there (it could not be made) means `/proc`.
fn counters_for(root: &Path, limits: &str, name: &str) -> Counters {
    match limits {
        SOURCE_CGROUP_V2 => {
            let group = root.join(FERRY_GROUP).join(name);
            if group.is_dir() {
                return Counters::V2 { group };
            }
        }
        SOURCE_CGROUP_V1 => {
            let memory = root.join("memory").join(FERRY_GROUP).join(name);
            let usage = root.join("cpu").join(FERRY_GROUP).join(name).join("cpuacct.usage");
            if memory.is_dir() {
                return Counters::V1 { memory, cpuacct_usage: usage.is_file().then_some(usage) };
            }
        }
        _ => {}
    }
    Counters::Proc
}

/// The average CPU use between two readings of a cumulative counter, in thousandths of a CPU. A counter that went
/// back (a process of the run ended and took its time with it) reads as no use rather than a wrapped number.
fn cpu_millis(previous_ns: u64, now_ns: u64, elapsed_ns: u64) -> Option<u64> {
    if elapsed_ns == 0 {
        return None;
    }
    let used_ns = u128::from(now_ns.saturating_sub(previous_ns));
    Some((used_ns * 1000 / u128::from(elapsed_ns)) as u64)
}

fn read_counters(counters: &Counters, pid: u32, proc_root: &Path, ticks_per_sec: u64, page_bytes: u64) -> Reading {
    let read_u64 = |path: &Path| fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let read_pids = |path: &Path| fs::read_to_string(path).map(|t| parse_pids(&t)).unwrap_or_default();
    match counters {
        Counters::V2 { group } => Reading {
            cpu_ns: fs::read_to_string(group.join("cpu.stat"))
                .ok()
                .and_then(|t| parse_cpu_stat_usec(&t))
                .map(|us| us * 1000),
            memory_bytes: read_u64(&group.join("memory.current")),
            pids: read_pids(&group.join("cgroup.procs")),
        },
        Counters::V1 { memory, cpuacct_usage } => {
            // Child groups too: a container run by the agent is nested in the run's group (`container.rs`).
            let pids = pids_in_tree(memory, &read_pids);
            let cpu_ns = match cpuacct_usage {
                Some(path) => read_u64(path),
                None => proc_totals(proc_root, &pids, ticks_per_sec, page_bytes).0,
            };
            Reading { cpu_ns, memory_bytes: read_u64(&memory.join("memory.usage_in_bytes")), pids }
        }
        Counters::Proc => {
            let pids = descendants(proc_root, pid);
            let (cpu_ns, memory_bytes) = proc_totals(proc_root, &pids, ticks_per_sec, page_bytes);
            Reading { cpu_ns, memory_bytes, pids }
        }
    }
}

/// The processes of a control group and of the groups nested in it, a few levels deep.
fn pids_in_tree(group: &Path, read_pids: &dyn Fn(&Path) -> Vec<u32>) -> Vec<u32> {
    const DEPTH_MAX: usize = 4;
    let mut pids = Vec::new();
    let mut groups = vec![(group.to_path_buf(), 0)];
    while let Some((dir, depth)) = groups.pop() {
        pids.extend(read_pids(&dir.join("cgroup.procs")));
        if depth < DEPTH_MAX {
            let children = fs::read_dir(&dir).into_iter().flatten().flatten();
            groups.extend(children.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| (e.path(), depth + 1)));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The CPU time (including that of children they waited for) and resident memory of `pids`; `None` when none of
/// them could be read.
fn proc_totals(proc_root: &Path, pids: &[u32], ticks_per_sec: u64, page_bytes: u64) -> (Option<u64>, Option<u64>) {
    let stats: Vec<ProcStat> = pids
        .iter()
        .filter_map(|pid| fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok())
        .filter_map(|text| parse_proc_stat(&text))
        .collect();
    if stats.is_empty() {
        return (None, None);
    }
    let ticks: u64 = stats.iter().map(|s| s.cpu_ticks).sum();
    let pages: u64 = stats.iter().map(|s| s.rss_pages).sum();
    let cpu_ns = u128::from(ticks) * u128::from(NANOS_PER_SEC) / u128::from(ticks_per_sec.max(1));
    (Some(cpu_ns as u64), Some(pages * page_bytes))
}

/// `pid` and every process descended from it, through the kernel's per-thread `children` lists. A process that
/// left the tree (reparented after its parent died) is not found; without a control group, that is the limit.
fn descendants(proc_root: &Path, pid: u32) -> Vec<u32> {
    let mut found = vec![pid];
    let mut seen = HashSet::from([pid]);
    let mut next = 0;
    while next < found.len() && found.len() < RUN_PROCESSES_MAX {
        let parent = found[next];
        next += 1;
        let Ok(tasks) = fs::read_dir(proc_root.join(parent.to_string()).join("task")) else { continue };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in parse_pids(&children) {
                if seen.insert(child) {
                    found.push(child);
                }
            }
        }
    }
    if !proc_root.join(pid.to_string()).exists() {
        found.retain(|p| *p != pid);
    }
    found
}

/// The numbers in a `cgroup.procs` or `children` file.
fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
fn parse_cpu_stat_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("usage_usec ")?.trim().parse().ok())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    /// utime + stime + cutime + cstime, in clock ticks.
    cpu_ticks: u64,
    rss_pages: u64,
}

/// The figures of `/proc/PID/stat` this module needs. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime is field 14, stime 15, cutime 16, cstime 17 and rss 24.
    let number = |field: usize| fields.get(field - 3)?.parse::<i64>().ok();
    let ticks = [14, 15, 16, 17].iter().map(|f| number(*f).map(|v| v.max(0) as u64)).sum::<Option<u64>>()?;
    Some(ProcStat { cpu_ticks: ticks, rss_pages: number(24)?.max(0) as u64 })
}

/// What NVML said about one GPU, for attributing it to runs. `None` in a field: the driver would not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceReading {
    pub index: u32,
    /// Each process with a compute context and the device memory it uses (`None`: not reported).
    pub processes: Option<Vec<(u32, Option<u64>)>>,
    /// SM utilisation of each process sampled since the previous reading.
    pub process_utilization: Option<Vec<(u32, u32)>>,
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
}

/// A run's use of one GPU. A device the run holds `alone` is the run's: its own figures are the run's, whatever
/// processes the driver lists (a job's processes in a container have process ids the agent cannot match, and a
/// device nobody else may use cannot be busy for anyone else). A device the run shares with others: the sum over the
/// run's processes where the driver gives per-process figures, else nothing.
pub(crate) fn attribute(device: &DeviceReading, pids: &HashSet<u32>, alone: bool) -> RunGpuSample {
    let own_memory = device.processes.as_ref().map(|processes| {
        processes.iter().filter(|(pid, _)| pids.contains(pid)).map(|(_, bytes)| *bytes).sum::<Option<u64>>()
    });
    let own_utilization = device.process_utilization.as_ref().map(|samples| {
        // The driver may return several samples of one process; its latest is last.
        let latest: BTreeMap<u32, u32> = samples.iter().filter(|(pid, _)| pids.contains(pid)).copied().collect();
        latest.values().sum::<u32>().min(100)
    });
    let (utilization_percent, memory_used_bytes) = if alone {
        (device.utilization_percent.or(own_utilization), device.memory_used_bytes.or(own_memory.flatten()))
    } else {
        (own_utilization, own_memory.flatten())
    };
    RunGpuSample { index: device.index, utilization_percent, memory_used_bytes }
}

/// Adds each run's GPU figures: for every GPU a run holds, from the reading of that device, if there is one.
pub(crate) fn add_gpus(measured: &mut [Measured], devices: &[DeviceReading]) {
    let mut holders: BTreeMap<u32, usize> = BTreeMap::new();
    for index in measured.iter().flat_map(|m| m.gpu_ids.iter()) {
        *holders.entry(*index).or_default() += 1;
    }
    for run in measured.iter_mut() {
        let pids: HashSet<u32> = run.pids.iter().copied().collect();
        run.sample.gpus = run
            .gpu_ids
            .iter()
            .filter_map(|index| devices.iter().find(|d| d.index == *index))
            .map(|device| attribute(device, &pids, holders.get(&device.index) == Some(&1)))
            .collect();
    }
}

/// The GPUs any of the runs holds, once each.
pub(crate) fn held_gpus(measured: &[Measured]) -> BTreeSet<u32> {
    measured.iter().flat_map(|m| m.gpu_ids.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (python3 -c (x) y) R 4200 4242 4200 0 -1 4194560 1000 0 0 0 250 50 7 3 20 0 1 0 \
                        123456 100000000 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        assert_eq!(parse_proc_stat(STAT), Some(ProcStat { cpu_ticks: 250 + 50 + 7 + 3, rss_pages: 2560 }));
        assert_eq!(parse_proc_stat("12 (cut short) S 1 12"), None);
        assert_eq!(parse_cpu_stat_usec("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"), Some(1_500_000));
        assert_eq!(parse_cpu_stat_usec("user_usec 1\n"), None);
        assert_eq!(parse_pids("12\n13\n\n"), [12, 13]);
    }

    #[test]
    fn cpu_use_is_the_counter_difference_over_the_time_between_readings() {
        let second = NANOS_PER_SEC;
        assert_eq!(cpu_millis(0, 1_500_000_000, second), Some(1500));
        assert_eq!(cpu_millis(2 * second, second, second), Some(0), "a counter that went back");
        assert_eq!(cpu_millis(0, 1, 0), None);
    }

    #[test]
    fn a_v2_group_gives_cpu_memory_and_members() {
        let root = tempfile::tempdir().unwrap();
        let group = root.path().join("ferry/job-7-1-abc");
        write(&group.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n");
        write(&group.join("memory.current"), "1048576\n");
        write(&group.join("cgroup.procs"), "100\n101\n");
        let counters = counters_for(root.path(), "cgroup-v2", "job-7-1-abc");
        assert_eq!(counters, Counters::V2 { group: group.clone() });
        let reading = read_counters(&counters, 100, Path::new("/nonexistent"), 100, 4096);
        assert_eq!(reading, Reading { cpu_ns: Some(2_500_000), memory_bytes: Some(1 << 20), pids: vec![100, 101] });

        // A group the supervisor could not make: the run is measured through /proc.
        assert_eq!(counters_for(root.path(), "cgroup-v2", "job-8-1-abc"), Counters::Proc);
        assert_eq!(counters_for(root.path(), "none", "job-7-1-abc"), Counters::Proc);
    }

    #[test]
    fn a_v1_group_reads_cpuacct_or_falls_back_to_its_processes() {
        let root = tempfile::tempdir().unwrap();
        let proc_root = tempfile::tempdir().unwrap();
        let memory = root.path().join("memory/ferry/g");
        write(&memory.join("memory.usage_in_bytes"), "4096\n");
        write(&memory.join("cgroup.procs"), "4242\n");
        write(&proc_root.path().join("4242/stat"), STAT);
        fs::create_dir_all(root.path().join("cpu/ferry/g")).unwrap();
        let without_cpuacct = counters_for(root.path(), "cgroup-v1", "g");
        assert_eq!(without_cpuacct, Counters::V1 { memory: memory.clone(), cpuacct_usage: None });
        let reading = read_counters(&without_cpuacct, 4242, proc_root.path(), 100, 4096);
        assert_eq!(reading, Reading { cpu_ns: Some(3_100_000_000), memory_bytes: Some(4096), pids: vec![4242] });
        // A container nested in the run's group (its own child group) counts towards the run.
        write(&memory.join("libpod-abc/cgroup.procs"), "4343\n");
        write(&proc_root.path().join("4343/stat"), STAT);
        let nested = read_counters(&without_cpuacct, 4242, proc_root.path(), 100, 4096);
        assert_eq!((nested.cpu_ns, nested.pids), (Some(6_200_000_000), vec![4242, 4343]));

        write(&root.path().join("cpu/ferry/g/cpuacct.usage"), "123456789\n");
        let with_cpuacct = counters_for(root.path(), "cgroup-v1", "g");
        assert_eq!(read_counters(&with_cpuacct, 4242, proc_root.path(), 100, 4096).cpu_ns, Some(123_456_789));
    }

    #[test]
    fn without_a_group_the_process_tree_is_summed() {
        let proc_root = tempfile::tempdir().unwrap();
        let p = proc_root.path();
        write(&p.join("10/task/10/children"), "11 ");
        write(&p.join("10/task/12/children"), "13");
        write(&p.join("11/task/11/children"), "14\n");
        write(&p.join("13/task/13/children"), "");
        write(&p.join("14/task/14/children"), "");
        for pid in [10, 11, 13, 14] {
            write(
                &p.join(format!("{pid}/stat")),
                &format!("{pid} (sh) S 1 10 10 0 -1 0 0 0 0 0 100 0 0 0 20 0 1 0 1 1 10"),
            );
        }
        let mut members = descendants(p, 10);
        members.sort();
        assert_eq!(members, [10, 11, 13, 14]);
        let reading = read_counters(&Counters::Proc, 10, p, 100, 4096);
        assert_eq!(reading.cpu_ns, Some(4 * NANOS_PER_SEC));
        assert_eq!(reading.memory_bytes, Some(4 * 10 * 4096));
        // A process that is gone is no member and leaves nothing to read.
        assert_eq!(read_counters(&Counters::Proc, 99, p, 100, 4096), Reading::default());
    }

    #[test]
    fn gpu_figures_come_per_process_or_from_a_device_held_alone() {
        let pids = HashSet::from([10, 11]);
        let per_process = DeviceReading {
            index: 1,
            processes: Some(vec![(10, Some(3 << 30)), (11, Some(1 << 30)), (99, Some(8 << 30))]),
            process_utilization: Some(vec![(10, 20), (10, 35), (11, 30), (99, 50)]),
            utilization_percent: Some(100),
            memory_used_bytes: Some(12 << 30),
        };
        let expected = RunGpuSample { index: 1, utilization_percent: Some(65), memory_used_bytes: Some(4 << 30) };
        assert_eq!(attribute(&per_process, &pids, false), expected);
        // Sharing the device, a run with no process on it was measured using none of it.
        let idle = RunGpuSample { index: 1, utilization_percent: Some(0), memory_used_bytes: Some(0) };
        assert_eq!(attribute(&per_process, &HashSet::from([5]), false), idle);
        // Holding it alone, the device's figures are the run's, even when none of its process ids show (a container).
        let held = RunGpuSample { index: 1, utilization_percent: Some(100), memory_used_bytes: Some(12 << 30) };
        assert_eq!(attribute(&per_process, &HashSet::from([5]), true), held);

        let device_only = DeviceReading { process_utilization: None, processes: None, ..per_process };
        let whole = RunGpuSample { index: 1, utilization_percent: Some(100), memory_used_bytes: Some(12 << 30) };
        assert_eq!(attribute(&device_only, &pids, true), whole);
        let shared = RunGpuSample { index: 1, utilization_percent: None, memory_used_bytes: None };
        assert_eq!(attribute(&device_only, &pids, false), shared);

        let unreported = DeviceReading { processes: Some(vec![(10, None)]), ..DeviceReading::default() };
        assert_eq!(attribute(&unreported, &pids, true).memory_used_bytes, None);
    }

    #[test]
    fn runs_sharing_a_gpu_get_no_device_wide_figures() {
        let run = |job_id, pids: Vec<u32>, gpu_ids: Vec<u32>| Measured {
            sample: RunSample { run: RunRef::new(job_id, 1), ..RunSample::default() },
            pids,
            gpu_ids,
        };
        let mut measured = vec![run(1, vec![10], vec![0, 1]), run(2, vec![20], vec![1])];
        let device = |index| DeviceReading {
            index,
            utilization_percent: Some(50),
            memory_used_bytes: Some(1 << 30),
            ..DeviceReading::default()
        };
        add_gpus(&mut measured, &[device(0), device(1)]);
        assert_eq!(held_gpus(&measured), BTreeSet::from([0, 1]));
        let figures: Vec<Vec<(u32, Option<u32>)>> =
            measured.iter().map(|m| m.sample.gpus.iter().map(|g| (g.index, g.utilization_percent)).collect()).collect();
        assert_eq!(figures, [vec![(0, Some(50)), (1, None)], vec![(1, None)]]);
    }
}
