//! The agent's side of one run: starting its supervisor, watching its files for the start and the end, shipping
//! its output to the server, and passing on a stop request.
//!
//! One task per run does all of it and tells the agent's loop what changed. The task ships every byte of output
//! before it reports the end, so the server has the whole log when it records the result. It must never hold a
//! whole log in memory (it reads one chunk at a time), and never decide anything about other runs.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use ferry_api::agent::{RunEnd, RunRef, RunStatus, LOG_CHUNK_BYTES_MAX};
use ferry_client::{Client, ClientError};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Instant};

use crate::agent::{bounded, classify, Event, Failure};
use crate::backoff::Backoff;
use crate::rundir::{self, Exit, RunDir};

/// The most output one upload carries: well under the server's limit, and small enough to hold in memory.
const LOG_CHUNK_BYTES: usize = 1 << 20;
const _: () = assert!(LOG_CHUNK_BYTES <= LOG_CHUNK_BYTES_MAX);
/// How often new output is shipped while a run is going, so `ferry logs --follow` feels live.
const LOG_SHIP_INTERVAL: Duration = Duration::from_millis(200);
/// How many chunks one round ships while the run is going, so a very chatty job cannot delay noticing its end.
const LOG_CHUNKS_PER_ROUND_MAX: usize = 8;
/// How often the files are looked at while waiting for the start (or for a supervisor to be ready for a stop):
/// the supervisor writes them within milliseconds.
const START_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long the start is watched that closely before falling back to the ordinary pace.
const START_POLL_FOR: Duration = Duration::from_secs(2);
/// How often a run whose supervisor the agent did not start itself is looked at.
const ADOPTED_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long an adopted run may lack a supervisor record before the supervisor is taken to have died unborn.
const SHIM_RECORD_WAIT: Duration = Duration::from_secs(5);
/// How many times in a row the server may answer "not found" to the final log upload before the agent gives up
/// shipping that run's output and reports its end anyway (about half a minute with the backoff's cap).
const LOG_NOT_FOUND_TRIES_MAX: u32 = 20;
/// The argument that makes the `ferry` binary a run's supervisor.
pub(crate) const SHIM_SUBCOMMAND: &str = "__shim";
/// What the agent reports for a run whose supervisor vanished without recording the end.
pub(crate) const SUPERVISOR_DIED: &str = "the run's supervisor died; its exit status is unknown";

/// What every run task needs from the agent.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub client: Client,
    pub node: String,
    pub events: mpsc::Sender<Event>,
}

/// How the task learns that the supervisor is gone.
pub(crate) enum Supervisor {
    /// Started by this agent: awaiting it is exact and immediate.
    Child(tokio::process::Child),
    /// Found in the data directory after a restart: not this agent's child, so it is polled.
    Adopted,
}

/// Starts `ferry __shim <run-dir>` in a process group of its own, so that neither the agent's death nor a Ctrl-C
/// in the agent's terminal (which signals only the terminal's foreground group) reaches the run. It writes its own
/// notes to `shim.log` when it has any. No `pre_exec` hook is used, so the standard library can start it with `posix_spawn` instead of
/// copying the agent's address space with `fork`, which matters when hundreds of runs start each second.
pub(crate) fn spawn_supervisor(self_exe: &Path, dir: &RunDir) -> io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(self_exe);
    command
        .arg(SHIM_SUBCOMMAND)
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    command.spawn()
}

/// Follows one run until its end is shipped and reported. `fresh` runs were just started, so the server holds
/// none of their output yet; adopted ones first ask the server how much it has.
pub(crate) async fn track(
    ctx: RunContext,
    run: RunRef,
    dir: RunDir,
    supervisor: Supervisor,
    stop: watch::Receiver<bool>,
) {
    let fresh = matches!(supervisor, Supervisor::Child(_));
    let mut tracker = Tracker {
        shipper: LogShipper::new(dir.file(rundir::OUTPUT_FILE), fresh),
        ctx,
        run,
        dir,
        stop,
        stop_open: true,
        stop_sent: false,
        shipped_at: None,
    };
    if let Some(exit) = tracker.follow(supervisor).await {
        tracker.finish(exit).await;
    }
}

struct Tracker {
    ctx: RunContext,
    run: RunRef,
    dir: RunDir,
    shipper: LogShipper,
    stop: watch::Receiver<bool>,
    /// Whether the agent can still send a stop request.
    stop_open: bool,
    stop_sent: bool,
    /// When output was last shipped.
    shipped_at: Option<Instant>,
}

impl Tracker {
    /// Watches the run until its supervisor is gone and returns how it ended; `None` if the agent is going away.
    async fn follow(&mut self, mut supervisor: Supervisor) -> Option<Exit> {
        let watched_since = Instant::now();
        let mut running_reported = false;
        loop {
            if !running_reported {
                if let Ok(Some(started)) = self.dir.read_started() {
                    let status = RunStatus::Running { pid: started.pid, started_at_us: started.started_at_us };
                    self.tell(Event::RunChanged(self.run, status)).await?;
                    running_reported = true;
                }
            }
            self.deliver_stop();
            self.ship_round().await?;
            let starting = !running_reported && watched_since.elapsed() < START_POLL_FOR;
            let stop_waiting = *self.stop.borrow() && !self.stop_sent;
            let pause = match &supervisor {
                _ if starting || stop_waiting => START_POLL_INTERVAL,
                Supervisor::Child(_) => LOG_SHIP_INTERVAL,
                Supervisor::Adopted => ADOPTED_POLL_INTERVAL,
            };
            let ended = match &mut supervisor {
                Supervisor::Child(child) => tokio::select! {
                    _ = child.wait() => true,
                    _ = self.pause(pause) => false,
                },
                Supervisor::Adopted => {
                    self.pause(pause).await;
                    self.adopted_supervisor_gone(watched_since)
                }
            };
            if ended {
                return Some(self.recorded_exit().await);
            }
        }
    }

    /// Waits `pause`, or less if a stop request comes in meanwhile.
    async fn pause(&mut self, pause: Duration) {
        tokio::select! {
            _ = sleep(pause) => {}
            changed = self.stop.changed(), if self.stop_open => {
                // The agent dropped its end: no stop can come any more.
                self.stop_open = changed.is_ok();
            }
        }
    }

    /// Whether an adopted run's supervisor has finished (its exit record exists) or is gone without one.
    fn adopted_supervisor_gone(&self, watched_since: Instant) -> bool {
        if self.dir.file(rundir::EXIT_FILE).exists() {
            return true;
        }
        match self.dir.read_shim() {
            Ok(Some(identity)) => !identity.is_alive(),
            _ => watched_since.elapsed() >= SHIM_RECORD_WAIT,
        }
    }

    /// The run's end as its supervisor wrote it, or, if the supervisor died without writing it, an end that says
    /// so (recorded, so a later agent reports the same).
    async fn recorded_exit(&self) -> Exit {
        if let Ok(Some(exit)) = self.dir.read_exit() {
            return exit;
        }
        tracing::warn!(job = self.run.job_id, attempt = self.run.attempt, dir = %self.dir.path().display(),
            "the run's supervisor died without recording the end; see shim.log in the run directory");
        self.kill_orphaned_job();
        // The dead supervisor could not remove the run's control group; removing it may wait a moment for the
        // killed processes to leave, so it runs off the async threads.
        let group = crate::shim::cgroup_name(self.run, self.dir.path());
        let removed = tokio::task::spawn_blocking(move || crate::cgroup::remove_leftover(&group)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %e, "cannot remove the run's control group");
        }
        let exit = Exit {
            end: RunEnd::Exited,
            exit_code: None,
            signal: None,
            finished_at_us: rundir::now_us(),
            message: Some(SUPERVISOR_DIED.to_string()),
        };
        if let Err(e) = rundir::write_json_atomic(&self.dir.file(rundir::EXIT_FILE), &exit) {
            tracing::warn!(error = %e, "cannot record the run's end");
        }
        exit
    }

    /// Kills the job's process group when its supervisor died, so the job does not hold its GPUs unseen. The group
    /// is only killed if its leader provably is this run's job: a group leader whose environment names this run.
    fn kill_orphaned_job(&self) {
        let Ok(Some(started)) = self.dir.read_started() else { return };
        let leader = Pid::from_raw(started.pid as i32);
        let leads_its_group = nix::unistd::getpgid(Some(leader)).is_ok_and(|group| group == leader);
        if leads_its_group && environment_names_run(started.pid, self.run) {
            let _ = killpg(leader, Signal::SIGKILL);
        }
    }

    /// Passes a stop request to the supervisor, once it has recorded itself (which it does only after its signal
    /// handler is in place, so the SIGTERM is never taken as a plain kill).
    fn deliver_stop(&mut self) {
        if self.stop_sent || !*self.stop.borrow() {
            return;
        }
        match self.dir.read_shim() {
            Ok(Some(identity)) if identity.is_alive() => {
                let _ = kill(Pid::from_raw(identity.pid as i32), Signal::SIGTERM);
                self.stop_sent = true;
            }
            // A supervisor that is gone needs no stop; one that has not recorded itself yet is tried again soon.
            Ok(Some(_)) => self.stop_sent = true,
            _ => {}
        }
    }

    /// Ships what output there is while the run goes on. Failures wait for the next round, except a refused
    /// token, which ends the agent. Returns `None` when the agent is going away.
    async fn ship_round(&mut self) -> Option<()> {
        // The loop turns faster while it waits for the start; output still goes out at the ordinary pace.
        if self.shipped_at.is_some_and(|at| at.elapsed() < LOG_SHIP_INTERVAL) {
            return Some(());
        }
        self.shipped_at = Some(Instant::now());
        match self.shipper.ship(&self.ctx, self.run, LOG_CHUNKS_PER_ROUND_MAX).await {
            Ok(_) => Some(()),
            Err(e) => match classify(&e) {
                Failure::Refused => self.tell(Event::Refused(e)).await,
                _ => {
                    tracing::debug!(job = self.run.job_id, error = %e, "cannot ship output now; trying again soon");
                    Some(())
                }
            },
        }
    }

    /// Ships all remaining output, then reports the end.
    async fn finish(&mut self, exit: Exit) {
        let mut backoff = Backoff::new();
        let mut not_found_tries = 0;
        loop {
            let error = match self.shipper.ship(&self.ctx, self.run, usize::MAX).await {
                Ok(true) => break,
                Ok(false) => {
                    // The server took nothing this time; ask again after a pause rather than at once.
                    sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(e) => e,
            };
            match classify(&error) {
                Failure::Refused => {
                    let _ = self.tell(Event::Refused(error)).await;
                    return;
                }
                Failure::Forgotten => not_found_tries += 1,
                Failure::Transient => not_found_tries = 0,
            }
            if not_found_tries >= LOG_NOT_FOUND_TRIES_MAX {
                tracing::warn!(job = self.run.job_id, attempt = self.run.attempt, error = %error,
                    "the server keeps refusing this run's output; reporting its end without the rest");
                break;
            }
            sleep(backoff.next_delay()).await;
        }
        let status = RunStatus::Finished {
            end: exit.end,
            exit_code: exit.exit_code,
            signal: exit.signal,
            finished_at_us: exit.finished_at_us,
            log_bytes: self.dir.output_bytes(),
            message: exit.message,
            started_at_us: self.dir.read_started().ok().flatten().map(|s| s.started_at_us),
        };
        let _ = self.tell(Event::RunChanged(self.run, status)).await;
    }

    /// Sends an event to the agent's loop; `None` when the loop is gone (the agent is shutting down).
    async fn tell(&self, event: Event) -> Option<()> {
        self.ctx.events.send(event).await.ok()
    }
}

/// Ships a run's `output.log` to the server from the offset the server says it holds.
struct LogShipper {
    path: PathBuf,
    /// How many bytes the server holds; `None` until it has said.
    offset: Option<u64>,
}

impl LogShipper {
    fn new(path: PathBuf, fresh: bool) -> LogShipper {
        LogShipper { path, offset: fresh.then_some(0) }
    }

    /// Uploads up to `chunks_max` chunks of new output; `Ok(true)` once the server holds the whole file as it is.
    async fn ship(&mut self, ctx: &RunContext, run: RunRef, chunks_max: usize) -> Result<bool, ClientError> {
        let mut offset = match self.offset {
            Some(offset) => offset,
            // An empty upload asks the server how much it already has, without sending anything twice.
            None => self.upload(ctx, run, 0, Bytes::new()).await?,
        };
        // A plain stat answers the common case, nothing new, without a trip through the blocking thread pool.
        if std::fs::metadata(&self.path).map(|m| m.len() <= offset).unwrap_or(true) {
            self.offset = Some(offset);
            return Ok(true);
        }
        let mut file = match tokio::fs::File::open(&self.path).await {
            Ok(file) => file,
            // The supervisor creates the file as the job starts; until then there is nothing to ship.
            Err(_) => return Ok(true),
        };
        for _ in 0..chunks_max {
            let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            if offset >= size {
                return Ok(true);
            }
            let chunk = read_chunk(&mut file, offset).await.map_err(|e| ClientError::Transport {
                server: ctx.client.server().to_string(),
                detail: format!("cannot read {}: {e}", self.path.display()),
            })?;
            let sent_to = offset + chunk.len() as u64;
            let stored = self.upload(ctx, run, offset, chunk).await?;
            if stored < sent_to && stored <= offset {
                // The server took nothing; trying again at once would spin.
                return Ok(false);
            }
            offset = stored;
        }
        Ok(false)
    }

    async fn upload(&mut self, ctx: &RunContext, run: RunRef, offset: u64, chunk: Bytes) -> Result<u64, ClientError> {
        let ack = bounded(&ctx.client, ctx.client.upload_log(&ctx.node, run, offset, chunk)).await?;
        self.offset = Some(ack.stored);
        Ok(ack.stored)
    }
}

/// Whether a process's environment carries the variables the shim gives this run's job, which a process that
/// merely reuses the pid would not have.
fn environment_names_run(pid: u32, run: RunRef) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let job = format!("FERRY_JOB_ID={}", run.job_id);
    let attempt = format!("FERRY_ATTEMPT={}", run.attempt);
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    vars.contains(&job.as_bytes()) && vars.contains(&attempt.as_bytes())
}

/// Reads up to one chunk of the file from `offset`.
async fn read_chunk(file: &mut tokio::fs::File, offset: u64) -> io::Result<Bytes> {
    file.seek(SeekFrom::Start(offset)).await?;
    let mut chunk = Vec::with_capacity(LOG_CHUNK_BYTES);
    (&mut *file).take(LOG_CHUNK_BYTES as u64).read_to_end(&mut chunk).await?;
    Ok(Bytes::from(chunk))
}
