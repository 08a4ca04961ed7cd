//! The Azure provider against a local server that plays Azure Resource Manager's Compute API (api-version
//! 2024-07-01) and Microsoft Entra ID's token endpoint, on loopback. No emulator of Azure Resource Manager exists:
//! this server answers in the documented formats (learn.microsoft.com/rest/api/compute/virtual-machines: the
//! `VirtualMachine` resource, `VirtualMachineListResult` with `nextLink`, `Azure-AsyncOperation` statuses, the
//! `{"error": {"code", "message"}}` body) and checks every request field by field against the documentation
//! (method, path, api-version, bearer token, JSON body), refusing anything else with a 400 `InvalidRequestContent`
//! and recording why, so each test ends by checking that nothing was refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use ferry_cloud::azure::{Azure, AzureCredentials, AzureImage, AzureSettings};
use ferry_cloud::{InstanceType, LaunchRequest, Market, Provider, ProviderError};
use serde_json::{json, Value};

const SUBSCRIPTION: &str = "00000000-0000-4000-8000-0000000000aa";
const RESOURCE_GROUP: &str = "ferry-burst";
const TENANT: &str = "72f988bf-0000-4000-8000-0000000000bb";
const CLIENT_ID: &str = "c0ffee00-0000-4000-8000-0000000000cc";
const CLIENT_SECRET: &str = "Xy8Q~test-client-secret-value";
const API_VERSION: &str = "2024-07-01";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerryTestKeyOnlyForTestsXXXXXXXXXXXXXXXXXXXX ferry@test";

/// A failure the server answers the next create with.
#[derive(Clone)]
enum Failure {
    /// The `PUT` itself is refused with this status and error body.
    Http(u16, Value),
    /// The `PUT` is accepted and its long-running operation fails with this error.
    Operation(Value),
}

#[derive(Default)]
struct Cloud {
    url: String,
    issued: Vec<String>,
    vms: BTreeMap<String, Value>,
    /// Operations by id: polls left before the end, the VM, and the error it ends with (`None`: success).
    operations: HashMap<String, (u32, String, Option<Value>)>,
    next_id: u64,
    fail_next_create: Option<Failure>,
    problems: Vec<String>,
    page_size: usize,
}

type Shared = Arc<Mutex<Cloud>>;

struct Fake {
    cloud: Shared,
    url: String,
}

impl Fake {
    async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cloud: Shared = Arc::new(Mutex::new(Cloud { url: url.clone(), page_size: 2, ..Cloud::default() }));
        // A VM in the resource group that is not Ferry's, which listing must leave out.
        cloud.lock().unwrap().vms.insert(
            "build-box".into(),
            json!({"name": "build-box", "type": "Microsoft.Compute/virtualMachines", "location": "eastus",
                   "properties": {"hardwareProfile": {"vmSize": "Standard_B2s"}, "provisioningState": "Succeeded"}}),
        );
        let app = axum::Router::new().fallback(handle).with_state(cloud.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { cloud, url }
    }

    fn settings(&self) -> AzureSettings {
        AzureSettings {
            subscription_id: SUBSCRIPTION.into(),
            resource_group: RESOURCE_GROUP.into(),
            location: "eastus".into(),
            management_endpoint: Some(self.url.clone()),
            login_endpoint: Some(self.url.clone()),
            image: AzureImage::Marketplace {
                publisher: "Canonical".into(),
                offer: "ubuntu-24_04-lts".into(),
                sku: "server".into(),
                version: "latest".into(),
            },
            os_disk_gb: 128,
            subnet_id: format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Network/virtualNetworks/ferry/subnets/nodes"),
            admin_username: "ferry".into(),
            ssh_public_key: SSH_KEY.into(),
            instance_types: vec![
                gpu_type("Standard_NC4as_T4_v3", "T4", Market::OnDemand),
                gpu_type("Standard_NC8as_T4_v3", "T4", Market::Spot),
            ],
            credentials: None,
        }
    }

    fn azure(&self) -> Azure {
        Azure::with_credentials(self.settings(), AzureCredentials::new(TENANT, CLIENT_ID, CLIENT_SECRET)).unwrap()
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
        cpu_millis: 4000,
        memory_bytes: 28 << 30,
        price_hour: if market == Market::Spot { 0.16 } else { 0.526 },
        market,
        zones: vec!["1".into(), "2".into()],
    }
}

fn arm_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn answer(status: u16, body: Value) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    response.headers_mut().insert("x-ms-request-id", HeaderValue::from_static("4f2d0e6c-0000-4000-8000-000000000009"));
    response
}

fn problem(cloud: &mut Cloud, what: String) -> Response {
    cloud.problems.push(what.clone());
    answer(400, arm_error("InvalidRequestContent", &what))
}

async fn handle(State(cloud): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut cloud = cloud.lock().unwrap();
    let cloud = &mut *cloud;
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    if let [tenant, "oauth2", "v2.0", "token"] = &path[..] {
        return token(cloud, tenant, &method, &headers, &body);
    }
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !cloud.issued.iter().any(|t| authorization == format!("Bearer {t}")) {
        return answer(401, arm_error("InvalidAuthenticationToken", "The access token is invalid."));
    }
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return problem(cloud, format!("{method} {}: api-version {:?}", uri.path(), query.get("api-version")));
    }
    match (&method, &path[..]) {
        (
            _,
            ["subscriptions", SUBSCRIPTION, "providers", "Microsoft.Compute", "locations", "eastus", "operations", id],
        ) => operation_status(cloud, id),
        (
            _,
            ["subscriptions", SUBSCRIPTION, "resourceGroups", RESOURCE_GROUP, "providers", "Microsoft.Compute", "virtualMachines", rest @ ..],
        ) => {
            match (&method, rest) {
                (&Method::PUT, [name]) => create(cloud, name, &headers, &body),
                (&Method::GET, [name]) => match cloud.vms.get(*name) {
                    Some(vm) => answer(200, vm.clone()),
                    None => not_found(name),
                },
                (&Method::DELETE, [name]) => {
                    // Azure Resource Manager answers 204 for a resource that is not there, 202 while deleting.
                    if cloud.vms.remove(*name).is_none() {
                        return (StatusCode::NO_CONTENT, ()).into_response();
                    }
                    (StatusCode::ACCEPTED, ()).into_response()
                }
                (&Method::GET, []) => list(cloud, &query),
                _ => problem(cloud, format!("{method} {} is not a call Ferry should make", uri.path())),
            }
        }
        _ => problem(cloud, format!("{method} {} is not a call Ferry should make", uri.path())),
    }
}

fn not_found(name: &str) -> Response {
    answer(404, arm_error("ResourceNotFound", &format!("The Resource 'Microsoft.Compute/virtualMachines/{name}' under resource group '{RESOURCE_GROUP}' was not found.")))
}

/// Microsoft Entra ID's token endpoint: the client credentials grant with the management scope.
fn token(cloud: &mut Cloud, tenant: &str, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if method != Method::POST || content_type != "application/x-www-form-urlencoded" || tenant != TENANT {
        return problem(cloud, format!("token: {method} for tenant {tenant} with content-type {content_type:?}"));
    }
    let uri: Uri = format!("/?{}", String::from_utf8_lossy(body)).parse().unwrap();
    let form: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("client_credentials")
        || field("scope") != Some("https://management.azure.com/.default")
        || field("client_id") != Some(CLIENT_ID)
        || form.len() != 4
    {
        return problem(cloud, format!("token: form fields {:?}", form.keys().collect::<Vec<_>>()));
    }
    if field("client_secret") != Some(CLIENT_SECRET) {
        return answer(
            401,
            json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app 'c0ffee00-0000-4000-8000-0000000000cc'.",
                "error_codes": [7000215],
                "timestamp": "2024-03-01 09:30:15Z",
                "trace_id": "0b4e8f3a-0000-4000-8000-000000000001",
                "correlation_id": "0b4e8f3a-0000-4000-8000-000000000002",
            }),
        );
    }
    let token = format!("eyJ0eXAiOiJKV1Qi.test-{}", cloud.issued.len() + 1);
    cloud.issued.push(token.clone());
    answer(200, json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}))
}

fn create(cloud: &mut Cloud, name: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return problem(cloud, "create: content-type is not application/json".into());
    }
    let Ok(vm) = serde_json::from_slice::<Value>(body) else {
        return problem(cloud, "create: the body is not JSON".into());
    };
    if let Err(why) = check_vm(name, &vm) {
        return problem(cloud, format!("create: {why}"));
    }
    let failure = cloud.fail_next_create.take();
    if let Some(Failure::Http(status, body)) = failure {
        return answer(status, body);
    }
    let existed = cloud.vms.contains_key(name);
    cloud.next_id += 1;
    let mut stored = vm.clone();
    stored["name"] = json!(name);
    stored["id"] = json!(format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines/{name}"));
    stored["type"] = json!("Microsoft.Compute/virtualMachines");
    stored["properties"]["provisioningState"] = json!("Creating");
    stored["properties"]["vmId"] = json!(format!("5c5b5d0a-0000-4000-8000-{:012}", cloud.next_id));
    stored["properties"]["timeCreated"] = json!(format!("2024-03-01T09:30:{:02}.1234567+00:00", cloud.next_id % 60));
    // Azure never answers the custom data back.
    stored["properties"]["osProfile"].as_object_mut().unwrap().remove("customData");
    if existed {
        stored["properties"]["provisioningState"] = json!("Updating");
    }
    cloud.vms.insert(name.to_string(), stored.clone());
    let operation = format!("0e5e4a5b-0000-4000-8000-{:012}", cloud.next_id);
    let error = match failure {
        Some(Failure::Operation(error)) => Some(error),
        _ => None,
    };
    cloud.operations.insert(operation.clone(), (1, name.to_string(), error));
    let mut response = answer(if existed { 200 } else { 201 }, stored);
    let status_url = format!(
        "{}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/locations/eastus/operations/{operation}?p=abc&api-version={API_VERSION}",
        cloud.url
    );
    response.headers_mut().insert("azure-asyncoperation", HeaderValue::from_str(&status_url).unwrap());
    response.headers_mut().insert("retry-after", HeaderValue::from_static("0"));
    response
}

/// The long-running operation: in progress for one poll, then succeeded (the VM is provisioned) or failed (the VM
/// stays, failed).
fn operation_status(cloud: &mut Cloud, id: &str) -> Response {
    let Some((polls_left, vm, error)) = cloud.operations.get_mut(id) else {
        return answer(404, arm_error("NotFound", "The operation was not found."));
    };
    let mut status = json!({"name": id, "startTime": "2024-03-01T09:30:15.1234567+00:00"});
    if *polls_left > 0 {
        *polls_left -= 1;
        status["status"] = json!("InProgress");
        let mut response = answer(200, status);
        response.headers_mut().insert("retry-after", HeaderValue::from_static("0"));
        return response;
    }
    let (vm, error) = (vm.clone(), error.clone());
    status["endTime"] = json!("2024-03-01T09:31:05.1234567+00:00");
    let state = match error {
        Some(error) => {
            status["status"] = json!("Failed");
            status["error"] = error;
            "Failed"
        }
        None => {
            status["status"] = json!("Succeeded");
            "Succeeded"
        }
    };
    if let Some(vm) = cloud.vms.get_mut(&vm) {
        vm["properties"]["provisioningState"] = json!(state);
    }
    answer(200, status)
}

/// `Virtual Machines - List` of the resource group, `page_size` VMs a page, with `nextLink`.
fn list(cloud: &mut Cloud, query: &HashMap<String, String>) -> Response {
    let offset: usize = match query.get("$skiptoken") {
        Some(token) => match token.parse() {
            Ok(n) => n,
            Err(_) => return problem(cloud, format!("list: $skiptoken {token} is not one the server gave")),
        },
        None => 0,
    };
    if query.keys().any(|k| k != "api-version" && k != "$skiptoken") {
        return problem(cloud, format!("list: query {query:?}"));
    }
    let vms: Vec<Value> = cloud.vms.values().skip(offset).take(cloud.page_size).cloned().collect();
    let mut page = json!({"value": vms});
    if offset + cloud.page_size < cloud.vms.len() {
        page["nextLink"] = json!(format!(
            "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Compute/virtualMachines?api-version={API_VERSION}&$skiptoken={}",
            cloud.url,
            offset + cloud.page_size
        ));
    }
    answer(200, page)
}

fn only(object: &Value, what: &str, allowed: &[&str]) -> Result<(), String> {
    let Some(map) = object.as_object() else { return Err(format!("{what} is not an object")) };
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("Could not find member '{k}' on object of type '{what}'")),
        None => Ok(()),
    }
}

/// The `VirtualMachine` body, field by field as the documentation gives them.
fn check_vm(name: &str, vm: &Value) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!("VM name {name:?}"));
    }
    only(vm, "VirtualMachine", &["location", "zones", "tags", "properties"])?;
    if vm["location"] != "eastus" {
        return Err(format!("location {}", vm["location"]));
    }
    if !vm["zones"].as_array().is_some_and(|z| z.len() == 1 && ["1", "2", "3"].contains(&z[0].as_str().unwrap_or(""))) {
        return Err(format!("zones {}", vm["zones"]));
    }
    let tags = vm["tags"].as_object().ok_or("tags is not a map")?;
    if tags.len() > 50
        || !tags.iter().all(|(k, v)| {
            k.len() <= 512
                && !k.contains(['<', '>', '%', '&', '\\', '?', '/'])
                && v.as_str().is_some_and(|v| v.len() <= 256)
        })
    {
        return Err(format!("tags {}", vm["tags"]));
    }
    let p = &vm["properties"];
    only(
        p,
        "VirtualMachineProperties",
        &[
            "hardwareProfile",
            "storageProfile",
            "osProfile",
            "networkProfile",
            "priority",
            "evictionPolicy",
            "billingProfile",
        ],
    )?;
    only(&p["hardwareProfile"], "HardwareProfile", &["vmSize"])?;
    if !p["hardwareProfile"]["vmSize"].as_str().is_some_and(|s| s.starts_with("Standard_")) {
        return Err("hardwareProfile.vmSize".into());
    }
    let storage = &p["storageProfile"];
    only(storage, "StorageProfile", &["imageReference", "osDisk"])?;
    let image = &storage["imageReference"];
    let marketplace = ["publisher", "offer", "sku", "version"].iter().all(|f| image[f].is_string());
    if !(marketplace && image.as_object().unwrap().len() == 4
        || image["id"].is_string() && image.as_object().unwrap().len() == 1)
    {
        return Err(format!("imageReference {image}"));
    }
    let disk = &storage["osDisk"];
    only(disk, "OSDisk", &["createOption", "deleteOption", "diskSizeGB", "managedDisk"])?;
    if disk["createOption"] != "FromImage"
        || !["Delete", "Detach"].contains(&disk["deleteOption"].as_str().unwrap_or(""))
        || !disk["diskSizeGB"].is_u64()
    {
        return Err(format!("osDisk {disk}"));
    }
    let account = disk["managedDisk"]["storageAccountType"].as_str().unwrap_or("");
    if ![
        "Standard_LRS",
        "Premium_LRS",
        "StandardSSD_LRS",
        "UltraSSD_LRS",
        "Premium_ZRS",
        "StandardSSD_ZRS",
        "PremiumV2_LRS",
    ]
    .contains(&account)
    {
        return Err(format!("managedDisk.storageAccountType {account:?}"));
    }
    let os = &p["osProfile"];
    only(os, "OSProfile", &["computerName", "adminUsername", "customData", "linuxConfiguration"])?;
    let computer = os["computerName"].as_str().unwrap_or("");
    if computer.is_empty() || computer.len() > 64 || !computer.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("osProfile.computerName {computer:?}"));
    }
    let user = os["adminUsername"].as_str().unwrap_or("");
    let custom = os["customData"].as_str().unwrap_or("");
    if custom.len() > 65_535 || base64::engine::general_purpose::STANDARD.decode(custom).is_err() {
        return Err("osProfile.customData is not base64 of at most 65535 characters".into());
    }
    let linux = &os["linuxConfiguration"];
    only(linux, "LinuxConfiguration", &["disablePasswordAuthentication", "ssh"])?;
    let keys = linux["ssh"]["publicKeys"].as_array().map_or(&[][..], |k| &k[..]);
    if linux["disablePasswordAuthentication"] == true && keys.is_empty() {
        return Err(
            "Authentication using either SSH or by user name and password must be enabled in Linux profile.".into()
        );
    }
    for key in keys {
        only(key, "SshPublicKey", &["path", "keyData"])?;
        if key["path"] != format!("/home/{user}/.ssh/authorized_keys")
            || !key["keyData"].as_str().is_some_and(|k| k.starts_with("ssh-"))
        {
            return Err(format!("ssh public key {key}"));
        }
    }
    let network = &p["networkProfile"];
    only(network, "NetworkProfile", &["networkApiVersion", "networkInterfaceConfigurations"])?;
    if !["2020-11-01", "2022-11-01"].contains(&network["networkApiVersion"].as_str().unwrap_or("")) {
        return Err(format!("networkApiVersion {}", network["networkApiVersion"]));
    }
    let nics =
        network["networkInterfaceConfigurations"].as_array().ok_or("networkInterfaceConfigurations is not a list")?;
    for nic in nics {
        only(nic, "VirtualMachineNetworkInterfaceConfiguration", &["name", "properties"])?;
        only(
            &nic["properties"],
            "VirtualMachineNetworkInterfaceConfigurationProperties",
            &["primary", "deleteOption", "ipConfigurations"],
        )?;
        if !nic["name"].is_string()
            || !["Delete", "Detach"].contains(&nic["properties"]["deleteOption"].as_str().unwrap_or(""))
        {
            return Err(format!("network interface configuration {nic}"));
        }
        for ip in nic["properties"]["ipConfigurations"].as_array().ok_or("ipConfigurations is not a list")? {
            only(ip, "VirtualMachineNetworkInterfaceIPConfiguration", &["name", "properties"])?;
            only(&ip["properties"], "VirtualMachineNetworkInterfaceIPConfigurationProperties", &["primary", "subnet"])?;
            if !ip["properties"]["subnet"]["id"].as_str().is_some_and(|id| {
                id.contains("/providers/Microsoft.Network/virtualNetworks/") && id.contains("/subnets/")
            }) {
                return Err(format!("ipConfiguration subnet {}", ip["properties"]["subnet"]));
            }
        }
    }
    match p["priority"].as_str() {
        None | Some("Regular") => {
            if !p["evictionPolicy"].is_null() || !p["billingProfile"].is_null() {
                return Err("evictionPolicy and billingProfile are for Spot VMs".into());
            }
        }
        Some("Spot") => {
            let price = p["billingProfile"]["maxPrice"].as_f64().unwrap_or(0.0);
            if !["Deallocate", "Delete"].contains(&p["evictionPolicy"].as_str().unwrap_or(""))
                || !(price == -1.0 || price > 0.0)
            {
                return Err(format!(
                    "spot: evictionPolicy {} billingProfile {}",
                    p["evictionPolicy"], p["billingProfile"]
                ));
            }
        }
        other => return Err(format!("priority {other:?}")),
    }
    Ok(())
}

fn launch(installation: &str, node: &str, size: &str, zone: &str, market: Market) -> LaunchRequest {
    LaunchRequest {
        installation: installation.into(),
        pool: format!("azure-{market}"),
        node: node.into(),
        instance_type: size.into(),
        zone: zone.into(),
        market,
        user_data: format!("#!/bin/sh\nexec ferry agent --join 'TOKEN-{node}'\n"),
        client_token: None,
    }
}

fn summary(instances: &[ferry_cloud::Instance]) -> Vec<String> {
    let mut lines: Vec<String> = instances
        .iter()
        .map(|i| {
            format!(
                "{} {} {} {} zone={} pool={}",
                i.node().unwrap_or("?"),
                i.state,
                i.market,
                i.instance_type,
                i.zone,
                i.pool().unwrap_or("?")
            )
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn vms_launch_tagged_list_by_installation_and_terminate() {
    let fake = Fake::start().await;
    let azure = fake.azure();

    let on_demand =
        azure.launch(launch("inst-a", "azure-1", "Standard_NC4as_T4_v3", "1", Market::OnDemand)).await.unwrap();
    let spot = azure.launch(launch("inst-a", "azure-2", "Standard_NC8as_T4_v3", "2", Market::Spot)).await.unwrap();
    let other = azure.launch(launch("inst-b", "azure-1", "Standard_NC4as_T4_v3", "1", Market::OnDemand)).await.unwrap();
    assert_eq!((on_demand.market, spot.market), (Market::OnDemand, Market::Spot));
    assert_eq!(on_demand.state, ferry_cloud::InstanceState::Running, "the operation was waited for");
    assert_ne!(on_demand.id, other.id, "two installations' nodes of one name get two VMs");
    assert!(on_demand.launch_time_ms > 1_700_000_000_000);

    // The start-up script went as base64 custom data (checked by the server), spot as Spot with Delete.
    {
        let cloud = fake.cloud();
        let stored = &cloud.vms[&spot.id];
        assert_eq!(stored["properties"]["priority"], "Spot");
        assert_eq!(stored["properties"]["evictionPolicy"], "Delete");
        assert_eq!(
            stored["tags"],
            json!({"ferry-installation": "inst-a", "ferry-pool": "azure-spot", "ferry-node": "azure-2"})
        );
    }

    // Listing reads every page (two VMs a page, the resource group's other VM among them) and keeps the
    // installation's.
    let listed = azure.list("inst-a").await.unwrap();
    assert_eq!(
        summary(&listed),
        [
            "azure-1 running on-demand Standard_NC4as_T4_v3 zone=1 pool=azure-on-demand",
            "azure-2 running spot Standard_NC8as_T4_v3 zone=2 pool=azure-spot",
        ]
    );
    assert!(azure.list("inst-c").await.unwrap().is_empty());

    // Launching the same node again updates the same VM instead of making a second.
    azure.launch(launch("inst-a", "azure-1", "Standard_NC4as_T4_v3", "1", Market::OnDemand)).await.unwrap();
    assert_eq!(azure.list("inst-a").await.unwrap().len(), 2);

    let ids: Vec<String> = listed.iter().map(|i| i.id.clone()).collect();
    azure.terminate(&ids).await.unwrap();
    assert!(azure.list("inst-a").await.unwrap().is_empty());
    assert_eq!(azure.list("inst-b").await.unwrap().len(), 1);
    // Gone already: Azure answers 204, which is fine.
    azure.terminate(&ids).await.unwrap();
    assert!(fake.cloud().vms.contains_key("build-box"));

    assert_eq!(fake.cloud().issued.len(), 1, "one token served every call");
    fake.assert_no_problems();
}

#[tokio::test]
async fn each_documented_error_has_its_kind() {
    let fake = Fake::start().await;
    let azure = fake.azure();
    let failed = |code: &str, message: &str| {
        Failure::Operation(json!({
            "code": "ResourceOperationFailure",
            "message": "The resource operation completed with terminal provisioning state 'Failed'.",
            "details": [{"code": code, "message": message}],
        }))
    };
    let cases = [
        (Failure::Http(409, arm_error("SkuNotAvailable", "The requested size for resource '/subscriptions/00000000-0000-4000-8000-0000000000aa/resourceGroups/ferry-burst/providers/Microsoft.Compute/virtualMachines/azure-1' is currently not available in location 'eastus' zones '1' for subscription '00000000-0000-4000-8000-0000000000aa'. Please try another size or deploy to a different location or zones.")), "NoCapacity SkuNotAvailable"),
        (failed("ZonalAllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone."), "NoCapacity ZonalAllocationFailed"),
        (failed("AllocationFailed", "Allocation failed. Please try reducing the VM size or number of VMs, retry later, or try deploying to a different Availability Zone or region."), "NoCapacity AllocationFailed"),
        (failed("OverconstrainedAllocationRequest", "Allocation failed. VM(s) with the following constraints cannot be allocated, because the condition is too restrictive. Please remove some constraints and try again. Constraints applied are: - Networking Constraints (such as Accelerated Networking or IPv6)"), "NoCapacity OverconstrainedAllocationRequest"),
        (Failure::Http(409, arm_error("OperationNotAllowed", "Operation could not be completed as it results in exceeding approved standardNCASv3_T4Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 4, (Minimum) New Limit Required: 4.")), "QuotaExceeded OperationNotAllowed"),
        (Failure::Http(409, arm_error("QuotaExceeded", "Operation results in exceeding quota limits of Core. Maximum allowed: 10, Current in use: 8, Additional requested: 4.")), "QuotaExceeded QuotaExceeded"),
        (Failure::Http(400, arm_error("InvalidParameter", "The value of parameter imageReference.sku is invalid.")), "Invalid InvalidParameter"),
        (Failure::Http(400, arm_error("InvalidTemplate", "Deployment template validation failed.")), "Invalid InvalidTemplate"),
        (Failure::Http(403, arm_error("AuthorizationFailed", "The client 'c0ffee00-0000-4000-8000-0000000000cc' with object id 'c0ffee00-0000-4000-8000-0000000000dd' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write' over scope '/subscriptions/00000000-0000-4000-8000-0000000000aa/resourceGroups/ferry-burst/providers/Microsoft.Compute/virtualMachines/azure-1' or the scope is invalid. If access was recently granted, please refresh your credentials.")), "Unauthorized AuthorizationFailed"),
        (Failure::Http(429, arm_error("TooManyRequests", "The request is being throttled as the limit has been reached for operation type - PutVM3Min. For more information, see - https://aka.ms/azurerestapithrottlingerrors.")), "Transient TooManyRequests"),
        (Failure::Http(500, arm_error("InternalExecutionError", "An internal execution error occurred. Please retry later.")), "Transient InternalExecutionError"),
    ];
    for (failure, expected) in cases {
        fake.cloud().fail_next_create = Some(failure);
        let err =
            azure.launch(launch("inst-a", "azure-1", "Standard_NC4as_T4_v3", "1", Market::OnDemand)).await.unwrap_err();
        let kind = format!("{err:?}");
        assert_eq!(format!("{} {}", &kind[..kind.find('(').unwrap()], err.refusal().code), expected, "{err}");
        assert!(err.refusal().request_id.is_some(), "{err:?}");
    }
    // A VM whose creation failed was deleted: nothing is left behind.
    assert!(azure.list("inst-a").await.unwrap().is_empty());
    fake.assert_no_problems();
}

#[tokio::test]
async fn refused_credentials_are_unauthorized_and_never_shown() {
    let fake = Fake::start().await;
    let azure =
        Azure::with_credentials(fake.settings(), AzureCredentials::new(TENANT, CLIENT_ID, "wrong-secret-value"))
            .unwrap();
    let err = azure.list("inst-a").await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "invalid_client"), "{err:?}");
    let shown = format!("{err} {err:?} {azure:?}");
    for secret in ["wrong-secret-value", CLIENT_SECRET, "client_secret="] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("AZURE_CLIENT_SECRET"), "{shown}");
    fake.assert_no_problems();
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_field_and_the_fix() {
    let fake = Fake::start().await;
    let build = |s: AzureSettings| {
        Azure::with_credentials(s, AzureCredentials::new(TENANT, CLIENT_ID, CLIENT_SECRET)).map(|_| ())
    };
    let err = build(AzureSettings { subscription_id: "Pay-As-You-Go".into(), ..fake.settings() }).unwrap_err();
    assert!(
        err.to_string().starts_with("subscription_id \"Pay-As-You-Go\" is not a subscription id: write its GUID"),
        "{err}"
    );
    let err = build(AzureSettings { ssh_public_key: "AAAA".into(), ..fake.settings() }).unwrap_err();
    assert!(err.to_string().starts_with("ssh_public_key is not an OpenSSH public key"), "{err}");
    let err =
        Azure::with_credentials(fake.settings(), AzureCredentials::new("a/b", CLIENT_ID, CLIENT_SECRET)).unwrap_err();
    assert!(err.to_string().contains("tenant id \"a/b\""), "{err}");
}
