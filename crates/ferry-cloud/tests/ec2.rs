//! The EC2 provider against moto's EC2 server (scripts/moto), on loopback: launch, list by tag, terminate, and the
//! errors EC2 answers, with moto's instance type, AMI and (in one test) signature checks turned on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_cloud::credentials::Credentials;
use ferry_cloud::ec2::{Ec2, Ec2Settings};
use ferry_cloud::{InstanceState, InstanceType, LaunchRequest, Market, Provider, ProviderError};

mod common;
use common::summary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv() -> PathBuf {
    std::env::var_os("FERRY_MOTO_VENV").map_or_else(|| root().join("target/engines/moto-venv"), PathBuf::from)
}

/// moto's server, started by scripts/moto/start.sh and stopped when dropped.
struct Moto {
    run_dir: tempfile::TempDir,
    url: String,
}

impl Moto {
    /// Starts moto with EC2's checks of instance types and images on, as real EC2 has them.
    fn start() -> Moto {
        assert!(
            venv().join("bin/moto_server").exists(),
            "moto is not installed in {}: run scripts/moto/install.sh first",
            venv().display()
        );
        let run_dir = tempfile::tempdir().unwrap();
        let out = Command::new(root().join("scripts/moto/start.sh"))
            .arg(run_dir.path())
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .output()
            .unwrap();
        assert!(out.status.success(), "moto did not start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string();
        Moto { run_dir, url }
    }

    /// Runs Python with boto3 against moto; `code` sees `ec2` and `iam` clients (with the key `testing`), the
    /// endpoint as `url` and `sys.argv[1:]`, and prints what the test reads.
    fn boto(&self, code: &str, args: &[&str]) -> String {
        let script = format!(
            "import sys, json, boto3\nurl = {:?}\n\
             kw = dict(endpoint_url=url, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             ec2 = boto3.client('ec2', **kw)\niam = boto3.client('iam', **kw)\n{code}",
            self.url
        );
        let out = Command::new(venv().join("bin/python3")).arg("-c").arg(script).args(args).output().unwrap();
        assert!(out.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/moto/stop.sh")).arg(self.run_dir.path()).output();
    }
}

/// One of the AMIs moto knows in every region.
const AMI: &str = "ami-12c6146b";

fn gpu_type(name: &str, market: Market) -> InstanceType {
    InstanceType {
        name: name.into(),
        gpus: 1,
        gpu_model: Some("A10G".into()),
        cpu_millis: 4000,
        memory_bytes: 16 << 30,
        price_hour: if market == Market::Spot { 0.4 } else { 1.006 },
        market,
        zones: vec!["us-east-1a".into(), "us-east-1b".into()],
    }
}

fn settings(moto: &Moto) -> Ec2Settings {
    Ec2Settings {
        region: "us-east-1".into(),
        endpoint: Some(moto.url.clone()),
        image_id: AMI.into(),
        instance_types: vec![gpu_type("g5.xlarge", Market::OnDemand)],
        security_group_ids: vec![],
        subnet_by_zone: BTreeMap::new(),
        credentials: None,
    }
}

fn ec2(settings: Ec2Settings, key: &str, secret: &str) -> Ec2 {
    Ec2::with_credentials(settings, Credentials::new(key, secret, None)).unwrap()
}

fn launch(installation: &str, node: &str, zone: &str, market: Market) -> LaunchRequest {
    LaunchRequest {
        installation: installation.into(),
        pool: format!("aws-{market}"),
        node: node.into(),
        instance_type: "g5.xlarge".into(),
        zone: zone.into(),
        market,
        user_data: format!("#!/bin/sh\nexec ferry agent --join 'TOKEN-{node}'\n"),
        client_token: None,
    }
}

#[tokio::test]
async fn machines_launch_tagged_list_by_installation_and_terminate() {
    let moto = Moto::start();
    let mut s = settings(&moto);
    s.instance_types.push(gpu_type("g5.2xlarge", Market::Spot));
    let provider = ec2(s, "testing", "testing");

    let on_demand = provider.launch(launch("inst-a", "aws-1", "us-east-1a", Market::OnDemand)).await.unwrap();
    let mut spot_request = launch("inst-a", "aws-2", "us-east-1b", Market::Spot);
    spot_request.instance_type = "g5.2xlarge".into();
    let spot = provider.launch(spot_request).await.unwrap();
    let other = provider.launch(launch("inst-b", "aws-1", "us-east-1a", Market::OnDemand)).await.unwrap();
    assert_eq!((on_demand.market, spot.market), (Market::OnDemand, Market::Spot));
    assert_eq!(on_demand.node(), Some("aws-1"));
    assert!(on_demand.launch_time_ms > 1_600_000_000_000, "{on_demand:?}");

    // The start-up script arrives as the machine's user data, byte for byte, and the console shows the node's name.
    let seen = moto.boto(
        "import base64\n\
         a = ec2.describe_instance_attribute(InstanceId=sys.argv[1], Attribute='userData')\n\
         print(base64.b64decode(a['UserData']['Value']).decode(), end='')\n\
         tags = ec2.describe_instances(InstanceIds=[sys.argv[1]])['Reservations'][0]['Instances'][0]['Tags']\n\
         print(sorted((t['Key'], t['Value']) for t in tags))",
        &[&on_demand.id],
    );
    assert_eq!(
        seen,
        "#!/bin/sh\nexec ferry agent --join 'TOKEN-aws-1'\n[('Name', 'aws-1'), ('ferry-installation', 'inst-a'), \
         ('ferry-node', 'aws-1'), ('ferry-pool', 'aws-on-demand')]\n"
    );

    // Listing finds the installation's machines by tag, and only them.
    let listed = provider.list("inst-a").await.unwrap();
    assert_eq!(
        summary(&listed),
        [
            "aws-1 running on-demand g5.xlarge us-east-1a pool=aws-on-demand",
            "aws-2 running spot g5.2xlarge us-east-1b pool=aws-spot",
        ]
    );
    let mut ids: Vec<String> = listed.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    let mut launched = vec![on_demand.id.clone(), spot.id.clone()];
    launched.sort();
    assert_eq!(ids, launched);
    assert!(provider.list("inst-c").await.unwrap().is_empty());

    // Terminated machines stay listed as terminated; the other installation's are untouched.
    provider.terminate(&ids).await.unwrap();
    assert_eq!(
        summary(&provider.list("inst-a").await.unwrap()),
        [
            "aws-1 terminated on-demand g5.xlarge us-east-1a pool=aws-on-demand",
            "aws-2 terminated spot g5.2xlarge us-east-1b pool=aws-spot",
        ]
    );
    assert_eq!(provider.list("inst-b").await.unwrap()[0].state, InstanceState::Running);

    // Terminating again, or with an id EC2 no longer knows beside a live one, still terminates what exists.
    provider.terminate(&ids).await.unwrap();
    provider.terminate(&["i-0123456789abcdef0".to_string(), other.id.clone()]).await.unwrap();
    assert_eq!(provider.list("inst-b").await.unwrap()[0].state, InstanceState::Terminated);
}

#[tokio::test]
async fn listing_reads_every_page() {
    let moto = Moto::start();
    // EC2's smallest page, so that seven machines take two pages.
    let provider = ec2(settings(&moto), "testing", "testing").with_list_page_size(5);
    for i in 0..7 {
        provider.launch(launch("inst-p", &format!("n-{i}"), "us-east-1a", Market::OnDemand)).await.unwrap();
    }
    let first_page = moto.boto(
        "p = ec2.describe_instances(Filters=[{'Name': 'tag:ferry-installation', 'Values': ['inst-p']}], MaxResults=5)\n\
         print(len(p['Reservations']), 'NextToken' in p)",
        &[],
    );
    assert_eq!(first_page, "5 True\n", "moto no longer pages as EC2 does: this test would prove nothing");
    let mut nodes: Vec<String> =
        provider.list("inst-p").await.unwrap().iter().map(|i| i.node().unwrap().to_string()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n-0", "n-1", "n-2", "n-3", "n-4", "n-5", "n-6"]);
}

#[tokio::test]
async fn an_unknown_instance_type_or_image_is_invalid_with_ec2s_reason() {
    let moto = Moto::start();
    let mut s = settings(&moto);
    s.instance_types.push(gpu_type("p9.mega", Market::OnDemand));
    let provider = ec2(s.clone(), "testing", "testing");
    let mut request = launch("inst-a", "aws-1", "us-east-1a", Market::OnDemand);
    request.instance_type = "p9.mega".into();
    let err = provider.launch(request).await.unwrap_err();
    assert!(matches!(err, ProviderError::Invalid(_)), "{err:?}");
    let shown = err.to_string();
    assert!(shown.starts_with("EC2 answered InvalidInstanceType"), "{shown}");
    assert!(
        shown.contains("p9.mega") && shown.contains("check the pool's instance type, image, region and zones"),
        "{shown}"
    );

    let provider = ec2(Ec2Settings { image_id: "ami-00000000".into(), ..s }, "testing", "testing");
    let err = provider.launch(launch("inst-a", "aws-1", "us-east-1a", Market::OnDemand)).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Invalid(r) if r.code == "InvalidAMIID.NotFound"), "{err:?}");
    assert!(err.to_string().contains("ami-00000000"), "{err}");

    // What the pool never offered is refused before any call.
    let err = provider.launch(launch("inst-a", "aws-1", "us-east-1c", Market::OnDemand)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "EC2 answered FerryRefused: instance type g5.xlarge is not offered in zone us-east-1c; the request is invalid: \
         check the pool's instance type, image, region and zones"
    );
    assert!(provider.list("inst-a").await.unwrap().is_empty());
}

#[tokio::test]
async fn moto_checks_the_signature_and_wrong_credentials_are_unauthorized() {
    let moto = Moto::start();
    // A user with a key that may do anything, made while moto still lets every call through; then every call must
    // carry a valid signature by a known key (moto recomputes it with botocore).
    let key = moto.boto(
        "iam.create_user(UserName='ferry')\n\
         arn = iam.create_policy(PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', \
         'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))['Policy']['Arn']\n\
         iam.attach_user_policy(UserName='ferry', PolicyArn=arn)\n\
         k = iam.create_access_key(UserName='ferry')['AccessKey']\n\
         import urllib.request\n\
         urllib.request.urlopen(urllib.request.Request(url + '/moto-api/reset-auth', data=b'0', method='POST', \
         headers={'Content-Type': 'text/plain'}))\n\
         print(k['AccessKeyId'], k['SecretAccessKey'])",
        &[],
    );
    let (key_id, secret) = key.trim().split_once(' ').unwrap();

    let good = ec2(settings(&moto), key_id, secret);
    let instance = good.launch(launch("inst-a", "aws-1", "us-east-1a", Market::OnDemand)).await.unwrap();
    assert_eq!(good.list("inst-a").await.unwrap()[0].id, instance.id);

    for (key_id, secret) in [(key_id, "not-the-secret"), ("AKIAUNKNOWNKEY000000", secret)] {
        let bad = ec2(settings(&moto), key_id, secret);
        let err = bad.list("inst-a").await.unwrap_err();
        assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "AuthFailure"), "{err:?}");
        let shown = format!("{err} {err:?} {bad:?}");
        assert!(shown.contains("AWS_ACCESS_KEY_ID"), "{shown}");
        assert!(!shown.contains(secret) && !shown.contains(key_id), "a credential leaked: {shown}");
    }
    assert!(matches!(
        ec2(settings(&moto), "AKIAUNKNOWNKEY000000", secret).terminate(std::slice::from_ref(&instance.id)).await,
        Err(ProviderError::Unauthorized(_))
    ));
    assert_eq!(good.list("inst-a").await.unwrap()[0].state, InstanceState::Running);
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_transient() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = Ec2Settings {
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        image_id: AMI.into(),
        instance_types: vec![gpu_type("g5.xlarge", Market::OnDemand)],
        security_group_ids: vec![],
        subnet_by_zone: BTreeMap::new(),
        credentials: None,
    };
    let err = ec2(s, "testing", "testing").list("inst-a").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().starts_with("EC2 answered NoAnswer: DescribeInstances got no answer"), "{err}");
}
