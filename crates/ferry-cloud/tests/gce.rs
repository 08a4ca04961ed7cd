//! The Compute Engine provider against a local server that plays Compute Engine's REST API v1 and Google's OAuth
//! token endpoint, on loopback. No emulator of Compute Engine exists: this server answers in the documented formats
//! (cloud.google.com/compute/docs/reference/rest/v1: `Instance`, `Operation`, `InstanceAggregatedList`, the error
//! body) and checks every request field by field against the documentation (method, path, query, bearer token,
//! JSON body), refusing anything else the way Compute Engine does (400 with the error body) and recording why, so
//! each test ends by checking that nothing was refused.
//!
//! The service account key is `tests/data/gce-test-key.pem`, a throwaway key made for these tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use ferry_cloud::gce::{Gce, GceSettings, GoogleCredentials};
use ferry_cloud::{InstanceType, LaunchRequest, Market, Provider, ProviderError};
use ring::signature::{RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

mod common;
use common::summary;

const PROJECT: &str = "ferry-test";
const KEY_PEM: &str = include_str!("data/gce-test-key.pem");
const CLIENT_EMAIL: &str = "ferry-burst@ferry-test.iam.gserviceaccount.com";
const KEY_ID: &str = "5f1c0a7e3b2d4c6e8f9a0b1c2d3e4f5a6b7c8d9e";
/// The token the tests give explicitly (not through the key), which the server accepts too.
const EXPLICIT_TOKEN: &str = "ya29.explicit-test-token";
const API: &str = "https://www.googleapis.com/compute/v1";

/// A failure the server answers the next insert with.
#[derive(Clone)]
enum Failure {
    /// The insert itself is refused with this status and Google's error body.
    Http(u16, Value),
    /// The insert is accepted and its operation ends with this error code and message.
    Operation(&'static str, &'static str, u16),
}

#[derive(Default)]
struct Cloud {
    token_uri: String,
    public_key: Vec<u8>,
    /// Tokens the token endpoint has issued, which the API accepts.
    issued: Vec<String>,
    /// Keyed by zone, then name.
    instances: BTreeMap<(String, String), Value>,
    /// Operations by name, with the instance they create once done (`None`: they fail).
    operations: HashMap<String, (Value, Option<(String, String)>)>,
    /// Operations by `requestId`, for idempotent inserts.
    by_request_id: HashMap<String, String>,
    next_id: u64,
    fail_next_insert: Option<Failure>,
    fail_next_token: Option<(u16, Value)>,
    /// Why requests were refused for not following the documented format; empty when all were right.
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Cloud>>;

struct Fake {
    cloud: Shared,
    url: String,
}

impl Fake {
    async fn start() -> Fake {
        let der = pem_der(KEY_PEM);
        let public_key = RsaKeyPair::from_pkcs8(&der).unwrap().public().as_ref().to_vec();
        let cloud: Shared = Arc::new(Mutex::new(Cloud { public_key, ..Cloud::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        cloud.lock().unwrap().token_uri = format!("{url}/token");
        let app = axum::Router::new().fallback(handle).with_state(cloud.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { cloud, url }
    }

    fn settings(&self) -> GceSettings {
        GceSettings {
            project: PROJECT.into(),
            endpoint: Some(self.url.clone()),
            image: "projects/debian-cloud/global/images/family/debian-12".into(),
            boot_disk_gb: 100,
            network: "global/networks/default".into(),
            subnetwork: Some("regions/us-central1/subnetworks/ferry".into()),
            external_ip: true,
            accelerator_by_type: [("n1-standard-8".to_string(), "nvidia-tesla-t4".to_string())].into(),
            instance_types: vec![
                gpu_type("n1-standard-8", "T4", Market::OnDemand),
                gpu_type("g2-standard-8", "L4", Market::Spot),
            ],
            credentials: None,
        }
    }

    /// A service account key file whose `token_uri` is this server's.
    fn key_file(&self, dir: &std::path::Path) -> GoogleCredentials {
        let key = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "client_id": "104000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": format!("{}/token", self.url),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        });
        let path = dir.join("key.json");
        std::fs::write(&path, key.to_string()).unwrap();
        GoogleCredentials::key_file(&path).unwrap()
    }

    fn cloud(&self) -> std::sync::MutexGuard<'_, Cloud> {
        self.cloud.lock().unwrap()
    }

    fn assert_no_problems(&self) {
        let problems = self.cloud().problems.clone();
        assert!(problems.is_empty(), "requests that do not follow the documented format: {problems:#?}");
    }
}

fn gpu_type(name: &str, model: &str, market: Market) -> InstanceType {
    InstanceType {
        name: name.into(),
        gpus: 1,
        gpu_model: Some(model.into()),
        cpu_millis: 8000,
        memory_bytes: 30 << 30,
        price_hour: if market == Market::Spot { 0.25 } else { 0.73 },
        market,
        zones: vec!["us-central1-b".into(), "us-central1-c".into()],
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Google's error body.
fn google_error(status: u16, reason: &str, message: &str) -> Value {
    let status_name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        _ => "UNAVAILABLE",
    };
    json!({"error": {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": status_name,
    }})
}

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

/// Refuses a request that does not follow the documentation, and remembers why.
fn problem(cloud: &mut Cloud, what: String) -> Response {
    cloud.problems.push(what.clone());
    answer(400, google_error(400, "invalid", &what))
}

async fn handle(State(cloud): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut cloud = cloud.lock().unwrap();
    let cloud = &mut *cloud;
    let query: Vec<(String, String)> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    if path == ["token"] {
        return token(cloud, &method, &headers, &body);
    }
    let expected = cloud.issued.iter().map(|t| format!("Bearer {t}")).chain([format!("Bearer {EXPLICIT_TOKEN}")]);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !expected.into_iter().any(|e| e == authorization) {
        return answer(
            401,
            google_error(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."),
        );
    }
    let ["compute", "v1", "projects", project, rest @ ..] = &path[..] else {
        return problem(cloud, format!("{method} {} is not a Compute Engine v1 path", uri.path()));
    };
    if *project != PROJECT {
        return problem(cloud, format!("project {project} in {}", uri.path()));
    }
    match (&method, rest) {
        (&Method::POST, ["zones", zone, "instances"]) => insert(cloud, zone, &query, &headers, &body),
        (&Method::GET, ["zones", zone, "instances", name]) => {
            match cloud.instances.get(&(zone.to_string(), name.to_string())) {
                Some(instance) => answer(200, instance.clone()),
                None => not_found(zone, name),
            }
        }
        (&Method::DELETE, ["zones", zone, "instances", name]) => {
            if cloud.instances.remove(&(zone.to_string(), name.to_string())).is_none() {
                return not_found(zone, name);
            }
            let op = operation(cloud, zone, "delete", name, "RUNNING");
            answer(200, op)
        }
        (&Method::POST, ["zones", zone, "operations", name, "wait"]) => wait(cloud, zone, name),
        (&Method::GET, ["aggregated", "instances"]) => aggregated(cloud, &query),
        _ => problem(cloud, format!("{method} {} is not a call Ferry should make", uri.path())),
    }
}

fn not_found(zone: &str, name: &str) -> Response {
    answer(
        404,
        google_error(
            404,
            "notFound",
            &format!("The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' was not found"),
        ),
    )
}

/// The OAuth token endpoint: a JWT-bearer grant whose assertion is RS256-signed by the test key, with Google's
/// claims.
fn token(cloud: &mut Cloud, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some((status, body)) = cloud.fail_next_token.take() {
        return answer(status, body);
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if method != Method::POST || content_type != "application/x-www-form-urlencoded" {
        return problem(cloud, format!("token: {method} with content-type {content_type:?}"));
    }
    let uri: Uri = format!("/?{}", String::from_utf8_lossy(body)).parse().unwrap();
    let form: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        || form.len() != 2
    {
        return problem(cloud, format!("token: form fields {:?}", form.keys().collect::<Vec<_>>()));
    }
    let jwt = &form["assertion"];
    let parts: Vec<&str> = jwt.split('.').collect();
    let decode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok();
    let (Some(header), Some(claims), Some(signature)) =
        (decode(parts[0]), parts.get(1).and_then(|p| decode(p)), parts.get(2).and_then(|p| decode(p)))
    else {
        return problem(cloud, "token: the assertion is not three base64url parts".into());
    };
    let header: Value = serde_json::from_slice(&header).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&claims).unwrap_or_default();
    if header != json!({"alg": "RS256", "typ": "JWT", "kid": KEY_ID}) {
        return problem(cloud, format!("token: JWT header {header}"));
    }
    let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
    let claims_ok = claims["iss"] == CLIENT_EMAIL
        && claims["scope"] == "https://www.googleapis.com/auth/compute"
        && claims["aud"] == cloud.token_uri.as_str()
        && iat.abs_diff(now_s()) < 300
        && exp > iat
        && exp - iat <= 3600
        && claims.as_object().is_some_and(|c| c.len() == 5);
    if !claims_ok {
        return problem(cloud, format!("token: JWT claims {claims}"));
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &cloud.public_key);
    if public.verify(signed.as_bytes(), &signature).is_err() {
        return answer(400, json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}));
    }
    let token = format!("ya29.test-{}", cloud.issued.len() + 1);
    cloud.issued.push(token.clone());
    answer(200, json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

/// A new operation on `target`, stored; `status` is `RUNNING` or `DONE`.
fn operation(cloud: &mut Cloud, zone: &str, kind: &str, target: &str, status: &str) -> Value {
    cloud.next_id += 1;
    let name = format!("operation-1709285415{:03}-{:08x}", cloud.next_id, cloud.next_id * 7919);
    let op = json!({
        "kind": "compute#operation",
        "id": (7_000_000_000_000_000_000u64 + cloud.next_id).to_string(),
        "name": name,
        "zone": format!("{API}/projects/{PROJECT}/zones/{zone}"),
        "operationType": kind,
        "targetLink": format!("{API}/projects/{PROJECT}/zones/{zone}/instances/{target}"),
        "targetId": (4_000_000_000_000_000_000u64 + cloud.next_id).to_string(),
        "status": status,
        "user": CLIENT_EMAIL,
        "progress": if status == "DONE" { 100 } else { 0 },
        "insertTime": "2024-03-01T01:30:15.123-08:00",
        "startTime": "2024-03-01T01:30:15.456-08:00",
        "selfLink": format!("{API}/projects/{PROJECT}/zones/{zone}/operations/{name}"),
    });
    cloud.operations.insert(name, (op.clone(), None));
    op
}

fn insert(cloud: &mut Cloud, zone: &str, query: &[(String, String)], headers: &HeaderMap, body: &[u8]) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return problem(cloud, "insert: content-type is not application/json".into());
    }
    let request_id = match query {
        [] => None,
        [(k, v)] if k == "requestId" && is_uuid(v) => Some(v.clone()),
        _ => return problem(cloud, format!("insert: query {query:?} (only requestId, a UUID, is documented)")),
    };
    if let Some(op) = request_id.as_ref().and_then(|id| cloud.by_request_id.get(id)) {
        // A repeated requestId answers the first operation.
        return answer(200, cloud.operations[op].0.clone());
    }
    let Ok(instance) = serde_json::from_slice::<Value>(body) else {
        return problem(cloud, "insert: the body is not JSON".into());
    };
    if let Err(why) = check_instance(zone, &instance) {
        return problem(cloud, format!("insert: {why}"));
    }
    let failure = cloud.fail_next_insert.take();
    if let Some(Failure::Http(status, body)) = failure {
        return answer(status, body);
    }
    let name = instance["name"].as_str().unwrap().to_string();
    if cloud.instances.contains_key(&(zone.to_string(), name.clone())) {
        return answer(
            409,
            google_error(
                409,
                "alreadyExists",
                &format!("The resource 'projects/{PROJECT}/zones/{zone}/instances/{name}' already exists"),
            ),
        );
    }
    let op = operation(cloud, zone, "insert", &name, "RUNNING");
    let op_name = op["name"].as_str().unwrap().to_string();
    if let Some(id) = request_id {
        cloud.by_request_id.insert(id, op_name.clone());
    }
    match failure {
        Some(Failure::Operation(code, message, http)) => {
            let entry = cloud.operations.get_mut(&op_name).unwrap();
            entry.0["error"] = json!({"errors": [{"code": code, "message": message}]});
            entry.0["httpErrorStatusCode"] = json!(http);
            entry.0["httpErrorMessage"] = json!("SERVICE UNAVAILABLE");
        }
        _ => {
            // The instance exists from the insert on, PROVISIONING until its operation is done.
            let mut stored = instance.clone();
            let machine_type = stored["machineType"].as_str().unwrap().to_string();
            let fields = json!({
                "kind": "compute#instance",
                "id": (4_000_000_000_000_000_000u64 + cloud.next_id).to_string(),
                "creationTimestamp": format!("2024-03-01T01:30:{:02}.123-08:00", cloud.next_id % 60),
                "zone": format!("{API}/projects/{PROJECT}/zones/{zone}"),
                "machineType": format!("{API}/projects/{PROJECT}/{machine_type}"),
                "status": "PROVISIONING",
                "selfLink": format!("{API}/projects/{PROJECT}/zones/{zone}/instances/{name}"),
            });
            for (k, v) in fields.as_object().unwrap() {
                stored[k] = v.clone();
            }
            cloud.instances.insert((zone.to_string(), name.clone()), stored);
            cloud.operations.get_mut(&op_name).unwrap().1 = Some((zone.to_string(), name));
        }
    }
    answer(200, op)
}

fn wait(cloud: &mut Cloud, zone: &str, name: &str) -> Response {
    let Some((op, target)) = cloud.operations.get_mut(name) else {
        return answer(
            404,
            google_error(
                404,
                "notFound",
                &format!("The resource 'projects/{PROJECT}/zones/{zone}/operations/{name}' was not found"),
            ),
        );
    };
    op["status"] = json!("DONE");
    op["progress"] = json!(100);
    op["endTime"] = json!("2024-03-01T01:30:25.789-08:00");
    let op = op.clone();
    if let Some(key) = target.clone() {
        if let Some(instance) = cloud.instances.get_mut(&key) {
            instance["status"] = json!("RUNNING");
        }
    }
    answer(200, op)
}

/// `aggregated/instances.list` with the label filter Ferry sends, `maxResults` and `pageToken`.
fn aggregated(cloud: &mut Cloud, query: &[(String, String)]) -> Response {
    let mut filter = None;
    let mut max_results = 500;
    let mut offset = 0;
    for (k, v) in query {
        match k.as_str() {
            "filter" => filter = Some(v.clone()),
            "maxResults" => match v.parse() {
                Ok(n @ 1..=500) => max_results = n,
                _ => return problem(cloud, format!("list: maxResults {v} (0 to 500)")),
            },
            "pageToken" => match v.strip_prefix("page-from-").and_then(|n| n.parse().ok()) {
                Some(n) => offset = n,
                None => return problem(cloud, format!("list: pageToken {v} is not one the server gave")),
            },
            _ => return problem(cloud, format!("list: query parameter {k}")),
        }
    }
    // The documented filter syntax: `labels.KEY = "VALUE"`.
    let Some(value) = filter
        .as_deref()
        .and_then(|f| f.strip_prefix("labels.ferry-installation = \""))
        .and_then(|f| f.strip_suffix('"'))
        .filter(|v| v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'))
    else {
        return problem(cloud, format!("list: filter {filter:?}"));
    };
    let matching: Vec<(&String, &Value)> = cloud
        .instances
        .iter()
        .filter(|(_, i)| i["labels"]["ferry-installation"] == value)
        .map(|((zone, _), i)| (zone, i))
        .collect();
    let page = matching.iter().skip(offset).take(max_results);
    let mut items = serde_json::Map::new();
    for (zone, instance) in page {
        let scope = items.entry(format!("zones/{zone}")).or_insert_with(|| json!({"instances": []}));
        scope["instances"].as_array_mut().unwrap().push((*instance).clone());
    }
    for zone in ["us-central1-b", "us-central1-c", "us-east1-b"] {
        items.entry(format!("zones/{zone}")).or_insert_with(|| {
            json!({"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": format!("There are no results for scope 'zones/{zone}' on this page."),
                "data": [{"key": "scope", "value": format!("zones/{zone}")}],
            }})
        });
    }
    let mut list = json!({
        "kind": "compute#instanceAggregatedList",
        "id": format!("projects/{PROJECT}/aggregated/instances"),
        "items": items,
        "selfLink": format!("{API}/projects/{PROJECT}/aggregated/instances"),
    });
    if offset + max_results < matching.len() {
        list["nextPageToken"] = json!(format!("page-from-{}", offset + max_results));
    }
    answer(200, list)
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_label_key(k: &str) -> bool {
    (1..=63).contains(&k.len())
        && k.starts_with(|c: char| c.is_ascii_lowercase())
        && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks that only documented fields appear in `object`.
fn only(object: &Value, what: &str, allowed: &[&str]) -> Result<(), String> {
    let Some(map) = object.as_object() else { return Err(format!("{what} is not an object")) };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("Invalid JSON payload received. Unknown name \"{k}\" at '{what}'")),
        None => Ok(()),
    }
}

/// The `Instance` body, field by field as the documentation gives them.
fn check_instance(zone: &str, i: &Value) -> Result<(), String> {
    only(
        i,
        "instance",
        &["name", "machineType", "disks", "networkInterfaces", "labels", "metadata", "scheduling", "guestAccelerators"],
    )?;
    let name = i["name"].as_str().unwrap_or("");
    let name_ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(format!("name {name:?} does not match [a-z]([-a-z0-9]*[a-z0-9])?"));
    }
    let machine_type = i["machineType"].as_str().unwrap_or("");
    if machine_type.strip_prefix(&format!("zones/{zone}/machineTypes/")).is_none_or(str::is_empty) {
        return Err(format!("machineType {machine_type:?} is not zones/{zone}/machineTypes/TYPE"));
    }
    let disks = i["disks"].as_array().ok_or("disks is not a list")?;
    let [disk] = &disks[..] else { return Err("disks: one boot disk expected".into()) };
    only(disk, "disks[0]", &["boot", "autoDelete", "type", "initializeParams"])?;
    only(&disk["initializeParams"], "disks[0].initializeParams", &["sourceImage", "diskSizeGb"])?;
    if disk["boot"] != true || !disk["autoDelete"].is_boolean() || disk["type"] != "PERSISTENT" {
        return Err(format!("disks[0] {disk}"));
    }
    if !disk["initializeParams"]["sourceImage"].as_str().is_some_and(|s| s.contains("/images/")) {
        return Err("disks[0].initializeParams.sourceImage is not an image".into());
    }
    // int64 is a JSON string in Google's APIs.
    if disk["initializeParams"]["diskSizeGb"].as_str().is_none_or(|s| s.parse::<u64>().is_err()) {
        return Err("disks[0].initializeParams.diskSizeGb is not an int64 string".into());
    }
    let nics = i["networkInterfaces"].as_array().ok_or("networkInterfaces is not a list")?;
    for nic in nics {
        only(nic, "networkInterfaces[]", &["network", "subnetwork", "accessConfigs"])?;
        if !nic["network"].is_string() || !(nic["subnetwork"].is_null() || nic["subnetwork"].is_string()) {
            return Err(format!("networkInterfaces[] {nic}"));
        }
        for config in nic["accessConfigs"].as_array().into_iter().flatten() {
            only(config, "accessConfigs[]", &["type", "name"])?;
            if config["type"] != "ONE_TO_ONE_NAT" {
                return Err(format!("accessConfigs[].type {}", config["type"]));
            }
        }
    }
    let labels = i["labels"].as_object().ok_or("labels is not a map")?;
    if labels.len() > 64 || !labels.iter().all(|(k, v)| is_label_key(k) && v.as_str().is_some_and(is_label_value)) {
        return Err(format!("labels {} break the label rules", i["labels"]));
    }
    only(&i["metadata"], "metadata", &["items"])?;
    let items = i["metadata"]["items"].as_array().ok_or("metadata.items is not a list")?;
    let mut keys = std::collections::HashSet::new();
    let mut total = 0;
    for item in items {
        only(item, "metadata.items[]", &["key", "value"])?;
        let key = item["key"].as_str().unwrap_or("");
        if !(1..=128).contains(&key.len())
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || !keys.insert(key)
        {
            return Err(format!("metadata key {key:?}"));
        }
        total += item["value"].as_str().ok_or("a metadata value is not a string")?.len();
    }
    if total > 512 * 1024 {
        return Err("metadata over 512 KB".into());
    }
    let s = &i["scheduling"];
    only(
        s,
        "scheduling",
        &["provisioningModel", "instanceTerminationAction", "automaticRestart", "onHostMaintenance"],
    )?;
    let spot = match s["provisioningModel"].as_str() {
        Some("SPOT") => true,
        Some("STANDARD") => false,
        other => return Err(format!("scheduling.provisioningModel {other:?}")),
    };
    let maintenance = s["onHostMaintenance"].as_str().unwrap_or("MIGRATE");
    if !["MIGRATE", "TERMINATE"].contains(&maintenance) || !s["automaticRestart"].is_boolean() {
        return Err(format!("scheduling {s}"));
    }
    if spot
        && (s["automaticRestart"] != false
            || maintenance != "TERMINATE"
            || !["DELETE", "STOP"].contains(&s["instanceTerminationAction"].as_str().unwrap_or("")))
    {
        return Err(format!(
            "a Spot VM needs automaticRestart false, onHostMaintenance TERMINATE and an instanceTerminationAction: {s}"
        ));
    }
    if !spot && !s["instanceTerminationAction"].is_null() {
        return Err("instanceTerminationAction is for Spot VMs".into());
    }
    if let Some(accelerators) = i.get("guestAccelerators") {
        for a in accelerators.as_array().ok_or("guestAccelerators is not a list")? {
            only(a, "guestAccelerators[]", &["acceleratorType", "acceleratorCount"])?;
            let t = a["acceleratorType"].as_str().unwrap_or("");
            if !t.starts_with(&format!("zones/{zone}/acceleratorTypes/"))
                || a["acceleratorCount"].as_u64().is_none_or(|n| n < 1)
            {
                return Err(format!("guestAccelerators[] {a}"));
            }
        }
        if maintenance != "TERMINATE" {
            return Err(
                "instances with guest accelerators do not support live migration: onHostMaintenance must be TERMINATE"
                    .into(),
            );
        }
    }
    Ok(())
}

fn launch(installation: &str, node: &str, instance_type: &str, zone: &str, market: Market) -> LaunchRequest {
    LaunchRequest {
        installation: installation.into(),
        pool: format!("gcp-{market}"),
        node: node.into(),
        instance_type: instance_type.into(),
        zone: zone.into(),
        market,
        user_data: format!("#!/bin/sh\nexec ferry agent --join 'TOKEN-{node}'\n"),
        client_token: None,
    }
}

#[tokio::test]
async fn machines_launch_labelled_list_by_installation_and_terminate() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = fake.key_file(dir.path());
    let gce = Gce::with_credentials(fake.settings(), credentials).unwrap().with_list_page_size(1);

    let on_demand =
        gce.launch(launch("Inst.A", "gcp-1", "n1-standard-8", "us-central1-b", Market::OnDemand)).await.unwrap();
    let spot = gce.launch(launch("Inst.A", "gcp-2", "g2-standard-8", "us-central1-c", Market::Spot)).await.unwrap();
    let other =
        gce.launch(launch("inst-b", "gcp-1", "n1-standard-8", "us-central1-b", Market::OnDemand)).await.unwrap();
    assert_eq!((on_demand.market, spot.market, other.market), (Market::OnDemand, Market::Spot, Market::OnDemand));
    assert_eq!(on_demand.node(), Some("gcp-1"));
    assert!(on_demand.id.starts_with("us-central1-b/gcp-1-"), "{}", on_demand.id);
    assert_ne!(on_demand.id, other.id, "two installations' nodes of one name get two machines");

    {
        // What Compute Engine stored: the start-up script as metadata, labels, the spot scheduling, the GPU.
        let cloud = fake.cloud();
        let (zone, name) = on_demand.id.split_once('/').unwrap();
        let stored = &cloud.instances[&(zone.to_string(), name.to_string())];
        let items: BTreeMap<&str, &str> = stored["metadata"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap(), i["value"].as_str().unwrap()))
            .collect();
        assert_eq!(items["startup-script"], "#!/bin/sh\nexec ferry agent --join 'TOKEN-gcp-1'\n");
        assert_eq!(items["ferry-installation"], "Inst.A");
        assert_eq!(
            stored["labels"],
            json!({"ferry-installation": "inst_a", "ferry-pool": "gcp-on-demand", "ferry-node": "gcp-1"})
        );
        assert_eq!(
            stored["guestAccelerators"],
            json!([{"acceleratorType": "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}])
        );
        assert_eq!(stored["scheduling"]["onHostMaintenance"], "TERMINATE");
        let (zone, name) = spot.id.split_once('/').unwrap();
        let stored = &cloud.instances[&(zone.to_string(), name.to_string())];
        assert_eq!(stored["scheduling"]["provisioningModel"], "SPOT");
        assert_eq!(stored["scheduling"]["instanceTerminationAction"], "DELETE");
        assert!(stored.get("guestAccelerators").is_none(), "G2 types come with their GPUs");
    }

    // Listing finds the installation's machines by label, a page of one at a time, and only them.
    let listed = gce.list("Inst.A").await.unwrap();
    assert_eq!(
        summary(&listed),
        [
            "gcp-1 running on-demand n1-standard-8 us-central1-b pool=gcp-on-demand",
            "gcp-2 running spot g2-standard-8 us-central1-c pool=gcp-spot",
        ]
    );
    assert!(gce.list("inst-c").await.unwrap().is_empty());

    // Terminated machines are gone from the list; the other installation's are untouched; terminating again (404
    // from Compute Engine) is fine.
    let ids: Vec<String> = listed.iter().map(|i| i.id.clone()).collect();
    gce.terminate(&ids).await.unwrap();
    assert!(gce.list("Inst.A").await.unwrap().is_empty());
    assert_eq!(gce.list("inst-b").await.unwrap().len(), 1);
    gce.terminate(&ids).await.unwrap();

    // A launch with a client token sends it as a requestId: repeated, it answers the first machine.
    let mut again = launch("inst-b", "gcp-9", "n1-standard-8", "us-central1-c", Market::OnDemand);
    again.client_token = Some("inst-b/gcp-9/1".into());
    let first = gce.launch(again.clone()).await.unwrap();
    assert_eq!(gce.launch(again).await.unwrap().id, first.id);
    assert_eq!(gce.list("inst-b").await.unwrap().len(), 2);

    // One token served every call.
    assert_eq!(fake.cloud().issued.len(), 1);
    fake.assert_no_problems();
}

#[tokio::test]
async fn each_documented_error_has_its_kind() {
    let fake = Fake::start().await;
    let gce = Gce::with_credentials(fake.settings(), GoogleCredentials::access_token(EXPLICIT_TOKEN)).unwrap();
    let cases = [
        (Failure::Operation("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone 'projects/ferry-test/zones/us-central1-b' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.", 503), "NoCapacity ZONE_RESOURCE_POOL_EXHAUSTED"),
        (Failure::Operation("QUOTA_EXCEEDED", "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1.", 403), "QuotaExceeded QUOTA_EXCEEDED"),
        (Failure::Http(403, google_error(403, "quotaExceeded", "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-central1.")), "QuotaExceeded quotaExceeded"),
        (Failure::Http(403, google_error(403, "rateLimitExceeded", "Rate Limit Exceeded")), "Transient rateLimitExceeded"),
        (Failure::Http(403, google_error(403, "forbidden", "Required 'compute.instances.create' permission for 'projects/ferry-test/zones/us-central1-b/instances/gcp-1'")), "Unauthorized forbidden"),
        (Failure::Http(400, google_error(400, "invalid", "Invalid value for field 'resource.machineType': 'zones/us-central1-b/machineTypes/n1-standard-8'. Machine type with name 'n1-standard-8' does not exist in zone 'us-central1-b'.")), "Invalid invalid"),
        (Failure::Http(404, google_error(404, "notFound", "The resource 'projects/debian-cloud/global/images/family/debian-12' was not found")), "Invalid notFound"),
        (Failure::Http(503, google_error(503, "backendError", "Internal error. Please try again or contact Google Support.")), "Transient backendError"),
    ];
    for (failure, expected) in cases {
        fake.cloud().fail_next_insert = Some(failure);
        let err = gce
            .launch(launch("inst-a", "gcp-1", "n1-standard-8", "us-central1-b", Market::OnDemand))
            .await
            .unwrap_err();
        let kind = format!("{err:?}");
        assert_eq!(format!("{} {}", &kind[..kind.find('(').unwrap()], err.refusal().code), expected, "{err}");
    }
    // A failed operation created nothing.
    assert!(gce.list("inst-a").await.unwrap().is_empty());
    // A machine type the pool does not offer is refused before any call.
    let err =
        gce.launch(launch("inst-a", "gcp-1", "a2-highgpu-1g", "us-central1-b", Market::OnDemand)).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Invalid(r) if r.code == "FerryRefused"), "{err}");
    fake.assert_no_problems();
}

#[tokio::test]
async fn refused_credentials_are_unauthorized_and_never_shown() {
    let fake = Fake::start().await;
    // A token Compute Engine does not accept.
    let gce = Gce::with_credentials(fake.settings(), GoogleCredentials::access_token("ya29.revoked-secret")).unwrap();
    let err = gce.list("inst-a").await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "authError"), "{err:?}");
    let shown = format!("{err} {err:?} {gce:?}");
    assert!(!shown.contains("revoked-secret"), "{shown}");

    // A key the token endpoint refuses.
    let dir = tempfile::tempdir().unwrap();
    let gce = Gce::with_credentials(fake.settings(), fake.key_file(dir.path())).unwrap();
    fake.cloud().fail_next_token =
        Some((400, json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})));
    let err = gce.list("inst-a").await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "invalid_grant"), "{err:?}");
    let shown = format!("{err} {err:?} {gce:?}");
    let key_body: String = KEY_PEM.lines().nth(1).unwrap().into();
    for secret in [key_body.as_str(), KEY_ID, "eyJ", "assertion"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{shown}");
    // The next call signs in again, and works.
    assert!(gce.list("inst-a").await.unwrap().is_empty());
    fake.assert_no_problems();
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_transient() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let fake = Fake::start().await;
    let settings = GceSettings { endpoint: Some(url), ..fake.settings() };
    let gce = Gce::with_credentials(settings, GoogleCredentials::access_token(EXPLICIT_TOKEN)).unwrap();
    let err = gce.list("inst-a").await.unwrap_err();
    assert!(matches!(&err, ProviderError::Transient(r) if r.code == "NoAnswer"), "{err:?}");
    assert!(!err.to_string().contains(EXPLICIT_TOKEN));
}
