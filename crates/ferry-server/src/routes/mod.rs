//! HTTP handlers: thin by rule. Each validates its input, calls the driver or the store, and maps errors through
//! `ApiError`.

pub mod agent;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod code;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod mlflow;
pub mod mlflow_models;
pub mod nodes;
pub mod openapi;
pub mod pools;
pub mod secrets;
pub mod series;
pub mod sweeps;
pub mod tokens;
pub mod ui;
pub mod usage;
pub mod users;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use axum::Json;
use ferry_api::tokens::TokenScope::{Admin, Read, Submit};
use serde_json::json;

use crate::auth::Access::{self, Agent, Public, Tracking, User};
use crate::state::AppState;

/// One route of the API as the access rules see it: its method (`None`: any), path and who may call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Option<Method>,
    pub path: &'static str,
    pub access: Access,
    /// Data rather than an action: not in the audit log unless refused.
    pub quiet: bool,
}

/// A route with its handler. The router is built from these alone (`app`), so no route exists without its rule.
pub struct Entry {
    pub spec: RouteSpec,
    pub handler: MethodRouter<AppState>,
}

impl Entry {
    /// Lifts the body limit for a route that streams large uploads itself.
    fn unlimited(mut self) -> Entry {
        self.handler = self.handler.layer(DefaultBodyLimit::disable());
        self
    }

    /// Marks a route as data rather than an action: the audit log records its requests only when they are refused
    /// (see `crate::audit`).
    fn quiet(mut self) -> Entry {
        self.spec.quiet = true;
        self.handler =
            self.handler.layer(axum::middleware::map_response(|mut response: axum::response::Response| async {
                response.extensions_mut().insert(crate::audit::Quiet);
                response
            }));
        self
    }
}

fn at<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Entry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("the table uses standard methods");
    Entry {
        spec: RouteSpec { method: Some(method), path, access, quiet: false },
        handler: axum::routing::on(filter, handler),
    }
}

fn any<H, T>(path: &'static str, access: Access, handler: H) -> Entry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Entry { spec: RouteSpec { method: None, path, access, quiet: false }, handler: axum::routing::any(handler) }
}

/// A JSON body, or why axum could not read it (answered with `error::rejection`, in the API's error shape).
pub(crate) type JsonBody<T> = Result<axum::Json<T>, axum::extract::rejection::JsonRejection>;

/// Every route of the server, grouped by who may call it. Adding a route means giving it its `Access` here, and the
/// access-matrix test (`crates/ferry/tests/access.rs`) fails until it says what every kind of caller gets from it.
pub fn table() -> Vec<Entry> {
    use Method as M;
    let (get, post, put, delete, head, patch) = (M::GET, M::POST, M::PUT, M::DELETE, M::HEAD, M::PATCH);
    vec![
        // Anyone: liveness, Prometheus, the API's description, the dashboard's pages (which send a signed-out
        // browser to /login) and its sign-in.
        at(get.clone(), "/api/v1/health", Public, health),
        at(get.clone(), "/metrics", Public, metrics::metrics),
        at(get.clone(), "/api/v1/openapi.json", Public, openapi::document),
        at(get.clone(), "/api/v1/openapi-mlflow.json", Public, openapi::mlflow),
        // The certificate authority that join tokens pin: public, like a CA certificate anywhere.
        at(get.clone(), "/api/v1/tls/ca", Public, tokens::authority),
        at(get.clone(), "/", Public, ui::page),
        at(get.clone(), "/nodes", Public, ui::page),
        at(get.clone(), "/jobs", Public, ui::page),
        at(get.clone(), "/jobs/{id}", Public, ui::page),
        at(get.clone(), "/usage", Public, ui::page),
        at(get.clone(), "/sweeps", Public, ui::page),
        at(get.clone(), "/sweeps/{id}", Public, ui::page),
        at(get.clone(), "/login", Public, ui::login_form),
        at(post.clone(), "/login", Public, ui::login),
        at(post.clone(), "/logout", Public, ui::logout),
        at(get.clone(), "/auth/login", Public, ui::sso_start),
        at(get.clone(), "/auth/callback", Public, ui::sso_callback),
        // The CLI's single sign-on (the device flow, run by the server): anyone may start one and poll its handle.
        at(post.clone(), "/api/v1/auth/device", Public, auth::device_start),
        at(post.clone(), "/api/v1/auth/device/poll", Public, auth::device_poll),
        at(get.clone(), "/ui/{name}", Public, ui::asset),
        // A run on an engine without a secret store (Ray) fetching its secrets, once, with its entrypoint's ticket.
        at(post.clone(), "/api/v1/runs/{job}/{attempt}/secrets", Public, secrets::fetch),
        // Users and service accounts: reading.
        at(get.clone(), "/api/v1/jobs", User(Read), jobs::list),
        at(get.clone(), "/api/v1/jobs/{id}", User(Read), jobs::show),
        at(get.clone(), "/api/v1/jobs/{id}/wait", User(Read), jobs::wait),
        at(get.clone(), "/api/v1/jobs/{id}/logs", User(Read), jobs::logs),
        at(get.clone(), "/api/v1/jobs/{id}/diff", User(Read), jobs::diff),
        at(get.clone(), "/api/v1/jobs/{id}/metrics", User(Read), jobs::metrics),
        at(get.clone(), "/api/v1/queue", User(Read), jobs::queue),
        at(get.clone(), "/api/v1/sweeps", User(Read), sweeps::list),
        at(get.clone(), "/api/v1/sweeps/{id}", User(Read), sweeps::show),
        at(head.clone(), "/api/v1/code/{sha256}", User(Read), code::head),
        at(get.clone(), "/api/v1/code/{sha256}", User(Read), code::get),
        at(get.clone(), "/api/v1/nodes", User(Read), nodes::list),
        at(get.clone(), "/api/v1/pools", User(Read), nodes::pools),
        at(get.clone(), "/api/v1/series", User(Read), series::query),
        at(get.clone(), "/api/v1/series/metrics", User(Read), series::metrics),
        at(get.clone(), "/api/v1/usage", User(Read), usage::usage),
        at(get.clone(), "/api/v1/predictions", User(Read), jobs::prediction_accuracy),
        at(get.clone(), "/api/v1/whoami", User(Read), users::whoami),
        at(get.clone(), "/api/v1/tokens", User(Read), tokens::list),
        at(get.clone(), "/api/v1/secrets", User(Read), secrets::list),
        at(get.clone(), "/api/v1/users", User(Read), users::list),
        at(get.clone(), "/api/v1/teams", User(Read), users::teams),
        at(get.clone(), "/api/v1/audit", User(Read), audit::list),
        // The whole installation's cluster and jobs for the simulator: installation admins (checked inside).
        at(get.clone(), "/api/v1/history/cluster", User(Read), history::cluster),
        at(get.clone(), "/api/v1/history/jobs", User(Read), history::jobs),
        at(get.clone(), "/api/v1/groups", User(Read), users::group_rules),
        at(post.clone(), "/api/v1/auth/logout", User(Read), auth::logout),
        // Users and service accounts: submitting and cancelling their work, managing their own tokens.
        at(post.clone(), "/api/v1/jobs", User(Submit), jobs::submit),
        at(post.clone(), "/api/v1/jobs/{id}/cancel", User(Submit), jobs::cancel),
        at(post.clone(), "/api/v1/sweeps", User(Submit), sweeps::submit),
        at(post.clone(), "/api/v1/sweeps/{id}/cancel", User(Submit), sweeps::cancel),
        at(put.clone(), "/api/v1/code/{sha256}", User(Submit), code::put).unlimited(),
        at(post.clone(), "/api/v1/tokens", User(Submit), tokens::create),
        at(post.clone(), "/api/v1/tokens/{id}/revoke", User(Submit), tokens::revoke),
        at(put.clone(), "/api/v1/secrets/user/{name}", User(Submit), secrets::set_user),
        at(delete.clone(), "/api/v1/secrets/user/{name}", User(Submit), secrets::remove_user),
        // Administration: installation admins, and team admins for their teams.
        at(post.clone(), "/api/v1/users", User(Admin), users::create),
        at(post.clone(), "/api/v1/users/{name}/disable", User(Admin), users::disable),
        at(post.clone(), "/api/v1/users/{name}/enable", User(Admin), users::enable),
        at(post.clone(), "/api/v1/teams", User(Admin), users::create_team),
        // Pools at run time: installation admins (checked inside).
        at(post.clone(), "/api/v1/pools", User(Admin), pools::add),
        at(put.clone(), "/api/v1/pools/{name}", User(Admin), pools::update),
        at(delete.clone(), "/api/v1/pools/{name}", User(Admin), pools::remove),
        at(put.clone(), "/api/v1/teams/{team}/members/{user}", User(Admin), users::set_member),
        at(delete.clone(), "/api/v1/teams/{team}/members/{user}", User(Admin), users::remove_member),
        at(post.clone(), "/api/v1/teams/{team}/projects", User(Admin), users::create_project),
        at(put.clone(), "/api/v1/teams/{team}/quota", User(Admin), users::set_team_quota),
        at(delete.clone(), "/api/v1/teams/{team}/quota", User(Admin), users::clear_team_quota),
        at(put.clone(), "/api/v1/teams/{team}/projects/{project}/quota", User(Admin), users::set_project_quota),
        at(delete.clone(), "/api/v1/teams/{team}/projects/{project}/quota", User(Admin), users::clear_project_quota),
        at(put.clone(), "/api/v1/secrets/projects/{team}/{project}/{name}", User(Admin), secrets::set_project),
        at(delete.clone(), "/api/v1/secrets/projects/{team}/{project}/{name}", User(Admin), secrets::remove_project),
        at(put.clone(), "/api/v1/teams/{team}/groups", User(Admin), users::set_group_rule),
        at(delete.clone(), "/api/v1/teams/{team}/groups", User(Admin), users::remove_group_rule),
        // Agents, each for the node its join token is bound to.
        at(post.clone(), "/api/v1/agent/exchange", Agent, agent::exchange),
        at(post.clone(), "/api/v1/agent/register", Agent, agent::register),
        at(post.clone(), "/api/v1/agent/work", Agent, agent::work).quiet(),
        at(post.clone(), "/api/v1/agent/reports", Agent, agent::reports).quiet(),
        at(post.clone(), "/api/v1/agent/telemetry", Agent, agent::telemetry).quiet(),
        at(post.clone(), "/api/v1/agent/runs/{job}/{attempt}/logs", Agent, agent::upload_log).quiet(),
        at(get.clone(), "/api/v1/agent/code/{sha256}", Agent, code::agent_get),
        // The MLflow tracking API: users, and jobs with their tracking tokens (their own run only).
        at(get.clone(), "/api/3.0/mlflow/server-info", Public, mlflow::server_info),
        at(post.clone(), "/api/2.0/mlflow/experiments/create", Tracking(Submit), mlflow::create_experiment),
        at(get.clone(), "/api/2.0/mlflow/experiments/get", Tracking(Read), mlflow::get_experiment),
        at(get.clone(), "/api/2.0/mlflow/experiments/get-by-name", Tracking(Read), mlflow::get_experiment_by_name),
        at(post.clone(), "/api/2.0/mlflow/experiments/search", Tracking(Read), mlflow::search_experiments),
        at(post.clone(), "/api/2.0/mlflow/experiments/update", Tracking(Submit), mlflow::update_experiment),
        at(post.clone(), "/api/2.0/mlflow/experiments/delete", Tracking(Submit), mlflow::delete_experiment),
        at(post.clone(), "/api/2.0/mlflow/experiments/restore", Tracking(Submit), mlflow::restore_experiment),
        at(
            post.clone(),
            "/api/2.0/mlflow/experiments/set-experiment-tag",
            Tracking(Submit),
            mlflow::set_experiment_tag,
        ),
        at(post.clone(), "/api/2.0/mlflow/runs/create", Tracking(Submit), mlflow::create_run),
        at(get.clone(), "/api/2.0/mlflow/runs/get", Tracking(Read), mlflow::get_run),
        at(post.clone(), "/api/2.0/mlflow/runs/update", Tracking(Submit), mlflow::update_run),
        at(post.clone(), "/api/2.0/mlflow/runs/delete", Tracking(Submit), mlflow::delete_run),
        at(post.clone(), "/api/2.0/mlflow/runs/restore", Tracking(Submit), mlflow::restore_run),
        at(post.clone(), "/api/2.0/mlflow/runs/search", Tracking(Read), mlflow::search_runs),
        at(post.clone(), "/api/2.0/mlflow/runs/log-metric", Tracking(Submit), mlflow::log_metric).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/log-parameter", Tracking(Submit), mlflow::log_parameter).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/log-batch", Tracking(Submit), mlflow::log_batch).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/set-tag", Tracking(Submit), mlflow::set_tag).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/delete-tag", Tracking(Submit), mlflow::delete_tag).quiet(),
        at(get.clone(), "/api/2.0/mlflow/metrics/get-history", Tracking(Read), mlflow::metric_history),
        at(get.clone(), "/api/2.0/mlflow-artifacts/artifacts", Tracking(Read), artifacts::list),
        at(get.clone(), "/api/2.0/mlflow-artifacts/artifacts/{*path}", Tracking(Read), artifacts::download),
        at(put.clone(), "/api/2.0/mlflow-artifacts/artifacts/{*path}", Tracking(Submit), artifacts::upload)
            .unlimited()
            .quiet(),
        at(delete.clone(), "/api/2.0/mlflow-artifacts/artifacts/{*path}", Tracking(Submit), artifacts::delete),
        at(get.clone(), "/api/2.0/mlflow/artifacts/list", Tracking(Read), artifacts::list_run),
        at(post.clone(), "/api/2.0/mlflow/logged-models", Tracking(Submit), mlflow_models::create),
        at(post.clone(), "/api/2.0/mlflow/logged-models/search", Tracking(Read), mlflow_models::search),
        at(get.clone(), "/api/2.0/mlflow/logged-models/{model_id}", Tracking(Read), mlflow_models::get_model),
        at(patch.clone(), "/api/2.0/mlflow/logged-models/{model_id}", Tracking(Submit), mlflow_models::finalize),
        at(delete.clone(), "/api/2.0/mlflow/logged-models/{model_id}", Tracking(Submit), mlflow_models::delete),
        at(patch.clone(), "/api/2.0/mlflow/logged-models/{model_id}/tags", Tracking(Submit), mlflow_models::set_tags)
            .quiet(),
        at(
            delete.clone(),
            "/api/2.0/mlflow/logged-models/{model_id}/tags/{tag_key}",
            Tracking(Submit),
            mlflow_models::delete_tag,
        )
        .quiet(),
        at(
            post.clone(),
            "/api/2.0/mlflow/logged-models/{model_id}/params",
            Tracking(Submit),
            mlflow_models::log_params,
        )
        .quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/outputs", Tracking(Submit), mlflow_models::log_outputs).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/log-inputs", Tracking(Submit), mlflow_models::log_inputs).quiet(),
        at(post.clone(), "/api/2.0/mlflow/runs/log-model", Tracking(Submit), mlflow_models::log_model),
        // What Ferry's MLflow API does not offer answers so, in MLflow's shape, to anyone: it reveals nothing.
        any("/api/2.0/mlflow-artifacts/mpu/{*rest}", Public, artifacts::not_offered),
        any("/api/2.0/mlflow-artifacts/presigned/{*rest}", Public, artifacts::not_offered),
        any("/api/2.0/mlflow/artifacts/presigned-upload-url", Public, artifacts::not_offered),
        any("/api/2.0/mlflow/artifacts/presigned-download-url", Public, artifacts::not_offered),
        any("/api/2.0/mlflow/{*rest}", Public, mlflow::not_implemented),
        any("/api/2.0/mlflow-artifacts/{*rest}", Public, mlflow::not_implemented),
    ]
}

/// The access rules of every route, for tests and the documentation.
pub fn specs() -> Vec<RouteSpec> {
    table().into_iter().map(|e| e.spec).collect()
}

/// Liveness of the server itself; needs no token, so scripts can wait for it.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, description = "The server is up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}
