//! The `ferry` binary: server, node agent and command line in one. It parses flags and calls the libraries; the
//! logic lives in the crates under `crates/`.

mod artifacts;
mod commands;
mod exit;
mod format;
mod history;
mod identity;
mod login;
mod pack;
mod secret;
mod sweep;
mod tls;
mod top;
mod up;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use exit::CliError;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Run ML jobs on any compute: this machine, GPU servers, clusters and clouds."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and who we are; every client command takes these.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// The Ferry server's URL.
    #[arg(long, global = true, env = "FERRY_SERVER")]
    server: Option<String>,
    /// An API token; by default the session of `ferry login`, else the admin token that `ferry up` wrote to its data
    /// directory.
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Ferry's data directory (database, job output, admin token).
    #[arg(long, global = true, env = "FERRY_HOME")]
    data_dir: Option<PathBuf>,
    /// The certificate authority (PEM) to verify an https:// server with, and no other; by default the one in the
    /// data directory (tls/ca.pem) when there is one, else the system's.
    #[arg(long, global = true, env = "FERRY_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run Ferry on this machine: the server and a local agent, with embedded defaults.
    Up(up::UpArgs),
    /// Run only the server.
    Server(up::ServerArgs),
    /// Run a node agent that registers this machine with a server and runs the jobs it is given.
    Agent(up::AgentArgs),
    /// Queue a job: `ferry run --gpus 1 -- python train.py`.
    Run(Box<commands::RunArgs>),
    /// List jobs (unfinished ones unless --all).
    Ps(commands::PsArgs),
    /// Show one job: its specification, timeline, placement, exit status, and why it waits.
    Show(commands::ShowArgs),
    /// How well runtime predictions (learned from earlier runs, shown by `ferry show`) matched what jobs then ran.
    Predictions(commands::PredictionsArgs),
    /// Print a job's output; -f follows it until the job ends.
    Logs(commands::LogsArgs),
    /// List a job's MLflow artifacts (`ferry artifacts JOB [PATH]`) or download them (`... JOB get PATH -o OUT`).
    Artifacts(artifacts::ArtifactsArgs),
    /// Cancel jobs: queued ones are removed, running ones get SIGTERM, a grace period, then SIGKILL.
    Cancel(commands::CancelArgs),
    /// List nodes with their capacity, allocation and measured utilisation.
    Nodes(commands::NodesArgs),
    /// List pools in their order: agent pools and engines (Slurm, Ray, Spark, Kubernetes), their nodes, and whether
    /// each engine answers.
    Pools(commands::PoolsArgs),
    /// Manage pools at run time (installation admins): `ferry pool add FILE`, `update FILE`, `remove NAME`. FILE holds
    /// one `[[pool]]` table, as the server's configuration file writes it; pools of agents and elastic pools only.
    Pool(commands::PoolArgs),
    /// Start a hyperparameter sweep from its file (`ferry sweep sweep.toml`), or see one (`ferry sweep status ID`).
    Sweep(sweep::SweepArgs),
    /// What a job logged to its MLflow run: params and metrics; `ferry metrics ID KEY` prints one metric's history.
    Metrics(sweep::MetricsArgs),
    /// A live view of the cluster, like htop: nodes, every GPU's allocation and measured use, the running jobs.
    Top(top::TopArgs),
    /// Create, list and revoke API tokens: personal tokens with a scope and an expiry, and join tokens for agents.
    Token(identity::TokenArgs),
    /// Secrets jobs read from their environment (`ferry run --secret NAME`): set, list, remove. Stored sealed; a
    /// value is never shown again.
    Secret(secret::SecretArgs),
    /// Users and service accounts: add, list, disable, enable (installation admins).
    User(identity::UserArgs),
    /// Teams, their members with a role each, and their projects.
    Team(identity::TeamArgs),
    /// Who the token in use belongs to: user, scope, teams.
    Whoami(identity::WhoAmIArgs),
    /// Sign in with the organisation's single sign-on: confirm a code in a browser; later commands use the session.
    Login(login::LoginArgs),
    /// End the session `ferry login` started.
    Logout(login::LogoutArgs),
    /// The audit log: who did what, to what, when, from where, with what result; `--csv` to export.
    Audit(identity::AuditArgs),
    /// Run on the server's machine to restore admin access: `ferry admin restore`.
    Admin(identity::AdminArgs),
    /// The installation's cluster and jobs as the simulator's files: `ferry history export --since 30d --out DIR`.
    History(history::HistoryArgs),
    /// Replay a workload, or run the FGD experiment, through the scheduler core in virtual time.
    Sim(ferry_sim::cli::SimArgs),
    /// The per-run supervisor the agent starts; not for direct use.
    #[command(name = "__shim", hide = true)]
    Shim { run_dir: PathBuf },
    /// Runs a run's command in a container of its image; started by the supervisor, not for direct use.
    #[command(name = "__container", hide = true)]
    Container { run_dir: PathBuf },
    /// Runs a run's command in a private view of the node; started by the supervisor, not for direct use.
    #[command(name = "__isolate", hide = true)]
    Isolate { run_dir: PathBuf },
}

/// Keeps jobs running as this process's own user (a personal `ferry up`, each in a user namespace of its own) from
/// reading its memory, environment and open files through `/proc`: the server's and agent's tokens and secrets.
fn not_dumpable() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("warning: cannot keep jobs out of this process's memory (prctl PR_SET_DUMPABLE): {e}");
    }
}

/// Makes glibc serve every large allocation (256 KiB and up) from its own mapping, returned to the system when freed.
/// By default glibc raises that threshold after the first large free, and from then on the scheduler's queue-sized
/// temporaries (a cycle's order of 100,000 jobs is a few hundred KiB) come from its heaps, which keep the memory
/// after it is freed: a server's resident memory then grows with the deepest queue it has seen rather than with the
/// queue it has (crates/ferry-bench/README.md, "Queue memory").
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

fn main() {
    // The per-run supervisor starts hundreds of times a second on a busy node: it skips building the whole command
    // line parser, which costs more than the rest of its start-up.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, subcommand, run_dir] = &args[..] {
        if subcommand == "__shim" {
            not_dumpable();
            std::process::exit(ferry_agent::shim_main(std::path::Path::new(run_dir)));
        }
        // Before any runtime or logging is set up: it starts its own runtime, and its output is the job's.
        if subcommand == "__container" {
            std::process::exit(ferry_agent::container::main(std::path::Path::new(run_dir)));
        }
        // Single-threaded, as making a user namespace requires; it execs the job's command.
        if subcommand == "__isolate" {
            std::process::exit(ferry_agent::isolate::main(std::path::Path::new(run_dir)));
        }
    }
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Up(_) | Command::Server(_) | Command::Agent(_));
    if daemon {
        not_dumpable();
        fixed_mmap_threshold();
    }
    init_tracing(daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::INTERNAL);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Open long polls or streams must not hold the process after the command is done.
    runtime.shutdown_background();
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // An empty message: the command printed the error itself.
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            std::process::exit(e.code);
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    let g = cli.global;
    match cli.command {
        Command::Up(args) => up::up(&g, args).await,
        Command::Server(args) => up::server(&g, args).await,
        Command::Agent(args) => up::agent(&g, args).await,
        Command::Run(args) => commands::run(&g, *args).await,
        Command::Ps(args) => commands::ps(&g, args).await,
        Command::Show(args) => commands::show(&g, args).await,
        Command::Predictions(args) => commands::predictions(&g, args).await,
        Command::Logs(args) => commands::logs(&g, args).await,
        Command::Artifacts(args) => artifacts::artifacts(&g, args).await,
        Command::Cancel(args) => commands::cancel(&g, args).await,
        Command::Nodes(args) => commands::nodes(&g, args).await,
        Command::Pools(args) => commands::pools(&g, args).await,
        Command::Pool(args) => commands::pool(&g, args).await,
        Command::Top(args) => top::top(&g, args).await,
        Command::Sweep(args) => sweep::sweep(&g, args).await,
        Command::Metrics(args) => sweep::metrics(&g, args).await,
        Command::Token(args) => identity::token(&g, args).await,
        Command::Secret(args) => secret::secret(&g, args).await,
        Command::User(args) => identity::user(&g, args).await,
        Command::Team(args) => identity::team(&g, args).await,
        Command::Whoami(args) => identity::whoami(&g, args).await,
        Command::Login(args) => login::login(&g, args).await,
        Command::Logout(args) => login::logout(&g, args).await,
        Command::Audit(args) => identity::audit(&g, args).await,
        Command::Admin(args) => identity::admin(&g, args).await,
        Command::History(args) => history::history(&g, args).await,
        Command::Sim(args) => Ok(ferry_sim::cli::run(&args)),
        Command::Shim { run_dir } => Ok(ferry_agent::shim_main(&run_dir)),
        Command::Container { run_dir } => Ok(ferry_agent::container::main(&run_dir)),
        Command::Isolate { run_dir } => Ok(ferry_agent::isolate::main(&run_dir)),
    }
}

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log redirected to a file or a service manager's journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

impl Global {
    /// The data directory: --data-dir, FERRY_HOME, or `ferry` under the user's data directory.
    pub fn data_dir(&self) -> Result<PathBuf, CliError> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        dirs::data_dir().map(|d| d.join("ferry")).ok_or_else(|| {
            CliError::new(exit::CONFIG, "cannot find a home for Ferry's data; set FERRY_HOME or pass --data-dir")
        })
    }

    pub fn server_url(&self) -> String {
        self.server.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", ferry_api::DEFAULT_PORT))
    }

    /// The token: --token, FERRY_TOKEN, the session `ferry login` kept for this server, or the admin token file in
    /// the data directory.
    pub fn token(&self) -> Result<String, CliError> {
        self.found_token()?.ok_or_else(|| {
            let path = self.data_dir().map(|d| d.join(ferry_server::ADMIN_TOKEN_FILE).display().to_string());
            CliError::new(
                exit::AUTH,
                format!(
                    "no API token: pass --token or set FERRY_TOKEN, or start the server with `ferry up`, which writes {}",
                    path.unwrap_or_else(|_| ferry_server::ADMIN_TOKEN_FILE.to_string())
                ),
            )
        })
    }

    /// The token, if one is given or found (see `token`).
    fn found_token(&self) -> Result<Option<String>, CliError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()));
        }
        let server = self.server_url();
        if let Some(kept) = login::credential(&server) {
            if kept.expires_at_us <= format::now_us() {
                return Err(CliError::new(
                    exit::AUTH,
                    format!("the sign-in to {server} as {} has expired; run `ferry login` again", kept.user),
                ));
            }
            return Ok(Some(kept.token));
        }
        let path = self.data_dir()?.join(ferry_server::ADMIN_TOKEN_FILE);
        Ok(std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// A client of the server. Without any token it still asks: a server that is not there says so (exit 69), one
    /// that is answers that a token is needed and where `ferry up` keeps its own (exit 77).
    pub fn client(&self) -> Result<ferry_client::Client, CliError> {
        let trust = tls::trust(self)?;
        Ok(ferry_client::Client::with_trust(&self.server_url(), self.found_token()?, &trust)?)
    }
}
