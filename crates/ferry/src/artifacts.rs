//! `ferry artifacts JOB [PATH]` lists the MLflow artifacts of a job's tracking run, and
//! `ferry artifacts JOB get PATH [-o FILE|DIR|-]` downloads a file or a whole folder, streamed to disk or stdout.
//!
//! This module only formats and writes files; the server decides what a path may be.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use clap::Args;
use ferry_api::jobs::JobTracking;
use ferry_client::Client;

use crate::exit::{self, CliError};
use crate::format;
use crate::Global;

/// The most files one `get` of a folder downloads: a bound on a runaway walk.
const FILES_MAX: usize = 100_000;

#[derive(Args)]
pub struct ArtifactsArgs {
    /// The job whose tracking run's artifacts to show.
    id: String,
    /// `PATH` lists that folder (the root by default); `get PATH` downloads a file or a folder.
    #[arg(value_name = "PATH | get PATH")]
    rest: Vec<String>,
    /// With `get`: where to write: a file, a folder (created), or `-` for stdout; by default the artifact's own name
    /// in the current folder.
    #[arg(long, short = 'o', value_name = "FILE|DIR|-")]
    output: Option<String>,
}

pub async fn artifacts(g: &Global, args: ArtifactsArgs) -> Result<i32, CliError> {
    let id: u64 = args.id.parse().map_err(|_| {
        CliError::new(
            exit::INVALID,
            format!("`{}` is not a job id; job ids are numbers, as `ferry ps` shows them", args.id),
        )
    })?;
    let client = g.client()?;
    let job = client.job(id).await?;
    let Some(tracking) = job.tracking else {
        return Err(CliError::new(
            exit::NOT_FOUND,
            format!("job {id} has no MLflow tracking run, so it has no artifacts; jobs log artifacts when they are submitted with tracking"),
        ));
    };
    match args.rest.as_slice() {
        [] => list(&client, &tracking, "").await,
        [path] if path != "get" => list(&client, &tracking, path).await,
        [get, path] if get == "get" => download(&client, &tracking, path, args.output.as_deref()).await,
        _ => Err(CliError::new(
            exit::INVALID,
            "usage: ferry artifacts JOB [PATH] | ferry artifacts JOB get PATH [-o FILE|DIR|-]",
        )),
    }
}

async fn list(client: &Client, tracking: &JobTracking, path: &str) -> Result<i32, CliError> {
    let listed = client.list_artifacts(&tracking.run_id, path.trim_matches('/')).await?;
    if listed.files.is_empty() {
        eprintln!("no artifacts in {}", if path.is_empty() { "the run" } else { path });
        return Ok(0);
    }
    for f in &listed.files {
        match f.file_size {
            Some(size) if !f.is_dir => println!("{:>10}  {}", format::bytes(size.max(0) as u64), f.path),
            _ => println!("{:>10}  {}/", "-", f.path),
        }
    }
    Ok(0)
}

/// Whether `path` is a folder of the run's artifacts (it lists something, or its parent lists it as a folder).
async fn is_folder(client: &Client, tracking: &JobTracking, path: &str) -> Result<bool, CliError> {
    let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let listed = client.list_artifacts(&tracking.run_id, parent).await?;
    Ok(listed.files.iter().any(|f| f.path == path && f.is_dir))
}

async fn download(client: &Client, tracking: &JobTracking, path: &str, output: Option<&str>) -> Result<i32, CliError> {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Err(CliError::new(exit::INVALID, "say which artifact to get: ferry artifacts JOB get PATH"));
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    if output == Some("-") {
        // A duplicate of stdout's descriptor, written through tokio like a file.
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| CliError::new(exit::INTERNAL, format!("cannot write to stdout: {e}")))?;
        let mut stdout = tokio::fs::File::from_std(std::fs::File::from(fd));
        client.download_artifact(&tracking.experiment_id, &tracking.run_id, path, &mut stdout).await?;
        return Ok(0);
    }
    if !is_folder(client, tracking, path).await? {
        let target = match output {
            Some(o) if Path::new(o).is_dir() => Path::new(o).join(name),
            Some(o) => PathBuf::from(o),
            None => PathBuf::from(name),
        };
        let bytes = get_file(client, tracking, path, &target).await?;
        eprintln!("{} ({})", target.display(), format::bytes(bytes));
        return Ok(0);
    }
    let root = output.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(name));
    // Walk the folder breadth-first, writing each file under `root` at its path below `path`.
    let mut folders = vec![path.to_string()];
    let mut count = 0usize;
    while let Some(folder) = folders.pop() {
        for f in client.list_artifacts(&tracking.run_id, &folder).await?.files {
            if f.is_dir {
                folders.push(f.path);
                continue;
            }
            count += 1;
            if count > FILES_MAX {
                return Err(CliError::new(
                    exit::INVALID,
                    format!("{path} holds more than {FILES_MAX} files; get its folders one by one"),
                ));
            }
            let relative = f.path.strip_prefix(path).unwrap_or(&f.path).trim_start_matches('/');
            // The server checks paths, but a file is never written outside `root` whatever it answers.
            if relative.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                return Err(CliError::new(exit::INTERNAL, format!("the server listed an unsafe path: {}", f.path)));
            }
            let target = root.join(relative);
            get_file(client, tracking, &f.path, &target).await?;
        }
    }
    eprintln!("{} ({count} files)", root.display());
    Ok(0)
}

async fn get_file(client: &Client, tracking: &JobTracking, path: &str, target: &Path) -> Result<u64, CliError> {
    let cannot = |e: std::io::Error| CliError::new(exit::INVALID, format!("cannot write {}: {e}", target.display()));
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(cannot)?;
    }
    // Written beside the target and renamed into place, so an interrupted download leaves no partial file there.
    let partial = target.with_file_name(format!(
        ".{}.partial",
        target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut file = tokio::fs::File::create(&partial).await.map_err(cannot)?;
    let written = match client.download_artifact(&tracking.experiment_id, &tracking.run_id, path, &mut file).await {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e.into());
        }
    };
    file.sync_all().await.map_err(cannot)?;
    tokio::fs::rename(&partial, target).await.map_err(cannot)?;
    Ok(written)
}
