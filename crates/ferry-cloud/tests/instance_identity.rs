//! Credentials from the machine's own identity, the last place each provider looks: an EC2 instance role (IMDSv2),
//! a Compute Engine service account (the metadata server) and an Azure managed identity (the instance metadata
//! service). One local server plays the three metadata services, checking the headers each requires (and refusing
//! without them, as they do), and the API calls that use what they hand out. Each service is pointed at through
//! the variable that moves it, given to `resolve_with` rather than set in the process's environment.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ferry_cloud::azure::{Azure, AzureImage, AzureSettings};
use ferry_cloud::ec2::{Ec2, Ec2Settings};
use ferry_cloud::gce::{Gce, GceSettings};
use ferry_cloud::{credentials, InstanceType, Market, Provider, ProviderError};
use serde_json::json;

const ROLE: &str = "ferry-burst";
const SUBSCRIPTION: &str = "00000000-0000-4000-8000-0000000000aa";

#[derive(Default)]
struct Services {
    /// Whether the machine has an identity: an IAM role, a service account, a managed identity.
    identity: bool,
    /// How long what is handed out next lasts, in seconds.
    lifetime_s: i64,
    /// IMDSv2 session tokens handed out.
    sessions: Vec<String>,
    /// Credentials and tokens handed out; the n-th set is numbered n.
    issued: usize,
    /// The `client_id` each managed identity token was asked for with.
    client_ids: Vec<Option<String>>,
    /// The API calls: EC2's `Authorization` and `X-Amz-Security-Token`, or the bearer token.
    calls: Vec<String>,
    /// Requests refused for a missing or wrong header.
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Services>>;

struct Fake {
    services: Shared,
    url: String,
}

impl Fake {
    async fn start(identity: bool, lifetime_s: i64) -> Fake {
        let services: Shared = Arc::new(Mutex::new(Services { identity, lifetime_s, ..Services::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(handle).with_state(services.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { services, url }
    }

    fn services(&self) -> std::sync::MutexGuard<'_, Services> {
        self.services.lock().unwrap()
    }

    /// What the process's environment would hold to point each provider at this server.
    fn env(&self, name: &str) -> Option<String> {
        match name {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT" | "AZURE_IMDS_ENDPOINT" => Some(self.url.clone()),
            "GCE_METADATA_HOST" => Some(self.url.trim_start_matches("http://").to_string()),
            _ => None,
        }
    }

    fn ec2(&self) -> Ec2 {
        let provider = credentials::resolve_with(None, &|n| self.env(n), None).unwrap();
        Ec2::with_credentials_provider(ec2_settings(&self.url), provider).unwrap()
    }

    fn gce(&self) -> Gce {
        let credentials = ferry_cloud::gce::resolve_with(None, &|n| self.env(n)).unwrap();
        let settings = GceSettings {
            project: "ferry-test".into(),
            endpoint: Some(self.url.clone()),
            image: "projects/debian-cloud/global/images/family/debian-12".into(),
            boot_disk_gb: 100,
            network: "global/networks/default".into(),
            subnetwork: None,
            external_ip: true,
            accelerator_by_type: BTreeMap::new(),
            instance_types: vec![machine("n2-standard-8", "us-central1-b")],
            credentials: None,
        };
        Gce::with_credentials(settings, credentials).unwrap()
    }

    fn azure(&self, client_id: Option<&str>) -> Azure {
        let env = |n: &str| if n == "AZURE_CLIENT_ID" { client_id.map(str::to_string) } else { self.env(n) };
        let credentials = ferry_cloud::azure::resolve_with(None, &env).unwrap();
        let settings = AzureSettings {
            subscription_id: SUBSCRIPTION.into(),
            resource_group: "ferry-burst".into(),
            location: "eastus".into(),
            management_endpoint: Some(self.url.clone()),
            login_endpoint: None,
            image: AzureImage::Id(format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/img/providers/Microsoft.Compute/images/ferry")),
            os_disk_gb: 64,
            subnet_id: format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/s"),
            admin_username: "ferry".into(),
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerryTestKeyOnlyForTests ferry@test".into(),
            instance_types: vec![machine("Standard_D4s_v5", "1")],
            credentials: None,
        };
        Azure::with_credentials(settings, credentials).unwrap()
    }

    /// The API calls so far, and that nothing was refused for its headers.
    fn calls(&self) -> Vec<String> {
        let services = self.services();
        assert!(services.refused.is_empty(), "requests without the service's header: {:?}", services.refused);
        services.calls.clone()
    }
}

fn machine(name: &str, zone: &str) -> InstanceType {
    InstanceType {
        name: name.into(),
        gpus: 0,
        gpu_model: None,
        cpu_millis: 2000,
        memory_bytes: 8 << 30,
        price_hour: 0.1,
        market: Market::OnDemand,
        zones: vec![zone.into()],
    }
}

fn rfc3339(unix_s: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_s).unwrap();
    let (y, m, d, h, mi, s) = (t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn handle(
    State(services): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut s = services.lock().unwrap();
    let refuse = |s: &mut Services, status: StatusCode, why: &str| {
        s.refused.push(format!("{method} {uri}: {why}"));
        (status, why.to_string()).into_response()
    };
    let path = uri.path();
    let role_path = path.strip_prefix("/latest/meta-data/iam/security-credentials/");
    // IMDSv2: a session token first, which every GET must carry.
    if path == "/latest/api/token" || role_path.is_some() {
        if path == "/latest/api/token" {
            let ttl: Option<u32> = header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse().ok());
            if method != Method::PUT || !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
                return refuse(&mut s, StatusCode::BAD_REQUEST, "a PUT with X-aws-ec2-metadata-token-ttl-seconds");
            }
            let session = format!("imds-session-{}", s.sessions.len() + 1);
            s.sessions.push(session.clone());
            return session.into_response();
        }
        if !header("x-aws-ec2-metadata-token").is_some_and(|t| s.sessions.contains(&t)) {
            return refuse(&mut s, StatusCode::UNAUTHORIZED, "no X-aws-ec2-metadata-token");
        }
        return match (s.identity, role_path) {
            (false, _) => (StatusCode::NOT_FOUND, "<html><title>404 - Not Found</title></html>").into_response(),
            (true, Some("")) => format!("{ROLE}\n").into_response(),
            (true, Some(ROLE)) => {
                s.issued += 1;
                let n = s.issued;
                json!({
                    "Code": "Success", "LastUpdated": rfc3339(now_s()), "Type": "AWS-HMAC",
                    "AccessKeyId": format!("ASIAROLE{n}"), "SecretAccessKey": format!("role-secret-{n}"),
                    "Token": format!("role-session-token-{n}"), "Expiration": rfc3339(now_s() + s.lifetime_s),
                })
                .to_string()
                .into_response()
            }
            _ => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        if header("metadata-flavor").as_deref() != Some("Google") {
            return refuse(&mut s, StatusCode::FORBIDDEN, "no Metadata-Flavor: Google");
        }
        if !s.identity {
            return (StatusCode::NOT_FOUND, "service account not found\n").into_response();
        }
        s.issued += 1;
        let token = json!({"access_token": format!("ya29.metadata-{}", s.issued), "expires_in": s.lifetime_s, "token_type": "Bearer"});
        return axum::Json(token).into_response();
    }
    if path == "/metadata/identity/oauth2/token" {
        let right_query = query.get("api-version").map(String::as_str) == Some("2018-02-01")
            && query.get("resource").map(String::as_str) == Some("https://management.azure.com/");
        if header("metadata").as_deref() != Some("true") || !right_query {
            let why =
                json!({"error": "invalid_request", "error_description": "Required metadata header not specified"});
            return refuse(&mut s, StatusCode::BAD_REQUEST, &why.to_string());
        }
        if !s.identity {
            let why = json!({"error": "invalid_request", "error_description": "Identity not found"});
            return (StatusCode::BAD_REQUEST, axum::Json(why)).into_response();
        }
        s.issued += 1;
        s.client_ids.push(query.get("client_id").cloned());
        let token = json!({
            "access_token": format!("eyJ0eXAi.managed-identity-{}", s.issued), "expires_in": s.lifetime_s.to_string(),
            "expires_on": (now_s() + s.lifetime_s).to_string(), "resource": "https://management.azure.com/",
            "token_type": "Bearer",
        });
        return axum::Json(token).into_response();
    }
    // The APIs: EC2's DescribeInstances, Compute Engine's aggregated list, Azure's VM list, all empty.
    if method == Method::POST && path == "/" {
        let signed = format!(
            "{} {}",
            header("authorization").unwrap_or_default(),
            header("x-amz-security-token").unwrap_or_default()
        );
        s.calls.push(signed);
        let xml = "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><reservationSet/></DescribeInstancesResponse>";
        return xml.into_response();
    }
    s.calls.push(header("authorization").unwrap_or_default());
    if path.ends_with("/aggregated/instances") {
        return axum::Json(json!({"kind": "compute#instanceAggregatedList", "items": {}})).into_response();
    }
    axum::Json(json!({"value": []})).into_response()
}

/// The access key id an EC2 call was signed with, and its session token.
fn signed_by(call: &str) -> (&str, &str) {
    let key = call.split("Credential=").nth(1).and_then(|c| c.split('/').next()).unwrap_or("?");
    (key, call.rsplit(' ').next().unwrap_or("?"))
}

#[tokio::test]
async fn an_instance_role_signs_ec2_calls_and_is_fetched_again_before_it_expires() {
    // Credentials that expire in a minute are inside the refresh margin: the next call fetches new ones.
    let fake = Fake::start(true, 60).await;
    let ec2 = fake.ec2();
    assert_eq!(format!("{ec2:?}").matches("role: None").count(), 1, "nothing is asked before the first call");
    ec2.list("inst-1").await.unwrap();
    // A refresh that fails keeps the current credentials while they have not expired.
    fake.services().identity = false;
    ec2.list("inst-1").await.unwrap();
    fake.services().identity = true;
    ec2.list("inst-1").await.unwrap();
    // Credentials good for an hour are kept.
    fake.services().lifetime_s = 3600;
    ec2.list("inst-1").await.unwrap();
    ec2.list("inst-1").await.unwrap();
    let calls = fake.calls();
    let signed: Vec<(&str, &str)> = calls.iter().map(|c| signed_by(c)).collect();
    assert_eq!(
        signed,
        [
            ("ASIAROLE1", "role-session-token-1"),
            ("ASIAROLE1", "role-session-token-1"),
            ("ASIAROLE2", "role-session-token-2"),
            ("ASIAROLE3", "role-session-token-3"),
            ("ASIAROLE3", "role-session-token-3"),
        ]
    );
    assert!(calls[0].contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"), "{}", calls[0]);
    assert_eq!(fake.services().sessions.len(), 4, "a session token per fetch");
    let shown = format!("{ec2:?}");
    assert!(
        shown.contains(&format!(r#"InstanceRole {{ endpoint: "{}", role: Some("{ROLE}") }}"#, fake.url)),
        "{shown}"
    );
    assert!(!shown.contains("ASIA") && !shown.contains("secret") && !shown.contains("session-token"), "{shown}");
}

#[tokio::test]
async fn a_machine_without_a_role_or_a_metadata_service_is_told_where_credentials_go() {
    let fake = Fake::start(false, 3600).await;
    let err = fake.ec2().list("inst-1").await.unwrap_err();
    assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "NoCredentials"), "{err:?}");
    expect_test::expect!["EC2 answered NoCredentials: no AWS credentials: none in the settings, the environment or the credentials file, and the instance metadata service at URL answered 404 for the role list: this machine has no IAM role attached: attach an IAM role to the instance, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile in ~/.aws/credentials); AWS_EC2_METADATA_DISABLED=true stops Ferry asking the metadata service"]
    .assert_eq(&err.to_string().replace(&fake.url, "URL"));
    assert!(fake.calls().is_empty(), "nothing was sent to EC2");

    // Nothing listening: the error comes at once and says so.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let nowhere = format!("http://{closed}");
    let env = |n: &str| (n == "AWS_EC2_METADATA_SERVICE_ENDPOINT").then(|| nowhere.clone());
    let provider = credentials::resolve_with(None, &env, None).unwrap();
    let err =
        Ec2::with_credentials_provider(ec2_settings(&fake.url), provider).unwrap().list("inst-1").await.unwrap_err();
    let message = &err.refusal().message;
    assert!(message.starts_with(&format!("no AWS credentials: none in the settings, the environment or the credentials file, and the instance metadata service at {nowhere} did not answer (the request for the session token got no answer: error sending request")), "{message}");
    assert!(message.contains("Connection refused"), "{message}");

    // Turned off, there is nothing to ask: resolution fails, naming it.
    let env = |n: &str| if n == "AWS_EC2_METADATA_DISABLED" { Some("true".into()) } else { fake.env(n) };
    let err = credentials::resolve_with(None, &env, None).unwrap_err();
    assert_eq!(err, credentials::CredentialsError::NotFound);
}

fn ec2_settings(endpoint: &str) -> Ec2Settings {
    Ec2Settings {
        region: "us-east-1".into(),
        endpoint: Some(endpoint.to_string()),
        image_id: "ami-12c6146b".into(),
        instance_types: vec![machine("m5.large", "us-east-1a")],
        security_group_ids: vec![],
        subnet_by_zone: BTreeMap::new(),
        credentials: None,
    }
}

#[tokio::test]
async fn compute_engine_uses_the_metadata_servers_token_until_it_nears_expiry() {
    let fake = Fake::start(true, 60).await;
    let gce = fake.gce();
    gce.list("inst-1").await.unwrap();
    gce.list("inst-1").await.unwrap();
    fake.services().lifetime_s = 3599;
    gce.list("inst-1").await.unwrap();
    gce.list("inst-1").await.unwrap();
    let expected = ["metadata-1", "metadata-2", "metadata-3", "metadata-3"].map(|t| format!("Bearer ya29.{t}"));
    assert_eq!(fake.calls(), expected);
    assert!(format!("{gce:?}").contains("source: MetadataServer { host: \"127.0.0.1:"), "{gce:?}");

    let fake = Fake::start(false, 3599).await;
    let err = fake.gce().list("inst-1").await.unwrap_err();
    expect_test::expect![[r#"no Google credentials: GOOGLE_OAUTH_ACCESS_TOKEN and GOOGLE_APPLICATION_CREDENTIALS are not set, and the metadata server at URL answered 404 to the token request ("service account not found"): set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run Ferry on a Compute Engine instance with a service account attached (with the compute or cloud-platform scope)"#]]
    .assert_eq(&err.refusal().message.replace(&fake.url, "URL"));
    assert!(matches!(err, ProviderError::Unauthorized(_)));
}

#[tokio::test]
async fn azure_uses_the_managed_identity_with_its_string_expiry() {
    let fake = Fake::start(true, 60).await;
    let azure = fake.azure(Some("c0ffee00-0000-4000-8000-0000000000cc"));
    azure.list("inst-1").await.unwrap();
    azure.list("inst-1").await.unwrap();
    fake.services().lifetime_s = 86399;
    azure.list("inst-1").await.unwrap();
    azure.list("inst-1").await.unwrap();
    let expected = ["1", "2", "3", "3"].map(|n| format!("Bearer eyJ0eXAi.managed-identity-{n}"));
    assert_eq!(fake.calls(), expected);
    let user_assigned = Some("c0ffee00-0000-4000-8000-0000000000cc".to_string());
    assert_eq!(fake.services().client_ids, vec![user_assigned; 3]);
    assert!(format!("{azure:?}").contains("ManagedIdentity { user_assigned: true }"), "{azure:?}");

    let fake = Fake::start(false, 3599).await;
    let err = fake.azure(None).list("inst-1").await.unwrap_err();
    expect_test::expect![[r#"no Azure credentials: AZURE_TENANT_ID and AZURE_CLIENT_SECRET are not set, and the instance metadata service at URL answered 400 to the token request ("{\"error\":\"invalid_request\",\"error_description\":\"Identity not found\"}"): set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET to a service principal's (`az ad sp create-for-rbac`), or run Ferry on an Azure VM with a managed identity (a user-assigned one named by AZURE_CLIENT_ID)"#]]
    .assert_eq(&err.refusal().message.replace(&fake.url, "URL"));
    assert_eq!(fake.services().client_ids, Vec::<Option<String>>::new());
}

#[tokio::test]
async fn the_fake_services_refuse_requests_without_their_headers() {
    let fake = Fake::start(true, 3600).await;
    let http = reqwest::Client::new();
    let statuses = [
        http.put(format!("{}/latest/api/token", fake.url)).send(),
        http.get(format!("{}/latest/meta-data/iam/security-credentials/", fake.url)).send(),
        http.get(format!("{}/computeMetadata/v1/instance/service-accounts/default/token", fake.url)).send(),
        http.get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
            fake.url
        ))
        .send(),
    ];
    let mut got = vec![];
    for status in statuses {
        got.push(status.await.unwrap().status().as_u16());
    }
    assert_eq!(got, [400, 401, 403, 400]);
    assert_eq!(fake.services().refused.len(), 4);
    assert_eq!(fake.services().issued, 0);
}
