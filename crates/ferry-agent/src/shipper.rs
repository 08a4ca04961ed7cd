//! The telemetry shipper: one task that sends the spool's oldest unacknowledged samples to the server in batches and
//! lets the spool forget them only once the server has acknowledged them.
//!
//! It sends once a second while caught up and batch after batch while behind, so an hour of samples kept through a
//! partition goes out in seconds. It ships only while the node is registered. It must never hold a sample the
//! spool does not have, and never let one batch the server refuses stop every later one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::telemetry::{TelemetryBatch, TELEMETRY_SAMPLES_MAX};
use ferry_client::{Client, ClientError};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

use crate::agent::{bounded, classify, Event, Failure};
use crate::backoff::Backoff;
use crate::resources::SAMPLE_INTERVAL;
use crate::rundir::now_us;
use crate::spool::{Batch, Cursor, Spool};

/// How often the spool is looked at while the shipper is caught up: a new sample comes once a second.
const SHIP_INTERVAL: Duration = SAMPLE_INTERVAL;
/// The most bytes of samples one batch carries, well under the server's request limit (4 MiB and a little).
const BATCH_BYTES_MAX: u64 = 2 << 20;

/// What the shipper needs from the agent.
pub(crate) struct ShipperContext {
    pub client: Client,
    pub node: String,
    pub spool: Arc<Mutex<Spool>>,
    /// `Some(n)` while the node is registered, `n` counting registrations; `None` while it registers.
    pub link: watch::Receiver<Option<u64>>,
    /// Where a refusal of the agent's token goes, so the agent stops as it does for any other request.
    pub events: mpsc::Sender<Event>,
}

/// What to do with a batch the server did not take.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The token was refused: the agent stops.
    Token,
    /// The server does not know the node: wait until the agent has registered again.
    NodeUnknown,
    /// The server will never take this batch (it is malformed or too large): drop it, counted, and go on.
    Batch,
    /// The server is down, slow or failing: send it again after a pause.
    Transient,
}

fn refusal(error: &ClientError) -> Refusal {
    match (classify(error), error) {
        (Failure::Refused, _) => Refusal::Token,
        (Failure::Forgotten, _) => Refusal::NodeUnknown,
        (_, ClientError::Api { status: 400 | 413 | 422, .. }) => Refusal::Batch,
        _ => Refusal::Transient,
    }
}

/// Ships until the agent stops (its end of `link` is dropped) or the server refuses the agent's token.
pub(crate) async fn ship(mut ctx: ShipperContext) {
    let mut backoff = Backoff::new();
    let mut last_refusal: Option<String> = None;
    // A registration the server said it does not know: nothing is sent until the agent has registered again.
    let mut forgotten: Option<u64> = None;
    loop {
        // The agent has stopped (a closed channel still holds its last value, which `wait_for` would accept).
        if ctx.link.has_changed().is_err() {
            return;
        }
        let registered = ctx.link.wait_for(|link| link.is_some() && *link != forgotten).await.map(|link| *link);
        let Ok(current) = registered else { return };
        let Some(read) = with_spool(&ctx.spool, |s| {
            s.read(TELEMETRY_SAMPLES_MAX, BATCH_BYTES_MAX).map(|b| (b, s.pending(), s.dropped()))
        })
        .await
        else {
            return;
        };
        let (batch, pending, dropped) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the telemetry spool; trying again");
                sleep(SHIP_INTERVAL).await;
                continue;
            }
        };
        let Batch { samples, unreadable, end } = batch;
        if samples.is_empty() {
            // Nothing new, or only damaged lines, which are passed over so they never hold up what follows.
            if unreadable > 0 && !acknowledge(&ctx.spool, end, unreadable).await {
                return;
            }
            sleep(SHIP_INTERVAL).await;
            continue;
        }
        let sent = samples.len() as u64;
        let request = TelemetryBatch { node: ctx.node.clone(), sent_at_us: now_us(), samples, dropped };
        let result = bounded(&ctx.client, ctx.client.send_telemetry(&request)).await;
        let error = match result {
            Ok(_) => {
                backoff.reset();
                if !acknowledge(&ctx.spool, end, unreadable).await {
                    return;
                }
                if pending <= sent {
                    sleep(SHIP_INTERVAL).await;
                }
                continue;
            }
            Err(error) => error,
        };
        match refusal(&error) {
            Refusal::Token => {
                let _ = ctx.events.send(Event::Refused(error)).await;
                return;
            }
            Refusal::NodeUnknown => {
                // The agent's next report hears the same and registers again; the batch goes out after that.
                tracing::debug!(error = %error, "the server does not know this node; telemetry waits for registration");
                forgotten = current;
            }
            Refusal::Batch => {
                let message = error.to_string();
                if last_refusal.as_ref() != Some(&message) {
                    tracing::warn!(
                        samples = sent,
                        error = %message,
                        "the server refused a telemetry batch; dropping it"
                    );
                    last_refusal = Some(message);
                }
                if !acknowledge(&ctx.spool, end, sent + unreadable).await {
                    return;
                }
            }
            Refusal::Transient => sleep(backoff.next_delay()).await,
        }
    }
}

/// Lets the spool forget everything before `end`, counting `dropped` of those samples as lost. `false` when the
/// runtime is shutting down.
async fn acknowledge(spool: &Arc<Mutex<Spool>>, end: Cursor, dropped: u64) -> bool {
    let done = with_spool(spool, move |s| {
        s.count_dropped(dropped);
        s.acknowledge(end)
    });
    match done.await {
        None => false,
        Some(Ok(())) => true,
        Some(Err(e)) => {
            // The spool moved on in memory; only an agent restarted now would send these samples again.
            tracing::warn!(error = %e, "cannot record the server's acknowledgement in the telemetry spool");
            true
        }
    }
}

/// Runs `f` on the spool away from the async threads, since it reads and writes files. `None` when the runtime is
/// shutting down.
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> T + Send + 'static,
) -> Option<T> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || f(&mut spool.lock().expect("no spool user panics"))).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::{Json, Router};
    use ferry_api::nodes::NodeUsage;
    use ferry_api::telemetry::{TelemetryAck, TelemetrySample};
    use ferry_api::{ErrorBody, ErrorCode};

    /// The sample the stand-in server refuses as malformed, with the whole batch that carries it.
    const POISON_US: i64 = 1_000_700;

    /// Batches the stand-in server took or refused: (first sample's time, samples, taken).
    type Seen = Arc<Mutex<Vec<(i64, usize, bool)>>>;

    async fn telemetry(
        State(seen): State<Seen>,
        Json(batch): Json<TelemetryBatch>,
    ) -> Result<Json<TelemetryAck>, (StatusCode, Json<ErrorBody>)> {
        let poisoned = batch.samples.iter().any(|s| s.node.sampled_at_us == POISON_US);
        let first = batch.samples.first().map_or(0, |s| s.node.sampled_at_us);
        seen.lock().unwrap().push((first, batch.samples.len(), !poisoned));
        if poisoned {
            let body = ErrorBody { code: ErrorCode::InvalidRequest, message: "sample 100 of the batch: bad".into() };
            return Err((StatusCode::BAD_REQUEST, Json(body)));
        }
        Ok(Json(TelemetryAck { accepted: batch.samples.len() as u64, too_old: 0 }))
    }

    /// An hour of samples kept through a partition goes out in full batches, one after another; a batch the server
    /// refuses as malformed is dropped and counted, and the rest still go.
    #[tokio::test]
    async fn a_backlog_goes_in_full_batches_past_a_refused_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 64 << 20).unwrap();
        for i in 0..3600 {
            let node = NodeUsage { sampled_at_us: 1_000_000 + i, ..NodeUsage::default() };
            spool.append(&TelemetrySample { node, runs: Vec::new() }).unwrap();
        }
        let spool = Arc::new(Mutex::new(spool));
        let seen = Seen::default();
        let app = Router::new().route("/api/v1/agent/telemetry", post(telemetry)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (link_tx, link) = watch::channel(Some(1));
        let (events, _events_rx) = mpsc::channel(1);
        let client = Client::new(&url, Some("t".into()));
        let shipper =
            tokio::spawn(ship(ShipperContext { client, node: "n".into(), spool: spool.clone(), link, events }));

        let drained = async {
            while spool.lock().unwrap().pending() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), drained).await.expect("the backlog drains");
        drop(link_tx);
        shipper.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let expected: Vec<(i64, usize, bool)> = (0..6).map(|b| (1_000_000 + 600 * b, 600, b != 1)).collect();
        assert_eq!(seen, expected);
        assert_eq!(spool.lock().unwrap().dropped(), 600);
    }

    fn api(status: u16, code: ErrorCode) -> ClientError {
        ClientError::Api { status, body: ErrorBody { code, message: "m".into() } }
    }

    #[test]
    fn a_refused_batch_is_dropped_and_only_the_token_stops_the_shipper() {
        assert_eq!(refusal(&api(400, ErrorCode::InvalidRequest)), Refusal::Batch);
        assert_eq!(refusal(&api(413, ErrorCode::InvalidRequest)), Refusal::Batch);
        assert_eq!(refusal(&api(401, ErrorCode::Unauthenticated)), Refusal::Token);
        assert_eq!(refusal(&api(403, ErrorCode::Forbidden)), Refusal::Token);
        assert_eq!(refusal(&api(404, ErrorCode::NotFound)), Refusal::NodeUnknown);
        assert_eq!(refusal(&api(503, ErrorCode::Unavailable)), Refusal::Transient);
        assert_eq!(refusal(&ClientError::Unreachable { server: "s".into() }), Refusal::Transient);
    }
}
