//! Packing the submitting folder for `ferry run`: a deterministic gzip-compressed tar of every file git would not
//! ignore, named by its SHA-256, and the git state of the folder.
//!
//! Identical folders give identical bytes (sorted paths, fixed times, owners and modes), so the server stores one
//! copy and a second submission uploads nothing. This module does no network I/O; the command uploads what it
//! returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_api::code::{CODE_ARCHIVE_BYTES_MAX, GIT_DIFF_BYTES_MAX};
use ferry_archive::link_stays_inside;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// How many of the biggest files and folders an oversized-folder error names.
const BIGGEST_SHOWN: usize = 5;
/// How many skipped symlinks the warning names.
const SKIPPED_LINKS_SHOWN: usize = 3;

/// A packed folder, ready to upload.
pub struct Packed {
    pub archive: Vec<u8>,
    pub sha256: String,
    /// Symlinks left out because they point outside the folder.
    pub skipped_links: Vec<String>,
}

/// The git state of the folder, when it is a git checkout and `git` is installed.
pub struct GitState {
    pub commit: String,
    /// `git diff HEAD`, cut at the limit; `None` when there are no uncommitted changes to tracked files.
    pub diff: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot pack {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("cannot list the folder to ship: {0}")]
    Walk(String),
    #[error(
        "the folder is too big to ship: more than {limit_mib} MiB compressed. The biggest are:\n{biggest}\n\
         leave them out with a line in .gitignore or .ignore, or run without shipping code: `--workdir PATH` \
         (a folder on the node) or `--no-code`"
    )]
    TooBig { limit_mib: u64, biggest: String },
}

enum Kind {
    Dir,
    File { len: u64, executable: bool },
    Symlink(PathBuf),
}

struct Entry {
    /// Relative to the folder, `/`-separated.
    path: String,
    kind: Kind,
}

/// Packs `root`, refusing past `CODE_ARCHIVE_BYTES_MAX` compressed.
pub fn pack(root: &Path) -> Result<Packed, PackError> {
    pack_with_limit(root, CODE_ARCHIVE_BYTES_MAX)
}

fn pack_with_limit(root: &Path, limit_bytes: u64) -> Result<Packed, PackError> {
    let (entries, skipped_links) = walk(root)?;
    let io_err = |path: &str, source| PackError::Io { path: path.to_string(), source };
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for entry in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match &entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, &entry.path, io::empty()).map_err(|e| io_err(&entry.path, e))?;
            }
            Kind::File { len, executable } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(*len);
                let file = File::open(root.join(&entry.path)).map_err(|e| io_err(&entry.path, e))?;
                // A file that shrank since it was listed would make the entry short; pad it with what is missing
                // rather than fail, and let a file that grew be cut at its listed size.
                let reader = file.take(*len).chain(io::repeat(0)).take(*len);
                tar.append_data(&mut header, &entry.path, reader).map_err(|e| io_err(&entry.path, e))?;
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target).map_err(|e| io_err(&entry.path, e))?;
            }
        }
        if tar.get_ref().get_ref().len() as u64 > limit_bytes {
            return Err(too_big(&entries, limit_bytes));
        }
    }
    let gz = tar.into_inner().map_err(|e| io_err("the archive", e))?;
    let archive = gz.finish().map_err(|e| io_err("the archive", e))?;
    if archive.len() as u64 > limit_bytes {
        return Err(too_big(&entries, limit_bytes));
    }
    let sha256 = hex::encode(Sha256::digest(&archive));
    Ok(Packed { archive, sha256, skipped_links })
}

/// Lists the folder as git would see it (honouring .gitignore, .ignore and .git/info/exclude even outside a git
/// checkout), sorted by path, without following symlinks.
fn walk(root: &Path) -> Result<(Vec<Entry>, Vec<String>), PackError> {
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for item in walker {
        let item = item.map_err(|e| PackError::Walk(e.to_string()))?;
        let Ok(relative) = item.path().strip_prefix(root) else { continue };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let path = relative.to_string_lossy().into_owned();
        let io_err = |source| PackError::Io { path: path.clone(), source };
        let meta = item.path().symlink_metadata().map_err(io_err)?;
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(item.path()).map_err(io_err)?;
            if !link_stays_inside(relative, &target) {
                skipped.push(format!("{path} -> {}", target.display()));
                continue;
            }
            Kind::Symlink(target)
        } else if meta.is_file() {
            Kind::File { len: meta.len(), executable: meta.permissions().mode() & 0o111 != 0 }
        } else {
            // Sockets, pipes and devices mean nothing on another machine.
            continue;
        };
        entries.push(Entry { path, kind });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, skipped))
}

/// The error for an oversized folder, naming the biggest files and top-level folders by size before compression.
fn too_big(entries: &[Entry], limit_bytes: u64) -> PackError {
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    for entry in entries {
        let Kind::File { len, .. } = entry.kind else { continue };
        sizes.insert(entry.path.clone(), len);
        if let Some((top, _)) = entry.path.split_once('/') {
            *sizes.entry(format!("{top}/")).or_default() += len;
        }
    }
    let mut biggest: Vec<(String, u64)> = sizes.into_iter().collect();
    biggest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let lines: Vec<String> =
        biggest.iter().take(BIGGEST_SHOWN).map(|(path, len)| format!("  {:>10}  {path}", human(*len))).collect();
    PackError::TooBig { limit_mib: limit_bytes >> 20, biggest: lines.join("\n") }
}

/// A size for people: `1.2 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The folder's git commit and uncommitted diff; `None` when it is not a git checkout or `git` is missing.
pub fn git_state(root: &Path) -> Option<GitState> {
    let commit = git(root, &["rev-parse", "HEAD"])?;
    let commit = String::from_utf8_lossy(&commit).trim().to_string();
    if commit.is_empty() {
        return None;
    }
    let diff = git(root, &["diff", "--no-color", "--no-ext-diff", "HEAD"]).unwrap_or_default();
    let diff = (!diff.is_empty()).then(|| {
        let mut text = String::from_utf8_lossy(&diff[..diff.len().min(GIT_DIFF_BYTES_MAX)]).into_owned();
        if diff.len() > GIT_DIFF_BYTES_MAX {
            text.push_str("\n[cut by Ferry]\n");
        }
        text
    });
    Some(GitState { commit, diff })
}

fn git(root: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out =
        Command::new("git").arg("-C").arg(root).args(args).stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// The warning for symlinks left out, one line.
pub fn skipped_links_warning(skipped: &[String]) -> String {
    let shown: Vec<&str> = skipped.iter().take(SKIPPED_LINKS_SHOWN).map(String::as_str).collect();
    let more = skipped.len().saturating_sub(SKIPPED_LINKS_SHOWN);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(
        "warning: not shipping {} symlink(s) that point outside the folder: {}{more}",
        skipped.len(),
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(root: &Path, path: &str, content: &[u8]) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = File::create(path).unwrap();
        file.write_all(content).unwrap();
    }

    #[test]
    fn identical_folders_pack_to_identical_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for root in [a.path(), b.path()] {
            write(root, "train.py", b"print(1)\n");
            write(root, "data/x.csv", b"1,2\n");
            write(root, ".gitignore", b"big.bin\n");
            write(root, "big.bin", b"ignored");
        }
        let (pa, pb) = (pack(a.path()).unwrap(), pack(b.path()).unwrap());
        assert_eq!(pa.sha256, pb.sha256);
        assert_eq!(pa.archive, pb.archive);
    }

    #[test]
    fn symlinks_are_judged_by_where_they_lead() {
        let check = |link: &str, target: &str| link_stays_inside(Path::new(link), Path::new(target));
        assert!(check("a", "b"));
        assert!(check("sub/a", "../b"));
        assert!(!check("a", "../b"));
        assert!(!check("sub/a", "../../b"));
        assert!(!check("a", "/etc/passwd"));
    }

    #[test]
    fn an_oversized_folder_names_its_biggest_parts() {
        let root = tempfile::tempdir().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        write(root.path(), "models/weights.bin", &noise);
        write(root.path(), "train.py", b"print(1)\n");
        let error = pack_with_limit(root.path(), 50_000).err().unwrap().to_string();
        assert!(error.contains("models/weights.bin") && error.contains("models/"), "{error}");
        assert!(error.contains(".gitignore") && error.contains("--no-code"), "{error}");
    }
}
