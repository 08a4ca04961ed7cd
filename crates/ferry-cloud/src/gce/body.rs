//! Compute Engine's JSON: the `Instance` body of `instances.insert`, the list filter, and reading instances,
//! aggregated lists, operations and errors (cloud.google.com/compute/docs/reference/rest/v1). Pure: values in,
//! values out, so the tests read exactly what goes on the wire.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{GceSettings, PROVIDER};
use crate::rest::{self, malformed};
use crate::{
    Instance, InstanceState, InstanceType, LaunchRequest, Market, ProviderError, Refusal, TAG_INSTALLATION, TAG_NODE,
    TAG_POOL,
};

/// The longest label value Compute Engine takes.
const LABEL_VALUE_CHARS_MAX: usize = 63;

/// A label value as Compute Engine takes it: lowercase letters, digits, `_` and `-`, at most 63 characters.
/// Anything else becomes `_` (uppercase letters become lowercase). Labels are what listing filters on; the exact
/// values are kept in the instance's metadata too, under the same keys, and read back from there.
pub(crate) fn label_value(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .take(LABEL_VALUE_CHARS_MAX)
        .collect()
}

/// The `Instance` that `instances.insert` creates for one node.
pub(crate) fn instance(settings: &GceSettings, offered: &InstanceType, name: &str, request: &LaunchRequest) -> Value {
    let zone = &request.zone;
    let tags = request.tags();
    let labels: BTreeMap<&str, String> = tags.iter().map(|(k, v)| (k.as_str(), label_value(v))).collect();
    // The exact tags, then the start-up script, which Compute Engine's guest environment runs on every boot.
    let mut items: Vec<Value> = tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
    items.push(json!({ "key": "startup-script", "value": request.user_data }));
    let mut interface = json!({ "network": settings.network });
    if let Some(subnetwork) = &settings.subnetwork {
        interface["subnetwork"] = json!(subnetwork);
    }
    if settings.external_ip {
        interface["accessConfigs"] = json!([{ "type": "ONE_TO_ONE_NAT", "name": "External NAT" }]);
    }
    let mut body = json!({
        "name": name,
        "machineType": format!("zones/{zone}/machineTypes/{}", request.instance_type),
        "disks": [{
            "boot": true,
            "autoDelete": true,
            "type": "PERSISTENT",
            "initializeParams": {
                "sourceImage": settings.image,
                // int64 fields are JSON strings in Google's APIs.
                "diskSizeGb": settings.boot_disk_gb.to_string(),
            },
        }],
        "networkInterfaces": [interface],
        "labels": labels,
        "metadata": { "items": items },
        "scheduling": scheduling(request.market, offered.gpus > 0),
    });
    if let Some(accelerator) = settings.accelerator_by_type.get(&offered.name) {
        body["guestAccelerators"] = json!([{
            "acceleratorType": format!("zones/{zone}/acceleratorTypes/{accelerator}"),
            "acceleratorCount": offered.gpus,
        }]);
    }
    body
}

/// How the machine is scheduled. GPUs cannot move with a live migration, so a machine with them must stop for host
/// maintenance; a spot machine is deleted when reclaimed (the core requeues its jobs) and never restarted behind
/// Ferry's back.
fn scheduling(market: Market, gpus: bool) -> Value {
    match market {
        Market::Spot => json!({
            "provisioningModel": "SPOT",
            "instanceTerminationAction": "DELETE",
            "automaticRestart": false,
            "onHostMaintenance": "TERMINATE",
        }),
        Market::OnDemand if gpus => json!({
            "provisioningModel": "STANDARD",
            "automaticRestart": true,
            "onHostMaintenance": "TERMINATE",
        }),
        Market::OnDemand => json!({ "provisioningModel": "STANDARD", "automaticRestart": true }),
    }
}

/// The `filter` of `aggregated/instances.list` that finds an installation's machines by their label.
pub(crate) fn installation_filter(installation: &str) -> String {
    format!("labels.{TAG_INSTALLATION} = \"{}\"", label_value(installation))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceJson {
    name: String,
    /// A URL ending in `/zones/{zone}`.
    zone: String,
    /// A URL ending in `/machineTypes/{type}`.
    machine_type: String,
    status: String,
    creation_timestamp: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    metadata: MetadataJson,
    #[serde(default)]
    scheduling: SchedulingJson,
}

#[derive(Deserialize, Default)]
struct MetadataJson {
    #[serde(default)]
    items: Vec<ItemJson>,
}

#[derive(Deserialize)]
struct ItemJson {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SchedulingJson {
    provisioning_model: Option<String>,
    #[serde(default)]
    preemptible: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AggregatedListJson {
    /// Required, unlike the lists inside it, so that an answer that is not Compute Engine's is not read as "none".
    kind: String,
    #[serde(default)]
    items: BTreeMap<String, ScopedListJson>,
    next_page_token: Option<String>,
    #[serde(default)]
    unreachables: Vec<String>,
}

#[derive(Deserialize)]
struct ScopedListJson {
    #[serde(default)]
    instances: Vec<InstanceJson>,
}

/// A page of the aggregated list: the installation's instances and the token of the next page.
#[derive(Debug)]
pub(crate) struct Page {
    pub instances: Vec<Instance>,
    pub next_page_token: Option<String>,
}

/// One page of `aggregated/instances.list`, keeping the machines whose exact installation (from the metadata) is
/// `installation`: two installations whose names differ only where labels cannot tell them apart share a label.
pub(crate) fn aggregated_page(body: &str, installation: &str) -> Result<Page, ProviderError> {
    let list: AggregatedListJson = rest::json(PROVIDER, "aggregated instances list", body)?;
    if list.kind != "compute#instanceAggregatedList" {
        return Err(malformed(PROVIDER, format!("the list answer is a {:?}", list.kind)));
    }
    if !list.unreachables.is_empty() {
        // A partial list would look like machines gone: the caller tries again later instead.
        return Err(ProviderError::Transient(Refusal {
            provider: PROVIDER,
            code: "Unreachable".into(),
            message: format!("the list could not reach {}", list.unreachables.join(", ")),
            request_id: None,
        }));
    }
    let instances = list
        .items
        .into_values()
        .flat_map(|scope| scope.instances)
        .map(to_instance)
        .filter(|i| i.as_ref().map_or(true, |i| i.tags.get(TAG_INSTALLATION).map(String::as_str) == Some(installation)))
        .collect::<Result<_, _>>()?;
    Ok(Page { instances, next_page_token: list.next_page_token.filter(|t| !t.is_empty()) })
}

/// One instance, as `instances.get` answers.
pub(crate) fn instance_answer(body: &str) -> Result<Instance, ProviderError> {
    to_instance(rest::json(PROVIDER, "instance", body)?)
}

fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

fn to_instance(json: InstanceJson) -> Result<Instance, ProviderError> {
    let zone = last_segment(&json.zone).to_string();
    // Compute Engine's TERMINATED is a stopped machine that still exists; a deleted one is no longer listed.
    let state = match json.status.as_str() {
        "PROVISIONING" | "STAGING" => InstanceState::Pending,
        "RUNNING" | "REPAIRING" => InstanceState::Running,
        "STOPPING" | "SUSPENDING" => InstanceState::Stopping,
        "STOPPED" | "SUSPENDED" | "TERMINATED" => InstanceState::Stopped,
        other => return Err(malformed(PROVIDER, format!("instance {} is in the unknown state {other:?}", json.name))),
    };
    let launch_time_ms = rest::rfc3339_ms(&json.creation_timestamp).ok_or_else(|| {
        malformed(PROVIDER, format!("instance {} has creationTimestamp {:?}", json.name, json.creation_timestamp))
    })?;
    // The exact values from the metadata; labels (lowercased, cut) only where the metadata lacks them.
    let mut tags: BTreeMap<String, String> =
        json.labels.into_iter().filter(|(k, _)| [TAG_INSTALLATION, TAG_POOL, TAG_NODE].contains(&k.as_str())).collect();
    for item in json.metadata.items {
        if [TAG_INSTALLATION, TAG_POOL, TAG_NODE].contains(&item.key.as_str()) {
            tags.insert(item.key, item.value);
        }
    }
    let spot = json.scheduling.provisioning_model.as_deref() == Some("SPOT") || json.scheduling.preemptible;
    Ok(Instance {
        id: format!("{zone}/{}", json.name),
        state,
        instance_type: last_segment(&json.machine_type).to_string(),
        zone,
        market: if spot { Market::Spot } else { Market::OnDemand },
        launch_time_ms,
        tags,
    })
}

/// A zonal operation: what `insert`, `delete` and `wait` answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Operation {
    pub name: String,
    /// `PENDING`, `RUNNING` or `DONE`.
    pub status: String,
    #[serde(default)]
    error: Option<OperationErrors>,
    http_error_status_code: Option<u16>,
}

#[derive(Deserialize)]
struct OperationErrors {
    #[serde(default)]
    errors: Vec<OperationError>,
}

#[derive(Deserialize)]
struct OperationError {
    code: String,
    #[serde(default)]
    message: String,
}

pub(crate) fn operation(body: &str) -> Result<Operation, ProviderError> {
    rest::json(PROVIDER, "operation", body)
}

impl Operation {
    pub fn done(&self) -> bool {
        self.status == "DONE"
    }

    /// What the operation failed with, if it did: its first error, such as `ZONE_RESOURCE_POOL_EXHAUSTED`.
    pub fn failure(&self) -> Option<ProviderError> {
        let first = self.error.as_ref()?.errors.first()?;
        let refusal = Refusal {
            provider: PROVIDER,
            code: first.code.clone(),
            message: first.message.clone(),
            request_id: Some(self.name.clone()),
        };
        Some(classify(self.http_error_status_code.unwrap_or(400), refusal))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorJson,
}

#[derive(Deserialize)]
struct ErrorJson {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorItem {
    reason: Option<String>,
}

/// The error a failing answer stands for, from Google's error body
/// `{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}`; its code is the first
/// reason (such as `quotaExceeded`), else the status (such as `PERMISSION_DENIED`).
pub(crate) fn error(status: u16, body: &str) -> ProviderError {
    let (code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => {
            let reason = b.error.errors.into_iter().find_map(|e| e.reason);
            (reason.or(b.error.status).unwrap_or_else(|| format!("HTTP{status}")), b.error.message)
        }
        Err(_) => (format!("HTTP{status}"), String::new()),
    };
    classify(status, Refusal { provider: PROVIDER, code, message, request_id: None })
}

/// Maps Compute Engine's reasons and operation error codes to what the caller should do. Unknown client errors are
/// invalid requests; unknown server errors are transient.
fn classify(status: u16, refusal: Refusal) -> ProviderError {
    match refusal.code.as_str() {
        "ZONE_RESOURCE_POOL_EXHAUSTED" | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" | "resourcePoolExhausted" => {
            return ProviderError::NoCapacity(refusal)
        }
        "QUOTA_EXCEEDED" | "quotaExceeded" => return ProviderError::QuotaExceeded(refusal),
        // Google answers 403 for rate limits too: they pass.
        "rateLimitExceeded"
        | "userRateLimitExceeded"
        | "backendError"
        | "internalError"
        | "INTERNAL_ERROR"
        | "RATE_LIMIT_EXCEEDED"
        | "resourceNotReady" => return ProviderError::Transient(refusal),
        _ => {}
    }
    ProviderError::by_status(status, refusal)
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    fn request(market: Market) -> LaunchRequest {
        LaunchRequest {
            installation: "Inst.1".into(),
            pool: "gcp-spot".into(),
            node: "gcp-spot-3".into(),
            instance_type: "n1-standard-8".into(),
            zone: "us-central1-b".into(),
            market,
            user_data: "#!/bin/sh\nferry agent --join TOKEN\n".into(),
            client_token: None,
        }
    }

    #[test]
    fn a_spot_gpu_launch_asks_for_a_labelled_spot_machine_with_its_accelerator() {
        let mut settings = super::super::tests::settings();
        settings.subnetwork = Some("regions/us-central1/subnetworks/ferry".into());
        let offered = &settings.instance_types[0];
        let body = instance(&settings, offered, "gcp-spot-3-0a1b2c3d", &request(Market::Spot));
        expect![[r##"
            {
              "disks": [
                {
                  "autoDelete": true,
                  "boot": true,
                  "initializeParams": {
                    "diskSizeGb": "100",
                    "sourceImage": "projects/debian-cloud/global/images/family/debian-12"
                  },
                  "type": "PERSISTENT"
                }
              ],
              "guestAccelerators": [
                {
                  "acceleratorCount": 1,
                  "acceleratorType": "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4"
                }
              ],
              "labels": {
                "ferry-installation": "inst_1",
                "ferry-node": "gcp-spot-3",
                "ferry-pool": "gcp-spot"
              },
              "machineType": "zones/us-central1-b/machineTypes/n1-standard-8",
              "metadata": {
                "items": [
                  {
                    "key": "ferry-installation",
                    "value": "Inst.1"
                  },
                  {
                    "key": "ferry-node",
                    "value": "gcp-spot-3"
                  },
                  {
                    "key": "ferry-pool",
                    "value": "gcp-spot"
                  },
                  {
                    "key": "startup-script",
                    "value": "#!/bin/sh\nferry agent --join TOKEN\n"
                  }
                ]
              },
              "name": "gcp-spot-3-0a1b2c3d",
              "networkInterfaces": [
                {
                  "accessConfigs": [
                    {
                      "name": "External NAT",
                      "type": "ONE_TO_ONE_NAT"
                    }
                  ],
                  "network": "global/networks/default",
                  "subnetwork": "regions/us-central1/subnetworks/ferry"
                }
              ],
              "scheduling": {
                "automaticRestart": false,
                "instanceTerminationAction": "DELETE",
                "onHostMaintenance": "TERMINATE",
                "provisioningModel": "SPOT"
              }
            }"##]]
        .assert_eq(&serde_json::to_string_pretty(&body).unwrap());
    }

    #[test]
    fn an_on_demand_machine_without_gpus_may_live_migrate() {
        let mut settings = super::super::tests::settings();
        settings.external_ip = false;
        let mut offered = settings.instance_types[0].clone();
        (offered.name, offered.gpus, offered.gpu_model) = ("e2-standard-4".into(), 0, None);
        let mut r = request(Market::OnDemand);
        r.instance_type = offered.name.clone();
        let body = instance(&settings, &offered, "n", &r);
        assert_eq!(body["scheduling"], json!({"provisioningModel": "STANDARD", "automaticRestart": true}));
        assert_eq!(body["networkInterfaces"], json!([{"network": "global/networks/default"}]));
        assert!(body.get("guestAccelerators").is_none());
    }

    #[test]
    fn labels_are_lowercase_and_short() {
        assert_eq!(label_value("Prod/EU West"), "prod_eu_west");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
        assert_eq!(installation_filter("Inst.1"), "labels.ferry-installation = \"inst_1\"");
    }

    /// An aggregated list page written from the documented `InstanceAggregatedList`: one zone with two machines
    /// (one of another installation whose label is the same), one zone with the "no results" warning.
    const AGGREGATED: &str = r##"{
      "kind": "compute#instanceAggregatedList",
      "id": "projects/ferry-test/aggregated/instances",
      "items": {
        "zones/us-central1-b": {
          "instances": [
            {
              "kind": "compute#instance",
              "id": "4567890123456789012",
              "creationTimestamp": "2024-03-01T01:30:15.123-08:00",
              "name": "gcp-spot-3-0a1b2c3d",
              "machineType": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b/machineTypes/n1-standard-8",
              "status": "RUNNING",
              "zone": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b",
              "labels": {"ferry-installation": "inst_1", "ferry-node": "gcp-spot-3", "ferry-pool": "gcp-spot"},
              "metadata": {"kind": "compute#metadata", "fingerprint": "abc=", "items": [
                {"key": "ferry-installation", "value": "Inst.1"},
                {"key": "ferry-node", "value": "gcp-spot-3"},
                {"key": "ferry-pool", "value": "gcp-spot"},
                {"key": "startup-script", "value": "#!/bin/sh\nsecret"}
              ]},
              "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE", "automaticRestart": false, "onHostMaintenance": "TERMINATE", "preemptible": true}
            },
            {
              "kind": "compute#instance",
              "id": "4567890123456789013",
              "creationTimestamp": "2024-03-01T02:00:00.000-08:00",
              "name": "gcp-1-99999999",
              "machineType": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b/machineTypes/n1-standard-8",
              "status": "STAGING",
              "zone": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b",
              "labels": {"ferry-installation": "inst_1"},
              "metadata": {"items": [{"key": "ferry-installation", "value": "inst_1"}]}
            }
          ]
        },
        "zones/us-central1-c": {
          "warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope 'zones/us-central1-c' on this page.", "data": [{"key": "scope", "value": "zones/us-central1-c"}]}
        }
      },
      "nextPageToken": "CkQI-page-2",
      "selfLink": "https://www.googleapis.com/compute/v1/projects/ferry-test/aggregated/instances"
    }"##;

    #[test]
    fn an_aggregated_page_gives_the_installations_machines_and_the_next_page() {
        let page = aggregated_page(AGGREGATED, "Inst.1").unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("CkQI-page-2"));
        expect![[r#"
            [
                Instance {
                    id: "us-central1-b/gcp-spot-3-0a1b2c3d",
                    state: Running,
                    instance_type: "n1-standard-8",
                    zone: "us-central1-b",
                    market: Spot,
                    launch_time_ms: 1709285415123,
                    tags: {
                        "ferry-installation": "Inst.1",
                        "ferry-node": "gcp-spot-3",
                        "ferry-pool": "gcp-spot",
                    },
                },
            ]
        "#]]
        .assert_debug_eq(&page.instances);
        let other = aggregated_page(AGGREGATED, "inst_1").unwrap();
        assert_eq!(other.instances.len(), 1);
        assert_eq!(other.instances[0].state, InstanceState::Pending);
    }

    #[test]
    fn a_partial_or_foreign_list_is_transient() {
        let partial =
            r#"{"kind": "compute#instanceAggregatedList", "items": {}, "unreachables": ["zones/us-east1-b"]}"#;
        assert!(aggregated_page(partial, "x").unwrap_err().is_transient());
        assert!(aggregated_page("<html>502</html>", "x").unwrap_err().is_transient());
        assert!(aggregated_page(r#"{"kind": "compute#operation"}"#, "x").unwrap_err().is_transient());
    }

    fn check(err: ProviderError, expected: Expect) {
        expected.assert_eq(&format!("{err:?}\n{err}"));
    }

    /// An operation that ended in an error, as `zoneOperations.wait` answers it.
    fn failed_operation(code: &str, message: &str, http: u16) -> String {
        json!({
            "kind": "compute#operation",
            "id": "7654321098765432109",
            "name": "operation-1709285415123-abcdef",
            "zone": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b",
            "operationType": "insert",
            "targetLink": "https://www.googleapis.com/compute/v1/projects/ferry-test/zones/us-central1-b/instances/gcp-1-0a1b2c3d",
            "status": "DONE",
            "progress": 100,
            "httpErrorStatusCode": http,
            "httpErrorMessage": "SERVICE UNAVAILABLE",
            "error": {"errors": [{"code": code, "message": message}]},
        })
        .to_string()
    }

    #[test]
    fn an_exhausted_zone_is_no_capacity() {
        let op = operation(&failed_operation(
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "The zone 'projects/ferry-test/zones/us-central1-b' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.",
            503,
        ))
        .unwrap();
        assert!(op.done());
        check(
            op.failure().unwrap(),
            expect![[r#"
                NoCapacity(Refusal { provider: "Compute Engine", code: "ZONE_RESOURCE_POOL_EXHAUSTED", message: "The zone 'projects/ferry-test/zones/us-central1-b' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.", request_id: Some("operation-1709285415123-abcdef") })
                Compute Engine answered ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/ferry-test/zones/us-central1-b' does not have enough resources available to fulfill the request.  Try a different zone, or try again later (request operation-1709285415123-abcdef); there is no capacity for it now: try another zone or instance type, on-demand instead of spot, or the next pool"#]],
        );
    }

    #[test]
    fn an_operations_quota_error_is_quota() {
        let op = operation(&failed_operation(
            "QUOTA_EXCEEDED",
            "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1.",
            403,
        ))
        .unwrap();
        check(
            op.failure().unwrap(),
            expect![[r#"
                QuotaExceeded(Refusal { provider: "Compute Engine", code: "QUOTA_EXCEEDED", message: "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1.", request_id: Some("operation-1709285415123-abcdef") })
                Compute Engine answered QUOTA_EXCEEDED: Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1 (request operation-1709285415123-abcdef); the account's quota is reached: raise it with the provider (for Compute Engine: IAM & Admin, Quotas, the region's CPUs or GPUs of the family) or lower the pool's max_nodes"#]],
        );
    }

    /// Google's error body, as the API answers a failing call.
    fn google_error(status: u16, reason: &str, message: &str, status_name: &str) -> String {
        json!({"error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": if reason.contains("Limit") { "usageLimits" } else { "global" }, "reason": reason}],
            "status": status_name,
        }})
        .to_string()
    }

    #[test]
    fn http_errors_by_reason_then_status() {
        let cases = [
            (403, "rateLimitExceeded", "Rate Limit Exceeded", "PERMISSION_DENIED"),
            (403, "quotaExceeded", "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-central1.", "PERMISSION_DENIED"),
            (403, "forbidden", "Required 'compute.instances.create' permission for 'projects/ferry-test/zones/us-central1-b/instances/gcp-1'", "PERMISSION_DENIED"),
            (401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "UNAUTHENTICATED"),
            (400, "invalid", "Invalid value for field 'resource.machineType': 'zones/us-central1-b/machineTypes/n9-huge'. Machine type with name 'n9-huge' does not exist in zone 'us-central1-b'.", "INVALID_ARGUMENT"),
            (404, "notFound", "The resource 'projects/ferry-test/global/images/family/nope' was not found", "NOT_FOUND"),
            (409, "alreadyExists", "The resource 'projects/ferry-test/zones/us-central1-b/instances/gcp-1' already exists", "ALREADY_EXISTS"),
            (429, "rateLimitExceeded", "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute'", "RESOURCE_EXHAUSTED"),
            (503, "backendError", "Internal error. Please try again or contact Google Support.", "UNAVAILABLE"),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(status, reason, message, name)| {
                let err = error(*status, &google_error(*status, reason, message, name));
                let kind = format!("{err:?}");
                format!("{status} {reason} -> {}", &kind[..kind.find('(').unwrap()])
            })
            .collect();
        expect![[r#"
            [
                "403 rateLimitExceeded -> Transient",
                "403 quotaExceeded -> QuotaExceeded",
                "403 forbidden -> Unauthorized",
                "401 authError -> Unauthorized",
                "400 invalid -> Invalid",
                "404 notFound -> Invalid",
                "409 alreadyExists -> Invalid",
                "429 rateLimitExceeded -> Transient",
                "503 backendError -> Transient",
            ]
        "#]]
        .assert_debug_eq(&got);
        check(
            error(
                401,
                &google_error(401, "authError", "Request had invalid authentication credentials.", "UNAUTHENTICATED"),
            ),
            expect![[r#"
                Unauthorized(Refusal { provider: "Compute Engine", code: "authError", message: "Request had invalid authentication credentials.", request_id: None })
                Compute Engine answered authError: Request had invalid authentication credentials; the credentials were refused: check them (for Compute Engine: the service account key in GOOGLE_APPLICATION_CREDENTIALS, or the token in GOOGLE_OAUTH_ACCESS_TOKEN, or the machine's service account through its metadata server, with a role such as roles/compute.instanceAdmin.v1 on the project) and that they may run, describe and terminate instances"#]],
        );
    }

    #[test]
    fn a_body_that_is_not_googles_is_classified_by_its_status() {
        assert!(matches!(error(403, ""), ProviderError::Unauthorized(r) if r.code == "HTTP403"));
        assert!(error(502, "<html>bad gateway</html>").is_transient());
        assert!(matches!(error(400, "garbage"), ProviderError::Invalid(_)));
    }
}
