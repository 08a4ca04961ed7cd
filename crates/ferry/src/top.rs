//! `ferry top`: a live view of the whole installation, its nodes, every GPU and the running jobs, redrawn in place
//! like `htop`. It only reads the API; it changes nothing.
//!
//! The live loop waits on one closed set of events (a fetched snapshot, a key, a resize, a signal to stop) and owns
//! the screen; fetching runs in its own task so that a slow server never delays `q`. Without a terminal, or with
//! `--once`, one frame is printed as plain text.

mod frame;
mod terminal;

use std::io::{IsTerminal, Read};
use std::time::Duration;

use clap::Args;
use ferry_api::jobs::{Job, JobState};
use ferry_client::{Client, ClientError, JobQuery};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::exit::{self, CliError};
use crate::format;
use crate::Global;
use frame::{Cluster, Snapshot};

/// The most jobs of one state asked for in one refresh; a larger queue shows as "N+ queued".
const JOBS_PER_STATE_MAX: u32 = 2_000;
/// The shortest refresh interval: faster would load the server for no one's benefit.
const INTERVAL_MIN: Duration = Duration::from_millis(250);
/// How long one refresh may take before the frame says the server did not answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting for the live loop; keys beyond these are typed faster than anyone reads.
const EVENTS_MAX: usize = 64;

#[derive(Args)]
pub struct TopArgs {
    /// Time between refreshes, such as 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
    /// Print one frame as plain text and exit (what `ferry top` does anyway when stdout is not a terminal).
    #[arg(long)]
    once: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval =
        humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration such as 2s: {e}"))?;
    if interval < INTERVAL_MIN {
        return Err(format!("the interval must be at least {}", humantime::format_duration(INTERVAL_MIN)));
    }
    Ok(interval)
}

pub async fn top(g: &Global, args: TopArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    let server = g.server_url();
    if args.once || !std::io::stdout().is_terminal() {
        let cluster = fetch(&client).await?;
        let snapshot = Snapshot { server, at_us: format::now_us(), hint: None, data: Ok(cluster) };
        // A terminal that asked for --once gets lines that fit its width, all of them, as it scrolls; a pipe gets
        // every line uncut.
        let size = std::io::stdout().is_terminal().then(|| frame::Size { rows: usize::MAX, ..terminal::size() });
        print!("{}", frame::plain(&frame::frame(&snapshot, size)));
        return Ok(0);
    }
    live(client, server, args.interval).await
}

/// Everything that reaches the live loop.
enum Event {
    Fetched(Result<Cluster, String>),
    Key(u8),
    Resized,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Stop,
}

async fn live(client: Client, server: String, interval: Duration) -> Result<i32, CliError> {
    let (tx, mut events) = mpsc::channel(EVENTS_MAX);
    // Signals first: once they are caught, Ctrl-C can no longer kill the process with the screen left behind.
    listen_for_signals(tx.clone())?;
    let mut screen = terminal::Screen::enter()
        .map_err(|e| CliError::new(exit::INTERNAL, format!("cannot take over the terminal: {e}")))?;
    let fetcher = tokio::spawn(poll(client, interval, tx.clone()));
    read_keys(tx);
    let hint = format!("every {}, q quits", humantime::format_duration(interval));
    let mut snapshot =
        Snapshot { server, at_us: format::now_us(), hint: Some(hint), data: Err("asking the server...".into()) };
    let result = loop {
        match events.recv().await {
            Some(Event::Fetched(data)) => {
                snapshot.at_us = format::now_us();
                snapshot.data = data;
            }
            Some(Event::Key(b'q' | b'Q')) | Some(Event::Stop) | None => break Ok(0),
            Some(Event::Key(_)) | Some(Event::Resized) => {}
        }
        if let Err(e) = screen.draw(&frame::frame(&snapshot, Some(terminal::size()))) {
            break Err(CliError::new(exit::INTERNAL, format!("cannot draw on the terminal: {e}")));
        }
    };
    fetcher.abort();
    drop(screen);
    result
}

/// Fetches a snapshot every `interval`, for as long as the live loop listens; an unreachable server is shown and
/// asked again at the next refresh.
async fn poll(client: Client, interval: Duration, tx: mpsc::Sender<Event>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let data = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&client)).await {
            Ok(Ok(cluster)) => Ok(cluster),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the server did not answer within {}", humantime::format_duration(FETCH_TIMEOUT))),
        };
        if tx.send(Event::Fetched(data)).await.is_err() {
            return;
        }
    }
}

/// Reads keys on a thread of its own: stdin has no portable non-blocking read, and the process exits without
/// waiting for this thread.
fn read_keys(tx: mpsc::Sender<Event>) {
    if !std::io::stdin().is_terminal() {
        return;
    }
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut byte = [0u8; 1];
        while let Ok(1) = stdin.read(&mut byte) {
            if tx.blocking_send(Event::Key(byte[0])).is_err() {
                return;
            }
        }
    });
}

fn listen_for_signals(tx: mpsc::Sender<Event>) -> Result<(), CliError> {
    let cannot = |e: std::io::Error| CliError::new(exit::INTERNAL, format!("cannot listen for signals: {e}"));
    let mut stops = Vec::new();
    for kind in [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()] {
        stops.push(signal(kind).map_err(cannot)?);
    }
    let mut resizes = signal(SignalKind::window_change()).map_err(cannot)?;
    tokio::spawn(async move {
        let stop = futures_util::future::select_all(stops.iter_mut().map(|s| Box::pin(s.recv())));
        tokio::select! {
            _ = stop => { let _ = tx.send(Event::Stop).await; }
            _ = async { while resizes.recv().await.is_some() { if tx.send(Event::Resized).await.is_err() { break; } } } => {}
        }
    });
    Ok(())
}

/// Asks the server for nodes and the jobs that are placed or waiting, all at once.
async fn fetch(client: &Client) -> Result<Cluster, ClientError> {
    let query = |state: JobState| JobQuery {
        state: Some(state.name().to_string()),
        all: false,
        limit: Some(JOBS_PER_STATE_MAX),
        ..JobQuery::default()
    };
    let (running, starting, queued) = (query(JobState::Running), query(JobState::Starting), query(JobState::Queued));
    let (nodes, running, starting, queued) =
        tokio::try_join!(client.nodes(), client.jobs(&running), client.jobs(&starting), client.jobs(&queued))?;
    let placed: Vec<Job> = running.jobs.into_iter().chain(starting.jobs).collect();
    let queued_more = queued.jobs.len() >= JOBS_PER_STATE_MAX as usize;
    Ok(Cluster { nodes: nodes.nodes, placed, queued: queued.jobs.len(), queued_more })
}
