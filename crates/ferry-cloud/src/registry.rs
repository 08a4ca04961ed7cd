//! The one place providers are named: an elastic pool's `[pool.cloud]` table is checked here (at load, without
//! credentials) and its provider built here (at start, with them). Adding a provider is one arm in [`check`] and one
//! in [`build`], and its catalog in `catalog.rs`.
//!
//! ```toml
//! [pool.cloud]
//! provider = "aws"                 # aws, gcp or azure
//! region = "us-east-1"             # Azure: the location, such as eastus
//! zones = ["us-east-1a", "us-east-1b"]   # tried in this order; one that failed for capacity is skipped a while
//! instance_type = "g5.12xlarge"
//! market = "spot"                  # or "on-demand" (the default)
//! price_hour = 2.10                # per machine; needed for spot, else the catalog's on-demand list price
//! image = "ami-0123456789abcdef0"  # with `ferry` installed (or installed by `bootstrap`)
//! bootstrap = "apt-get install -y ferry"   # shell run by the start-up script before the agent starts
//! endpoint = "http://127.0.0.1:5000"       # the provider's API, for a test double; the real one when left out
//! # a type the catalog does not know yet: describe it (all four, with price_hour)
//! # gpus = 8, gpu_model = "H200", cpus = 192, memory = "2TiB"
//! # aws: security_groups = ["sg-…"], subnets = { "us-east-1a" = "subnet-…" }
//! # gcp: project = "ml-prod-1234", network, subnetwork, external_ip, boot_disk_gb, accelerator
//! # azure: subscription_id, resource_group, subnet_id, admin_username, ssh_public_key, os_disk_gb, login_endpoint
//! ```
//!
//! Credentials are never read from this table: each provider reads them from its usual places (see
//! [`crate::credentials`], `gce::auth`, `azure::auth`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::azure::{Azure, AzureImage, AzureSettings};
use crate::catalog;
use crate::credentials::Credentials;
use crate::ec2::{Ec2, Ec2Settings};
use crate::gce::{Gce, GceSettings, GoogleCredentials};
use crate::{InstanceType, Market, Provider, ProviderError, ProviderFuture, Refusal};

/// The most a start-up script's `bootstrap` may hold: EC2 takes 16 KiB of user data in all.
const BOOTSTRAP_BYTES_MAX: usize = 8 * 1024;

/// An elastic pool's cloud, checked: what every machine is and costs, and where it is launched.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudPool {
    pub provider: String,
    pub region: String,
    /// Tried in this order.
    pub zones: Vec<String>,
    /// The one type the pool launches, with its price and zones.
    pub instance: InstanceType,
    /// Shell run by the start-up script before the agent starts; empty for none.
    pub bootstrap: String,
    /// The table as written, from which [`build`] makes the provider.
    settings: serde_json::Value,
}

impl CloudPool {
    pub fn market(&self) -> Market {
        self.instance.market
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    provider: String,
    region: String,
    zones: Vec<String>,
    instance_type: String,
    market: Option<String>,
    price_hour: Option<f64>,
    image: String,
    endpoint: Option<String>,
    #[serde(default)]
    bootstrap: String,
    gpus: Option<u32>,
    gpu_model: Option<String>,
    cpus: Option<u32>,
    memory: Option<String>,
    // aws
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default)]
    subnets: BTreeMap<String, String>,
    // gcp
    project: Option<String>,
    network: Option<String>,
    subnetwork: Option<String>,
    external_ip: Option<bool>,
    boot_disk_gb: Option<u32>,
    accelerator: Option<String>,
    // azure
    subscription_id: Option<String>,
    resource_group: Option<String>,
    subnet_id: Option<String>,
    admin_username: Option<String>,
    ssh_public_key: Option<String>,
    os_disk_gb: Option<u32>,
    login_endpoint: Option<String>,
}

/// The fields only one provider reads, and which.
const PROVIDER_FIELDS: &[(&str, &str)] = &[
    ("security_groups", "aws"),
    ("subnets", "aws"),
    ("project", "gcp"),
    ("network", "gcp"),
    ("subnetwork", "gcp"),
    ("external_ip", "gcp"),
    ("boot_disk_gb", "gcp"),
    ("accelerator", "gcp"),
    ("subscription_id", "azure"),
    ("resource_group", "azure"),
    ("subnet_id", "azure"),
    ("admin_username", "azure"),
    ("ssh_public_key", "azure"),
    ("os_disk_gb", "azure"),
    ("login_endpoint", "azure"),
];

/// Checks a `[pool.cloud]` table (as JSON) without reading credentials or calling anyone; the error names the field
/// and the fix.
pub fn check(table: serde_json::Value) -> Result<CloudPool, String> {
    let raw: Raw = serde_json::from_value(table.clone()).map_err(|e| format!("[pool.cloud]: {e}"))?;
    catalog::check_provider(&raw.provider).map_err(|e| format!("[pool.cloud] provider: {e}"))?;
    let provider = raw.provider.as_str();
    if let Some(object) = table.as_object() {
        for (field, owner) in PROVIDER_FIELDS {
            if *owner != provider && object.contains_key(*field) {
                return Err(format!("[pool.cloud] {field}: applies only to provider = \"{owner}\", not {provider}"));
            }
        }
    }
    catalog::check_region(provider, &raw.region).map_err(|e| format!("[pool.cloud] region: {e}"))?;
    if raw.zones.is_empty() {
        let example = match provider {
            "aws" => format!("[\"{}a\"]", raw.region),
            "gcp" => format!("[\"{}-a\"]", raw.region),
            _ => "[\"1\"]".to_string(),
        };
        return Err(format!("[pool.cloud] zones: list at least one zone to launch in, such as {example}"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for zone in &raw.zones {
        catalog::check_zone(provider, &raw.region, zone).map_err(|e| format!("[pool.cloud] zones: {e}"))?;
        if !seen.insert(zone) {
            return Err(format!("[pool.cloud] zones: {zone} is listed twice; list each zone once"));
        }
    }
    let market = match raw.market.as_deref() {
        None | Some("on-demand") => Market::OnDemand,
        Some("spot") => Market::Spot,
        Some(other) => {
            return Err(format!("[pool.cloud] market: {other:?} is not a market; write \"on-demand\" or \"spot\""))
        }
    };
    if let Some(price) = raw.price_hour {
        if !price.is_finite() || price < 0.0 {
            return Err(format!(
                "[pool.cloud] price_hour: {price} is not a price; write what one machine costs an hour, zero or more, \
                 such as 1.20"
            ));
        }
    }
    let instance = instance_type(&raw, market)?;
    if raw.bootstrap.len() > BOOTSTRAP_BYTES_MAX {
        return Err(format!(
            "[pool.cloud] bootstrap: {} bytes is more than the {BOOTSTRAP_BYTES_MAX} a start-up script may add; bake \
             the software into the image instead",
            raw.bootstrap.len()
        ));
    }
    let pool = CloudPool {
        provider: raw.provider.clone(),
        region: raw.region.clone(),
        zones: raw.zones.clone(),
        instance,
        bootstrap: raw.bootstrap.clone(),
        settings: table,
    };
    // The provider's own checks (image, endpoint, ids), with stand-in credentials that are never used.
    make(&pool, Stand::In).map_err(|e| format!("[pool.cloud]: {e}"))?;
    Ok(pool)
}

/// The type the pool launches: the catalog's, or the one the table describes, with the price it is billed at.
fn instance_type(raw: &Raw, market: Market) -> Result<InstanceType, String> {
    let provider = raw.provider.as_str();
    let described = [raw.gpus.is_some(), raw.cpus.is_some(), raw.memory.is_some()];
    let (gpus, gpu_model, cpu_millis, memory_bytes, list_price) = match catalog::instance_type(
        provider,
        &raw.instance_type,
    ) {
        Some(known) => {
            if described.iter().any(|d| *d) || raw.gpu_model.is_some() {
                return Err(format!(
                    "[pool.cloud]: {} is in the catalog ({} GPUs, {} CPUs, {} GiB); leave out gpus, gpu_model, cpus and \
                     memory, which only describe a type the catalog does not know",
                    known.name, known.gpus, known.cpus, known.memory_gib
                ));
            }
            (
                known.gpus,
                known.gpu_model.map(str::to_string),
                known.cpu_millis(),
                known.memory_bytes(),
                known.on_demand_usd_hour,
            )
        }
        None if described.iter().all(|d| *d) => {
            let memory = raw.memory.as_deref().unwrap_or_default();
            let memory_bytes = ferry_units::parse_memory(memory).map_err(|e| format!("[pool.cloud] memory: {e}"))?;
            let (gpus, cpus) = (raw.gpus.unwrap_or(0), raw.cpus.unwrap_or(0));
            if cpus == 0 || memory_bytes == 0 {
                return Err("[pool.cloud]: a described instance type needs cpus and memory above zero".to_string());
            }
            if (gpus > 0) != raw.gpu_model.is_some() {
                return Err(
                    "[pool.cloud]: gpus and gpu_model go together: give both, or neither for a type without GPUs"
                        .into(),
                );
            }
            (gpus, raw.gpu_model.clone(), u64::from(cpus) * 1000, memory_bytes, None)
        }
        None => {
            let known = catalog::check_instance_type(provider, &raw.instance_type).err().unwrap_or_default();
            return Err(format!(
                "[pool.cloud] instance_type: {known}; if it is newer than this build, describe it with gpus, gpu_model, \
                 cpus, memory and price_hour"
            ));
        }
    };
    let price_hour = match (raw.price_hour, market, list_price) {
        (Some(price), _, _) => price,
        (None, Market::Spot, _) => {
            return Err(format!(
                "[pool.cloud] price_hour: a spot pool needs one: spot prices float and no price list gives them; \
                 write what one {} costs an hour on average, such as {:.2}",
                raw.instance_type,
                list_price.map_or(1.0, |p| p * 0.4)
            ))
        }
        (None, Market::OnDemand, Some(price)) => price,
        (None, Market::OnDemand, None) => {
            return Err(format!(
                "[pool.cloud] price_hour: the catalog has no price for {}; write what one costs an hour",
                raw.instance_type
            ))
        }
    };
    Ok(InstanceType {
        name: raw.instance_type.clone(),
        gpus,
        gpu_model,
        cpu_millis,
        memory_bytes,
        price_hour,
        market,
        zones: raw.zones.clone(),
    })
}

/// Which credentials a provider is made with.
enum Stand {
    /// Placeholders, to run the provider's own checks of its settings at load.
    In,
    /// The provider's usual places.
    Real,
}

/// Builds the pool's provider, reading its credentials from their usual places. Credentials that cannot be found do
/// not stop the server: the provider answers every call with `Unauthorized`, naming what is missing, so that the pool
/// cools down and `ferry pools` shows why, as for credentials the provider refuses.
pub fn build(pool: &CloudPool) -> Result<Arc<dyn Provider>, String> {
    make(pool, Stand::Real).or_else(|e| {
        if e.contains("credential") || e.contains("AWS_") || e.contains("GOOGLE_") || e.contains("AZURE_") {
            Ok(Arc::new(Unavailable { provider: title(&pool.provider), why: e, types: vec![pool.instance.clone()] }))
        } else {
            Err(e)
        }
    })
}

fn title(provider: &str) -> &'static str {
    match provider {
        "gcp" => crate::gce::PROVIDER,
        "azure" => crate::azure::PROVIDER,
        _ => "EC2",
    }
}

fn make(pool: &CloudPool, stand: Stand) -> Result<Arc<dyn Provider>, String> {
    let raw: Raw = serde_json::from_value(pool.settings.clone()).map_err(|e| e.to_string())?;
    let types = vec![pool.instance.clone()];
    let provider: Arc<dyn Provider> = match pool.provider.as_str() {
        "aws" => {
            let settings = Ec2Settings {
                region: raw.region,
                endpoint: raw.endpoint,
                image_id: raw.image,
                instance_types: types,
                security_group_ids: raw.security_groups,
                subnet_by_zone: raw.subnets,
                credentials: None,
            };
            match stand {
                Stand::In => Arc::new(
                    Ec2::with_credentials(settings, Credentials::new("-", "-", None)).map_err(|e| e.to_string())?,
                ),
                Stand::Real => Arc::new(Ec2::new(settings).map_err(|e| e.to_string())?),
            }
        }
        "gcp" => {
            let settings = GceSettings {
                project: raw.project.ok_or("project: name the Google Cloud project id, such as ml-prod-123456")?,
                endpoint: raw.endpoint,
                image: raw.image,
                boot_disk_gb: raw.boot_disk_gb.unwrap_or(100),
                network: raw.network.unwrap_or_else(|| "global/networks/default".into()),
                subnetwork: raw.subnetwork,
                external_ip: raw.external_ip.unwrap_or(true),
                accelerator_by_type: raw
                    .accelerator
                    .map(|a| BTreeMap::from([(pool.instance.name.clone(), a)]))
                    .unwrap_or_default(),
                instance_types: types,
                credentials: None,
            };
            match stand {
                Stand::In => Arc::new(
                    Gce::with_credentials(settings, GoogleCredentials::access_token("-")).map_err(|e| e.to_string())?,
                ),
                Stand::Real => Arc::new(Gce::new(settings).map_err(|e| e.to_string())?),
            }
        }
        "azure" => {
            let image = match raw.image.split(':').collect::<Vec<_>>().as_slice() {
                [publisher, offer, sku, version] => AzureImage::Marketplace {
                    publisher: publisher.to_string(),
                    offer: offer.to_string(),
                    sku: sku.to_string(),
                    version: version.to_string(),
                },
                _ if raw.image.starts_with('/') => AzureImage::Id(raw.image.clone()),
                _ => {
                    return Err(format!(
                        "image {:?}: write a marketplace image as publisher:offer:sku:version (such as \
                         Canonical:ubuntu-24_04-lts:server:latest) or an image's resource id",
                        raw.image
                    ))
                }
            };
            let settings = AzureSettings {
                subscription_id: raw.subscription_id.ok_or("subscription_id: name the subscription's GUID")?,
                resource_group: raw.resource_group.ok_or("resource_group: name the resource group the VMs go in")?,
                location: raw.region,
                management_endpoint: raw.endpoint,
                login_endpoint: raw.login_endpoint,
                image,
                os_disk_gb: raw.os_disk_gb.unwrap_or(100),
                subnet_id: raw.subnet_id.ok_or("subnet_id: name the subnet's resource id the VMs join")?,
                admin_username: raw.admin_username.unwrap_or_else(|| "ferry".into()),
                ssh_public_key: raw
                    .ssh_public_key
                    .ok_or("ssh_public_key: paste the admin user's OpenSSH public key")?,
                instance_types: types,
                credentials: None,
            };
            match stand {
                Stand::In => Arc::new(
                    Azure::with_credentials(settings, crate::azure::AzureCredentials::new("tenant", "-", "-"))
                        .map_err(|e| e.to_string())?,
                ),
                Stand::Real => Arc::new(Azure::new(settings).map_err(|e| e.to_string())?),
            }
        }
        other => return Err(catalog::check_provider(other).err().unwrap_or_default()),
    };
    Ok(provider)
}

/// A provider whose credentials could not be found: every call is refused, saying why.
struct Unavailable {
    provider: &'static str,
    why: String,
    types: Vec<InstanceType>,
}

impl Unavailable {
    fn refuse<T: Send + 'static>(&self) -> ProviderFuture<'_, T> {
        let refusal = Refusal {
            provider: self.provider,
            code: crate::NO_CREDENTIALS.into(),
            message: self.why.clone(),
            request_id: None,
        };
        Box::pin(async move { Err(ProviderError::Unauthorized(refusal)) })
    }
}

impl Provider for Unavailable {
    fn kind(&self) -> &'static str {
        "unavailable"
    }

    fn instance_types(&self) -> &[InstanceType] {
        &self.types
    }

    fn launch(&self, _request: crate::LaunchRequest) -> ProviderFuture<'_, crate::Instance> {
        self.refuse()
    }

    fn list<'a>(&'a self, _installation: &'a str) -> ProviderFuture<'a, Vec<crate::Instance>> {
        self.refuse()
    }

    fn terminate<'a>(&'a self, _ids: &'a [String]) -> ProviderFuture<'a, ()> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(extra: serde_json::Value) -> Result<CloudPool, String> {
        let mut table = serde_json::json!({
            "provider": "aws", "region": "us-east-1", "zones": ["us-east-1a", "us-east-1b"],
            "instance_type": "g5.xlarge", "image": "ami-12345678",
        });
        for (k, v) in extra.as_object().unwrap() {
            table[k] = v.clone();
        }
        check(table)
    }

    #[test]
    fn a_catalogued_type_gets_its_shape_and_list_price_and_spot_needs_a_price() {
        let pool = aws(serde_json::json!({})).unwrap();
        assert_eq!(
            (pool.instance.gpus, pool.instance.gpu_model.as_deref(), pool.market()),
            (1, Some("A10G"), Market::OnDemand)
        );
        assert!(pool.instance.price_hour > 0.5);
        let spot = aws(serde_json::json!({"market": "spot"})).unwrap_err();
        assert!(spot.starts_with("[pool.cloud] price_hour: a spot pool needs one"), "{spot}");
        let priced = aws(serde_json::json!({"market": "spot", "price_hour": 0.4})).unwrap();
        assert_eq!((priced.market(), priced.instance.price_hour), (Market::Spot, 0.4));
    }

    #[test]
    fn bad_tables_are_refused_with_the_field_and_the_fix() {
        let cases = [
            (
                serde_json::json!({"provider": "moon"}),
                "[pool.cloud] provider: provider \"moon\" is not one this build knows",
            ),
            (serde_json::json!({"region": "us-east-9"}), "[pool.cloud] region: region \"us-east-9\""),
            (serde_json::json!({"zones": ["eu-west-1a"]}), "[pool.cloud] zones: zone \"eu-west-1a\" is not a zone of"),
            (serde_json::json!({"zones": []}), "[pool.cloud] zones: list at least one zone"),
            (
                serde_json::json!({"instance_type": "g5.xlarg"}),
                "[pool.cloud] instance_type: instance type \"g5.xlarg\"",
            ),
            (serde_json::json!({"price_hour": -1.0}), "[pool.cloud] price_hour: -1 is not a price"),
            (serde_json::json!({"market": "cheap"}), "[pool.cloud] market: \"cheap\" is not a market"),
            (serde_json::json!({"project": "p"}), "[pool.cloud] project: applies only to provider = \"gcp\""),
            (serde_json::json!({"image": ""}), "[pool.cloud]: image_id is empty"),
            (serde_json::json!({"colour": "red"}), "[pool.cloud]: unknown field `colour`"),
            (serde_json::json!({"gpus": 1}), "[pool.cloud]: g5.xlarge is in the catalog"),
        ];
        for (extra, expected) in cases {
            let error = aws(extra.clone()).unwrap_err();
            assert!(error.starts_with(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn compute_engine_and_azure_tables_are_checked_with_their_own_fields() {
        let gcp = serde_json::json!({
            "provider": "gcp", "region": "us-central1", "zones": ["us-central1-a", "us-central1-b"],
            "instance_type": "g2-standard-4", "image": "projects/debian-cloud/global/images/family/debian-12",
            "project": "ml-prod-123456",
        });
        let pool = check(gcp.clone()).unwrap();
        assert_eq!((pool.instance.gpus, pool.instance.gpu_model.as_deref()), (1, Some("L4")));
        let mut no_project = gcp.clone();
        no_project.as_object_mut().unwrap().remove("project");
        assert!(check(no_project).unwrap_err().contains("project: name the Google Cloud project id"));
        let mut aws_zone = gcp.clone();
        aws_zone["zones"] = serde_json::json!(["us-central1a"]);
        assert!(check(aws_zone).unwrap_err().contains("write the region, a hyphen and one letter"));
        let azure = serde_json::json!({
            "provider": "azure", "region": "eastus", "zones": ["1", "2"],
            "instance_type": "Standard_NC4as_T4_v3", "image": "Canonical:ubuntu-24_04-lts:server:latest",
            "subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "ml",
            "subnet_id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ml/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
            "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ ferry@example",
        });
        let pool = check(azure.clone()).unwrap();
        assert_eq!((pool.instance.gpus, pool.region.as_str()), (1, "eastus"));
        let mut bad_image = azure.clone();
        bad_image["image"] = serde_json::json!("ubuntu");
        assert!(check(bad_image).unwrap_err().contains("publisher:offer:sku:version"));
        let mut aws_field = azure;
        aws_field["security_groups"] = serde_json::json!(["sg-1"]);
        assert!(check(aws_field).unwrap_err().contains("security_groups: applies only to provider = \"aws\""));
    }

    #[test]
    fn a_type_the_catalog_lacks_may_be_described_in_full() {
        let described = serde_json::json!({
            "instance_type": "p6.48xlarge", "gpus": 8, "gpu_model": "B200", "cpus": 192, "memory": "2TiB", "price_hour": 100.0
        });
        let pool = aws(described).unwrap();
        assert_eq!((pool.instance.gpus, pool.instance.memory_bytes), (8, 2 << 40));
        let half = aws(serde_json::json!({"instance_type": "p6.48xlarge", "gpus": 8})).unwrap_err();
        assert!(half.contains("describe it with gpus, gpu_model, cpus, memory and price_hour"), "{half}");
    }

    #[test]
    fn missing_credentials_make_a_provider_that_refuses_every_call_rather_than_an_error() {
        let provider = Unavailable { provider: "EC2", why: "no AWS credentials".into(), types: Vec::new() };
        let refused = futures_lite_block_on(provider.terminate(&[]));
        assert!(matches!(refused, Err(ProviderError::Unauthorized(r)) if r.message == "no AWS credentials"));
    }

    fn futures_lite_block_on<T>(future: ProviderFuture<'_, T>) -> Result<T, ProviderError> {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }
}
