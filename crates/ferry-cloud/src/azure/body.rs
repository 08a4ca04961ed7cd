//! Azure Resource Manager's JSON for virtual machines: the body of `Virtual Machines - Create Or Update`, and
//! reading VMs, pages of VMs, long-running operation statuses and errors
//! (learn.microsoft.com/rest/api/compute/virtual-machines). Pure: values in, values out.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AzureImage, AzureSettings, PROVIDER};
use crate::rest::{self, malformed};
use crate::{Instance, InstanceState, LaunchRequest, Market, ProviderError, Refusal, TAG_INSTALLATION};

/// The network API version the VM's own network interface is created with (`networkInterfaceConfigurations`
/// needs one, 2020-11-01 or later).
const NETWORK_API_VERSION: &str = "2020-11-01";

/// The VM for one node. Its network interface is created with it (`networkInterfaceConfigurations`) and, like
/// its OS disk, deleted with it (`deleteOption: Delete`), so that deleting the VM leaves nothing behind. A spot VM
/// is deleted when evicted, at any price up to the on-demand one (`maxPrice: -1`).
pub(crate) fn virtual_machine(settings: &AzureSettings, name: &str, request: &LaunchRequest) -> Value {
    let image = match &settings.image {
        AzureImage::Marketplace { publisher, offer, sku, version } => {
            json!({ "publisher": publisher, "offer": offer, "sku": sku, "version": version })
        }
        AzureImage::Id(id) => json!({ "id": id }),
    };
    let user = &settings.admin_username;
    let mut properties = json!({
        "hardwareProfile": { "vmSize": request.instance_type },
        "storageProfile": {
            "imageReference": image,
            "osDisk": {
                "createOption": "FromImage",
                "deleteOption": "Delete",
                "diskSizeGB": settings.os_disk_gb,
                "managedDisk": { "storageAccountType": "StandardSSD_LRS" },
            },
        },
        "osProfile": {
            "computerName": name,
            "adminUsername": user,
            "customData": base64::engine::general_purpose::STANDARD.encode(&request.user_data),
            "linuxConfiguration": {
                "disablePasswordAuthentication": true,
                "ssh": { "publicKeys": [{
                    "path": format!("/home/{user}/.ssh/authorized_keys"),
                    "keyData": settings.ssh_public_key,
                }] },
            },
        },
        "networkProfile": {
            "networkApiVersion": NETWORK_API_VERSION,
            "networkInterfaceConfigurations": [{
                "name": format!("{name}-nic"),
                "properties": {
                    "primary": true,
                    "deleteOption": "Delete",
                    "ipConfigurations": [{
                        "name": "ipconfig1",
                        "properties": { "primary": true, "subnet": { "id": settings.subnet_id } },
                    }],
                },
            }],
        },
    });
    if request.market == Market::Spot {
        properties["priority"] = json!("Spot");
        properties["evictionPolicy"] = json!("Delete");
        properties["billingProfile"] = json!({ "maxPrice": -1 });
    }
    json!({
        "location": settings.location,
        "zones": [request.zone],
        "tags": request.tags(),
        "properties": properties,
    })
}

#[derive(Deserialize)]
pub(crate) struct VmJson {
    name: String,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    properties: VmPropertiesJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmPropertiesJson {
    hardware_profile: HardwareProfileJson,
    provisioning_state: Option<String>,
    time_created: Option<String>,
    priority: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HardwareProfileJson {
    vm_size: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmListJson {
    /// Required, so that an answer that is not Azure's is not read as "no VMs".
    value: Vec<VmJson>,
    next_link: Option<String>,
}

/// A page of VMs: the installation's and the link to the next page.
#[derive(Debug)]
pub(crate) struct Page {
    pub instances: Vec<Instance>,
    pub next_link: Option<String>,
}

/// One page of `Virtual Machines - List`, keeping the VMs tagged with `installation` (the resource group may hold
/// other VMs: Azure's list has no tag filter).
pub(crate) fn page(body: &str, installation: &str) -> Result<Page, ProviderError> {
    let list: VmListJson = rest::json(PROVIDER, "virtual machines list", body)?;
    let instances = list
        .value
        .into_iter()
        .filter(|vm| vm.tags.get(TAG_INSTALLATION).map(String::as_str) == Some(installation))
        .map(to_instance)
        .collect::<Result<_, _>>()?;
    Ok(Page { instances, next_link: list.next_link.filter(|l| !l.is_empty()) })
}

/// One VM, as `Virtual Machines - Get` or `Create Or Update` answers.
pub(crate) fn vm_answer(body: &str) -> Result<Instance, ProviderError> {
    to_instance(rest::json(PROVIDER, "virtual machine", body)?)
}

/// Azure's list gives the provisioning state, not the power state (that needs each VM's instance view): a VM
/// deallocated by hand still reads as running. A VM whose creation failed still exists and is reported stopped, so
/// that the caller terminates it.
fn to_instance(vm: VmJson) -> Result<Instance, ProviderError> {
    let state = match vm.properties.provisioning_state.as_deref().unwrap_or("Creating") {
        "Creating" => InstanceState::Pending,
        "Succeeded" | "Updating" | "Migrating" => InstanceState::Running,
        "Deleting" => InstanceState::Stopping,
        "Failed" | "Canceled" => InstanceState::Stopped,
        other => return Err(malformed(PROVIDER, format!("VM {} is in the unknown state {other:?}", vm.name))),
    };
    let launch_time_ms = match &vm.properties.time_created {
        Some(t) => {
            rest::rfc3339_ms(t).ok_or_else(|| malformed(PROVIDER, format!("VM {} has timeCreated {t:?}", vm.name)))?
        }
        None => 0,
    };
    let spot = vm.properties.priority.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("spot"));
    Ok(Instance {
        id: vm.name,
        state,
        instance_type: vm.properties.hardware_profile.vm_size,
        zone: vm.zones.into_iter().next().unwrap_or_default(),
        market: if spot { Market::Spot } else { Market::OnDemand },
        launch_time_ms,
        tags: vm.tags,
    })
}

/// The status of a long-running operation, as its `Azure-AsyncOperation` URL answers.
#[derive(Deserialize)]
pub(crate) struct OperationStatus {
    /// `InProgress`, `Succeeded`, `Failed` or `Canceled`.
    pub status: String,
    error: Option<ErrorJson>,
}

pub(crate) fn operation_status(body: &str) -> Result<OperationStatus, ProviderError> {
    rest::json(PROVIDER, "operation status", body)
}

impl OperationStatus {
    pub fn in_progress(&self) -> bool {
        !matches!(self.status.as_str(), "Succeeded" | "Failed" | "Canceled")
    }

    /// What a finished operation failed with, if it did. A failed creation is a server-side outcome of a request
    /// that was accepted, so without a code of its own it counts as transient.
    pub fn failure(&self, request_id: Option<String>) -> Option<ProviderError> {
        match self.status.as_str() {
            "Failed" | "Canceled" => {}
            _ => return None,
        }
        let error = self.error.clone().unwrap_or_else(|| ErrorJson {
            code: format!("Operation{}", self.status),
            message: String::new(),
            details: vec![],
        });
        Some(classify(500, error, request_id))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorJson,
}

#[derive(Deserialize, Clone)]
struct ErrorJson {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<ErrorJson>,
}

/// The error a failing answer stands for, from Azure's `{"error": {"code", "message", "details": [...]}}`.
pub(crate) fn error(status: u16, body: &str, request_id: Option<String>) -> ProviderError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => classify(status, b.error, request_id),
        Err(_) => classify(
            status,
            ErrorJson { code: format!("HTTP{status}"), message: String::new(), details: vec![] },
            request_id,
        ),
    }
}

/// What one code stands for, if it says: Azure's codes (learn.microsoft.com/azure/azure-resource-manager/troubleshooting/common-deployment-errors).
fn kind_of(code: &str, message: &str) -> Option<fn(Refusal) -> ProviderError> {
    Some(match code {
        "SkuNotAvailable"
        | "ZonalAllocationFailed"
        | "AllocationFailed"
        | "OverconstrainedAllocationRequest"
        | "OverconstrainedZonalAllocationRequest" => ProviderError::NoCapacity,
        "QuotaExceeded" => ProviderError::QuotaExceeded,
        "OperationNotAllowed" if message.to_ascii_lowercase().contains("quota") => ProviderError::QuotaExceeded,
        "AuthorizationFailed"
        | "AuthenticationFailed"
        | "InvalidAuthenticationToken"
        | "InvalidAuthenticationTokenTenant"
        | "ExpiredAuthenticationToken"
        | "LinkedAuthorizationFailed"
        | "SubscriptionNotFound"
        | "MissingSubscriptionRegistration" => ProviderError::Unauthorized,
        "TooManyRequests"
        | "InternalServerError"
        | "InternalExecutionError"
        | "ServiceUnavailable"
        | "RetryableError"
        | "GatewayTimeout" => ProviderError::Transient,
        "InvalidParameter"
        | "InvalidTemplate"
        | "InvalidRequestContent"
        | "BadRequest"
        | "ResourceNotFound"
        | "NotFound"
        | "PlatformImageNotFound"
        | "InvalidResourceReference"
        | "LocationNotAvailableForResourceType" => ProviderError::Invalid,
        _ => return None,
    })
}

/// The top code, else the first of its details that says what to do, else the status. The refusal carries the code
/// that decided and the top message.
fn classify(status: u16, error: ErrorJson, request_id: Option<String>) -> ProviderError {
    let candidates = std::iter::once(&error).chain(&error.details);
    if let Some((kind, code)) =
        candidates.into_iter().find_map(|e| kind_of(&e.code, &e.message).map(|kind| (kind, e.code.clone())))
    {
        let message = if code == error.code {
            error.message
        } else {
            let detail = error.details.iter().find(|d| d.code == code).map_or("", |d| d.message.as_str());
            format!("{} {detail}", error.message).trim().to_string()
        };
        return kind(Refusal { provider: PROVIDER, code, message, request_id });
    }
    let refusal = Refusal { provider: PROVIDER, code: error.code, message: error.message, request_id };
    ProviderError::by_status(status, refusal)
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    fn request(market: Market) -> LaunchRequest {
        LaunchRequest {
            installation: "inst-1".into(),
            pool: "azure-spot".into(),
            node: "azure-spot-3".into(),
            instance_type: "Standard_NC4as_T4_v3".into(),
            zone: "2".into(),
            market,
            user_data: "#!/bin/sh\nferry agent --join TOKEN\n".into(),
            client_token: None,
        }
    }

    #[test]
    fn a_spot_launch_asks_for_a_tagged_spot_vm_that_takes_its_nic_and_disk_with_it() {
        let body = virtual_machine(&super::super::tests::settings(), "azure-spot-3-0a1b2c3d", &request(Market::Spot));
        expect![[r#"
            {
              "location": "eastus",
              "properties": {
                "billingProfile": {
                  "maxPrice": -1
                },
                "evictionPolicy": "Delete",
                "hardwareProfile": {
                  "vmSize": "Standard_NC4as_T4_v3"
                },
                "networkProfile": {
                  "networkApiVersion": "2020-11-01",
                  "networkInterfaceConfigurations": [
                    {
                      "name": "azure-spot-3-0a1b2c3d-nic",
                      "properties": {
                        "deleteOption": "Delete",
                        "ipConfigurations": [
                          {
                            "name": "ipconfig1",
                            "properties": {
                              "primary": true,
                              "subnet": {
                                "id": "/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/ferry/providers/Microsoft.Network/virtualNetworks/ferry/subnets/nodes"
                              }
                            }
                          }
                        ],
                        "primary": true
                      }
                    }
                  ]
                },
                "osProfile": {
                  "adminUsername": "ferry",
                  "computerName": "azure-spot-3-0a1b2c3d",
                  "customData": "IyEvYmluL3NoCmZlcnJ5IGFnZW50IC0tam9pbiBUT0tFTgo=",
                  "linuxConfiguration": {
                    "disablePasswordAuthentication": true,
                    "ssh": {
                      "publicKeys": [
                        {
                          "keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerryTestKeyOnlyForTestsXXXXXXXXXXXXXXXXXXXX ferry@test",
                          "path": "/home/ferry/.ssh/authorized_keys"
                        }
                      ]
                    }
                  }
                },
                "priority": "Spot",
                "storageProfile": {
                  "imageReference": {
                    "offer": "ubuntu-24_04-lts",
                    "publisher": "Canonical",
                    "sku": "server",
                    "version": "latest"
                  },
                  "osDisk": {
                    "createOption": "FromImage",
                    "deleteOption": "Delete",
                    "diskSizeGB": 128,
                    "managedDisk": {
                      "storageAccountType": "StandardSSD_LRS"
                    }
                  }
                }
              },
              "tags": {
                "ferry-installation": "inst-1",
                "ferry-node": "azure-spot-3",
                "ferry-pool": "azure-spot"
              },
              "zones": [
                "2"
              ]
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&body).unwrap());
    }

    #[test]
    fn an_on_demand_launch_names_no_priority_and_an_image_id_is_passed_as_is() {
        let mut settings = super::super::tests::settings();
        settings.image = AzureImage::Id(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/ferry/versions/1.0.0"
                .into(),
        );
        let body = virtual_machine(&settings, "n", &request(Market::OnDemand));
        for field in ["priority", "evictionPolicy", "billingProfile"] {
            assert!(body["properties"].get(field).is_none(), "{field}");
        }
        assert_eq!(
            body["properties"]["storageProfile"]["imageReference"],
            json!({"id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/ferry/versions/1.0.0"})
        );
    }

    /// A page of `Virtual Machines - List`, written from the documented `VirtualMachineListResult`: a spot VM of
    /// the installation, a VM of another installation and one of nobody's, and the next page's link.
    const LIST: &str = r#"{
      "value": [
        {
          "name": "azure-spot-3-0a1b2c3d",
          "id": "/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/ferry/providers/Microsoft.Compute/virtualMachines/azure-spot-3-0a1b2c3d",
          "type": "Microsoft.Compute/virtualMachines",
          "location": "eastus",
          "zones": ["2"],
          "tags": {"ferry-installation": "inst-1", "ferry-pool": "azure-spot", "ferry-node": "azure-spot-3"},
          "properties": {
            "vmId": "5c5b5d0a-0000-4000-8000-000000000001",
            "hardwareProfile": {"vmSize": "Standard_NC4as_T4_v3"},
            "provisioningState": "Succeeded",
            "timeCreated": "2024-03-01T09:30:15.1234567+00:00",
            "priority": "Spot",
            "evictionPolicy": "Delete",
            "billingProfile": {"maxPrice": -1}
          }
        },
        {
          "name": "azure-1-99999999",
          "type": "Microsoft.Compute/virtualMachines",
          "location": "eastus",
          "tags": {"ferry-installation": "inst-2"},
          "properties": {"hardwareProfile": {"vmSize": "Standard_D4s_v5"}, "provisioningState": "Creating"}
        },
        {
          "name": "build-box",
          "type": "Microsoft.Compute/virtualMachines",
          "location": "eastus",
          "properties": {"hardwareProfile": {"vmSize": "Standard_B2s"}, "provisioningState": "Succeeded"}
        }
      ],
      "nextLink": "https://management.azure.com/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/ferry/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&$skiptoken=page2"
    }"#;

    #[test]
    fn a_page_gives_the_installations_vms_and_the_next_link() {
        let page = page(LIST, "inst-1").unwrap();
        assert!(page.next_link.unwrap().ends_with("$skiptoken=page2"));
        expect![[r#"
            [
                Instance {
                    id: "azure-spot-3-0a1b2c3d",
                    state: Running,
                    instance_type: "Standard_NC4as_T4_v3",
                    zone: "2",
                    market: Spot,
                    launch_time_ms: 1709285415123,
                    tags: {
                        "ferry-installation": "inst-1",
                        "ferry-node": "azure-spot-3",
                        "ferry-pool": "azure-spot",
                    },
                },
            ]
        "#]]
        .assert_debug_eq(&page.instances);
        assert!(super::page("<html>", "inst-1").unwrap_err().is_transient());
    }

    fn arm_error(code: &str, message: &str) -> String {
        json!({"error": {"code": code, "message": message}}).to_string()
    }

    fn check(err: ProviderError, expected: Expect) {
        expected.assert_eq(&format!("{err:?}\n{err}"));
    }

    #[test]
    fn each_documented_code_has_its_kind() {
        let cases = [
            (409, "SkuNotAvailable", "The requested size for resource '/subscriptions/…/virtualMachines/azure-1' is currently not available in location 'eastus' zones '2' for subscription '…'. Please try another size or deploy to a different location or zones."),
            (200, "ZonalAllocationFailed", "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone."),
            (200, "AllocationFailed", "Allocation failed. If you are trying to add a new VM to a Virtual Machine Scale Set with a single placement group or update/resize an existing VM, please note that such allocation is scoped to a single cluster."),
            (200, "OverconstrainedAllocationRequest", "Allocation failed. VM(s) with the following constraints cannot be allocated, because the condition is too restrictive."),
            (409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding approved standardNCASv3_T4Family Cores quota. Additional details - Deployment Model: Resource Manager, Location: eastus, Current Limit: 0, Current Usage: 0, Additional Required: 4, (Minimum) New Limit Required: 4."),
            (409, "QuotaExceeded", "Operation results in exceeding quota limits of Core. Maximum allowed: 10, Current in use: 8, Additional requested: 4."),
            (409, "OperationNotAllowed", "The operation is not allowed while the VM is being deleted."),
            (400, "InvalidParameter", "The value of parameter imageReference.sku is invalid."),
            (400, "InvalidTemplate", "Deployment template validation failed."),
            (400, "SomethingNew", "A new refusal."),
            (401, "InvalidAuthenticationToken", "The access token is invalid."),
            (403, "AuthorizationFailed", "The client 'c0ffee00-…' with object id '…' does not have authorization to perform action 'Microsoft.Compute/virtualMachines/write' over scope '/subscriptions/…/resourceGroups/ferry' or the scope is invalid."),
            (429, "TooManyRequests", "The request is being throttled as the limit has been reached for operation type - Write_30Min."),
            (503, "ServiceUnavailable", "The service is temporarily unavailable."),
            (500, "SomethingElse", "An internal error."),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(status, code, message)| {
                let kind = format!("{:?}", error(*status, &arm_error(code, message), None));
                format!("{status} {code} -> {}", &kind[..kind.find('(').unwrap()])
            })
            .collect();
        expect![[r#"
            [
                "409 SkuNotAvailable -> NoCapacity",
                "200 ZonalAllocationFailed -> NoCapacity",
                "200 AllocationFailed -> NoCapacity",
                "200 OverconstrainedAllocationRequest -> NoCapacity",
                "409 OperationNotAllowed -> QuotaExceeded",
                "409 QuotaExceeded -> QuotaExceeded",
                "409 OperationNotAllowed -> Invalid",
                "400 InvalidParameter -> Invalid",
                "400 InvalidTemplate -> Invalid",
                "400 SomethingNew -> Invalid",
                "401 InvalidAuthenticationToken -> Unauthorized",
                "403 AuthorizationFailed -> Unauthorized",
                "429 TooManyRequests -> Transient",
                "503 ServiceUnavailable -> Transient",
                "500 SomethingElse -> Transient",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    #[test]
    fn a_failed_operation_is_read_from_its_details_and_quoted() {
        let status = operation_status(
            r#"{"name": "0e5e4a5b-0000-4000-8000-000000000001", "status": "Failed", "startTime": "2024-03-01T09:30:15.1234567+00:00", "endTime": "2024-03-01T09:30:45.1234567+00:00",
               "error": {"code": "ResourceOperationFailure", "message": "The resource operation completed with terminal provisioning state 'Failed'.",
                         "details": [{"code": "ZonalAllocationFailed", "message": "Allocation failed. We do not have sufficient capacity for the requested VM size in this zone."}]}}"#,
        )
        .unwrap();
        assert!(!status.in_progress());
        check(
            status.failure(Some("4f2d0e6c-0000-4000-8000-000000000009".into())).unwrap(),
            expect![[r#"
            NoCapacity(Refusal { provider: "Azure", code: "ZonalAllocationFailed", message: "The resource operation completed with terminal provisioning state 'Failed'. Allocation failed. We do not have sufficient capacity for the requested VM size in this zone.", request_id: Some("4f2d0e6c-0000-4000-8000-000000000009") })
            Azure answered ZonalAllocationFailed: The resource operation completed with terminal provisioning state 'Failed'. Allocation failed. We do not have sufficient capacity for the requested VM size in this zone (request 4f2d0e6c-0000-4000-8000-000000000009); there is no capacity for it now: try another zone or instance type, on-demand instead of spot, or the next pool"#]],
        );
        let running =
            operation_status(r#"{"name": "x", "status": "InProgress", "startTime": "2024-03-01T09:30:15Z"}"#).unwrap();
        assert!(running.in_progress() && running.failure(None).is_none());
    }

    #[test]
    fn an_unauthorized_refusal_says_where_credentials_come_from() {
        check(
            error(
                401,
                &arm_error(
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time '3/1/2024 9:30:15 AM' is earlier than current UTC time.",
                ),
                Some("req-1".into()),
            ),
            expect![[r#"
                Unauthorized(Refusal { provider: "Azure", code: "ExpiredAuthenticationToken", message: "The access token expiry UTC time '3/1/2024 9:30:15 AM' is earlier than current UTC time.", request_id: Some("req-1") })
                Azure answered ExpiredAuthenticationToken: The access token expiry UTC time '3/1/2024 9:30:15 AM' is earlier than current UTC time (request req-1); the credentials were refused: check them (for Azure: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or the machine's managed identity, a service principal or identity with a role such as Virtual Machine Contributor and Network Contributor on the resource group) and that they may run, describe and terminate instances"#]],
        );
        assert!(matches!(error(403, "", None), ProviderError::Unauthorized(r) if r.code == "HTTP403"));
        assert!(error(502, "<html>", None).is_transient());
    }
}
