//! The Query API's parameters of each call, built from Ferry's requests. Pure, so the tests read exactly what
//! goes on the wire.

use base64::Engine;

use super::Ec2Settings;
use crate::{LaunchRequest, Market, TAG_INSTALLATION};

type Params = Vec<(String, String)>;

fn param(params: &mut Params, key: impl Into<String>, value: impl Into<String>) {
    params.push((key.into(), value.into()));
}

/// `RunInstances` of one machine: the image, type and zone, the market, the start-up script, and the tags by
/// which it is found again.
pub(super) fn run_instances(settings: &Ec2Settings, request: &LaunchRequest) -> Params {
    let mut p = Params::new();
    param(&mut p, "ImageId", &settings.image_id);
    param(&mut p, "InstanceType", &request.instance_type);
    param(&mut p, "MinCount", "1");
    param(&mut p, "MaxCount", "1");
    param(&mut p, "Placement.AvailabilityZone", &request.zone);
    if let Some(subnet) = settings.subnet_by_zone.get(&request.zone) {
        param(&mut p, "SubnetId", subnet);
    }
    for (i, group) in settings.security_group_ids.iter().enumerate() {
        param(&mut p, format!("SecurityGroupId.{}", i + 1), group);
    }
    // A machine that shuts itself down (the agent's node drained, a failed boot) must not linger stopped, costing
    // its disks and holding a name: it is terminated.
    param(&mut p, "InstanceInitiatedShutdownBehavior", "terminate");
    if request.market == Market::Spot {
        param(&mut p, "InstanceMarketOptions.MarketType", "spot");
        // A one-time request that ends with the instance: a reclaimed machine is gone, never restarted behind
        // Ferry's back (the core requeues its jobs instead).
        param(&mut p, "InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time");
        param(&mut p, "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", "terminate");
    }
    if !request.user_data.is_empty() {
        param(&mut p, "UserData", base64::engine::general_purpose::STANDARD.encode(&request.user_data));
    }
    if let Some(token) = &request.client_token {
        param(&mut p, "ClientToken", token);
    }
    param(&mut p, "TagSpecification.1.ResourceType", "instance");
    let mut tags = request.tags();
    tags.insert("Name".into(), request.node.clone());
    for (i, (key, value)) in tags.iter().enumerate() {
        param(&mut p, format!("TagSpecification.1.Tag.{}.Key", i + 1), key);
        param(&mut p, format!("TagSpecification.1.Tag.{}.Value", i + 1), value);
    }
    p
}

/// One page of `DescribeInstances` of the machines tagged with the installation.
pub(super) fn describe_instances(installation: &str, page_size: u32, next_token: Option<&str>) -> Params {
    let mut p = Params::new();
    param(&mut p, "Filter.1.Name", format!("tag:{TAG_INSTALLATION}"));
    param(&mut p, "Filter.1.Value.1", installation);
    param(&mut p, "MaxResults", page_size.to_string());
    if let Some(token) = next_token {
        param(&mut p, "NextToken", token);
    }
    p
}

pub(super) fn terminate_instances(ids: &[&str]) -> Params {
    ids.iter().enumerate().map(|(i, id)| (format!("InstanceId.{}", i + 1), id.to_string())).collect()
}

/// The instance ids a message names, such as `The instance IDs 'i-1, i-2' do not exist`.
pub(super) fn instance_ids_in(message: &str) -> Vec<&str> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            w.strip_prefix("i-").is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn request(market: Market) -> LaunchRequest {
        LaunchRequest {
            installation: "inst-1".into(),
            pool: "aws-spot".into(),
            node: "aws-spot-3".into(),
            instance_type: "g5.xlarge".into(),
            zone: "us-east-1b".into(),
            market,
            user_data: "#!/bin/sh\nferry agent --join TOKEN\n".into(),
            client_token: Some("inst-1/aws-spot-3/1".into()),
        }
    }

    fn show(params: &Params) -> String {
        params.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    #[test]
    fn a_spot_launch_asks_for_one_tagged_spot_instance() {
        let mut settings = super::super::tests::settings();
        settings.security_group_ids = vec!["sg-1".into(), "sg-2".into()];
        settings.subnet_by_zone.insert("us-east-1b".into(), "subnet-b".into());
        expect![[r#"
            ImageId=ami-12c6146b
            InstanceType=g5.xlarge
            MinCount=1
            MaxCount=1
            Placement.AvailabilityZone=us-east-1b
            SubnetId=subnet-b
            SecurityGroupId.1=sg-1
            SecurityGroupId.2=sg-2
            InstanceInitiatedShutdownBehavior=terminate
            InstanceMarketOptions.MarketType=spot
            InstanceMarketOptions.SpotOptions.SpotInstanceType=one-time
            InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior=terminate
            UserData=IyEvYmluL3NoCmZlcnJ5IGFnZW50IC0tam9pbiBUT0tFTgo=
            ClientToken=inst-1/aws-spot-3/1
            TagSpecification.1.ResourceType=instance
            TagSpecification.1.Tag.1.Key=Name
            TagSpecification.1.Tag.1.Value=aws-spot-3
            TagSpecification.1.Tag.2.Key=ferry-installation
            TagSpecification.1.Tag.2.Value=inst-1
            TagSpecification.1.Tag.3.Key=ferry-node
            TagSpecification.1.Tag.3.Value=aws-spot-3
            TagSpecification.1.Tag.4.Key=ferry-pool
            TagSpecification.1.Tag.4.Value=aws-spot
        "#]]
        .assert_eq(&show(&run_instances(&settings, &request(Market::Spot))));
    }

    #[test]
    fn an_on_demand_launch_names_no_market() {
        let params = run_instances(&super::super::tests::settings(), &request(Market::OnDemand));
        assert!(!params.iter().any(|(k, _)| k.starts_with("InstanceMarketOptions")), "{params:?}");
    }

    #[test]
    fn listing_filters_on_the_installation_tag_a_page_at_a_time() {
        expect![[r#"
            Filter.1.Name=tag:ferry-installation
            Filter.1.Value.1=inst-1
            MaxResults=1000
            NextToken=abc
        "#]]
        .assert_eq(&show(&describe_instances("inst-1", 1000, Some("abc"))));
    }

    #[test]
    fn terminating_numbers_the_ids_from_one() {
        expect![[r#"
            InstanceId.1=i-1
            InstanceId.2=i-2
        "#]]
        .assert_eq(&show(&terminate_instances(&["i-1", "i-2"])));
    }

    #[test]
    fn missing_ids_are_read_from_ec2s_message() {
        assert_eq!(instance_ids_in("The instance IDs 'i-0abc, i-12' do not exist"), vec!["i-0abc", "i-12"]);
        assert_eq!(
            instance_ids_in("The instance ID 'i-1234567890abcdef0' does not exist"),
            vec!["i-1234567890abcdef0"]
        );
        assert!(instance_ids_in("nothing here, not even hi-there").is_empty());
    }
}
