use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::*;

/// An archive built entry by entry, gzip-compressed into a file of a temporary folder.
struct Built {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Built {
    fn dest(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

fn archive(build: impl FnOnce(&mut tar::Builder<&mut Vec<u8>>)) -> Built {
    let mut raw = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut raw);
        build(&mut builder);
        builder.finish().unwrap();
    }
    gzipped(&raw)
}

fn gzipped(raw: &[u8]) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("code.tar.gz");
    let mut gz = GzEncoder::new(File::create(&path).unwrap(), Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap();
    Built { dir, path }
}

fn file(builder: &mut tar::Builder<&mut Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, data).unwrap();
}

fn symlink(builder: &mut tar::Builder<&mut Vec<u8>>, path: &str, target: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, path, target).unwrap();
}

/// A header with a name written byte for byte, bypassing the builder's own checks, as an attacker would.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header
}

#[test]
fn unpacks_files_folders_and_links_inside() {
    let built = archive(|b| {
        file(b, "train.py", b"print('hi')\n", 0o644);
        file(b, "bin/run.sh", b"#!/bin/sh\n", 0o755);
        symlink(b, "bin/train.py", "../train.py");
        symlink(b, "here", ".");
    });
    unpack(&built.path, &built.dest()).unwrap();
    let dest = built.dest();
    assert_eq!(fs::read_to_string(dest.join("bin/train.py")).unwrap(), "print('hi')\n");
    assert_eq!(fs::metadata(dest.join("bin/run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::metadata(dest.join("train.py")).unwrap().permissions().mode() & 0o777, 0o644);
}

#[test]
fn a_huge_gnu_long_name_is_refused_before_it_is_read() {
    // A 2 GiB long name declared in a header, its data never sent: refused at the header, nothing allocated.
    let mut raw = raw_header(b"././@LongLink", tar::EntryType::GNULongName, 2 << 30).as_bytes().to_vec();
    raw.extend_from_slice(&[b'a'; 4096]);
    let built = gzipped(&raw);
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("long name of 2147483648 bytes"), "{error}");
    assert!(!built.dest().exists(), "nothing is left behind");
}

#[test]
fn long_names_over_path_max_are_refused() {
    let long = "d/".repeat(2100) + "f";
    let built = archive(|b| file(b, &long, b"x", 0o644));
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("long name of 4202 bytes, over the limit of 4097"), "{error}");
    // A long name under the limit is fine.
    let fine = "d/".repeat(1000) + "f";
    let built = archive(|b| file(b, &fine, b"x", 0o644));
    unpack(&built.path, &built.dest()).unwrap();
    assert!(built.dest().join(&fine).is_file());
}

#[test]
fn a_huge_pax_header_is_refused() {
    let mut raw = raw_header(b"PaxHeaders/x", tar::EntryType::XHeader, 1 << 30).as_bytes().to_vec();
    raw.extend_from_slice(&[b'1'; 1024]);
    let built = gzipped(&raw);
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("PAX extension header of 1073741824 bytes"), "{error}");
}

#[test]
fn links_are_resolved_against_the_real_tree() {
    // `d` leads to the root, so `up` climbs four folders above it although its text descends once and climbs four
    // times from three folders deep.
    let built = archive(|b| {
        symlink(b, "a/b/c/d", "../../..");
        symlink(b, "a/b/c/up", "d/../../../..");
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("symlink `a/b/c/up` points outside the folder"), "{error}");
    assert!(!built.dest().exists());

    // The same through a link made later: `x -> y/..` climbs out of `y`, not there yet when `x` is made.
    let built = archive(|b| {
        symlink(b, "x", "y/..");
        symlink(b, "y", ".");
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("climbs with `..` out of `y`"), "{error}");

    // And in the other order.
    let built = archive(|b| {
        symlink(b, "y", ".");
        symlink(b, "x", "y/..");
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("symlink `x` points outside"), "{error}");
}

#[test]
fn link_loops_are_refused_once_the_tree_is_complete() {
    let built = archive(|b| {
        symlink(b, "a", "b");
        symlink(b, "b", "a");
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("more than 40 symlinks"), "{error}");
}

#[test]
fn nothing_is_written_through_a_link() {
    let built = archive(|b| {
        symlink(b, "out", ".");
        file(b, "out/escape", b"x", 0o644);
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("is in the way of a folder"), "{error}");
}

#[test]
fn absolute_paths_parent_steps_and_other_kinds_are_refused() {
    for (name, kind, expected) in [
        (&b"/etc/passwd"[..], tar::EntryType::Regular, "is an absolute path"),
        (&b"a/../../b"[..], tar::EntryType::Regular, "leads out of the folder with `..`"),
        (&b"fifo"[..], tar::EntryType::Fifo, "code archives hold only files, folders and symlinks"),
        (&b"dev"[..], tar::EntryType::Char, "code archives hold only files, folders and symlinks"),
        (&b"hard"[..], tar::EntryType::Link, "code archives hold only files, folders and symlinks"),
    ] {
        let mut raw = raw_header(name, kind, 0).as_bytes().to_vec();
        raw.extend_from_slice(&[0; 1024]);
        let built = gzipped(&raw);
        let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
        assert!(error.contains(expected), "{}: {error}", String::from_utf8_lossy(name));
        assert!(!built.dest().exists());
    }
}

#[test]
fn errors_are_short_and_plain_whatever_the_names() {
    let name = format!("{}\u{1b}[31m/../x", "n".repeat(3000));
    let built = archive(|b| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        // The builder refuses `..`; the long name goes in as GNU long-name data of its own.
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        b.append(&long, &data[..]).unwrap();
        header.as_gnu_mut().unwrap().name[..1].copy_from_slice(b"x");
        header.set_cksum();
        b.append(&header, &b"x"[..]).unwrap();
    });
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("leads out of the folder"), "{error}");
    assert!(error.chars().count() <= MESSAGE_CHARS_MAX, "{} characters", error.chars().count());
    assert!(!error.chars().any(char::is_control), "{error:?}");
}

#[test]
fn the_destination_must_be_new() {
    let built = archive(|b| file(b, "f", b"x", 0o644));
    fs::create_dir(built.dest()).unwrap();
    fs::write(built.dest().join("keep"), "mine").unwrap();
    let error = unpack(&built.path, &built.dest()).unwrap_err().to_string();
    assert!(error.contains("cannot create"), "{error}");
    assert_eq!(fs::read_to_string(built.dest().join("keep")).unwrap(), "mine", "an existing folder is left alone");
}

#[test]
fn links_are_judged_by_their_text_when_packed() {
    assert!(link_stays_inside(Path::new("sub/a"), Path::new("../b")));
    assert!(!link_stays_inside(Path::new("a"), Path::new("../b")));
    assert!(!link_stays_inside(Path::new("a"), Path::new("/etc")));
}
