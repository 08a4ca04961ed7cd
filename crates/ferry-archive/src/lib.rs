//! Ferry's code archives: a gzip-compressed tar of the folder a job was submitted from, and the one checked unpacker
//! that agents (into a run's folder) and the server (into an engine pool's code folder) both use.
//!
//! An archive is untrusted input: any user who may submit jobs chooses its bytes, and the server checked only its
//! digest. So it is read twice. The first pass looks at every raw header (GNU long names and links, PAX extensions,
//! file entries) and refuses any whose declared size is over its limit before a byte of it is read, so nothing is
//! allocated or written on the word of a header. The second pass unpacks with every entry checked again: no absolute
//! paths, no `..`, nothing but files, folders and symlinks, nothing written through a symlink or over an existing
//! file, names under `NAME_BYTES_MAX`, a total size and entry count under the limits, and every symlink resolved
//! against the tree as it really is on disk (following the links already there), at its creation and again once the
//! tree is complete. The first bad entry stops the unpacking and removes what was written; nothing is ever written
//! outside the destination, and the error is short whatever the archive holds.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use ferry_api::text::bounded;
use flate2::read::GzDecoder;

/// The most bytes an archive may unpack to, so a small archive cannot fill a disk.
pub const UNPACKED_BYTES_MAX: u64 = 1 << 30;
/// The most entries (files, folders and symlinks) an archive may unpack to.
pub const ENTRIES_MAX: u64 = 200_000;
/// The longest entry name or symlink target, in bytes (Linux's `PATH_MAX`).
pub const NAME_BYTES_MAX: u64 = 4096;
/// The largest PAX extension header an entry may carry.
pub const PAX_BYTES_MAX: u64 = 64 << 10;
/// How many symlinks one link may pass through before it counts as a loop (as Linux's `ELOOP`).
pub const LINK_HOPS_MAX: u32 = 40;
/// The longest error message, in characters: a failure report stays small whatever caused it.
pub const MESSAGE_CHARS_MAX: usize = 1000;
/// The longest entry name an error message shows, in characters.
const NAME_SHOWN_CHARS: usize = 160;

/// Why an archive was not unpacked. Its text is at most `MESSAGE_CHARS_MAX` characters and holds no control
/// characters, so it can go into a log line or a failure report as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnpackError(String);

impl UnpackError {
    fn new(message: impl Into<String>) -> Self {
        UnpackError(bounded(&message.into(), MESSAGE_CHARS_MAX))
    }
}

/// Unpacks `archive` into `dest`, which must not exist yet; on failure nothing is left at `dest`. Blocking: run it
/// off async threads.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), UnpackError> {
    scan(archive)?;
    fs::create_dir(dest).map_err(|e| UnpackError::new(format!("cannot create {}: {e}", shown(dest))))?;
    let result = unpack_checked(archive, dest).and_then(|links| {
        // Later entries may have changed what an earlier link resolves to: check each against the finished tree.
        links.iter().try_for_each(|(link, target)| check_link(dest, link, target))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(dest);
        return Err(UnpackError::new(e));
    }
    Ok(())
}

/// The first pass: every raw header, extension headers included, against the limits, reading no entry's data.
fn scan(archive: &Path) -> Result<(), UnpackError> {
    let file = File::open(archive).map_err(|e| UnpackError::new(format!("cannot open {}: {e}", shown(archive))))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let entries = tar.entries().map_err(unreadable)?.raw(true);
    let mut files = 0u64;
    for (headers, entry) in entries.enumerate() {
        // Each file may come with a long name, a long link name and a PAX header of its own.
        if headers as u64 >= ENTRIES_MAX.saturating_mul(4) {
            return Err(UnpackError::new(format!("the archive holds more than {ENTRIES_MAX} entries")));
        }
        let entry = entry.map_err(unreadable)?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = header.entry_size().map_err(unreadable)?;
        let limit = if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            // A GNU long name is NUL-terminated.
            Some((NAME_BYTES_MAX + 1, "long name"))
        } else if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            Some((PAX_BYTES_MAX, "PAX extension header"))
        } else {
            files += 1;
            if files > ENTRIES_MAX {
                return Err(UnpackError::new(format!("the archive holds more than {ENTRIES_MAX} entries")));
            }
            None
        };
        if let Some((limit, what)) = limit {
            if size > limit {
                return Err(UnpackError::new(format!(
                    "the archive has a {what} of {size} bytes, over the limit of {limit}; code archives come from \
                     `ferry run`, which writes none this large"
                )));
            }
        }
    }
    Ok(())
}

fn unreadable(e: io::Error) -> UnpackError {
    UnpackError::new(format!("the archive cannot be read: {e}"))
}

/// The second pass: writes every entry under `dest` and returns the symlinks it made (path, target).
fn unpack_checked(archive: &Path, dest: &Path) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open {}: {e}", shown(archive)))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let mut unpacked_bytes = 0u64;
    let mut links = Vec::new();
    let entries = tar.entries().map_err(|e| format!("the archive cannot be read: {e}"))?;
    for (count, entry) in entries.enumerate() {
        if count as u64 >= ENTRIES_MAX {
            return Err(format!("the archive holds more than {ENTRIES_MAX} entries"));
        }
        let mut entry = entry.map_err(|e| format!("the archive cannot be read: {e}"))?;
        let raw = entry.path().map_err(|e| format!("an entry's name cannot be read: {e}"))?.into_owned();
        if raw.as_os_str().len() as u64 > NAME_BYTES_MAX {
            return Err(format!("entry `{}` has a name longer than {NAME_BYTES_MAX} bytes", shown(&raw)));
        }
        let relative = checked_path(&raw)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&relative);
        match entry.header().entry_type() {
            tar::EntryType::Directory => make_dirs(dest, &relative)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The entry's size as the archive means it (a PAX `size` overrides the header's).
                let size = entry.size();
                unpacked_bytes = unpacked_bytes.saturating_add(size);
                if unpacked_bytes > UNPACKED_BYTES_MAX {
                    return Err(format!(
                        "the archive unpacks to more than the limit of {} MiB",
                        UNPACKED_BYTES_MAX >> 20
                    ));
                }
                make_dirs(dest, relative.parent().unwrap_or(Path::new("")))?;
                let executable = entry.header().mode().map(|m| m & 0o111 != 0).unwrap_or(false);
                write_file(&target, &mut entry, size, executable)
                    .map_err(|e| format!("cannot write {}: {e}", shown(&target)))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| format!("entry `{}`: {e}", shown(&raw)))?
                    .ok_or_else(|| format!("symlink `{}` has no target", shown(&raw)))?
                    .into_owned();
                if link.as_os_str().len() as u64 > NAME_BYTES_MAX {
                    return Err(format!("symlink `{}` has a target longer than {NAME_BYTES_MAX} bytes", shown(&raw)));
                }
                make_dirs(dest, relative.parent().unwrap_or(Path::new("")))?;
                check_link(dest, &relative, &link)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| format!("cannot make the symlink {}: {e}", shown(&target)))?;
                links.push((relative, link));
            }
            other => {
                return Err(format!(
                    "entry `{}` is a {other:?}; code archives hold only files, folders and symlinks",
                    shown(&raw)
                ))
            }
        }
    }
    Ok(links)
}

/// The entry's path relative to the destination, refusing absolute paths and `..`.
fn checked_path(raw: &Path) -> Result<PathBuf, String> {
    let mut relative = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry `{}` leads out of the folder with `..`", shown(raw))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry `{}` is an absolute path", shown(raw)))
            }
        }
    }
    Ok(relative)
}

/// Makes every folder of `relative` under `dest`, refusing to pass through anything that is not a real folder (a
/// symlink made by an earlier entry, in particular), so nothing is ever written outside `dest`.
fn make_dirs(dest: &Path, relative: &Path) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for part in relative.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("`{}` is in the way of a folder of the archive", shown(&at))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| format!("cannot create {}: {e}", shown(&at)))?
            }
            Err(e) => return Err(format!("cannot look at {}: {e}", shown(&at))),
        }
    }
    Ok(())
}

/// Writes one file, never through a symlink and never over an existing file.
fn write_file(target: &Path, entry: &mut impl Read, size: u64, executable: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(target)?;
    io::copy(&mut entry.take(size), &mut file)?;
    Ok(())
}

/// One step of a path being resolved.
enum Step {
    Root,
    Up,
    Down(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(part) => Some(Step::Down(part.to_os_string())),
        Component::CurDir => None,
    })
}

/// Checks that a symlink at `link` (relative to `root`) pointing at `target` resolves inside `root`, following the
/// symlinks that are really in the tree, as the kernel would. Judging the target by its text alone is not enough:
/// `a/b/c/d -> ../../..` leads to the root, so `a/b/c/up -> d/../../../..` leads four folders above it although
/// its text climbs only as far as it descended. A step through something that is not there (or not a folder) would
/// not resolve today, but could once the job makes it, so `..` after one is refused.
pub fn check_link(root: &Path, link: &Path, target: &Path) -> Result<(), String> {
    let outside = || format!("symlink `{}` points outside the folder (to `{}`)", shown(link), shown(target));
    let mut at: Vec<OsString> = steps(link.parent().unwrap_or(Path::new("")))
        .filter_map(|s| match s {
            Step::Down(part) => Some(part),
            _ => None,
        })
        .collect();
    let mut pending: VecDeque<Step> = steps(target).collect();
    let mut hops = 0u32;
    let mut unresolved: Option<PathBuf> = None;
    while let Some(step) = pending.pop_front() {
        match step {
            Step::Root => return Err(outside()),
            Step::Up => {
                if let Some(missing) = &unresolved {
                    return Err(format!(
                        "symlink `{}` (to `{}`) climbs with `..` out of `{}`, which is not a folder of the archive, \
                         so where it leads cannot be checked",
                        shown(link),
                        shown(target),
                        shown(missing)
                    ));
                }
                if at.pop().is_none() {
                    return Err(outside());
                }
            }
            Step::Down(part) => {
                if unresolved.is_some() {
                    continue;
                }
                at.push(part);
                let path: PathBuf = at.iter().fold(root.to_path_buf(), |p, part| p.join(part));
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        hops += 1;
                        if hops > LINK_HOPS_MAX {
                            return Err(format!(
                                "symlink `{}` passes through more than {LINK_HOPS_MAX} symlinks (a loop?)",
                                shown(link)
                            ));
                        }
                        let next = fs::read_link(&path).map_err(|e| format!("cannot read {}: {e}", shown(&path)))?;
                        at.pop();
                        for step in steps(&next).rev() {
                            pending.push_front(step);
                        }
                    }
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => unresolved = Some(at.iter().collect()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => unresolved = Some(at.iter().collect()),
                    Err(e) => return Err(format!("cannot look at {}: {e}", shown(&path))),
                }
            }
        }
    }
    Ok(())
}

/// Whether a symlink at `link` (a path relative to the archive's root) pointing at `target` stays inside the root,
/// judged by its text alone; absolute targets never do. `ferry run` packs only such links; the unpacker also
/// resolves them against the real tree (`check_link`).
pub fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth: i64 = link.parent().map(|p| p.components().count() as i64).unwrap_or(0);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// A path as an error message shows it: control characters escaped, cut to a bounded length.
fn shown(path: &Path) -> String {
    bounded(&path.to_string_lossy(), NAME_SHOWN_CHARS)
}

#[cfg(test)]
mod tests;
