//! `GET /api/v1/series`: capacity, allocation and measured use over time, and `GET /api/v1/series/metrics`, what is
//! kept.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::telemetry::{MetricList, SeriesAnswer, SeriesQuery};
use ferry_api::ErrorBody;
use ferry_tsdb::{Tier, TsdbError};

use crate::auth::Caller;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// About how many points a query gets when it names no step.
const POINTS_DEFAULT: i64 = 300;
/// The range a query covers when it names no start: the last hour.
const RANGE_DEFAULT_US: i64 = 3600 * 1_000_000;

#[utoipa::path(get, path = "/api/v1/series/metrics", responses((status = 200, body = MetricList)))]
pub async fn metrics(State(state): State<AppState>, _caller: Caller) -> Json<MetricList> {
    let retention = &state.series.config().retention;
    let tiers = [Tier::Raw, Tier::Minute, Tier::Hour]
        .into_iter()
        .map(|tier| {
            let step = short(Duration::from_micros(tier.step_us() as u64));
            (tier.name().to_string(), format!("{step} for {}", short(retention.of(tier))))
        })
        .collect();
    Json(MetricList { metrics: crate::series::catalogue(), tiers })
}

#[utoipa::path(get, path = "/api/v1/series", params(SeriesQuery),
    responses((status = 200, body = SeriesAnswer), (status = 400, body = ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    let unit = crate::series::check(&q.metric, &q.by).map_err(ApiError::invalid)?;
    let shown = Shown::for_query(&state, &caller, &q.by, q.id.as_deref()).await?;
    let now = now_us();
    let end_us = match &q.end {
        Some(text) => parse_time(text, now, "end")?,
        None => now,
    };
    let start_us = match &q.start {
        Some(text) => parse_time(text, now, "start")?,
        None => end_us - RANGE_DEFAULT_US,
    };
    if start_us >= end_us {
        return Err(ApiError::invalid("`start` must come before `end`"));
    }
    let step_us = match &q.step {
        Some(text) => {
            let step = parse_duration(text, "step")?;
            if step.is_zero() {
                return Err(ApiError::invalid("`step` must be longer than 0, e.g. `10s`, `1m` or `1h`"));
            }
            i64::try_from(step.as_micros()).unwrap_or(i64::MAX)
        }
        None => ((end_us - start_us) / POINTS_DEFAULT).max(1),
    };
    let tsdb_query =
        ferry_tsdb::Query { metric: q.metric.clone(), kind: q.by.clone(), id: q.id.clone(), start_us, end_us, step_us };
    let store = state.series.clone();
    let (metric, by) = (q.metric, q.by);
    // The JSON is written as the store hands each series over: 1,000 GPUs over 90 days are 4 million numbers, and
    // building them into an answer first would cost more than the query itself. The text is a `SeriesAnswer`.
    let body = tokio::task::spawn_blocking(move || {
        let mut body: Vec<u8> = Vec::with_capacity(64 * 1024);
        body.extend_from_slice(b"{\"series\":[");
        let mut first = true;
        let shape = store.query_each(&tsdb_query, |id, buckets| {
            if !shown.allows(&by, id) {
                return;
            }
            if !std::mem::take(&mut first) {
                body.push(b',');
            }
            write_series(&mut body, id, buckets);
        })?;
        let rest = serde_json::json!({
            "metric": metric,
            "by": by,
            "unit": unit,
            "start_us": shape.start_us,
            "end_us": end_us,
            "step_s": shape.step_us / 1_000_000,
            "tier": shape.tier.name(),
        });
        let rest = rest.to_string();
        body.extend_from_slice(b"],");
        body.extend_from_slice(&rest.as_bytes()[1..]);
        Ok::<_, TsdbError>(body)
    })
    .await
    .map_err(|_| ApiError::unavailable())?
    .map_err(query_error)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Which series of an owner's kind (user, team, project, job) a caller may read: an installation admin all; anyone
/// else its own user's, its teams' and their projects', and a job's it may see when it names the job. Series of the
/// cluster (nodes, GPUs, pools, everything) are everyone's.
#[derive(Clone)]
pub(crate) struct Shown {
    caller: Option<std::sync::Arc<crate::auth::UserCaller>>,
}

impl Shown {
    pub(crate) async fn for_query(
        state: &AppState,
        caller: &Caller,
        kind: &str,
        id: Option<&str>,
    ) -> Result<Shown, ApiError> {
        if caller.admin {
            return Ok(Shown { caller: None });
        }
        if kind == "job" {
            let job = id.and_then(|i| i.parse::<u64>().ok()).ok_or_else(|| {
                ApiError::new(
                    ferry_api::ErrorCode::Forbidden,
                    "series by job name one job (id=JOB): only installation admins read every job's at once",
                )
            })?;
            crate::routes::jobs::load(state, caller, job).await?;
        }
        Ok(Shown { caller: Some(caller.0.clone()) })
    }

    pub(crate) fn allows(&self, kind: &str, id: &str) -> bool {
        let Some(caller) = &self.caller else { return true };
        match kind {
            "user" => id == caller.name,
            "team" => caller.sees_team(Some(id)),
            "project" => id.split_once('/').is_some_and(|(team, _)| caller.sees_team(Some(team))),
            // A job's series were checked whole in `for_query`; the cluster's are everyone's.
            _ => true,
        }
    }
}

/// One series as `{"id":...,"mean":[...],"max":[...]}`, `null` where a step has no data.
fn write_series(out: &mut Vec<u8>, id: &str, buckets: &[ferry_tsdb::Bucket]) {
    out.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut *out, id).expect("a string always serialises");
    for (name, pick) in [("mean", 0), ("max", 1)] {
        out.extend_from_slice(format!(",\"{name}\":[").as_bytes());
        for (i, bucket) in buckets.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match if pick == 0 { bucket.mean } else { bucket.max } {
                Some(value) if value.is_finite() => {
                    serde_json::to_writer(&mut *out, &value).expect("a finite number always serialises")
                }
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// A duration in its largest whole unit: `10s`, `1m`, `90d`.
fn short(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(crate) fn query_error(e: TsdbError) -> ApiError {
    match e {
        TsdbError::TooManyPoints { .. } | TsdbError::BadQuery { .. } => ApiError::invalid(e.to_string()),
        other => {
            tracing::error!(error = %other, "time-series query failed");
            ApiError::new(
                ferry_api::ErrorCode::Unavailable,
                "the server could not read its time series; retry, and see the server log if it persists",
            )
        }
    }
}

/// An RFC 3339 time (`2026-11-29T10:00:00Z`) or a duration back from now (`90d`, `1h`).
pub(crate) fn parse_time(text: &str, now_us: i64, what: &str) -> Result<i64, ApiError> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        return Ok(i64::try_from(since.as_micros()).unwrap_or(i64::MAX));
    }
    match humantime::parse_duration(text) {
        Ok(back) => Ok(now_us.saturating_sub(i64::try_from(back.as_micros()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::invalid(format!(
            "`{what}={text}` is neither a time like `2026-11-29T10:00:00Z` nor a duration back from now like `90d`"
        ))),
    }
}

fn parse_duration(text: &str, what: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text)
        .map_err(|_| ApiError::invalid(format!("`{what}={text}` is not a duration; write e.g. `10s`, `1m` or `1h`")))
}

#[cfg(test)]
mod tests {
    use ferry_api::telemetry::Series;
    use ferry_tsdb::Bucket;

    use super::*;

    #[test]
    fn a_written_series_reads_back_as_the_wire_type_with_gaps_as_null() {
        let buckets = [
            Bucket { t_us: 0, mean: Some(37.5), max: Some(90.0), count: 2 },
            Bucket { t_us: 10, mean: None, max: None, count: 0 },
            Bucket { t_us: 20, mean: Some(0.1 + 0.2), max: Some(f64::NAN), count: 1 },
        ];
        let mut out = Vec::new();
        write_series(&mut out, "node-\"a\"/0", &buckets);
        let series: Series = serde_json::from_slice(&out).unwrap();
        assert_eq!(series.id, "node-\"a\"/0");
        assert_eq!(series.mean, [Some(37.5), None, Some(0.1 + 0.2)]);
        assert_eq!(series.max, [Some(90.0), None, None]);
    }

    #[test]
    fn durations_are_named_in_their_largest_whole_unit() {
        let secs = Duration::from_secs;
        assert_eq!(
            [short(secs(10)), short(secs(60)), short(secs(3600)), short(secs(90 * 86_400))],
            ["10s", "1m", "1h", "90d"]
        );
    }
}
