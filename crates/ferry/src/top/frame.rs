//! One frame of `ferry top`, built from what the API returned: a pure function of its inputs (the clock is passed in),
//! so that tests check the text exactly. It never writes to the terminal and never fetches; `top.rs` does both.
//!
//! A frame is a list of lines made of spans, each span with a tone that the terminal may colour. Every mark that
//! matters (an idle GPU, a node that is not ready, missing data) is a word in the text, so the frame reads the same
//! without colour.

use std::collections::BTreeMap;

use ferry_api::jobs::{Job, JobState};
use ferry_api::nodes::{GpuUsage, Node, NodeState, NodeUsage};

use crate::format;

/// An allocated GPU busy less than this, in percent, is marked `IDLE`: allocated but idle is waste.
pub const IDLE_BELOW_PERCENT: f64 = 10.0;
/// The segments of a GPU's utilisation bar.
const BAR_SEGMENTS: usize = 10;
/// Shown where a value was never measured: never as 0.
const NO_DATA: &str = "no data";

/// What the server said at one moment, or why it could not be asked.
pub struct Snapshot {
    pub server: String,
    pub at_us: i64,
    /// A line for the top right of a live view, such as the refresh interval and how to quit.
    pub hint: Option<String>,
    pub data: Result<Cluster, String>,
}

/// The cluster as the API showed it.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Jobs holding resources on nodes: running and starting ones.
    pub placed: Vec<Job>,
    pub queued: usize,
    /// Whether more jobs are queued than were listed, so that `queued` is a lower bound.
    pub queued_more: bool,
}

/// The terminal's size in characters; a frame for a pipe has none and is neither cut nor wrapped.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub cols: usize,
    pub rows: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    /// Titles and column headers.
    Heading,
    /// Missing data and free GPUs: present but unremarkable.
    Dim,
    /// Measured work: the filled part of a utilisation bar.
    Busy,
    /// Waste worth a look: allocated but idle.
    Warn,
    /// Something is wrong: an unreachable server, a node that is not ready.
    Bad,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub tone: Tone,
}

/// One line of a frame; it never holds a newline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line(pub Vec<Span>);

impl Line {
    fn plain(text: impl Into<String>) -> Line {
        Line(vec![Span { text: text.into(), tone: Tone::Plain }])
    }

    fn toned(text: impl Into<String>, tone: Tone) -> Line {
        Line(vec![Span { text: text.into(), tone }])
    }

    fn push(&mut self, text: impl Into<String>, tone: Tone) {
        self.0.push(Span { text: text.into(), tone });
    }

    fn extend(&mut self, cell: Cell) {
        self.0.extend(cell.0);
    }

    pub fn width(&self) -> usize {
        self.0.iter().map(|s| s.text.chars().count()).sum()
    }

    /// The line cut to `cols` characters, so that a terminal never wraps it.
    pub fn truncate(mut self, cols: usize) -> Line {
        let mut left = cols;
        for span in &mut self.0 {
            let n = span.text.chars().count();
            if n > left {
                span.text = span.text.chars().take(left).collect();
            }
            left -= span.text.chars().count();
        }
        self.0.retain(|s| !s.text.is_empty());
        self
    }

    pub fn text(&self) -> String {
        self.0.iter().map(|s| s.text.as_str()).collect()
    }
}

/// The frame as plain text, one line each, without trailing blanks.
pub fn plain(lines: &[Line]) -> String {
    lines.iter().map(|l| format!("{}\n", l.text().trim_end())).collect()
}

/// A table cell: spans that are padded together.
#[derive(Clone, Debug, Default)]
struct Cell(Vec<Span>);

impl Cell {
    fn of(text: impl Into<String>) -> Cell {
        Cell::toned(text, Tone::Plain)
    }

    fn toned(text: impl Into<String>, tone: Tone) -> Cell {
        Cell(vec![Span { text: text.into(), tone }])
    }

    fn width(&self) -> usize {
        self.0.iter().map(|s| s.text.chars().count()).sum()
    }
}

/// Builds the whole frame. With a size, it fits it: no line is wider than the terminal and the frame is no taller;
/// the running jobs get the rows that are left.
pub fn frame(snapshot: &Snapshot, size: Option<Size>) -> Vec<Line> {
    let mut lines = vec![title(snapshot)];
    let cluster = match &snapshot.data {
        Ok(cluster) => cluster,
        Err(error) => {
            // The one thing worth reading in this frame: folded to the width rather than cut.
            let text: Vec<char> = format!("error: {error}").chars().collect();
            let cols = size.map_or(text.len(), |s| s.cols).max(1);
            lines.extend(text.chunks(cols).map(|c| Line::toned(c.iter().collect::<String>(), Tone::Bad)));
            return fit(lines, size);
        }
    };
    let gpus = GpuMap::new(cluster);
    lines.extend(totals(cluster, &gpus));
    lines.push(Line::default());
    lines.extend(node_table(cluster, &gpus, size.map(|s| s.cols)));
    lines.push(Line::default());
    let jobs = job_table(cluster, &gpus, snapshot.at_us);
    let room = size.map(|s| s.rows.saturating_sub(lines.len()));
    lines.extend(cut_jobs(jobs, room));
    fit(lines, size)
}

fn fit(mut lines: Vec<Line>, size: Option<Size>) -> Vec<Line> {
    let Some(size) = size else { return lines };
    lines.truncate(size.rows);
    lines.into_iter().map(|l| l.truncate(size.cols)).collect()
}

fn title(snapshot: &Snapshot) -> Line {
    // Whole seconds: milliseconds would flicker at every redraw and say nothing.
    let time = format::timestamp(snapshot.at_us);
    let time = time.split('.').next().unwrap_or_default();
    let mut line = Line::toned("ferry top", Tone::Heading);
    line.push(format!("  {}  {time} UTC", snapshot.server), Tone::Plain);
    if let Some(hint) = &snapshot.hint {
        line.push(format!("  ({hint})"), Tone::Dim);
    }
    line
}

/// Who holds each GPU, and what each GPU measured: the join of nodes and placed jobs that every section reads.
struct GpuMap<'a> {
    /// (node, GPU index) to the jobs placed on it; several for shares of one GPU.
    holders: BTreeMap<(&'a str, u32), Vec<u64>>,
    /// (node, GPU index) to what it measured.
    measured: BTreeMap<(&'a str, u32), &'a GpuUsage>,
}

impl<'a> GpuMap<'a> {
    fn new(cluster: &'a Cluster) -> GpuMap<'a> {
        let mut holders: BTreeMap<(&str, u32), Vec<u64>> = BTreeMap::new();
        for job in &cluster.placed {
            for (node, ids) in placements(job) {
                for &index in ids {
                    holders.entry((node, index)).or_default().push(job.id);
                }
            }
        }
        let mut measured = BTreeMap::new();
        for node in &cluster.nodes {
            for gpu in node.usage.iter().flat_map(|u| &u.gpus) {
                measured.insert((node.name.as_str(), gpu.index), gpu);
            }
        }
        GpuMap { holders, measured }
    }

    fn allocated(&self, node: &str, index: u32) -> bool {
        self.holders.contains_key(&(node, index))
    }

    fn utilization(&self, node: &str, index: u32) -> Option<u32> {
        self.measured.get(&(node, index)).and_then(|m| m.utilization_percent)
    }

    fn memory_used(&self, node: &str, index: u32) -> Option<u64> {
        self.measured.get(&(node, index)).and_then(|m| m.memory_used_bytes)
    }
}

/// Where a job runs: each node with the GPU indices it holds there, rank 0 first.
fn placements(job: &Job) -> Vec<(&str, &[u32])> {
    if job.workers.is_empty() {
        job.node.as_deref().map(|n| (n, job.gpu_ids.as_slice())).into_iter().collect()
    } else {
        job.workers.iter().map(|w| (w.node.as_str(), w.gpu_ids.as_slice())).collect()
    }
}

fn is_idle(allocated: bool, utilization_percent: Option<f64>) -> bool {
    allocated && utilization_percent.is_some_and(|u| u < IDLE_BELOW_PERCENT)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

fn percent(value: f64) -> String {
    format!("{}%", value.round() as u64)
}

/// Two lines of totals: what is allocated and measured, then CPUs and memory.
fn totals(cluster: &Cluster, gpus: &GpuMap) -> Vec<Line> {
    let nodes = &cluster.nodes;
    let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
    let gpu_total: usize = nodes.iter().map(|n| n.gpus.len()).sum();
    let gpu_allocated: u32 = nodes.iter().map(|n| n.allocated_gpus).sum();
    let utilization = mean(gpus.measured.values().filter_map(|m| m.utilization_percent).map(f64::from));
    let idle = gpus
        .holders
        .keys()
        .filter(|(node, index)| is_idle(true, gpus.utilization(node, *index).map(f64::from)))
        .count();
    let with_usage: Vec<_> = nodes.iter().filter_map(|n| n.usage.as_ref()).collect();
    let used = |f: &dyn Fn(&&NodeUsage) -> u64, show: fn(u64) -> String| {
        if with_usage.is_empty() {
            format!("use: {NO_DATA}")
        } else {
            format!("{} used", show(with_usage.iter().map(f).sum()))
        }
    };
    let cpu_used = used(&|u| u.cpu_millis_used, format::cpus);
    let memory_used = used(&|u| u.memory_used_bytes, format::bytes);
    let sum = |f: fn(&Node) -> u64| nodes.iter().map(f).sum::<u64>();

    let mut line = Line::plain(format!("Nodes {ready}/{} ready", nodes.len()));
    line.push(format!("   GPUs {gpu_allocated}/{gpu_total} allocated, util "), Tone::Plain);
    match utilization {
        Some(u) => line.push(percent(u), Tone::Plain),
        None => line.push(NO_DATA, Tone::Dim),
    }
    if idle > 0 {
        line.push(format!(", {idle} IDLE"), Tone::Warn);
    }
    let more = if cluster.queued_more { "+" } else { "" };
    line.push(format!("   Jobs {} running, {}{more} queued", cluster.placed.len(), cluster.queued), Tone::Plain);
    let resources = Line::plain(format!(
        "CPUs {}/{} allocated, {cpu_used}   Memory {}/{} allocated, {memory_used}",
        format::cpus(sum(|n| n.allocated_cpu_millis)),
        format::cpus(sum(|n| n.cpu_millis)),
        format::bytes(sum(|n| n.allocated_memory_bytes)),
        format::bytes(sum(|n| n.memory_bytes)),
    ));
    vec![line, resources]
}

/// Pads every column but the last to its widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<Cell>>) -> Vec<Line> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.width());
        }
    }
    let header_cells: Vec<Cell> = header.iter().map(|h| Cell::toned(*h, Tone::Heading)).collect();
    std::iter::once(header_cells)
        .chain(rows)
        .map(|row| {
            let last = row.len() - 1;
            let mut line = Line::default();
            for (i, cell) in row.into_iter().enumerate() {
                let pad = widths[i] - cell.width();
                line.extend(cell);
                if i != last {
                    line.push(" ".repeat(pad + 2), Tone::Plain);
                }
            }
            line
        })
        .collect()
}

/// The node table: fixed columns, then one cell per GPU. Where the terminal is too narrow for all of a node's GPU
/// cells, they continue on the next lines under the first, rather than being cut.
fn node_table(cluster: &Cluster, gpus: &GpuMap, cols: Option<usize>) -> Vec<Line> {
    let header = ["NODE", "POOL", "STATE", "CPU ALLOC", "CPU USED", "MEM ALLOC", "MEM USED", ""];
    let rows = cluster
        .nodes
        .iter()
        .map(|n| {
            let usage = n.usage.as_ref();
            let no_data = || Cell::toned(NO_DATA, Tone::Dim);
            vec![
                Cell::of(&n.name),
                Cell::of(&n.pool),
                match n.state {
                    NodeState::Ready => Cell::of("ready"),
                    NodeState::NotReady => Cell::toned("NOT READY", Tone::Bad),
                },
                Cell::of(format!("{}/{}", format::cpus(n.allocated_cpu_millis), format::cpus(n.cpu_millis))),
                usage.map(|u| Cell::of(format::cpus(u.cpu_millis_used))).unwrap_or_else(no_data),
                Cell::of(format!("{}/{}", format::bytes(n.allocated_memory_bytes), format::bytes(n.memory_bytes))),
                usage.map(|u| Cell::of(format::bytes(u.memory_used_bytes))).unwrap_or_else(no_data),
                Cell::default(),
            ]
        })
        .collect();
    let mut fixed = table(&header, rows).into_iter();
    let mut head = fixed.next().unwrap_or_default();
    let indent = head.width();
    head.push("GPUS (index:state, utilisation, memory used; IDLE = allocated, under 10% busy)", Tone::Heading);
    let mut lines = vec![head];
    let cells: Vec<Vec<Cell>> = cluster.nodes.iter().map(|n| gpu_cells(n, gpus)).collect();
    let cell_width = cells.iter().flatten().map(Cell::width).max().unwrap_or(0);
    let per_line = match cols {
        Some(cols) => (cols.saturating_sub(indent) / (cell_width + 2)).max(1),
        None => usize::MAX,
    };
    for (row, cells) in fixed.zip(cells) {
        let mut line = row;
        let mut cells = cells.into_iter().peekable();
        loop {
            for (i, cell) in cells.by_ref().take(per_line).enumerate() {
                if i > 0 {
                    line.push("  ", Tone::Plain);
                }
                let pad = cell_width - cell.width();
                line.extend(cell);
                line.push(" ".repeat(pad), Tone::Plain);
            }
            lines.push(line);
            if cells.peek().is_none() {
                break;
            }
            line = Line::plain(" ".repeat(indent));
        }
    }
    lines
}

/// One cell per GPU of a node: `0:alloc [####......]  40%  8GiB`, `1:IDLE [..........]   3%  1GiB`, or
/// `2:free no data` for a GPU without telemetry.
fn gpu_cells(node: &Node, gpus: &GpuMap) -> Vec<Cell> {
    let name = node.name.as_str();
    node.gpus
        .iter()
        .map(|gpu| {
            let allocated = gpus.allocated(name, gpu.index);
            let utilization = gpus.utilization(name, gpu.index);
            let idle = is_idle(allocated, utilization.map(f64::from));
            let mut cell = Cell::default();
            let (state, tone) = match (allocated, idle) {
                (_, true) => ("IDLE ", Tone::Warn),
                (true, false) => ("alloc", Tone::Plain),
                (false, _) => ("free ", Tone::Dim),
            };
            cell.0.push(Span { text: format!("{}:", gpu.index), tone: Tone::Plain });
            cell.0.push(Span { text: state.to_string(), tone });
            match utilization {
                Some(u) => {
                    let filled = (u.min(100) as usize * BAR_SEGMENTS).div_ceil(100);
                    cell.0.push(Span { text: " [".into(), tone: Tone::Plain });
                    cell.0.push(Span { text: "#".repeat(filled), tone: Tone::Busy });
                    cell.0.push(Span { text: ".".repeat(BAR_SEGMENTS - filled), tone: Tone::Dim });
                    cell.0.push(Span { text: format!("] {u:>3}%"), tone: Tone::Plain });
                    let memory = gpus.memory_used(name, gpu.index).map(format::bytes).unwrap_or_else(|| "-".into());
                    cell.0.push(Span { text: format!(" {memory:>8}"), tone: Tone::Plain });
                }
                None => cell.0.push(Span { text: format!(" {NO_DATA}"), tone: Tone::Dim }),
            }
            cell
        })
        .collect()
}

/// A placed job's measured GPU utilisation: what its own sampler reported, or else, for a job with whole GPUs, the
/// mean of what its GPUs measured (a shared GPU's use cannot be told apart between its jobs).
fn job_gpu_utilization(job: &Job, gpus: &GpuMap) -> Option<f64> {
    if let Some(u) = job.usage.as_ref().and_then(|u| u.gpu_utilization_percent) {
        return Some(u);
    }
    if job.gpu_share_milli > 0 {
        return None;
    }
    let placed = placements(job);
    mean(placed.iter().flat_map(|(node, ids)| ids.iter().filter_map(|&i| gpus.utilization(node, i))).map(f64::from))
}

/// The placed jobs, most GPUs first and then longest running first.
fn job_table(cluster: &Cluster, gpus: &GpuMap, now_us: i64) -> Vec<Line> {
    let mut jobs: Vec<&Job> = cluster.placed.iter().collect();
    let gpu_count = |j: &Job| u64::from(j.gpus) * u64::from(j.nodes.max(1)) * 1000 + u64::from(j.gpu_share_milli);
    jobs.sort_by_key(|j| (std::cmp::Reverse(gpu_count(j)), j.started_at_us.unwrap_or(i64::MAX), j.id));
    let rows = jobs
        .into_iter()
        .map(|j| {
            let workers = u64::from(j.nodes.max(1));
            let usage = j.usage.as_ref();
            let utilization = job_gpu_utilization(j, gpus);
            let has_gpus = j.gpus > 0 || j.gpu_share_milli > 0;
            let util_cell = match (has_gpus, utilization) {
                (false, _) => Cell::of(""),
                (true, None) => Cell::toned("-", Tone::Dim),
                (true, Some(u)) if is_idle(true, Some(u)) => Cell::toned(format!("{} IDLE", percent(u)), Tone::Warn),
                (true, Some(u)) => Cell::of(percent(u)),
            };
            let used = |v: Option<u64>, show: fn(u64) -> String| v.map(show).unwrap_or_else(|| "-".into());
            let where_ = placements(j)
                .iter()
                .map(|(node, ids)| match ids {
                    [] => node.to_string(),
                    ids => format!("{node}:{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let gpus_asked = if j.gpu_share_milli > 0 {
                format::cpus(u64::from(j.gpu_share_milli))
            } else {
                (u64::from(j.gpus) * workers).to_string()
            };
            let time = match (j.state, j.started_at_us) {
                (JobState::Running, Some(at)) => format::span(now_us - at),
                _ => j.state.name().to_string(),
            };
            let owner = match (&j.team, &j.project) {
                (Some(t), Some(p)) => format!("{t}/{p}"),
                (Some(t), None) => t.clone(),
                (None, Some(p)) => format!("/{p}"),
                (None, None) => "-".into(),
            };
            vec![
                Cell::of(j.id.to_string()),
                Cell::of(&j.owner),
                Cell::of(owner),
                Cell::of(gpus_asked),
                Cell::of(where_),
                util_cell,
                Cell::of(format!(
                    "{}/{}",
                    used(usage.and_then(|u| u.cpu_millis_used), format::cpus),
                    format::cpus(j.cpu_millis * workers)
                )),
                Cell::of(format!(
                    "{}/{}",
                    used(usage.and_then(|u| u.memory_used_bytes), format::bytes),
                    format::bytes(j.memory_bytes * workers)
                )),
                Cell::of(time),
                Cell::of(j.name.clone().unwrap_or_default()),
            ]
        })
        .collect();
    let header =
        ["JOB", "USER", "TEAM/PROJECT", "GPUS", "NODE:GPU IDS", "GPU UTIL", "CPU USED", "MEM USED", "TIME", "NAME"];
    table(&header, rows)
}

/// The job table cut to `room` lines (its header included), saying how many jobs did not fit.
fn cut_jobs(mut lines: Vec<Line>, room: Option<usize>) -> Vec<Line> {
    let jobs = lines.len().saturating_sub(1);
    if jobs == 0 {
        return vec![Line::toned("No running jobs.", Tone::Dim)];
    }
    let Some(room) = room else { return lines };
    if lines.len() <= room {
        return lines;
    }
    // The header, as many jobs as fit, and one line saying how many more there are.
    let shown = room.saturating_sub(2);
    lines.truncate(1 + shown);
    lines.push(Line::toned(format!("... {} more running jobs", jobs - shown), Tone::Dim));
    lines
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};
    use ferry_api::jobs::JobUsage;
    use ferry_api::nodes::Gpu;
    use serde_json::json;

    use super::*;

    const GIB: u64 = 1 << 30;
    /// 2026-11-29 17:39:08 UTC.
    const NOW_US: i64 = 1_795_973_948_000_000;

    fn node(name: &str, gpus: u32, usage: Option<Vec<GpuUsage>>) -> Node {
        Node {
            name: name.into(),
            pool: "gpu".into(),
            state: NodeState::Ready,
            cpu_millis: 32_000,
            memory_bytes: 256 * GIB,
            gpus: (0..gpus)
                .map(|index| Gpu {
                    index,
                    model: "H100".into(),
                    memory_bytes: 80 * GIB,
                    uuid: None,
                    source: "config".into(),
                })
                .collect(),
            labels: BTreeMap::new(),
            allocated_cpu_millis: 0,
            allocated_memory_bytes: 0,
            allocated_gpus: 0,
            usage: usage.map(|gpus| NodeUsage {
                sampled_at_us: NOW_US,
                cpu_millis_used: 5_500,
                memory_used_bytes: 40 * GIB,
                gpus,
            }),
            last_seen_us: NOW_US,
            agent_version: "0.1.0".into(),
            limits: "cgroup-v2".into(),
            running_jobs: Vec::new(),
        }
    }

    fn gpu(index: u32, utilization_percent: u32) -> GpuUsage {
        GpuUsage {
            index,
            utilization_percent: Some(utilization_percent),
            memory_used_bytes: Some(12 * GIB),
            temperature_c: Some(60),
            power_mw: Some(300_000),
        }
    }

    /// A running job on `node` holding `gpu_ids`, started `age_s` seconds ago.
    fn job(id: u64, node: &str, gpu_ids: &[u32], age_s: i64) -> Job {
        serde_json::from_value(json!({
            "id": id, "name": null, "project": "llm", "team": "research", "owner": "ada", "state": "running",
            "command": ["python", "train.py"], "workdir": "", "env": {}, "cpu_millis": 4000, "memory_bytes": 32 * GIB,
            "gpus": gpu_ids.len(), "gpu_share_milli": 0, "gpu_types": [], "selector": {}, "priority": "normal",
            "retries": 0, "attempt": 0, "max_runtime_s": null, "node": node, "gpu_ids": gpu_ids, "nodes": 1,
            "exit_code": null, "signal": null, "message": null, "submitted_at_us": NOW_US - age_s * 1_000_000,
            "started_at_us": NOW_US - age_s * 1_000_000, "finished_at_us": null, "log_bytes": 0, "waiting": null,
        }))
        .expect("a valid job")
    }

    fn cluster(nodes: Vec<Node>, placed: Vec<Job>) -> Snapshot {
        let mut nodes = nodes;
        for n in &mut nodes {
            for j in placed.iter().filter(|j| j.node.as_deref() == Some(n.name.as_str())) {
                n.allocated_gpus += j.gpu_ids.len() as u32;
                n.allocated_cpu_millis += j.cpu_millis;
                n.allocated_memory_bytes += j.memory_bytes;
                n.running_jobs.push(j.id);
            }
        }
        Snapshot {
            server: "http://ferry:7750".into(),
            at_us: NOW_US,
            hint: None,
            data: Ok(Cluster { nodes, placed, queued: 3, queued_more: false }),
        }
    }

    fn check(snapshot: &Snapshot, size: Option<Size>, expected: Expect) {
        expected.assert_eq(&plain(&frame(snapshot, size)));
    }

    #[test]
    fn marks_allocated_gpus_under_ten_percent_as_idle_and_missing_telemetry_as_no_data() {
        let mut busy = job(7, "gpu-1", &[0, 1], 3_700);
        busy.usage = Some(JobUsage {
            sampled_at_us: NOW_US,
            workers: 1,
            cpu_millis_used: Some(3_250),
            memory_used_bytes: Some(20 * GIB),
            gpu_utilization_percent: Some(62.5),
            gpu_memory_used_bytes: Some(24 * GIB),
        });
        let idle = job(9, "gpu-1", &[2], 120);
        let blind = job(11, "gpu-2", &[0], 30);
        let snapshot = cluster(
            vec![node("gpu-1", 4, Some(vec![gpu(0, 95), gpu(1, 30), gpu(2, 4), gpu(3, 0)])), node("gpu-2", 2, None)],
            vec![idle, blind, busy],
        );
        check(
            &snapshot,
            None,
            expect![[r#"
                ferry top  http://ferry:7750  2026-11-29 17:39:08 UTC
                Nodes 2/2 ready   GPUs 4/6 allocated, util 32%, 1 IDLE   Jobs 3 running, 3 queued
                CPUs 12/64 allocated, 5.5 used   Memory 96GiB/512GiB allocated, 40GiB used

                NODE   POOL  STATE  CPU ALLOC  CPU USED  MEM ALLOC     MEM USED  GPUS (index:state, utilisation, memory used; IDLE = allocated, under 10% busy)
                gpu-1  gpu   ready  8/32       5.5       64GiB/256GiB  40GiB     0:alloc [##########]  95%    12GiB  1:alloc [###.......]  30%    12GiB  2:IDLE  [#.........]   4%    12GiB  3:free  [..........]   0%    12GiB
                gpu-2  gpu   ready  4/32       no data   32GiB/256GiB  no data   0:alloc no data                     1:free  no data

                JOB  USER  TEAM/PROJECT  GPUS  NODE:GPU IDS  GPU UTIL  CPU USED  MEM USED     TIME   NAME
                7    ada   research/llm  2     gpu-1:0,1     63%       3.25/4    20GiB/32GiB  1h01m
                9    ada   research/llm  1     gpu-1:2       4% IDLE   -/4       -/32GiB      2m
                11   ada   research/llm  1     gpu-2:0       -         -/4       -/32GiB      30s
            "#]],
        );
    }

    #[test]
    fn fits_the_terminal_by_cutting_lines_and_wrapping_gpu_cells_under_their_column() {
        // Three GPU jobs and three without GPUs: the GPU jobs come first, and only as many jobs as fit are listed.
        let jobs = (1..=6)
            .map(|i| {
                job(i, "gpu-1", if i % 2 == 0 { &[] } else { &[0, 1, 2][i as usize / 2..][..1] }, 600 - 10 * i as i64)
            })
            .collect();
        let snapshot = cluster(vec![node("gpu-1", 4, Some(vec![gpu(0, 95), gpu(1, 30), gpu(2, 4), gpu(3, 0)]))], jobs);
        check(
            &snapshot,
            Some(Size { cols: 120, rows: 14 }),
            expect![[r#"
                ferry top  http://ferry:7750  2026-11-29 17:39:08 UTC
                Nodes 1/1 ready   GPUs 3/4 allocated, util 32%, 1 IDLE   Jobs 6 running, 3 queued
                CPUs 24/32 allocated, 5.5 used   Memory 192GiB/256GiB allocated, 40GiB used

                NODE   POOL  STATE  CPU ALLOC  CPU USED  MEM ALLOC      MEM USED  GPUS (index:state, utilisation, memory used; IDLE = al
                gpu-1  gpu   ready  24/32      5.5       192GiB/256GiB  40GiB     0:alloc [##########]  95%    12GiB
                                                                                  1:alloc [###.......]  30%    12GiB
                                                                                  2:IDLE  [#.........]   4%    12GiB
                                                                                  3:free  [..........]   0%    12GiB

                JOB  USER  TEAM/PROJECT  GPUS  NODE:GPU IDS  GPU UTIL  CPU USED  MEM USED  TIME  NAME
                1    ada   research/llm  1     gpu-1:0       95%       -/4       -/32GiB   9m
                3    ada   research/llm  1     gpu-1:1       30%       -/4       -/32GiB   9m
                ... 4 more running jobs
            "#]],
        );
    }

    #[test]
    fn shows_why_the_server_could_not_be_asked() {
        let snapshot = Snapshot {
            server: "http://nowhere:1".into(),
            at_us: NOW_US,
            hint: Some("every 2s, q quits".into()),
            data: Err("no Ferry server at http://nowhere:1; start one with `ferry up`".into()),
        };
        check(
            &snapshot,
            Some(Size { cols: 60, rows: 10 }),
            expect![[r#"
                ferry top  http://nowhere:1  2026-11-29 17:39:08 UTC  (every
                error: no Ferry server at http://nowhere:1; start one with `
                ferry up`
            "#]],
        );
    }
}
