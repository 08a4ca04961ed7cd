//! EC2's XML answers: instances out of `RunInstances` and `DescribeInstances`, and errors mapped to
//! [`ProviderError`]. Pure: text in, values out.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use serde::Deserialize;

use crate::{Instance, InstanceState, Market, ProviderError, Refusal};

/// How messages name this provider.
pub(crate) const PROVIDER: &str = "EC2";

/// A list as EC2 writes it: `<instancesSet><item>…</item>…</instancesSet>`.
#[derive(Deserialize, Debug)]
struct Items<T> {
    #[serde(default = "Vec::new")]
    item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { item: Vec::new() }
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct RunInstancesResponse {
    instances_set: Items<InstanceXml>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct DescribeInstancesResponse {
    /// Required, unlike the lists inside it, so that an answer that is not EC2's is not read as "no instances".
    reservation_set: Items<ReservationXml>,
    next_token: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct ReservationXml {
    #[serde(default)]
    instances_set: Items<InstanceXml>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct InstanceXml {
    instance_id: String,
    instance_state: StateXml,
    instance_type: String,
    launch_time: String,
    placement: PlacementXml,
    /// `spot` for a spot instance; absent for on-demand.
    instance_lifecycle: Option<String>,
    #[serde(default)]
    tag_set: Items<TagXml>,
}

#[derive(Deserialize, Debug)]
struct StateXml {
    name: String,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PlacementXml {
    availability_zone: String,
}

#[derive(Deserialize, Debug)]
struct TagXml {
    key: String,
    #[serde(default)]
    value: String,
}

/// A page of `DescribeInstances`: its instances and the token of the next page.
#[derive(Debug)]
pub(crate) struct Page {
    pub instances: Vec<Instance>,
    pub next_token: Option<String>,
}

/// The instances a `RunInstances` answer reports.
pub(crate) fn run_instances(body: &str) -> Result<Vec<Instance>, ProviderError> {
    let response: RunInstancesResponse = parse(body)?;
    response.instances_set.item.into_iter().map(instance).collect()
}

/// One page of a `DescribeInstances` answer, every reservation's instances together.
pub(crate) fn describe_instances(body: &str) -> Result<Page, ProviderError> {
    let response: DescribeInstancesResponse = parse(body)?;
    let instances = response
        .reservation_set
        .item
        .into_iter()
        .flat_map(|r| r.instances_set.item)
        .map(instance)
        .collect::<Result<_, _>>()?;
    Ok(Page { instances, next_token: response.next_token.filter(|t| !t.is_empty()) })
}

fn parse<'de, T: Deserialize<'de>>(body: &'de str) -> Result<T, ProviderError> {
    quick_xml::de::from_str(body).map_err(|e| malformed(format!("cannot read the answer: {e}")))
}

fn instance(xml: InstanceXml) -> Result<Instance, ProviderError> {
    let state = match xml.instance_state.name.as_str() {
        "pending" => InstanceState::Pending,
        "running" => InstanceState::Running,
        "shutting-down" | "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        "terminated" => InstanceState::Terminated,
        other => return Err(malformed(format!("instance {} is in the unknown state {other:?}", xml.instance_id))),
    };
    let launched = time::OffsetDateTime::parse(&xml.launch_time, &time::format_description::well_known::Rfc3339)
        .map_err(|e| malformed(format!("instance {} has launch time {:?}: {e}", xml.instance_id, xml.launch_time)))?;
    Ok(Instance {
        id: xml.instance_id,
        state,
        instance_type: xml.instance_type,
        zone: xml.placement.availability_zone,
        market: if xml.instance_lifecycle.as_deref() == Some("spot") { Market::Spot } else { Market::OnDemand },
        launch_time_ms: u64::try_from(launched.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        tags: xml.tag_set.item.into_iter().map(|t| (t.key, t.value)).collect::<BTreeMap<_, _>>(),
    })
}

/// An answer that is not what EC2 sends: a proxy's page, a truncated body. Worth another try.
fn malformed(message: String) -> ProviderError {
    ProviderError::Transient(Refusal {
        provider: PROVIDER,
        code: "MalformedResponse".into(),
        message,
        request_id: None,
    })
}

/// The error an answer with a failing status stands for: the first `<Code>` and `<Message>` of its body, which
/// EC2 writes as `<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…`.
pub(crate) fn error(status: u16, body: &str) -> ProviderError {
    let mut fields: [(&str, Option<String>); 3] = [("code", None), ("message", None), ("requestid", None)];
    let mut reader = quick_xml::Reader::from_str(body);
    // The field being read and its text so far: entities come as events of their own, between pieces of text.
    let mut current: Option<(usize, String)> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).to_ascii_lowercase();
                current = fields.iter().position(|(n, v)| *n == name && v.is_none()).map(|i| (i, String::new()));
            }
            Ok(Event::Text(t)) => {
                if let (Some((_, text)), Ok(piece)) = (current.as_mut(), t.decode()) {
                    text.push_str(&piece);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some((_, text)) = current.as_mut() {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    match (quick_xml::escape::resolve_predefined_entity(&name), r.resolve_char_ref()) {
                        (Some(s), _) => text.push_str(s),
                        (None, Ok(Some(c))) => text.push(c),
                        _ => {}
                    }
                }
            }
            Ok(Event::End(_)) => {
                if let Some((i, text)) = current.take() {
                    fields[i].1 = Some(text.trim().to_string());
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let [(_, code), (_, message), (_, request_id)] = fields;
    let code = code.unwrap_or_else(|| format!("HTTP{status}"));
    let message = message.unwrap_or_default();
    classify(status, Refusal { provider: PROVIDER, code, message, request_id })
}

/// Maps EC2's error codes (docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html) to what the caller
/// should do. Unknown client errors are invalid requests; unknown server errors are transient.
fn classify(status: u16, refusal: Refusal) -> ProviderError {
    let code = refusal.code.as_str();
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientCapacityOnHost"
        | "SpotMaxPriceTooLow"
        | "Unsupported.SpotInstanceType" => return ProviderError::NoCapacity(refusal),
        "InstanceLimitExceeded" | "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded" | "ResourceLimitExceeded" => {
            return ProviderError::QuotaExceeded(refusal)
        }
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired"
        | "PendingVerification"
        | "Blocked"
        | "ExpiredToken"
        | "RequestExpired"
        | "MissingAuthenticationToken" => return ProviderError::Unauthorized(refusal),
        "RequestLimitExceeded"
        | "Throttling"
        | "InternalError"
        | "InternalFailure"
        | "Unavailable"
        | "ServiceUnavailable"
        | "InsufficientAddressCapacity" => return ProviderError::Transient(refusal),
        _ => {}
    }
    ProviderError::by_status(status, refusal)
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    /// `RunInstances` for one spot instance, in the documented shape (trimmed of the fields Ferry does not read).
    const RUN_INSTANCES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<RunInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
    <reservationId>r-1234567890abcdef0</reservationId>
    <ownerId>123456789012</ownerId>
    <groupSet/>
    <instancesSet>
        <item>
            <instanceId>i-1234567890abcdef0</instanceId>
            <imageId>ami-bff32ccc</imageId>
            <instanceState><code>0</code><name>pending</name></instanceState>
            <instanceType>g5.xlarge</instanceType>
            <launchTime>2024-03-01T09:30:15.000Z</launchTime>
            <placement><availabilityZone>us-east-1b</availabilityZone><tenancy>default</tenancy></placement>
            <instanceLifecycle>spot</instanceLifecycle>
            <tagSet>
                <item><key>ferry-node</key><value>aws-spot-3</value></item>
                <item><key>empty</key><value/></item>
            </tagSet>
        </item>
    </instancesSet>
</RunInstancesResponse>"#;

    /// `DescribeInstances` with two reservations, one instance without tags, and a next page.
    const DESCRIBE_INSTANCES: &str = r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet>
    <item>
      <reservationId>r-0001</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-0000000000000000a</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <instanceType>p4d.24xlarge</instanceType>
          <launchTime>2024-03-01T10:00:00Z</launchTime>
          <placement><availabilityZone>us-west-2a</availabilityZone></placement>
          <tagSet><item><key>ferry-installation</key><value>prod</value></item><item><key>ferry-pool</key><value>aws</value></item></tagSet>
        </item>
        <item>
          <instanceId>i-0000000000000000b</instanceId>
          <instanceState><code>32</code><name>shutting-down</name></instanceState>
          <instanceType>p4d.24xlarge</instanceType>
          <launchTime>2024-03-01T10:00:01.500Z</launchTime>
          <placement><availabilityZone>us-west-2a</availabilityZone></placement>
        </item>
      </instancesSet>
    </item>
    <item>
      <reservationId>r-0002</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-0000000000000000c</instanceId>
          <instanceState><code>48</code><name>terminated</name></instanceState>
          <instanceType>g5.xlarge</instanceType>
          <launchTime>2024-03-01T11:00:00.000Z</launchTime>
          <placement><availabilityZone>us-west-2b</availabilityZone></placement>
          <tagSet/>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>page-2-token</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn run_instances_gives_the_new_instance() {
        let got = run_instances(RUN_INSTANCES).unwrap();
        expect![[r#"
            [
                Instance {
                    id: "i-1234567890abcdef0",
                    state: Pending,
                    instance_type: "g5.xlarge",
                    zone: "us-east-1b",
                    market: Spot,
                    launch_time_ms: 1709285415000,
                    tags: {
                        "empty": "",
                        "ferry-node": "aws-spot-3",
                    },
                },
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    #[test]
    fn describe_instances_gives_every_reservations_instances_and_the_next_page() {
        let page = describe_instances(DESCRIBE_INSTANCES).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("page-2-token"));
        let summary: Vec<String> = page
            .instances
            .iter()
            .map(|i| format!("{} {} {} {} {} {:?}", i.id, i.state, i.market, i.zone, i.launch_time_ms, i.tags))
            .collect();
        expect![[r#"
            [
                "i-0000000000000000a running on-demand us-west-2a 1709287200000 {\"ferry-installation\": \"prod\", \"ferry-pool\": \"aws\"}",
                "i-0000000000000000b stopping on-demand us-west-2a 1709287201500 {}",
                "i-0000000000000000c terminated on-demand us-west-2b 1709290800000 {}",
            ]
        "#]]
        .assert_debug_eq(&summary);
    }

    #[test]
    fn an_empty_describe_has_no_instances_and_no_next_page() {
        let page = describe_instances(
            r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>x</requestId><reservationSet/></DescribeInstancesResponse>"#,
        )
        .unwrap();
        assert!(page.instances.is_empty());
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn an_answer_that_is_not_ec2s_is_transient() {
        let err = describe_instances("<html><body>502 Bad Gateway</body></html>").unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(err.refusal().code, "MalformedResponse");
    }

    /// The body EC2 sends with a failing status.
    fn ec2_error(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"
        )
    }

    fn check(status: u16, code: &str, message: &str, expected: Expect) {
        let err = error(status, &ec2_error(code, message));
        expected.assert_eq(&format!("{err:?}\n{err}"));
    }

    #[test]
    fn no_capacity() {
        check(
            500,
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you requested (us-east-1a).",
            expect![[r#"
                NoCapacity(Refusal { provider: "EC2", code: "InsufficientInstanceCapacity", message: "We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you requested (us-east-1a).", request_id: Some("ea966190-f9aa-478e-9ede-example") })
                EC2 answered InsufficientInstanceCapacity: We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone you requested (us-east-1a) (request ea966190-f9aa-478e-9ede-example); there is no capacity for it now: try another zone or instance type, on-demand instead of spot, or the next pool"#]],
        );
    }

    #[test]
    fn quota() {
        for code in ["InstanceLimitExceeded", "VcpuLimitExceeded"] {
            let err = error(
                400,
                &ec2_error(code, "You have requested more vCPU capacity than your current vCPU limit of 32 allows."),
            );
            assert!(matches!(err, ProviderError::QuotaExceeded(_)), "{err:?}");
        }
        check(
            400,
            "VcpuLimitExceeded",
            "You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket that the specified instance type belongs to.",
            expect![[r#"
                QuotaExceeded(Refusal { provider: "EC2", code: "VcpuLimitExceeded", message: "You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket that the specified instance type belongs to.", request_id: Some("ea966190-f9aa-478e-9ede-example") })
                EC2 answered VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit of 32 allows for the instance bucket that the specified instance type belongs to (request ea966190-f9aa-478e-9ede-example); the account's quota is reached: raise it with the provider (for EC2: Service Quotas, the instance family's vCPU limit) or lower the pool's max_nodes"#]],
        );
    }

    #[test]
    fn invalid() {
        for code in ["InvalidParameterValue", "InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "MissingParameter"] {
            let err = error(400, &ec2_error(code, "x"));
            assert!(matches!(err, ProviderError::Invalid(_)), "{err:?}");
        }
        check(
            400,
            "InvalidAMIID.NotFound",
            "The image id &apos;[ami-00000000]&apos; does not exist",
            expect![[r#"
                Invalid(Refusal { provider: "EC2", code: "InvalidAMIID.NotFound", message: "The image id '[ami-00000000]' does not exist", request_id: Some("ea966190-f9aa-478e-9ede-example") })
                EC2 answered InvalidAMIID.NotFound: The image id '[ami-00000000]' does not exist (request ea966190-f9aa-478e-9ede-example); the request is invalid: check the pool's instance type, image, region and zones"#]],
        );
    }

    #[test]
    fn unauthorized() {
        for code in ["AuthFailure", "UnauthorizedOperation"] {
            let err = error(403, &ec2_error(code, "x"));
            assert!(matches!(err, ProviderError::Unauthorized(_)), "{err:?}");
        }
        check(
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
            expect![[r#"
                Unauthorized(Refusal { provider: "EC2", code: "AuthFailure", message: "AWS was not able to validate the provided access credentials", request_id: Some("ea966190-f9aa-478e-9ede-example") })
                EC2 answered AuthFailure: AWS was not able to validate the provided access credentials (request ea966190-f9aa-478e-9ede-example); the credentials were refused: check them (for AWS: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE's entry in ~/.aws/credentials, or the instance's IAM role) and that they may run, describe and terminate instances"#]],
        );
    }

    #[test]
    fn transient() {
        for (status, code) in
            [(503, "RequestLimitExceeded"), (500, "InternalError"), (503, "Unavailable"), (502, "Whatever")]
        {
            let err = error(status, &ec2_error(code, "x"));
            assert!(err.is_transient(), "{err:?}");
        }
        check(
            503,
            "RequestLimitExceeded",
            "Request limit exceeded.",
            expect![[r#"
                Transient(Refusal { provider: "EC2", code: "RequestLimitExceeded", message: "Request limit exceeded.", request_id: Some("ea966190-f9aa-478e-9ede-example") })
                EC2 answered RequestLimitExceeded: Request limit exceeded (request ea966190-f9aa-478e-9ede-example); this is likely temporary: the call may be retried with backoff"#]],
        );
    }

    #[test]
    fn a_body_without_an_error_is_classified_by_its_status() {
        assert!(matches!(error(403, ""), ProviderError::Unauthorized(r) if r.code == "HTTP403"));
        assert!(error(504, "<html>gateway timeout</html>").is_transient());
        assert!(matches!(error(400, "garbage"), ProviderError::Invalid(_)));
    }
}
