//! `GET /api/v1/usage`: GPU-hours and CPU-hours allocated against those measured in use, per user, project, team
//! or pool over a period, as JSON or CSV (chargeback's raw material).
//!
//! Hours come from the time series that the server's tick records every `series::TICK` (10 s): each sample stands
//! for one tick of time, so the hours are the sum of the samples in the period times the tick, exact whatever the
//! step the store reads at. Owners that hold nothing get zeros every tick; a time without samples (the server was
//! down, or nothing was measured) adds nothing, and `*_used` is `null` for an id nothing was measured for.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::routes::series::{parse_time, query_error};
use crate::series::TICK;
use crate::state::AppState;

const HOUR_US: i64 = 3600 * 1_000_000;
const KINDS: [&str; 5] = ["user", "project", "team", "pool", "all"];

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// user, project, team, pool or all.
    by: String,
    /// An RFC 3339 time or a duration back from now (`30d`); 30 days ago when absent.
    #[serde(default)]
    start: Option<String>,
    /// Like `start`; now when absent.
    #[serde(default)]
    end: Option<String>,
    /// `json` (the default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

/// One owner's hours over the period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub id: String,
    pub gpu_hours_allocated: f64,
    /// Measured: the sum of utilisation over the GPUs held; `null` where nothing was measured.
    pub gpu_hours_used: Option<f64>,
    pub cpu_hours_allocated: f64,
    pub cpu_hours_used: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub by: String,
    pub start_us: i64,
    pub end_us: i64,
    /// The length of the steps the hours were summed over, in seconds.
    pub step_s: u64,
    /// Rows by GPU-hours allocated, largest first.
    pub rows: Vec<UsageRow>,
}

#[utoipa::path(get, path = "/api/v1/usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    if !KINDS.contains(&q.by.as_str()) {
        return Err(ApiError::invalid(format!("`by={}` is not known; use one of {}", q.by, KINDS.join(", "))));
    }
    let shown = crate::routes::series::Shown::for_query(&state, &caller, &q.by, None).await?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::invalid(format!("`format={other}` is not known; use json or csv"))),
    };
    let now = now_us();
    let end_us = q.end.as_deref().map(|t| parse_time(t, now, "end")).transpose()?.unwrap_or(now);
    let start_us =
        q.start.as_deref().map(|t| parse_time(t, now, "start")).transpose()?.unwrap_or(end_us - 720 * HOUR_US);
    if start_us >= end_us {
        return Err(ApiError::invalid("`start` must come before `end`"));
    }
    // Hour steps for long periods, minutes for a few hours, 10 s for less.
    let step_us = match end_us - start_us {
        range if range >= 48 * HOUR_US => HOUR_US,
        range if range >= 2 * HOUR_US => 60 * 1_000_000,
        _ => 10 * 1_000_000,
    };
    let store = state.series.clone();
    let kind = q.by.clone();
    let (rows, step_us) = tokio::task::spawn_blocking(move || {
        let mut rows: BTreeMap<String, UsageRow> = BTreeMap::new();
        let mut step = step_us;
        for metric in ["gpu_allocated", "gpu_used", "cpu_allocated", "cpu_used"] {
            let query = ferry_tsdb::Query {
                metric: metric.to_string(),
                kind: kind.clone(),
                id: None,
                start_us,
                end_us,
                step_us,
            };
            let shape = store.query_each(&query, |id, buckets| {
                // Each sample of these series is one tick: it stands for `TICK` of time.
                let hours = || {
                    let measured = buckets.iter().filter_map(|b| Some(b.mean? * f64::from(b.count)));
                    let samples: Vec<f64> = measured.collect();
                    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() * TICK.as_secs_f64() / 3600.0)
                };
                let row = rows
                    .entry(id.to_string())
                    .or_insert_with(|| UsageRow { id: id.to_string(), ..UsageRow::default() });
                let value = hours();
                match metric {
                    "gpu_allocated" => row.gpu_hours_allocated = value.unwrap_or(0.0),
                    "gpu_used" => row.gpu_hours_used = value,
                    "cpu_allocated" => row.cpu_hours_allocated = value.unwrap_or(0.0),
                    _ => row.cpu_hours_used = value,
                }
            })?;
            step = shape.step_us;
        }
        Ok::<_, ferry_tsdb::TsdbError>((rows, step))
    })
    .await
    .map_err(|_| ApiError::unavailable())?
    .map_err(query_error)?;
    let mut rows: Vec<UsageRow> =
        rows.into_values().filter(|r| shown.allows(&q.by, &r.id)).map(no_gpus_no_use).collect();
    rows.sort_by(|a, b| b.gpu_hours_allocated.total_cmp(&a.gpu_hours_allocated).then_with(|| a.id.cmp(&b.id)));
    let report = UsageReport { by: q.by, start_us, end_us, step_s: (step_us / 1_000_000) as u64, rows };
    if csv {
        let name = format!("ferry-usage-by-{}.csv", report.by);
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ];
        return Ok((headers, to_csv(&report)).into_response());
    }
    Ok(Json(report).into_response())
}

/// An owner that held no GPU in the period has no GPU use to show: "no data", not a measured 0 of nothing.
fn no_gpus_no_use(mut row: UsageRow) -> UsageRow {
    if row.gpu_hours_allocated == 0.0 {
        row.gpu_hours_used = None;
    }
    row
}

/// The report as CSV: one header line, one line per row, hours with three decimals, empty where not measured.
fn to_csv(report: &UsageReport) -> String {
    let mut out = format!("{},gpu_hours_allocated,gpu_hours_used,cpu_hours_allocated,cpu_hours_used\n", report.by);
    let cell = |value: Option<f64>| value.map(|v| format!("{v:.3}")).unwrap_or_default();
    for row in &report.rows {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            csv_field(&row.id),
            cell(Some(row.gpu_hours_allocated)),
            cell(row.gpu_hours_used),
            cell(Some(row.cpu_hours_allocated)),
            cell(row.cpu_hours_used)
        ));
    }
    out
}

/// A CSV field, quoted when it holds a comma, a quote or a line break; a leading `=`, `+`, `-` or `@` is prefixed with
/// a quote mark so that a spreadsheet never takes an id for a formula.
pub(crate) fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_never_starts_a_formula() {
        let report = UsageReport {
            by: "user".into(),
            start_us: 0,
            end_us: 1,
            step_s: 3600,
            rows: vec![
                UsageRow {
                    id: "alice".into(),
                    gpu_hours_allocated: 2.0,
                    gpu_hours_used: Some(1.25),
                    ..UsageRow::default()
                },
                UsageRow { id: "=cmd,\"x\"".into(), ..UsageRow::default() },
            ],
        };
        assert_eq!(
            to_csv(&report),
            "user,gpu_hours_allocated,gpu_hours_used,cpu_hours_allocated,cpu_hours_used\n\
             alice,2.000,1.250,0.000,\n\
             \"'=cmd,\"\"x\"\"\",0.000,,0.000,\n"
        );
    }

    #[test]
    fn an_owner_without_gpus_has_no_gpu_use_rather_than_zero() {
        let cpu_only =
            UsageRow { id: "bo".into(), gpu_hours_used: Some(0.0), cpu_hours_allocated: 1.0, ..UsageRow::default() };
        assert_eq!(no_gpus_no_use(cpu_only).gpu_hours_used, None);
        let idle =
            UsageRow { id: "al".into(), gpu_hours_allocated: 2.0, gpu_hours_used: Some(0.0), ..UsageRow::default() };
        assert_eq!(no_gpus_no_use(idle).gpu_hours_used, Some(0.0), "a held, idle GPU is a measured 0");
    }
}
