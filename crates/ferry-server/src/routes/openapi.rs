//! The two OpenAPI documents, generated from the handlers and wire types so they cannot drift from them. Who may call
//! each operation is never written by hand: `secure` walks the route table (`super::specs()`, the same table the
//! router is built from) and sets every operation's `security`, its `x-ferry-access` rule and the answers of the
//! guard (401, 403, 429, 503).
//!
//! - `ApiDoc` (`GET /api/v1/openapi.json`): Ferry's own API, every `/api/v1/...` route and `/metrics`.
//! - `mlflow_document` (`GET /api/v1/openapi-mlflow.json`): the MLflow-compatible routes (`/api/2.0/mlflow...`,
//!   `/api/2.0/mlflow-artifacts/...`, `/api/3.0/mlflow/server-info`), generated from the table alone: methods,
//!   paths, security and statuses, with bodies as free-form JSON objects (MLflow's REST reference has their shapes).
//!
//! The dashboard's pages and its browser sign-in (`/`, `/jobs`, `/login`, `/logout`, `/ui/{name}`, `/auth/login`,
//! `/auth/callback`, ...) are in neither: they answer HTML and redirects for a browser, not an API.

use axum::http::Method;
use axum::Json;
use ferry_api::ErrorBody;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HttpMethod, InfoBuilder, OpenApiBuilder, PathsBuilder, Ref, Required};
use utoipa::openapi::{ResponseBuilder, ResponsesBuilder};
use utoipa::{Modify, OpenApi};

use super::RouteSpec;
use crate::auth::Access;

/// The security scheme of users' and service accounts' tokens (and, in their place, dashboard sessions).
pub const USER_TOKEN: &str = "user_token";
/// The security scheme of agents' join tokens.
pub const AGENT_TOKEN: &str = "agent_token";
/// The security scheme of a job's tracking token (`MLFLOW_TRACKING_TOKEN`).
pub const JOB_TOKEN: &str = "job_token";
/// The extension on every operation that names its access rule as the route table has it (`user:submit`, ...).
pub const ACCESS_EXTENSION: &str = "x-ferry-access";

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry API", description = "Ferry's control-plane API: jobs, nodes, sweeps, users, teams, tokens, \
        the audit log and the agent protocol. Each operation's `security` says which token it needs (none for the \
        public ones such as /api/v1/health and /metrics), and `x-ferry-access` names its rule in the route table: \
        `user:read`, `user:submit` or `user:admin` (a user or service account token of at least that scope; a \
        dashboard session, the HTTP-only cookie `ferry_session` set by signing in at /login, is accepted in its \
        place), `agent` (an agent's join token, bound to its node) or `public`. The MLflow-compatible tracking API \
        is described in /api/v1/openapi-mlflow.json; the dashboard's pages are in neither document."),
    paths(
        super::health, super::metrics::metrics, document, mlflow,
        super::jobs::submit, super::jobs::list, super::jobs::queue, super::jobs::show, super::jobs::wait, super::jobs::cancel, super::jobs::logs, super::jobs::diff, super::jobs::metrics, super::jobs::prediction_accuracy,
        super::code::head, super::code::put, super::code::get, super::code::agent_get,
        super::nodes::list, super::nodes::pools, super::pools::add, super::pools::update, super::pools::remove,
        super::series::query, super::series::metrics, super::usage::usage,
        super::sweeps::submit, super::sweeps::list, super::sweeps::show, super::sweeps::cancel,
        super::tokens::create, super::tokens::list, super::tokens::revoke, super::tokens::authority,
        super::secrets::list, super::secrets::set_user, super::secrets::remove_user, super::secrets::set_project,
        super::secrets::remove_project, super::secrets::fetch,
        super::users::whoami, super::users::list, super::users::create, super::users::disable, super::users::enable,
        super::users::teams, super::users::create_team, super::users::set_member, super::users::remove_member,
        super::users::create_project, super::users::group_rules, super::users::set_group_rule, super::users::remove_group_rule,
        super::users::set_team_quota, super::users::clear_team_quota, super::users::set_project_quota,
        super::users::clear_project_quota,
        super::audit::list, super::history::cluster, super::history::jobs,
        super::auth::device_start, super::auth::device_poll, super::auth::logout,
        super::agent::exchange, super::agent::register, super::agent::work, super::agent::reports, super::agent::telemetry, super::agent::upload_log,
    ),
    components(schemas(ErrorBody)),
    modifiers(&FromTable)
)]
pub struct ApiDoc;

/// Which document a route of the table belongs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Document {
    Api,
    Mlflow,
    /// The dashboard's pages and browser sign-in: in no document.
    Dashboard,
}

impl Document {
    pub fn of(path: &str) -> Document {
        if path.starts_with("/api/v1/") || path == "/metrics" {
            Document::Api
        } else if path.starts_with("/api/2.0/") || path.starts_with("/api/3.0/") {
            Document::Mlflow
        } else {
            Document::Dashboard
        }
    }
}

/// A route's path as OpenAPI writes it: axum's catch-all `{*rest}` is the path parameter `{rest}`.
pub fn template(path: &str) -> String {
    path.replace("{*", "{")
}

/// The methods a route answers in the documents: its own, or for a route that takes any method, the five that MLflow
/// clients use.
pub fn methods(spec: &RouteSpec) -> Vec<Method> {
    match &spec.method {
        Some(method) => vec![method.clone()],
        None => vec![Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
    }
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::HEAD => HttpMethod::Head,
        _ => return None,
    })
}

fn operation_mut<'a>(item: &'a mut PathItem, method: &Method) -> Option<&'a mut Operation> {
    match *method {
        Method::GET => item.get.as_mut(),
        Method::POST => item.post.as_mut(),
        Method::PUT => item.put.as_mut(),
        Method::PATCH => item.patch.as_mut(),
        Method::DELETE => item.delete.as_mut(),
        Method::HEAD => item.head.as_mut(),
        _ => None,
    }
}

/// What the guard answers on every route that needs a token, before the handler runs.
const GUARD_ANSWERS: [(&str, &str); 4] = [
    ("401", "No token, or one the server does not know, that has expired or that was revoked"),
    ("403", "The token is of the wrong kind for this operation, or its scope is too small"),
    ("429", "Too many failed token checks from this address; wait a minute"),
    ("503", "The token could not be checked: the server is shutting down or cannot reach its database"),
];

/// Sets the security of every operation of `doc` that the route table puts in `which`, from the table's rules.
pub fn secure(doc: &mut utoipa::openapi::OpenApi, which: Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    let bearer = |text: &str| {
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(text)).build())
    };
    components.add_security_scheme(
        USER_TOKEN,
        bearer(
            "A user's or service account's token (`ferry token create`, `ferry login`). The operation lists the \
             least scope it needs (read < submit < admin). A dashboard session, the HTTP-only cookie \
             `ferry_session` set by signing in at /login, is accepted in its place on the same operations.",
        ),
    );
    components.add_security_scheme(
        AGENT_TOKEN,
        bearer("An agent's join token (`ferry token create --agent --node NAME`), bound to the node it speaks for."),
    );
    if which == Document::Mlflow {
        components.add_security_scheme(
            JOB_TOKEN,
            bearer(
                "A job's tracking token, handed to the job as MLFLOW_TRACKING_TOKEN: it reaches that job's own run \
                 (and reads of its experiment) only.",
            ),
        );
    }
    let error = match which {
        Document::Mlflow => "MlflowError",
        _ => "ErrorBody",
    };
    for spec in super::specs().into_iter().filter(|s| Document::of(s.path) == which) {
        let Some(item) = doc.paths.paths.get_mut(&template(spec.path)) else { continue };
        for method in methods(&spec) {
            if let Some(operation) = operation_mut(item, &method) {
                // A HEAD answer has no body, so its errors are told by the status alone.
                let error = (method != Method::HEAD).then_some(error);
                apply(operation, spec.access, error);
            }
        }
    }
}

/// The security requirements of an access rule: none for a public route, otherwise one of the listed schemes.
fn requirements(access: Access) -> Vec<SecurityRequirement> {
    let scopes = |scope: ferry_api::tokens::TokenScope| [scope.name()];
    match access {
        Access::Public => Vec::new(),
        Access::User(scope) => vec![SecurityRequirement::new(USER_TOKEN, scopes(scope))],
        Access::Agent => vec![SecurityRequirement::new(AGENT_TOKEN, [""; 0])],
        Access::Tracking(scope) => {
            vec![SecurityRequirement::new(USER_TOKEN, scopes(scope)), SecurityRequirement::new(JOB_TOKEN, [""; 0])]
        }
    }
}

fn who(access: Access) -> String {
    match access {
        Access::Public => "anyone, without a token".to_string(),
        Access::User(scope) => {
            format!("a user or service account token of scope `{}` or more, or a dashboard session", scope.name())
        }
        Access::Agent => "an agent's join token, for the node it is bound to".to_string(),
        Access::Tracking(scope) => format!(
            "a user or service account token of scope `{}` or more, or a job's tracking token (its own run only)",
            scope.name()
        ),
    }
}

fn apply(operation: &mut Operation, access: Access, error: Option<&str>) {
    operation.security = Some(requirements(access));
    let rule = ExtensionsBuilder::new().add(ACCESS_EXTENSION, access.describe()).build();
    operation.extensions.get_or_insert_with(Default::default).merge(rule);
    let note = format!("Who may call it: {}.", who(access));
    operation.description = Some(match operation.description.take() {
        Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
        _ => note,
    });
    // Every handler reads its path, query and body through checks that answer 400 with the error body (axum's own
    // rejections included, mapped through `crate::error::rejection`), so an operation with any input may answer it.
    if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) || operation.request_body.is_some() {
        let text = "The request is malformed or a value is out of range; the message says which";
        operation.responses.responses.entry("400".to_string()).or_insert_with(|| error_response(text, error).into());
    }
    if access == Access::Public {
        return;
    }
    for (status, text) in GUARD_ANSWERS {
        operation.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(text, error).into());
    }
}

/// An error answer with the body of `schema`, or none (for HEAD).
fn error_response(text: &str, schema: Option<&str>) -> utoipa::openapi::Response {
    let answer = ResponseBuilder::new().description(text);
    match schema {
        Some(name) => answer
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name(name))).build())
            .build(),
        None => answer.build(),
    }
}

struct FromTable;

impl Modify for FromTable {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        secure(openapi, Document::Api);
    }
}

/// This document: Ferry's own API.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "This document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The MLflow-compatible tracking API's document.
#[utoipa::path(get, path = "/api/v1/openapi-mlflow.json",
    responses((status = 200, description = "The OpenAPI document of the MLflow-compatible routes")))]
pub async fn mlflow() -> Json<utoipa::openapi::OpenApi> {
    Json(mlflow_document())
}

/// The MLflow-compatible routes, generated from the route table: one operation per route and method, with what
/// every such route may answer.
pub fn mlflow_document() -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    for spec in super::specs().into_iter().filter(|s| Document::of(s.path) == Document::Mlflow) {
        for method in methods(&spec) {
            let Some(http) = http_method(&method) else { continue };
            paths = paths.path(template(spec.path), PathItem::new(http, mlflow_operation(&spec, &method)));
        }
    }
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Ferry's MLflow-compatible tracking API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The routes of MLflow's tracking REST API that Ferry serves, with MLflow's request and response \
                     shapes (see MLflow's REST API reference; bodies here are free-form objects) and its error shape \
                     `{error_code, message}`. Each operation's `security` and `x-ferry-access` come from Ferry's \
                     route table. Ferry's own API is described in /api/v1/openapi.json.",
                ))
                .build(),
        )
        .paths(paths.build())
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.insert(
        "MlflowError".to_string(),
        ObjectBuilder::new()
            .description(Some("MLflow's error body"))
            .property("error_code", ObjectBuilder::new().schema_type(Type::String))
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("error_code")
            .required("message")
            .into(),
    );
    secure(&mut doc, Document::Mlflow);
    doc
}

/// One MLflow operation: its path parameters, a free-form body where the method carries one, and its answers.
fn mlflow_operation(spec: &RouteSpec, method: &Method) -> Operation {
    let free_form = || ObjectBuilder::new().schema_type(Type::Object).build();
    let json = || ContentBuilder::new().schema(Some(free_form())).build();
    let failure = |text: &str| error_response(text, Some("MlflowError"));
    let artifact = spec.path.starts_with("/api/2.0/mlflow-artifacts/artifacts/");
    let catch_all = spec.method.is_none();
    let mut operation = OperationBuilder::new().tag("mlflow");
    for name in template(spec.path).split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
        let parameter = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)));
        operation = operation.parameter(parameter);
    }
    if matches!(*method, Method::POST | Method::PATCH) && !catch_all {
        operation = operation.request_body(Some(RequestBodyBuilder::new().content("application/json", json()).build()));
    }
    if artifact && *method == Method::PUT {
        let bytes = ContentBuilder::new().schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary))),
        ));
        operation = operation
            .request_body(Some(RequestBodyBuilder::new().content("application/octet-stream", bytes.build()).build()));
    }
    let mut responses = ResponsesBuilder::new();
    if catch_all {
        let status = if spec.path.contains("presigned") || spec.path.contains("/mpu/") {
            ("501", "Not offered by Ferry: artifacts are uploaded and downloaded whole")
        } else {
            ("404", "Not implemented by Ferry's MLflow-compatible API (ENDPOINT_NOT_FOUND)")
        };
        responses = responses.response(status.0, failure(status.1));
    } else {
        let ok = if artifact && *method == Method::GET {
            ResponseBuilder::new().description("The artifact's bytes").content(
                "application/octet-stream",
                ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build(),
            )
        } else {
            ResponseBuilder::new().description("MLflow's answer").content("application/json", json())
        };
        responses = responses
            .response("200", ok.build())
            .response("400", failure("The request is invalid (INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS)"))
            .response("404", failure("No such object, or not the caller's to see (RESOURCE_DOES_NOT_EXIST)"))
            .response("405", failure("The path does not accept this method"));
        if artifact && *method == Method::PUT {
            responses = responses.response("413", failure("The artifact is larger than the server accepts"));
        }
    }
    operation.responses(responses.build()).build()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The security an operation must declare for a rule, written out independently of `requirements`.
    fn expected_security(access: Access) -> Value {
        match access {
            Access::Public => json!([]),
            Access::User(scope) => json!([{ "user_token": [scope.name()] }]),
            Access::Agent => json!([{ "agent_token": [] }]),
            Access::Tracking(scope) => json!([{ "user_token": [scope.name()] }, { "job_token": [] }]),
        }
    }

    /// Every route of the table outside the dashboard is in its document with the security of its rule and, unless
    /// public, the guard's 401 and 403; and neither document has an operation the table does not.
    #[test]
    fn every_route_is_documented_with_the_security_of_its_rule() {
        let api = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mlflow = serde_json::to_value(mlflow_document()).unwrap();
        let mut problems = Vec::new();
        let mut documented = std::collections::BTreeSet::new();
        for spec in super::super::specs() {
            let doc = match Document::of(spec.path) {
                Document::Api => &api,
                Document::Mlflow => &mlflow,
                Document::Dashboard => continue,
            };
            for method in methods(&spec) {
                let name = method.as_str().to_lowercase();
                let route = format!("{method} {}", spec.path);
                documented.insert((template(spec.path), name.clone()));
                let operation = &doc["paths"][template(spec.path)][&name];
                if !operation.is_object() {
                    problems.push(format!("{route}: not in the document"));
                    continue;
                }
                if operation["security"] != expected_security(spec.access) {
                    problems.push(format!("{route}: security {} for rule {:?}", operation["security"], spec.access));
                }
                if operation[ACCESS_EXTENSION] != json!(spec.access.describe()) {
                    problems.push(format!("{route}: {ACCESS_EXTENSION} is {}", operation[ACCESS_EXTENSION]));
                }
                for status in ["401", "403", "429"] {
                    let listed = operation["responses"][status].is_object();
                    if spec.access != Access::Public && !listed {
                        problems.push(format!("{route}: needs a token but does not list {status}"));
                    }
                }
            }
        }
        for (which, doc) in [("openapi.json", &api), ("openapi-mlflow.json", &mlflow)] {
            for (path, item) in doc["paths"].as_object().unwrap() {
                for method in item.as_object().unwrap().keys() {
                    if !documented.contains(&(path.clone(), method.clone())) {
                        problems.push(format!("{which}: {method} {path} is not a route of the table"));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "the OpenAPI documents disagree with the route table:\n{}", problems.join("\n"));
    }

    #[test]
    fn only_the_dashboard_is_left_out() {
        let left_out: Vec<_> = super::super::specs()
            .into_iter()
            .filter(|s| Document::of(s.path) == Document::Dashboard)
            .map(|s| s.path)
            .collect();
        assert!(left_out.iter().all(|p| !p.starts_with("/api/")), "{left_out:?}");
        assert!(left_out.contains(&"/") && left_out.contains(&"/ui/{name}"), "{left_out:?}");
    }

    #[test]
    fn health_and_metrics_need_no_token_and_the_schemes_are_declared() {
        let api = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(api["paths"]["/api/v1/health"]["get"]["security"], json!([]));
        assert_eq!(api["paths"]["/metrics"]["get"]["security"], json!([]));
        assert!(api.get("security").is_none(), "no global security: each operation states its own");
        let schemes = &api["components"]["securitySchemes"];
        assert_eq!(schemes[USER_TOKEN]["scheme"], "bearer");
        assert!(schemes[USER_TOKEN]["description"].as_str().unwrap().contains("ferry_session"));
        let mlflow = serde_json::to_value(mlflow_document()).unwrap();
        assert_eq!(mlflow["components"]["securitySchemes"][JOB_TOKEN]["scheme"], "bearer");
        let denied = &mlflow["paths"]["/api/2.0/mlflow/runs/get"]["get"]["responses"]["403"];
        assert_eq!(denied["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/MlflowError");
    }

    /// Every `$ref` under `value`.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => found.push(target.clone()),
                        _ => references(v, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }

    /// The scheduler's reasons are typed in the document, each `kind` a variant of its own that a client can check
    /// a body against, and every reference in the document resolves to a schema it has.
    #[test]
    fn reasons_are_described_by_kind_and_every_reference_resolves() {
        let api = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &api["components"]["schemas"];
        let kinds = |name: &str| -> Vec<&str> {
            let variants = schemas[name]["oneOf"].as_array().unwrap_or_else(|| panic!("{name}: {}", schemas[name]));
            variants.iter().map(|v| v["properties"]["kind"]["enum"][0].as_str().unwrap()).collect()
        };
        assert_eq!(schemas["Waiting"]["properties"]["reason"]["$ref"], "#/components/schemas/WaitReason");
        assert_eq!(
            kinds("WaitReason"),
            [
                "no_nodes",
                "no_ready_nodes",
                "no_matching_node",
                "preempting",
                "over_team_limit",
                "over_project_limit",
                "infeasible",
                "insufficient",
                "reserved_for",
                "burst_not_yet",
                "gang_infeasible",
                "gang_waiting",
                "provisioning",
                "elastic_cooling_down",
                "starting",
                "other"
            ]
        );
        assert_eq!(kinds("TimelineReason"), ["placed", "preempted", "requeued", "lost", "other"]);
        assert_eq!(kinds("PreemptRule"), ["priority", "reclaim", "reclaim_project", "attained", "other"]);
        let mut found = Vec::new();
        references(&api, &mut found);
        assert!(found.contains(&"#/components/schemas/TimelineReason".to_string()), "{found:?}");
        for target in found {
            let name = target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{target}"));
            assert!(schemas.get(name).is_some(), "{target} names no schema");
        }
    }
}
