//! A built-in catalog of well-known instance types and regions of the providers this crate supports, so that the
//! server can refuse an elastic pool's configuration at load time (an unknown provider, instance type, region or
//! zone; a template larger than any instance; a missing price) with the field and the fix, rather than at the
//! first launch.
//!
//! Prices are on-demand Linux list prices in US regions (us-east-1, us-central1, eastus) in USD per hour, as the
//! providers published them around 2024-2025. They change, differ by region and are only defaults: a pool's
//! `price_hour` overrides them. Spot prices float and are never in the catalog.
//!
//! The catalog is what this build knows, not everything the providers offer: refusals say "this build knows", and
//! the tables are plain data, cheap to extend when a provider adds a type or region. This module must never do I/O
//! or ask a provider anything; it is consulted while configuration loads.

use std::cmp::Reverse;

/// The providers this build knows, as configuration names them.
pub const PROVIDERS: &[&str] = &["aws", "gcp", "azure"];

/// The most names [`suggest`] returns, and the most examples an error message lists.
const SUGGESTIONS_MAX: usize = 3;

/// Names longer than this are not compared for suggestions: no real name is this long, and the edit distance is
/// quadratic in the length.
const SUGGEST_NAME_CHARS_MAX: usize = 100;

/// One catalog entry: what a machine of the type has, and its on-demand list price per hour in USD where known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CatalogType {
    /// The provider's name for it, exactly as its API spells it, such as `g5.xlarge`.
    pub name: &'static str,
    pub gpus: u32,
    /// The GPU model, such as `A10G`; `None` for a machine without GPUs.
    pub gpu_model: Option<&'static str>,
    /// Virtual CPUs (hyperthreads), as the provider counts them.
    pub cpus: u32,
    pub memory_gib: u32,
    /// The on-demand Linux list price in a US region; `None` where the catalog does not know it.
    pub on_demand_usd_hour: Option<f64>,
}

impl CatalogType {
    /// The CPUs in thousandths, as [`crate::InstanceType::cpu_millis`] counts them.
    pub const fn cpu_millis(&self) -> u64 {
        self.cpus as u64 * 1000
    }

    /// The memory in bytes, as [`crate::InstanceType::memory_bytes`] counts it.
    pub const fn memory_bytes(&self) -> u64 {
        self.memory_gib as u64 * (1 << 30)
    }
}

/// How a provider writes a zone within a region.
#[derive(Clone, Copy)]
enum ZoneForm {
    /// The region followed by one lowercase letter: `us-east-1a` (EC2).
    RegionLetter,
    /// The region, a hyphen and one lowercase letter: `us-central1-a` (Compute Engine).
    RegionDashLetter,
    /// The zone's number within the location: `1`, `2` or `3` (Azure availability zones).
    Number,
}

/// Azure's availability zones within a location.
const AZURE_ZONES: &[&str] = &["1", "2", "3"];

/// What the catalog knows of one provider.
struct Catalog {
    /// The name configuration uses, one of [`PROVIDERS`].
    name: &'static str,
    /// The name messages use, such as `AWS`.
    title: &'static str,
    /// What the provider calls a region: Azure says "location".
    region_word: &'static str,
    zone_form: ZoneForm,
    types: &'static [CatalogType],
    /// The regions, the most used first, since messages offer the first few as examples.
    regions: &'static [&'static str],
}

static CATALOGS: [Catalog; 3] = [
    Catalog {
        name: "aws",
        title: "AWS",
        region_word: "region",
        zone_form: ZoneForm::RegionLetter,
        types: AWS_TYPES,
        regions: AWS_REGIONS,
    },
    Catalog {
        name: "gcp",
        title: "GCP",
        region_word: "region",
        zone_form: ZoneForm::RegionDashLetter,
        types: GCP_TYPES,
        regions: GCP_REGIONS,
    },
    Catalog {
        name: "azure",
        title: "Azure",
        region_word: "location",
        zone_form: ZoneForm::Number,
        types: AZURE_TYPES,
        regions: AZURE_REGIONS,
    },
];

const fn gpu(name: &'static str, gpus: u32, model: &'static str, cpus: u32, memory_gib: u32, usd: f64) -> CatalogType {
    CatalogType { name, gpus, gpu_model: Some(model), cpus, memory_gib, on_demand_usd_hour: Some(usd) }
}

const fn cpu(name: &'static str, cpus: u32, memory_gib: u32, usd: f64) -> CatalogType {
    CatalogType { name, gpus: 0, gpu_model: None, cpus, memory_gib, on_demand_usd_hour: Some(usd) }
}

/// EC2 types, priced in us-east-1. The names must be real EC2 names: moto, the EC2 test server, checks them.
static AWS_TYPES: &[CatalogType] = &[
    gpu("g4dn.xlarge", 1, "T4", 4, 16, 0.526),
    gpu("g4dn.2xlarge", 1, "T4", 8, 32, 0.752),
    gpu("g4dn.4xlarge", 1, "T4", 16, 64, 1.204),
    gpu("g4dn.8xlarge", 1, "T4", 32, 128, 2.176),
    gpu("g4dn.12xlarge", 4, "T4", 48, 192, 3.912),
    gpu("g4dn.16xlarge", 1, "T4", 64, 256, 4.352),
    gpu("g4dn.metal", 8, "T4", 96, 384, 7.824),
    gpu("g5.xlarge", 1, "A10G", 4, 16, 1.006),
    gpu("g5.2xlarge", 1, "A10G", 8, 32, 1.212),
    gpu("g5.4xlarge", 1, "A10G", 16, 64, 1.624),
    gpu("g5.8xlarge", 1, "A10G", 32, 128, 2.448),
    gpu("g5.12xlarge", 4, "A10G", 48, 192, 5.672),
    gpu("g5.16xlarge", 1, "A10G", 64, 256, 4.096),
    gpu("g5.24xlarge", 4, "A10G", 96, 384, 8.144),
    gpu("g5.48xlarge", 8, "A10G", 192, 768, 16.288),
    gpu("g6.xlarge", 1, "L4", 4, 16, 0.8048),
    gpu("g6.2xlarge", 1, "L4", 8, 32, 0.9776),
    gpu("g6.4xlarge", 1, "L4", 16, 64, 1.3232),
    gpu("g6.8xlarge", 1, "L4", 32, 128, 2.0144),
    gpu("g6.12xlarge", 4, "L4", 48, 192, 4.6016),
    gpu("g6.16xlarge", 1, "L4", 64, 256, 3.3968),
    gpu("g6.24xlarge", 4, "L4", 96, 384, 6.6752),
    gpu("g6.48xlarge", 8, "L4", 192, 768, 13.3504),
    gpu("p3.2xlarge", 1, "V100", 8, 61, 3.06),
    gpu("p3.8xlarge", 4, "V100", 32, 244, 12.24),
    gpu("p3.16xlarge", 8, "V100", 64, 488, 24.48),
    gpu("p3dn.24xlarge", 8, "V100", 96, 768, 31.212),
    // AWS cut the P4 and P5 prices in June 2025; these are the prices before, which most published tables show.
    gpu("p4d.24xlarge", 8, "A100", 96, 1152, 32.7726),
    gpu("p4de.24xlarge", 8, "A100-80GB", 96, 1152, 40.9657),
    gpu("p5.48xlarge", 8, "H100", 192, 2048, 98.32),
    cpu("t3.micro", 2, 1, 0.0104),
    cpu("t3.small", 2, 2, 0.0208),
    cpu("t3.medium", 2, 4, 0.0416),
    cpu("t3.large", 2, 8, 0.0832),
    cpu("m5.large", 2, 8, 0.096),
    cpu("m5.xlarge", 4, 16, 0.192),
    cpu("m5.2xlarge", 8, 32, 0.384),
    cpu("m5.4xlarge", 16, 64, 0.768),
    cpu("c5.xlarge", 4, 8, 0.17),
    cpu("c5.2xlarge", 8, 16, 0.34),
];

/// Compute Engine machine types, priced in us-central1 with their built-in GPUs. N1 types carry GPUs only as
/// attached accelerators (the provider's `accelerator_by_type`), so the catalog lists them without.
static GCP_TYPES: &[CatalogType] = &[
    gpu("a2-highgpu-1g", 1, "A100", 12, 85, 3.6734),
    gpu("a2-highgpu-2g", 2, "A100", 24, 170, 7.3468),
    gpu("a2-highgpu-4g", 4, "A100", 48, 340, 14.6935),
    gpu("a2-highgpu-8g", 8, "A100", 96, 680, 29.3871),
    gpu("a2-megagpu-16g", 16, "A100", 96, 1360, 55.7395),
    gpu("a2-ultragpu-1g", 1, "A100-80GB", 12, 170, 5.0688),
    gpu("a2-ultragpu-2g", 2, "A100-80GB", 24, 340, 10.1376),
    gpu("a2-ultragpu-4g", 4, "A100-80GB", 48, 680, 20.2752),
    gpu("a2-ultragpu-8g", 8, "A100-80GB", 96, 1360, 40.5504),
    gpu("a3-highgpu-8g", 8, "H100", 208, 1872, 88.2523),
    gpu("g2-standard-4", 1, "L4", 4, 16, 0.7068),
    gpu("g2-standard-8", 1, "L4", 8, 32, 0.8536),
    gpu("g2-standard-12", 1, "L4", 12, 48, 1.0004),
    gpu("g2-standard-16", 1, "L4", 16, 64, 1.1472),
    gpu("g2-standard-24", 2, "L4", 24, 96, 2.0008),
    gpu("g2-standard-32", 1, "L4", 32, 128, 1.7344),
    gpu("g2-standard-48", 4, "L4", 48, 192, 4.0017),
    gpu("g2-standard-96", 8, "L4", 96, 384, 8.0033),
    cpu("n1-standard-4", 4, 15, 0.19),
    cpu("n1-standard-8", 8, 30, 0.38),
    cpu("n1-standard-16", 16, 60, 0.76),
    cpu("e2-standard-2", 2, 8, 0.067),
    cpu("e2-standard-4", 4, 16, 0.134),
    cpu("e2-standard-8", 8, 32, 0.268),
];

/// Azure virtual machine sizes, priced in eastus.
static AZURE_TYPES: &[CatalogType] = &[
    gpu("Standard_NC4as_T4_v3", 1, "T4", 4, 28, 0.526),
    gpu("Standard_NC8as_T4_v3", 1, "T4", 8, 56, 0.752),
    gpu("Standard_NC16as_T4_v3", 1, "T4", 16, 110, 1.204),
    gpu("Standard_NC64as_T4_v3", 4, "T4", 64, 440, 4.352),
    gpu("Standard_NC24ads_A100_v4", 1, "A100-80GB", 24, 220, 3.673),
    gpu("Standard_NC48ads_A100_v4", 2, "A100-80GB", 48, 440, 7.346),
    gpu("Standard_NC96ads_A100_v4", 4, "A100-80GB", 96, 880, 14.692),
    gpu("Standard_ND96asr_v4", 8, "A100", 96, 900, 27.197),
    gpu("Standard_ND96amsr_A100_v4", 8, "A100-80GB", 96, 1900, 32.77),
    gpu("Standard_ND96isr_H100_v5", 8, "H100", 96, 1900, 98.32),
    gpu("Standard_NV36ads_A10_v5", 1, "A10", 36, 440, 3.2),
    cpu("Standard_D2s_v5", 2, 8, 0.096),
    cpu("Standard_D4s_v5", 4, 16, 0.192),
    cpu("Standard_D8s_v5", 8, 32, 0.384),
];

#[rustfmt::skip]
static AWS_REGIONS: &[&str] = &[
    "us-east-1", "us-west-2", "eu-west-1", "us-east-2", "us-west-1", "ca-central-1", "ca-west-1", "eu-west-2",
    "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1", "eu-south-1", "eu-south-2", "ap-south-1",
    "ap-south-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
    "ap-southeast-3", "ap-southeast-4", "ap-east-1", "sa-east-1", "me-south-1", "me-central-1", "af-south-1",
    "il-central-1", "us-gov-west-1", "us-gov-east-1", "cn-north-1", "cn-northwest-1",
];

#[rustfmt::skip]
static GCP_REGIONS: &[&str] = &[
    "us-central1", "us-east1", "europe-west4", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2",
    "us-west3", "us-west4", "northamerica-northeast1", "northamerica-northeast2", "southamerica-east1",
    "southamerica-west1", "europe-west1", "europe-west2", "europe-west3", "europe-west6", "europe-west8",
    "europe-west9", "europe-west10", "europe-west12", "europe-north1", "europe-central2", "europe-southwest1",
    "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3", "asia-south1",
    "asia-south2", "asia-southeast1", "asia-southeast2", "australia-southeast1", "australia-southeast2", "me-west1",
    "me-central1", "me-central2", "africa-south1",
];

#[rustfmt::skip]
static AZURE_REGIONS: &[&str] = &[
    "eastus", "westus2", "westeurope", "eastus2", "westus", "westus3", "centralus", "northcentralus",
    "southcentralus", "westcentralus", "canadacentral", "canadaeast", "brazilsouth", "northeurope", "uksouth",
    "ukwest", "francecentral", "germanywestcentral", "norwayeast", "swedencentral", "switzerlandnorth",
    "polandcentral", "italynorth", "eastasia", "southeastasia", "japaneast", "japanwest", "koreacentral",
    "centralindia", "southindia", "australiaeast", "australiasoutheast", "uaenorth", "southafricanorth",
    "qatarcentral",
];

impl Catalog {
    /// The title with its article, for messages: "an AWS", "a GCP".
    fn a_title(&self) -> String {
        let article = if self.title.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" };
        format!("{article} {}", self.title)
    }
}

fn catalog(provider: &str) -> Option<&'static Catalog> {
    CATALOGS.iter().find(|c| c.name == provider)
}

/// Checks that this build knows the provider; the error names the ones it does.
pub fn check_provider(provider: &str) -> Result<(), String> {
    known(provider).map(|_| ())
}

fn known(provider: &str) -> Result<&'static Catalog, String> {
    catalog(provider).ok_or_else(|| {
        format!("provider {provider:?} is not one this build knows; write one of {}", PROVIDERS.join(", "))
    })
}

/// The catalog's entry for a type, found by its exact name; `None` for an unknown provider or type.
pub fn instance_type(provider: &str, name: &str) -> Option<&'static CatalogType> {
    instance_types(provider).iter().find(|t| t.name == name)
}

/// The provider's catalog types; empty for an unknown provider.
pub fn instance_types(provider: &str) -> &'static [CatalogType] {
    catalog(provider).map_or(&[], |c| c.types)
}

/// The provider's regions (Azure's locations); empty for an unknown provider.
pub fn regions(provider: &str) -> &'static [&'static str] {
    catalog(provider).map_or(&[], |c| c.regions)
}

/// Looks a type up; the error names the type and offers the closest known names.
pub fn check_instance_type(provider: &str, name: &str) -> Result<&'static CatalogType, String> {
    let catalog = known(provider)?;
    instance_type(provider, name).ok_or_else(|| {
        let close = suggest(provider, name);
        let hint = if close.is_empty() {
            format!("write one such as {}", examples(catalog.types.iter().map(|t| t.name)))
        } else {
            format!("did you mean {}?", close.join(", "))
        };
        format!("instance type {name:?} is not {} instance type this build knows; {hint}", catalog.a_title())
    })
}

/// Checks a region: the error names the region and lists the closest valid ones, or the most used.
pub fn check_region(provider: &str, region: &str) -> Result<(), String> {
    let catalog = known(provider)?;
    if catalog.regions.contains(&region) {
        return Ok(());
    }
    let close = closest(catalog.regions.iter().copied(), region);
    let offered = if close.is_empty() { examples(catalog.regions.iter().copied()) } else { close.join(", ") };
    Err(format!(
        "{} {region:?} is not {} {} this build knows; write one such as {offered}",
        catalog.region_word,
        catalog.a_title(),
        catalog.region_word
    ))
}

/// Checks that a zone belongs to the region, in the provider's form: EC2 `us-east-1a` (the region and one
/// lowercase letter), Compute Engine `us-central1-a` (the region, a hyphen and one lowercase letter), Azure `1`,
/// `2` or `3` (the availability zone's number within the location). The region is checked first. Whether the
/// letter names a zone that exists is left to the provider, which answers a launch there with an error.
pub fn check_zone(provider: &str, region: &str, zone: &str) -> Result<(), String> {
    let catalog = known(provider)?;
    check_region(provider, region)?;
    let (fits, form) = match catalog.zone_form {
        ZoneForm::RegionLetter => (
            zone.strip_prefix(region).is_some_and(one_lowercase_letter),
            format!("the region followed by one letter, such as {region}a"),
        ),
        ZoneForm::RegionDashLetter => (
            zone.strip_prefix(region).and_then(|z| z.strip_prefix('-')).is_some_and(one_lowercase_letter),
            format!("the region, a hyphen and one letter, such as {region}-a"),
        ),
        ZoneForm::Number => (AZURE_ZONES.contains(&zone), "the zone's number: 1, 2 or 3".to_string()),
    };
    if fits {
        return Ok(());
    }
    Err(format!("zone {zone:?} is not a zone of {} {} {region}; write {form}", catalog.title, catalog.region_word))
}

fn one_lowercase_letter(s: &str) -> bool {
    s.len() == 1 && s.bytes().all(|b| b.is_ascii_lowercase())
}

/// Suggests the closest known instance type names for an unknown one (for "did you mean"): names it is the start
/// of, then names within a few edits, ignoring case; at most three, closest first.
pub fn suggest(provider: &str, name: &str) -> Vec<&'static str> {
    closest(instance_types(provider).iter().map(|t| t.name), name)
}

/// The candidates that begin with `input`, then those within a few edits of it, closest first, ignoring case.
fn closest(candidates: impl Iterator<Item = &'static str>, input: &str) -> Vec<&'static str> {
    if input.is_empty() || input.chars().count() > SUGGEST_NAME_CHARS_MAX {
        return Vec::new();
    }
    let input = input.to_lowercase();
    // A third of the input's length, at least two: enough for typos, too few to offer unrelated names.
    let distance_max = (input.chars().count() / 3).max(2);
    // Sorted by: extends the input, fewest edits, longest shared start (`g5.2xlarge` before `c5.xlarge` for
    // `g5.xlarg`: the family is what people rarely mistype), then name.
    let mut scored: Vec<(bool, usize, Reverse<usize>, &'static str)> = candidates
        .filter_map(|candidate| {
            let lower = candidate.to_lowercase();
            let distance = edit_distance(&input, &lower);
            let prefix = lower.starts_with(&input);
            let shared = input.chars().zip(lower.chars()).take_while(|(a, b)| a == b).count();
            (prefix || distance <= distance_max).then_some((!prefix, distance, Reverse(shared), candidate))
        })
        .collect();
    // Names much further than the closest are noise next to it (`me-central1` beside `us-central1`).
    let best = scored.iter().map(|s| s.1).min().unwrap_or(0);
    scored.retain(|&(not_prefix, distance, ..)| !not_prefix || distance <= best + 1);
    scored.sort();
    scored.into_iter().take(SUGGESTIONS_MAX).map(|(.., name)| name).collect()
}

/// The Levenshtein distance between two strings, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

fn examples(names: impl Iterator<Item = &'static str>) -> String {
    names.take(SUGGESTIONS_MAX).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use expect_test::{expect, Expect};

    use super::*;

    fn check(result: Result<(), String>, expected: Expect) {
        expected.assert_eq(&result.err().unwrap_or_else(|| "ok".to_string()));
    }

    #[test]
    fn lookups() {
        let g5 = instance_type("aws", "g5.xlarge").unwrap();
        assert_eq!((g5.gpus, g5.gpu_model, g5.cpus, g5.memory_gib), (1, Some("A10G"), 4, 16));
        assert_eq!((g5.cpu_millis(), g5.memory_bytes()), (4000, 16 << 30));
        assert_eq!(instance_type("aws", "p4de.24xlarge").unwrap().gpu_model, Some("A100-80GB"));
        assert_eq!(instance_type("gcp", "a3-highgpu-8g").unwrap().gpus, 8);
        assert_eq!(instance_type("gcp", "n1-standard-8").unwrap().gpus, 0);
        assert_eq!(instance_type("azure", "Standard_NC24ads_A100_v4").unwrap().gpu_model, Some("A100-80GB"));
        assert_eq!(instance_type("azure", "standard_nc24ads_a100_v4"), None);
        assert_eq!(instance_type("aws", "a2-highgpu-1g"), None);
        assert!(regions("aws").contains(&"eu-central-2"));
        assert!(regions("gcp").contains(&"europe-west12"));
        assert!(regions("azure").contains(&"qatarcentral"));
    }

    #[test]
    fn providers_are_the_catalogs() {
        let names: Vec<&str> = CATALOGS.iter().map(|c| c.name).collect();
        assert_eq!(names, PROVIDERS);
    }

    #[test]
    fn unknown_provider() {
        assert!(instance_types("oracle").is_empty());
        assert!(regions("oracle").is_empty());
        assert_eq!(instance_type("oracle", "g5.xlarge"), None);
        assert!(suggest("oracle", "g5.xlarge").is_empty());
        let refused = expect![[r#"provider "oracle" is not one this build knows; write one of aws, gcp, azure"#]];
        for result in [
            check_provider("oracle"),
            check_region("oracle", "us-east-1"),
            check_zone("oracle", "us-east-1", "us-east-1a"),
            check_instance_type("oracle", "g5.xlarge").map(|_| ()),
        ] {
            refused.assert_eq(&result.unwrap_err());
        }
    }

    #[test]
    fn regions_are_checked() {
        check(check_region("aws", "us-east-1"), expect!["ok"]);
        check(
            check_region("aws", "us-east-9"),
            expect![[
                r#"region "us-east-9" is not an AWS region this build knows; write one such as us-east-1, us-east-2"#
            ]],
        );
        check(
            check_region("aws", "mars"),
            expect![[
                r#"region "mars" is not an AWS region this build knows; write one such as us-east-1, us-west-2, eu-west-1"#
            ]],
        );
        check(
            check_region("gcp", "us-central-1"),
            expect![[r#"region "us-central-1" is not a GCP region this build knows; write one such as us-central1"#]],
        );
        check(
            check_region("azure", "East US"),
            expect![[
                r#"location "East US" is not an Azure location this build knows; write one such as eastus, eastus2"#
            ]],
        );
    }

    #[test]
    fn aws_zones() {
        check(check_zone("aws", "us-east-1", "us-east-1a"), expect!["ok"]);
        check(check_zone("aws", "eu-west-2", "eu-west-2c"), expect!["ok"]);
        check(
            check_zone("aws", "us-east-1", "us-east-1"),
            expect![[
                r#"zone "us-east-1" is not a zone of AWS region us-east-1; write the region followed by one letter, such as us-east-1a"#
            ]],
        );
        assert!(check_zone("aws", "us-east-1", "us-west-2a").is_err());
        assert!(check_zone("aws", "us-east-1", "us-east-1A").is_err());
        assert!(check_zone("aws", "us-east-1", "us-east-1-a").is_err());
        assert!(check_zone("aws", "us-east-1", "us-east-1ab").is_err());
    }

    #[test]
    fn gcp_zones() {
        check(check_zone("gcp", "us-central1", "us-central1-a"), expect!["ok"]);
        check(check_zone("gcp", "europe-west4", "europe-west4-b"), expect!["ok"]);
        check(
            check_zone("gcp", "us-central1", "us-central1a"),
            expect![[
                r#"zone "us-central1a" is not a zone of GCP region us-central1; write the region, a hyphen and one letter, such as us-central1-a"#
            ]],
        );
        assert!(check_zone("gcp", "us-central1", "us-east1-b").is_err());
        assert!(check_zone("gcp", "us-central1", "us-central1-1").is_err());
    }

    #[test]
    fn azure_zones() {
        for zone in ["1", "2", "3"] {
            check(check_zone("azure", "eastus", zone), expect!["ok"]);
        }
        check(
            check_zone("azure", "eastus", "eastus-1"),
            expect![[r#"zone "eastus-1" is not a zone of Azure location eastus; write the zone's number: 1, 2 or 3"#]],
        );
        assert!(check_zone("azure", "eastus", "4").is_err());
        assert!(check_zone("azure", "eastus", "0").is_err());
    }

    #[test]
    fn a_zone_in_an_unknown_region_names_the_region() {
        check(
            check_zone("gcp", "us-central9", "us-central9-a"),
            expect![[r#"region "us-central9" is not a GCP region this build knows; write one such as us-central1"#]],
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("aws", "g5.xlarg"), ["g5.xlarge", "g5.2xlarge", "g5.4xlarge"]);
        assert_eq!(suggest("aws", "p4d.24xl"), ["p4d.24xlarge"]);
        assert_eq!(suggest("aws", "g5.xlarge")[0], "g5.xlarge");
        assert_eq!(suggest("gcp", "a2-highgpu-8"), ["a2-highgpu-8g", "a2-highgpu-1g", "a2-highgpu-2g"]);
        assert_eq!(suggest("azure", "standard_nc4as_t4_v3")[0], "Standard_NC4as_T4_v3");
        assert!(suggest("aws", "quantum-computer").is_empty());
        assert!(suggest("aws", "").is_empty());
    }

    #[test]
    fn unknown_types_are_refused_with_suggestions() {
        let check_type = |provider, name| check_instance_type(provider, name).map(|_| ());
        check(check_type("aws", "g5.xlarge"), expect!["ok"]);
        check(
            check_type("aws", "p4d.24xl"),
            expect![[
                r#"instance type "p4d.24xl" is not an AWS instance type this build knows; did you mean p4d.24xlarge?"#
            ]],
        );
        check(
            check_type("gcp", "tpu-v5"),
            expect![[
                r#"instance type "tpu-v5" is not a GCP instance type this build knows; write one such as a2-highgpu-1g, a2-highgpu-2g, a2-highgpu-4g"#
            ]],
        );
    }

    #[test]
    fn every_entry_is_whole() {
        for catalog in &CATALOGS {
            let mut names = BTreeSet::new();
            for t in catalog.types {
                let provider = catalog.name;
                assert!(names.insert(t.name), "{provider}: {} is listed twice", t.name);
                assert!(t.cpus > 0 && t.memory_gib > 0, "{provider}: {} has no CPUs or memory", t.name);
                let price = t.on_demand_usd_hour.unwrap_or_else(|| panic!("{provider}: {} has no price", t.name));
                assert!(price > 0.0 && price.is_finite(), "{provider}: {} costs {price}", t.name);
                assert_eq!(t.gpus > 0, t.gpu_model.is_some(), "{provider}: {} has GPUs without a model", t.name);
            }
            let regions: BTreeSet<&str> = catalog.regions.iter().copied().collect();
            assert_eq!(regions.len(), catalog.regions.len(), "{}: a region is listed twice", catalog.name);
        }
    }
}
