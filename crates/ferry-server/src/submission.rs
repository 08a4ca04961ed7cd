//! Turning a submission into a job: the rules a request must meet (`validate`, pure), who owns it and under which
//! team and project (`prepare`), and handing it to the driver with its MLflow run (`submit_tracked`). The jobs route
//! and the sweep controller both submit through here; neither calls the other.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use ferry_api::code::{is_sha256, GIT_DIFF_BYTES_MAX};
use ferry_api::jobs::{SubmitJob, COMMAND_BYTES_MAX, ENV_VARS_MAX, NAME_CHARS_MAX, NODES_MAX, RETRIES_MAX};
use ferry_core::Resources;
use ferry_store::{JobCode, NewJob};

use crate::auth::UserCaller;
use crate::driver::Command;
use crate::error::ApiError;
use crate::state::AppState;

/// Default CPU request: one core.
const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Default memory request: 1 GiB.
const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// Checks a submission and turns it into a job to store. Pure, so every rule is testable without a server.
pub fn validate(spec: SubmitJob, owner: &str) -> Result<NewJob, ApiError> {
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(ApiError::invalid(
            "the command is empty; give one after `--`, as in `ferry run -- python train.py`",
        ));
    }
    let command_bytes: usize = spec.command.iter().map(|a| a.len()).sum();
    if command_bytes > COMMAND_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "the command is {command_bytes} bytes long; the limit is {COMMAND_BYTES_MAX}: put long arguments in a file"
        )));
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid("the command contains a NUL byte, which no program can receive"));
    }
    ferry_api::text::check_plain("the working directory", &spec.workdir).map_err(ApiError::invalid)?;
    if !spec.workdir.is_empty() && !FsPath::new(&spec.workdir).is_absolute() {
        return Err(ApiError::invalid(format!("the working directory `{}` must be an absolute path", spec.workdir)));
    }
    let code = match spec.code {
        Some(_) if !spec.workdir.is_empty() => {
            return Err(ApiError::invalid(
                "a job runs either in its shipped code or in a working directory on the node, not both",
            ))
        }
        Some(code) if !is_sha256(&code.sha256) => {
            return Err(ApiError::invalid(format!(
                "`{}` is not a SHA-256 digest; code archives are named by 64 lowercase hex digits",
                code.sha256
            )))
        }
        Some(code) => Some(JobCode {
            sha256: code.sha256,
            // Filled in by the handler, which asks the code store.
            size_bytes: 0,
            git_commit: code.git_commit.filter(|c| !c.is_empty()).map(|c| cap(c, NAME_CHARS_MAX)),
            git_diff: code.git_diff.filter(|d| !d.is_empty()).map(|d| cap(d, GIT_DIFF_BYTES_MAX)),
        }),
        None => None,
    };
    let image = match spec.image {
        Some(image) => match image_problem(&image) {
            Some(problem) => {
                return Err(ApiError::invalid(format!(
                    "`{}` is not a container image reference: {problem}; write one such as localhost/busybox:ferry \
                     or ghcr.io/org/train:1.2",
                    image.escape_debug()
                )))
            }
            None => Some(image),
        },
        None => None,
    };
    if spec.env.len() > ENV_VARS_MAX {
        return Err(ApiError::invalid(format!(
            "{} environment variables given; the limit is {ENV_VARS_MAX}",
            spec.env.len()
        )));
    }
    // Names every shell and engine accepts, so that one job runs unchanged on agents, Slurm, Ray and Spark.
    if let Some(key) = spec.env.keys().find(|k| !ferry_backends::engine::valid_env_name(k)) {
        return Err(ApiError::invalid(format!(
            "`{}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit; \
             write --env NAME=VALUE",
            key.escape_debug()
        )));
    }
    if let Some(key) = spec.env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(ApiError::invalid(format!("the value of `{key}` holds a NUL byte, which no program can receive")));
    }
    check_secrets(&spec.secrets, &spec.env)?;
    if let Some(name) = &spec.name {
        if name.chars().count() > NAME_CHARS_MAX || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!("job names are at most {NAME_CHARS_MAX} printable characters")));
        }
    }
    let cpu_millis = spec.cpu_millis.unwrap_or(DEFAULT_CPU_MILLIS);
    let memory_bytes = spec.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES);
    if cpu_millis == 0 {
        return Err(ApiError::invalid("cpu_millis is 0; every job needs some CPU, such as --cpus 0.1"));
    }
    if memory_bytes == 0 {
        return Err(ApiError::invalid("memory_bytes is 0; ask for some memory, such as --memory 512MiB"));
    }
    let gpus = spec.gpus.unwrap_or(0);
    let gpu_share_milli = spec.gpu_share_milli.unwrap_or(0);
    if gpu_share_milli >= 1000 {
        return Err(ApiError::invalid(format!(
            "gpu_share_milli is {gpu_share_milli}; a share is less than one GPU (1 to 999), ask for whole GPUs instead"
        )));
    }
    if gpu_share_milli > 0 && gpus > 0 {
        return Err(ApiError::invalid("ask for whole GPUs or a share of one GPU, not both"));
    }
    if let Some(bad) = spec.gpu_types.iter().find(|t| t.trim().is_empty() || t.len() > NAME_CHARS_MAX) {
        return Err(ApiError::invalid(format!("`{bad}` is not a GPU model; write one such as A100 or T4")));
    }
    if let Some((k, v)) = spec.selector.iter().find(|(k, v)| k.is_empty() || k.contains('=') || v.contains('=')) {
        return Err(ApiError::invalid(format!("`{k}={v}` is not a label selector; write --selector NAME=VALUE")));
    }
    let retries = spec.retries.unwrap_or(0);
    if retries > RETRIES_MAX {
        return Err(ApiError::invalid(format!("{retries} retries asked; the limit is {RETRIES_MAX}")));
    }
    if spec.max_runtime_s == Some(0) {
        return Err(ApiError::invalid("max_runtime_s is 0; give a positive limit such as --max-runtime 2h"));
    }
    let nodes = spec.nodes.unwrap_or(1);
    if nodes == 0 || nodes > NODES_MAX {
        return Err(ApiError::invalid(format!(
            "nodes is {nodes}; a job runs on 1 to {NODES_MAX} nodes, such as --nodes 4 for a gang of four workers"
        )));
    }
    if nodes > 1 && gpu_share_milli > 0 {
        return Err(ApiError::invalid(
            "a multi-node job takes whole GPUs on each node; use --gpus 1 or more with --nodes, not a share",
        ));
    }
    Ok(NewJob {
        name: spec.name,
        project: spec.project,
        team: spec.team,
        owner: owner.to_string(),
        command: spec.command,
        workdir: spec.workdir,
        env: spec.env,
        secrets: spec.secrets,
        resources: Resources::new(cpu_millis, memory_bytes, gpus),
        priority: spec.priority.unwrap_or_default(),
        retries,
        max_runtime_s: spec.max_runtime_s,
        gpu_share_milli,
        gpu_types: spec.gpu_types,
        selector: spec.selector,
        nodes,
        code,
        pool: spec.pool.filter(|p| !p.is_empty()),
        image,
        tracking: None,
        sweep: None,
        checkpoints: spec.checkpoints,
    })
}

/// The form of a job's secrets: how many, valid variable and secret names, none that Ferry sets itself or that the
/// job's plain environment sets too.
fn check_secrets(secrets: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    use ferry_api::secrets::{check_job_var, check_name, SECRETS_PER_JOB_MAX};
    if secrets.len() > SECRETS_PER_JOB_MAX {
        return Err(ApiError::invalid(format!(
            "{} secrets given; a job may use at most {SECRETS_PER_JOB_MAX}",
            secrets.len()
        )));
    }
    for (var, name) in secrets {
        if !ferry_backends::engine::valid_env_name(var) {
            return Err(ApiError::invalid(format!(
                "`{}` is not a valid environment variable name for a secret: use letters, digits and `_`, not \
                 starting with a digit; write --secret NAME or --secret VAR=NAME",
                var.escape_debug()
            )));
        }
        if let Some(problem) = check_name(name).or_else(|| check_job_var(var)) {
            return Err(ApiError::invalid(problem));
        }
        if env.contains_key(var) {
            return Err(ApiError::invalid(format!("`{var}` is set both by --env and from a secret; keep one of them")));
        }
    }
    Ok(())
}

/// Every secret a job names exists for its owner or its project, so that a typo is caught at submission rather
/// than when the job starts.
async fn secrets_exist(state: &AppState, job: &NewJob) -> Result<(), ApiError> {
    use ferry_store::SecretOwner;
    let user = SecretOwner::user(&job.owner);
    let project = job.team.as_deref().zip(job.project.as_deref()).map(|(t, p)| SecretOwner::project(t, p));
    for name in job.secrets.values() {
        if state.store.secret(&user, name).await?.is_some() {
            continue;
        }
        if let Some(project) = &project {
            if state.store.secret(project, name).await?.is_some() {
                continue;
            }
        }
        let whose = match project.as_ref().and_then(|p| p.team_project()) {
            Some((team, project)) => {
                format!("{} has no secret `{name}`, nor has project {project} of team {team}", job.owner)
            }
            None => format!("{} has no secret `{name}` (and the job names no project)", job.owner),
        };
        return Err(ApiError::invalid(format!(
            "{whose}; set it with `ferry secret set {name}` (yours) or `ferry secret set {name} --project PROJECT` \
             (a team admin), then submit again"
        )));
    }
    Ok(())
}

/// The longest image reference accepted, as Docker's own limit on a name.
const IMAGE_CHARS_MAX: usize = 255;

/// What is wrong with an image reference, `[registry[:port]/]name[/name...][:tag][@algorithm:digest]`, or `None`
/// when it is plausible. Only the form is checked: whether the node has (or can pull) the image is the agent's
/// business.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("it is empty".into());
    }
    if image.chars().count() > IMAGE_CHARS_MAX {
        return Some(format!("it is longer than {IMAGE_CHARS_MAX} characters"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it holds whitespace or control characters".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let plausible = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !plausible {
            return Some(format!("`@{digest}` is not a digest such as @sha256:<64 hex digits>"));
        }
    }
    // A tag follows the last `:` after the last `/`; a `:` before that belongs to a registry's port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Some(format!("the tag `{tag}` is not 1 to 128 letters, digits, `_`, `.` or `-`"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part names a registry when it looks like a host (a dot, a port, or `localhost`) and more follows.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let registry = parts.remove(0);
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
            && !host.starts_with(['.', '-']);
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !(host_ok && port_ok) {
            return Some(format!("`{registry}` is not a registry host such as localhost or ghcr.io:443"));
        }
    }
    for part in parts {
        let bytes = part.as_bytes();
        let valid = bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
        if !valid {
            return Some(format!(
                "the name part `{part}` is not lowercase letters and digits, separated by `.`, `_` or `-`"
            ));
        }
    }
    None
}

/// Cuts `text` to at most `bytes_max` bytes, on a character boundary, saying so at the end.
fn cap(mut text: String, bytes_max: usize) -> String {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[cut by Ferry]\n");
    }
    text
}

/// A submission checked (`validate`) for its submitter, who owns it: its team and project are ones the submitter
/// belongs to (`ownership`), and its shipped code's size is filled in from the archive the server holds.
pub(crate) async fn prepare(state: &AppState, spec: SubmitJob, submitter: &UserCaller) -> Result<NewJob, ApiError> {
    let mut job = validate(spec, &submitter.name)?;
    ownership(state, submitter, &mut job).await?;
    secrets_exist(state, &job).await?;
    if let Some(code) = &mut job.code {
        code.size_bytes = state.code.size(&code.sha256).await.ok_or_else(|| {
            ApiError::invalid(format!(
                "the server holds no code archive {}; upload it with PUT /api/v1/code/{{sha256}} first",
                code.sha256
            ))
        })?;
    }
    Ok(job)
}

/// Settles a job's team and project for its submitter: the team must be one the submitter may submit to (by
/// default its default or only team), and a project must be one of that team's. Quotas, fair share and usage follow
/// from this, so nothing the request claims is taken on trust.
async fn ownership(state: &AppState, submitter: &UserCaller, job: &mut NewJob) -> Result<(), ApiError> {
    let forbidden = |message: String| ApiError::new(ferry_api::ErrorCode::Forbidden, message);
    let named = job.team.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(team) = named {
        if !state.store.team_exists(team).await? {
            return Err(ApiError::invalid(format!(
                "there is no team `{team}`; `ferry team list` shows the teams you belong to"
            )));
        }
    }
    job.team = submitter.submission_team(named).map_err(forbidden)?;
    let project = job.project.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_string);
    job.project = match (project, job.team.as_deref()) {
        (None, _) => None,
        (Some(project), Some(team)) => {
            if !state.store.project_exists(team, &project).await? {
                return Err(ApiError::invalid(format!(
                    "team {team} has no project `{project}`; a team admin creates it with `ferry team project {team} \
                     {project}`"
                )));
            }
            Some(project)
        }
        // An installation admin's job outside every team may carry any project name (no quota applies to it).
        (Some(project), None) => Some(project),
    };
    Ok(())
}

/// Submits a job with an MLflow run of its own: the run is made first, the job carries its id into the driver's
/// commit, and a refused job leaves its run deleted.
pub(crate) async fn submit_tracked(
    state: &AppState,
    mut job: NewJob,
    key: Option<ferry_store::SubmissionKey>,
    experiment: Option<&str>,
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
) -> Result<crate::driver::Submitted, ApiError> {
    let run = crate::jobruns::NewRun {
        experiment,
        project: job.project.as_deref(),
        owner: &job.owner,
        team: job.team.as_deref(),
        name: job.name.as_deref(),
        command: &job.command,
        git_commit: job.code.as_ref().and_then(|c| c.git_commit.as_deref()),
        params,
        tags,
    };
    let tracking = crate::jobruns::create(&state.store, run).await?;
    let run_id = tracking.run_id.clone();
    let named = job.name.is_some();
    job.tracking = Some(tracking);
    match state.driver.call(|reply| Command::Submit { job: Box::new(job), key, reply }).await {
        Ok(answer) if answer.again => {
            // A racing retry made the job first; this try's run is not wanted.
            crate::jobruns::discard(&state.store, &run_id).await;
            Ok(answer)
        }
        Ok(answer) => {
            crate::jobruns::attach(&state.store, &run_id, answer.id, named).await?;
            Ok(answer)
        }
        Err(e) => {
            crate::jobruns::discard(&state.store, &run_id).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod image_tests {
    use super::image_problem;

    #[test]
    fn plausible_image_references_pass() {
        for image in [
            "busybox",
            "localhost/busybox:ferry",
            "ghcr.io/org/train:1.2",
            "registry.example.com:5000/team/sub_project/img-x:v1.0-rc_2",
            "docker.io/library/ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nvcr.io/nvidia/pytorch:24.05-py3",
        ] {
            assert_eq!(image_problem(image), None, "{image}");
        }
    }

    #[test]
    fn implausible_image_references_say_what_is_wrong() {
        let cases = [
            ("", "it is empty"),
            ("busy box", "it holds whitespace or control characters"),
            ("busybox\n", "it holds whitespace or control characters"),
            ("Busybox", "the name part `Busybox` is not lowercase letters and digits"),
            ("busybox:", "the tag `` is not 1 to 128 letters"),
            ("busybox:-x", "the tag `-x` is not"),
            ("localhost/busybox@md5", "`@md5` is not a digest"),
            ("a//b", "the name part `` is not"),
            ("localhost:x/busybox", "`localhost:x` is not a registry host"),
        ];
        for (image, expected) in cases {
            let problem = image_problem(image).unwrap_or_default();
            assert!(problem.starts_with(expected), "{image:?}: {problem}");
        }
        assert!(image_problem(&"a".repeat(256)).unwrap().contains("longer than 255"));
    }
}
