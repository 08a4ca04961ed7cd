//! `GET /api/v1/series`: capacity, allocation and measured use over time, and `GET /api/v1/series/metrics`, what is
//! kept.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::Json;
use ferry_api::telemetry::{MetricList, Series, SeriesAnswer, SeriesQuery};
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
    _caller: Caller,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SeriesAnswer>, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    let unit = crate::series::check(&q.metric, &q.by).map_err(ApiError::invalid)?;
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
    // Series are turned into columns as the store hands them over, without an intermediate answer.
    let (shape, series) = tokio::task::spawn_blocking(move || {
        let mut series = Vec::new();
        let shape = store.query_each(&tsdb_query, |id, buckets| {
            series.push(Series {
                id: id.to_string(),
                mean: buckets.iter().map(|b| b.mean).collect(),
                max: buckets.iter().map(|b| b.max).collect(),
            })
        })?;
        Ok::<_, TsdbError>((shape, series))
    })
    .await
    .map_err(|_| ApiError::unavailable())?
    .map_err(query_error)?;
    Ok(Json(SeriesAnswer {
        metric: q.metric,
        by: q.by,
        unit: unit.to_string(),
        start_us: shape.start_us,
        end_us,
        step_s: (shape.step_us / 1_000_000) as u64,
        tier: shape.tier.name().to_string(),
        series,
    }))
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
