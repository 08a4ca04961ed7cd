//! A typed client for Ferry's HTTP API. The CLI, the node agent and the benchmarks all talk to the server through
//! it, so every caller gets the same error mapping.
//!
//! It must never decide policy (retries, backoff) for its callers: it does one request per call.

mod tls;

use std::time::Duration;

use bytes::Bytes;
use ferry_api::agent::{LogAck, RegisterNode, Registered, Reports, ReportsAck, RunRef, Work, WorkRequest};
use ferry_api::code::CodeStored;
use ferry_api::jobs::{Job, JobList, SubmitJob, Submitted};
use ferry_api::nodes::NodeList;
use ferry_api::telemetry::{SeriesAnswer, SeriesQuery, TelemetryAck, TelemetryBatch};
use ferry_api::tls::CaFingerprint;
use ferry_api::tokens::{
    CreateProject, CreateTeam, CreateToken, CreateUser, CreatedToken, DeviceLogin, DeviceLoginState, DevicePoll,
    GroupRule, GroupRuleList, SetGroupRule, SetMember, TeamInfo, TeamList, TokenInfo, TokenList, UserInfo, UserList,
    WhoAmI,
};
use ferry_api::{ErrorBody, ErrorCode, API_PREFIX};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use tls::{CaCert, Trust};

/// How long to wait for the TCP connection, so a dead address fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pauses between the tries of a submission whose answer was lost: about half a minute in all.
const SUBMIT_RETRY_DELAYS: [Duration; 7] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(8),
];
/// The header that carries a submission's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// How long an unused pooled connection is kept; under the server's 30 s header-read timeout.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the server's address.
    #[error("no Ferry server at {server}; start one with `ferry up`")]
    Unreachable { server: String },
    /// The server answered with an error.
    #[error("{}", .body.message)]
    Api { status: u16, body: ErrorBody },
    /// The server's certificate does not verify against the authorities the client trusts.
    #[error(
        "cannot verify the TLS certificate of the Ferry server at {server}: {detail}. Pass the certificate authority \
         that issued it with --ca-cert PATH or FERRY_CA_CERT (a server started with `--tls auto` keeps its own in \
         tls/ca.pem of its data directory); an agent can instead join with the token `ferry token create --agent` \
         prints, which pins it"
    )]
    Untrusted { server: String, detail: String },
    /// An https:// URL for a server that does not speak TLS.
    #[error("the Ferry server at {server} does not speak TLS ({detail}); if it serves plain HTTP, use an http:// URL")]
    NotTls { server: String, detail: String },
    /// The server presented another certificate authority than the one the join token pins.
    #[error(
        "the Ferry server at {server} presented {}, not the certificate authority {expected} that the join token \
         pins; refusing to trust it. Check that --server names the right server; if its authority was replaced, \
         create a new join token there with `ferry token create --agent`",
        .found.map_or("no certificate authority".to_string(), |f| format!("the certificate authority {f}"))
    )]
    PinMismatch { server: String, expected: CaFingerprint, found: Option<CaFingerprint> },
    /// The client's own TLS settings are unusable (a file that holds no certificate, a pin with an http:// URL).
    #[error("{0}")]
    Setup(String),
    /// The connection broke or the answer was not what the API promises.
    #[error("talking to the Ferry server at {server} failed: {detail}")]
    Transport { server: String, detail: String },
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Filters for reading the audit log (see `GET /api/v1/audit`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Filters for listing jobs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Include finished jobs.
    pub all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Submitted within this long (`1d`) or since this RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The next page: jobs with smaller ids than this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

impl Client {
    /// `server` is the base URL, such as `http://127.0.0.1:7750`; an https:// one is verified against the
    /// system's certificate authorities.
    pub fn new(server: &str, token: Option<String>) -> Client {
        Client::with_trust(server, token, &Trust::System).expect("a client with the system's roots always builds")
    }

    /// A client that verifies an https:// server against `trust`.
    pub fn with_trust(server: &str, token: Option<String>, trust: &Trust) -> Result<Client, ClientError> {
        let builder = tls::builder(trust).map_err(ClientError::Setup)?;
        Client::build(server, token, builder)
    }

    fn build(server: &str, token: Option<String>, builder: reqwest::ClientBuilder) -> Result<Client, ClientError> {
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            // Sooner than the server closes an idle connection (its header-read timeout, 30 s), so a request never
            // goes out on a connection the server is closing.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Setup(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { base: server.trim_end_matches('/').to_string(), token, http })
    }

    /// Fetches the server's certificate authority over a connection that only a server holding the authority
    /// `pin` can complete, and checks the fetched certificate against the pin too. Agents joining with a pinned
    /// token call this once, then trust the authority alone (`Trust::Authority`).
    pub async fn fetch_pinned_authority(server: &str, pin: CaFingerprint) -> Result<CaCert, ClientError> {
        if !server.starts_with("https://") {
            return Err(ClientError::Setup(format!(
                "the join token pins a certificate authority, so the server's URL must start with https:// (it is \
                 {server})"
            )));
        }
        let (builder, verifier) = tls::pinned_builder(pin).map_err(ClientError::Setup)?;
        let client = Client::build(server, None, builder)?;
        let mismatch = |found| ClientError::PinMismatch { server: client.base.clone(), expected: pin, found };
        let response = match client.send(client.request(reqwest::Method::GET, ferry_api::tls::CA_PATH)).await {
            Ok(response) => response,
            Err(e) => return Err(verifier.mismatch().map_or(e, |found| mismatch(Some(found)))),
        };
        let pem = response.bytes().await.map_err(|e| client.transport(e))?;
        let authority = CaCert::from_pem(&pem, &format!("the answer of {}", client.url(ferry_api::tls::CA_PATH)))
            .map_err(ClientError::Setup)?;
        if authority.fingerprint != pin {
            return Err(mismatch(Some(authority.fingerprint)));
        }
        Ok(authority)
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        let server = self.base.clone();
        match tls::tls_failure(&e) {
            Some(rustls::Error::InvalidCertificate(why)) => {
                return ClientError::Untrusted { server, detail: tls::certificate_problem(why) }
            }
            Some(rustls::Error::InvalidMessage(why)) => {
                return ClientError::NotTls { server, detail: format!("{why:?}") }
            }
            _ => {}
        }
        if e.is_connect() {
            ClientError::Unreachable { server: self.base.clone() }
        } else {
            ClientError::Transport { server: self.base.clone(), detail: e.to_string() }
        }
    }

    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = builder.send().await.map_err(|e| self.transport(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.transport(e))?;
        let body = serde_json::from_str::<ErrorBody>(&text).unwrap_or_else(|_| ErrorBody {
            code: if status == 404 { ErrorCode::NotFound } else { ErrorCode::Internal },
            message: format!("the server at {} answered HTTP {status}: {}", self.base, text.trim()),
        });
        Err(ClientError::Api { status, body })
    }

    async fn json<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        response.json::<T>().await.map_err(|e| self.transport(e))
    }

    /// Submits a job under an idempotency key of its own, retrying for a while when the answer is lost (the
    /// connection broke, the server is restarting or overloaded): the server answers a retry of a submission that
    /// got through with the job it made, so a retry never makes a second job.
    pub async fn submit(&self, job: &SubmitJob) -> Result<Submitted, ClientError> {
        let key = format!("{:032x}", rand::random::<u128>());
        let mut reached = false;
        let mut delays = SUBMIT_RETRY_DELAYS.iter();
        loop {
            let request = self.request(reqwest::Method::POST, "/jobs").header(IDEMPOTENCY_KEY, &key).json(job);
            let error = match self.json(request).await {
                Ok(submitted) => return Ok(submitted),
                Err(error) => error,
            };
            let retry = match &error {
                // Nothing was sent: no server here. Say so at once, unless one answered before (it is restarting).
                ClientError::Unreachable { .. } => reached,
                ClientError::Transport { .. } => true,
                ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
                _ => false,
            };
            reached = true;
            match delays.next() {
                Some(delay) if retry => tokio::time::sleep(*delay).await,
                _ => return Err(error),
            }
        }
    }

    pub async fn jobs(&self, query: &JobQuery) -> Result<JobList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/jobs").query(query)).await
    }

    pub async fn job(&self, id: u64) -> Result<Job, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/jobs/{id}"))).await
    }

    /// Waits up to `wait` for the job to reach a final state, then returns it as it is.
    pub async fn wait_job(&self, id: u64, wait: Duration) -> Result<Job, ClientError> {
        let path = format!("/jobs/{id}/wait");
        let wait_ms = wait.as_millis() as u64;
        self.json(self.request(reqwest::Method::GET, &path).query(&[("timeout_ms", wait_ms)])).await
    }

    pub async fn cancel(&self, id: u64) -> Result<Job, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/jobs/{id}/cancel"))).await
    }

    /// The job's output from byte `offset`; with `follow`, the stream stays open until the job ends.
    pub async fn logs(
        &self,
        id: u64,
        offset: u64,
        follow: bool,
        attempt: Option<u32>,
        rank: u32,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>>, ClientError> {
        let mut query =
            vec![("offset", offset.to_string()), ("follow", follow.to_string()), ("rank", rank.to_string())];
        if let Some(attempt) = attempt {
            query.push(("attempt", attempt.to_string()));
        }
        let response = self.send(self.request(reqwest::Method::GET, &format!("/jobs/{id}/logs")).query(&query)).await?;
        Ok(response.bytes_stream())
    }

    /// The uncommitted changes a job was submitted with; empty when there were none.
    pub async fn job_diff(&self, id: u64) -> Result<String, ClientError> {
        let response = self.send(self.request(reqwest::Method::GET, &format!("/jobs/{id}/diff"))).await?;
        response.text().await.map_err(|e| self.transport(e))
    }

    /// Whether the server holds the code archive with this SHA-256.
    pub async fn has_code(&self, sha256: &str) -> Result<bool, ClientError> {
        match self.send(self.request(reqwest::Method::HEAD, &format!("/code/{sha256}"))).await {
            Ok(_) => Ok(true),
            Err(ClientError::Api { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a code archive under its SHA-256; the server checks the digest.
    pub async fn upload_code(&self, sha256: &str, archive: Vec<u8>) -> Result<CodeStored, ClientError> {
        let builder = self
            .request(reqwest::Method::PUT, &format!("/code/{sha256}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(archive);
        self.json(builder).await
    }

    /// Downloads, as an agent for `node`, a code archive that a run assigned to the node needs, as a stream of chunks.
    pub async fn download_code(
        &self,
        sha256: &str,
        node: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>>, ClientError> {
        let builder = self.request(reqwest::Method::GET, &format!("/agent/code/{sha256}")).query(&[("node", node)]);
        let response = self.send(builder).await?;
        Ok(response.bytes_stream())
    }

    pub async fn nodes(&self) -> Result<NodeList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/nodes")).await
    }

    pub async fn pools(&self) -> Result<ferry_api::nodes::PoolList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/pools")).await
    }

    /// Adds a pool at run time from the TOML of its `[[pool]]` table.
    pub async fn add_pool(&self, definition: &str) -> Result<ferry_api::nodes::PoolDefinition, ClientError> {
        let body = ferry_api::nodes::PoolDefinition { definition: definition.to_string() };
        self.json(self.request(reqwest::Method::POST, "/pools").json(&body)).await
    }

    /// Replaces a pool added at run time.
    pub async fn update_pool(
        &self,
        name: &str,
        definition: &str,
    ) -> Result<ferry_api::nodes::PoolDefinition, ClientError> {
        let body = ferry_api::nodes::PoolDefinition { definition: definition.to_string() };
        self.json(self.request(reqwest::Method::PUT, &format!("/pools/{}", segment(name))).json(&body)).await
    }

    /// Removes a pool added at run time.
    pub async fn remove_pool(&self, name: &str) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/pools/{}", segment(name)))).await.map(|_| ())
    }

    pub async fn create_token(&self, spec: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/tokens").json(spec)).await
    }

    pub async fn tokens(&self) -> Result<TokenList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/tokens")).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/tokens/{id}/revoke"))).await
    }

    pub async fn secrets(&self) -> Result<ferry_api::secrets::SecretList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/secrets")).await
    }

    /// Sets a secret: the caller's own, or with `project` (`TEAM/PROJECT`) a project's.
    pub async fn set_secret(
        &self,
        project: Option<(&str, &str)>,
        name: &str,
        value: String,
    ) -> Result<ferry_api::secrets::SecretSet, ClientError> {
        let body = ferry_api::secrets::SetSecret { value };
        self.json(self.request(reqwest::Method::PUT, &secret_path(project, name)).json(&body)).await
    }

    pub async fn remove_secret(
        &self,
        project: Option<(&str, &str)>,
        name: &str,
    ) -> Result<ferry_api::secrets::SecretInfo, ClientError> {
        self.json(self.request(reqwest::Method::DELETE, &secret_path(project, name))).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/whoami")).await
    }

    pub async fn users(&self) -> Result<UserList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/users")).await
    }

    pub async fn create_user(&self, spec: &CreateUser) -> Result<UserInfo, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/users").json(spec)).await
    }

    /// Disables (`true`) or enables a user.
    pub async fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<UserInfo, ClientError> {
        let verb = if disabled { "disable" } else { "enable" };
        self.json(self.request(reqwest::Method::POST, &format!("/users/{}/{verb}", segment(name)))).await
    }

    pub async fn teams(&self) -> Result<TeamList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/teams")).await
    }

    pub async fn create_team(&self, spec: &CreateTeam) -> Result<TeamInfo, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/teams").json(spec)).await
    }

    pub async fn set_member(&self, team: &str, user: &str, spec: &SetMember) -> Result<TeamInfo, ClientError> {
        let path = format!("/teams/{}/members/{}", segment(team), segment(user));
        self.json(self.request(reqwest::Method::PUT, &path).json(spec)).await
    }

    pub async fn remove_member(&self, team: &str, user: &str) -> Result<TeamInfo, ClientError> {
        let path = format!("/teams/{}/members/{}", segment(team), segment(user));
        self.json(self.request(reqwest::Method::DELETE, &path)).await
    }

    pub async fn create_project(&self, team: &str, spec: &CreateProject) -> Result<TeamInfo, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/teams/{}/projects", segment(team))).json(spec)).await
    }

    /// The audit log, newest first: a page as JSON.
    pub async fn audit(&self, query: &AuditQuery) -> Result<ferry_api::audit::AuditPage, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/audit").query(query)).await
    }

    /// How well runtime predictions matched what the caller's visible jobs ran since `since` (an RFC 3339 time or a
    /// duration back from now).
    pub async fn prediction_accuracy(&self, since: &str) -> Result<ferry_api::jobs::PredictionAccuracy, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/predictions").query(&[("since", since)])).await
    }

    /// The cluster as the scheduler has it now, for `ferry history export` (installation admins).
    pub async fn history_cluster(&self) -> Result<ferry_api::history::HistoryCluster, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/history/cluster")).await
    }

    /// A page of the jobs submitted since `since` (an RFC 3339 time or a duration back from now) with an id above
    /// `after`, oldest first (installation admins).
    pub async fn history_jobs(
        &self,
        since: &str,
        after: Option<u64>,
        limit: u32,
    ) -> Result<ferry_api::history::HistoryPage, ClientError> {
        let mut query = vec![("since", since.to_string()), ("limit", limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        self.json(self.request(reqwest::Method::GET, "/history/jobs").query(&query)).await
    }

    /// The audit log as CSV.
    pub async fn audit_csv(&self, query: &AuditQuery) -> Result<String, ClientError> {
        let builder = self.request(reqwest::Method::GET, "/audit").query(query).query(&[("format", "csv")]);
        let response = self.send(builder).await?;
        response.text().await.map_err(|e| self.transport(e))
    }

    /// Sets (`Some`) or removes the quota of a team, or of one of its projects.
    pub async fn set_quota(
        &self,
        team: &str,
        project: Option<&str>,
        quota: Option<&ferry_api::tokens::Quota>,
    ) -> Result<TeamInfo, ClientError> {
        let path = match project {
            Some(p) => format!("/teams/{}/projects/{}/quota", segment(team), segment(p)),
            None => format!("/teams/{}/quota", segment(team)),
        };
        let builder = match quota {
            Some(quota) => self.request(reqwest::Method::PUT, &path).json(quota),
            None => self.request(reqwest::Method::DELETE, &path),
        };
        self.json(builder).await
    }

    pub async fn group_rules(&self) -> Result<GroupRuleList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/groups")).await
    }

    pub async fn set_group_rule(&self, team: &str, spec: &SetGroupRule) -> Result<GroupRule, ClientError> {
        self.json(self.request(reqwest::Method::PUT, &format!("/teams/{}/groups", segment(team))).json(spec)).await
    }

    pub async fn remove_group_rule(&self, team: &str, group: &str) -> Result<(), ClientError> {
        let builder = self.request(reqwest::Method::DELETE, &format!("/teams/{}/groups", segment(team)));
        self.send(builder.query(&[("group", group)])).await.map(|_| ())
    }

    /// Starts a single sign-on from the CLI (the device flow, run by the server).
    pub async fn start_device_login(&self) -> Result<DeviceLogin, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/auth/device")).await
    }

    pub async fn poll_device_login(&self, handle: &str) -> Result<DeviceLoginState, ClientError> {
        let body = DevicePoll { handle: handle.to_string() };
        self.json(self.request(reqwest::Method::POST, "/auth/device/poll").json(&body)).await
    }

    /// Ends the sign-in session this client's token is.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.send(self.request(reqwest::Method::POST, "/auth/logout")).await.map(|_| ())
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/health")).await
    }

    /// Trades a cloud machine's single-use join token (this client's) for the machine's own agent token.
    pub async fn exchange_join_token(&self) -> Result<ferry_api::agent::ExchangedToken, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/agent/exchange")).await
    }

    pub async fn register_node(&self, node: &RegisterNode) -> Result<Registered, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/agent/register").json(node)).await
    }

    /// Long-polls for work; the server holds the request up to `request.wait_ms`.
    pub async fn work(&self, request: &WorkRequest) -> Result<Work, ClientError> {
        let timeout = Duration::from_millis(request.wait_ms) + Duration::from_secs(10);
        self.json(self.request(reqwest::Method::POST, "/agent/work").json(request).timeout(timeout)).await
    }

    pub async fn report(&self, reports: &Reports) -> Result<ReportsAck, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/agent/reports").json(reports)).await
    }

    /// Sends a batch of telemetry samples; the answer says how many were stored and how many were too old to keep.
    pub async fn send_telemetry(&self, batch: &TelemetryBatch) -> Result<TelemetryAck, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/agent/telemetry").json(batch)).await
    }

    /// Reads time series: a metric for every node, GPU, job, user, project, team or pool over a time range.
    pub async fn series(&self, query: &SeriesQuery) -> Result<SeriesAnswer, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/series").query(query)).await
    }

    /// Appends `bytes` at byte `offset` of a run's output; the answer says how much the server holds. An upload that
    /// overlaps what the server has is trimmed by the server, so resending after a failure is safe.
    /// What a job logged to its MLflow run; with `key`, that metric's history too.
    pub async fn job_metrics(&self, id: u64, key: Option<&str>) -> Result<ferry_api::jobs::JobMetrics, ClientError> {
        let mut builder = self.request(reqwest::Method::GET, &format!("/jobs/{id}/metrics"));
        if let Some(key) = key {
            builder = builder.query(&[("key", key)]);
        }
        self.json(builder).await
    }

    pub async fn submit_sweep(
        &self,
        sweep: &ferry_api::sweeps::SubmitSweep,
    ) -> Result<ferry_api::sweeps::SweepSubmitted, ClientError> {
        self.json(self.request(reqwest::Method::POST, "/sweeps").json(sweep)).await
    }

    pub async fn sweeps(&self) -> Result<ferry_api::sweeps::SweepList, ClientError> {
        self.json(self.request(reqwest::Method::GET, "/sweeps")).await
    }

    pub async fn sweep(&self, id: u64) -> Result<ferry_api::sweeps::Sweep, ClientError> {
        self.json(self.request(reqwest::Method::GET, &format!("/sweeps/{id}"))).await
    }

    pub async fn cancel_sweep(&self, id: u64) -> Result<ferry_api::sweeps::Sweep, ClientError> {
        self.json(self.request(reqwest::Method::POST, &format!("/sweeps/{id}/cancel"))).await
    }

    pub async fn upload_log(&self, node: &str, run: RunRef, offset: u64, bytes: Bytes) -> Result<LogAck, ClientError> {
        let path = format!("/agent/runs/{}/{}/logs", run.job_id, run.attempt);
        let query = [("offset", offset.to_string()), ("node", node.to_string()), ("rank", run.rank.to_string())];
        self.json(self.request(reqwest::Method::POST, &path).query(&query).body(bytes)).await
    }
}

/// MLflow artifacts of tracking runs, through the MLflow-compatible API (`/api/2.0/mlflow...`), whose errors are
/// MLflow's `{"error_code", "message"}`.
impl Client {
    fn mlflow_url(&self, prefix: &str, segments: &[&str]) -> Result<reqwest::Url, ClientError> {
        let bad = |detail: String| ClientError::Transport { server: self.base.clone(), detail };
        let mut url = reqwest::Url::parse(&format!("{}{prefix}", self.base)).map_err(|e| bad(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| bad("the server's address cannot hold a path".to_string()))?
            .pop_if_empty()
            .extend(segments.iter().flat_map(|s| s.split('/')).filter(|s| !s.is_empty()));
        Ok(url)
    }

    async fn mlflow_send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let builder = match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        };
        let response = builder.send().await.map_err(|e| self.transport(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.transport(e))?;
        let parsed = serde_json::from_str::<ferry_api::tracking::MlflowError>(&text).ok();
        let quota = parsed.as_ref().is_some_and(|e| e.error_code == "RESOURCE_EXHAUSTED");
        let message = parsed
            .map(|e| e.message)
            .unwrap_or_else(|| format!("the server at {} answered HTTP {status}: {}", self.base, text.trim()));
        let code = match status {
            401 => ErrorCode::Unauthenticated,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            410 => ErrorCode::Gone,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::RateLimited,
            503 => ErrorCode::Unavailable,
            507 if quota => ErrorCode::QuotaExceeded,
            507 => ErrorCode::StorageFull,
            400..=499 => ErrorCode::InvalidRequest,
            _ => ErrorCode::Internal,
        };
        Err(ClientError::Api { status, body: ErrorBody { code, message } })
    }

    /// The files and folders of a run's artifacts in the folder `path` (relative to the run's artifact root; empty
    /// for the root), with paths relative to the root.
    pub async fn list_artifacts(
        &self,
        run_id: &str,
        path: &str,
    ) -> Result<ferry_api::tracking::ListArtifactsResponse, ClientError> {
        let url = self.mlflow_url("/api/2.0/mlflow/artifacts/list", &[])?;
        let mut query = vec![("run_id", run_id)];
        if !path.is_empty() {
            query.push(("path", path));
        }
        let response = self.mlflow_send(self.http.get(url).query(&query)).await?;
        response.json().await.map_err(|e| self.transport(e))
    }

    /// Streams the artifact file `path` of a run into `out`, chunk by chunk; returns the number of bytes written.
    pub async fn download_artifact<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        experiment_id: &str,
        run_id: &str,
        path: &str,
        out: &mut W,
    ) -> Result<u64, ClientError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let url =
            self.mlflow_url("/api/2.0/mlflow-artifacts/artifacts", &[experiment_id, run_id, "artifacts", path])?;
        let response = self.mlflow_send(self.http.get(url)).await?;
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        let write_failed = |e: std::io::Error| ClientError::Transport {
            server: self.base.clone(),
            detail: format!("could not write the artifact {path}: {e}"),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            out.write_all(&chunk).await.map_err(write_failed)?;
            written += chunk.len() as u64;
        }
        out.flush().await.map_err(write_failed)?;
        Ok(written)
    }
}

fn secret_path(project: Option<(&str, &str)>, name: &str) -> String {
    match project {
        Some((team, project)) => format!("/secrets/projects/{}/{}/{}", segment(team), segment(project), segment(name)),
        None => format!("/secrets/user/{}", segment(name)),
    }
}

/// A name as one path segment: everything but unreserved characters percent-encoded, so a name can never add a
/// segment or a query to the path.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
