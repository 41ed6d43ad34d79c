//! ARCHITECTURE.md's invariants, checked mechanically on the sources:
//!
//! - dependencies point one way (`cli → server → service → store → domain`,
//!   `service → rsa → protocol`, `client → protocol`);
//! - the protocol crate does no I/O and reads no clock or environment;
//! - `unsafe` appears only in the audited FFI module `crates/rsa/src/ffi.rs`,
//!   and every other crate root forbids it;
//! - no production source file grows past 400 lines (the files that still do
//!   are listed here and may only shrink off the list).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The `[dependencies]` names of a workspace crate (not dev- or build-).
fn dependencies(krate: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

/// A source file without its `#[cfg(test)] mod … { … }` block.
fn production_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let is_test_mod =
            lines[i].trim() == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|l| l.trim().starts_with("mod "));
        if is_test_mod && lines[i + 1].trim_end().ends_with('{') {
            let indent = &lines[i][..lines[i].len() - lines[i].trim_start().len()];
            let close = format!("{indent}}}");
            i += 2;
            while i < lines.len() && lines[i].trim_end() != close {
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(lines[i].to_owned());
        i += 1;
    }
    out
}

#[test]
fn dependencies_point_one_way() {
    let layers: &[(&str, &[&str])] = &[
        (
            "domain",
            &[
                "blindpass-protocol",
                "blindpass-rsa",
                "blindpass-store",
                "blindpass-service",
                "blindpass-server",
                "tokio",
            ],
        ),
        (
            "protocol",
            &[
                "blindpass-rsa",
                "blindpass-hsm",
                "blindpass-store",
                "blindpass-service",
                "blindpass-server",
                "blindpass-client",
            ],
        ),
        ("entropy", &["blindpass-protocol", "blindpass-rsa", "blindpass-store", "blindpass-service", "tokio"]),
        ("rsa", &["blindpass-store", "blindpass-service", "blindpass-server", "blindpass-client"]),
        // The PKCS#11 signer knows keys and tokens, not storage or HTTP.
        (
            "hsm",
            &["blindpass-rsa", "blindpass-store", "blindpass-service", "blindpass-server", "blindpass-client", "tokio"],
        ),
        ("store", &["blindpass-service", "blindpass-server", "blindpass-client", "axum", "hyper"]),
        ("service", &["blindpass-server", "blindpass-client", "axum", "hyper", "tower", "tower-http"]),
        ("server", &["blindpass-client", "blindpass-load"]),
        ("load", &["blindpass-store", "blindpass-service", "blindpass-server", "blindpass-rsa", "blindpass-hsm"]),
        ("client", &["blindpass-store", "blindpass-service", "blindpass-server", "blindpass-rsa", "blindpass-hsm"]),
    ];
    for (krate, forbidden) in layers {
        let deps = dependencies(krate);
        for name in *forbidden {
            assert!(!deps.iter().any(|d| d == name), "crates/{krate} must not depend on {name}");
        }
    }
}

#[test]
fn the_protocol_crate_does_no_io_and_reads_no_clock() {
    let io_crates = ["tokio", "reqwest", "rusqlite", "tokio-postgres", "redis", "axum", "hyper", "rand"];
    for name in dependencies("protocol") {
        assert!(!io_crates.contains(&name.as_str()), "crates/protocol depends on {name}");
    }
    let forbidden = ["std::fs", "std::net", "std::env", "std::process", "SystemTime", "Instant::now", "rand::rng"];
    for file in rust_files(&root().join("crates/protocol/src")) {
        for (n, line) in production_lines(&file).iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(!code.contains(word), "{}:{}: {word} in the protocol crate", file.display(), n + 1);
            }
        }
    }
}

#[test]
fn unsafe_lives_only_in_the_ffi_module() {
    let ffi = root().join("crates/rsa/src/ffi.rs");
    for file in rust_files(&root().join("crates")) {
        if file == ffi || file.components().any(|c| c.as_os_str() == "target") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // Spelled apart so that this file does not match itself.
            let patterns = [concat!("unsafe", " {"), concat!("unsafe", " fn"), concat!("unsafe", " impl")];
            for pattern in patterns.iter().chain(&[concat!("allow(", "unsafe_code)")]) {
                assert!(!code.contains(pattern), "{}:{}: `{pattern}` outside the FFI module", file.display(), n + 1);
            }
        }
    }
    for root_file in ["protocol/src/lib.rs", "store/src/lib.rs", "service/src/lib.rs", "server/src/lib.rs"]
        .iter()
        .chain(&["client/src/lib.rs", "cli/src/main.rs", "entropy/src/lib.rs", "load/src/lib.rs", "domain/src/lib.rs"])
    {
        let text = std::fs::read_to_string(root().join("crates").join(root_file)).unwrap();
        assert!(text.contains("#![forbid(unsafe_code)]"), "crates/{root_file} must forbid unsafe code");
    }
}

/// Files still over the limit (a ratchet): no other file may cross it, and a
/// listed file leaves the list as soon as it is under it.
const OVERSIZE: &[&str] = &[];

#[test]
fn no_production_file_grows_past_400_lines() {
    const LIMIT: usize = 400;
    let root = root();
    for file in rust_files(&root.join("crates")) {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        let in_src = relative.split('/').nth(2) == Some("src");
        if !in_src {
            continue;
        }
        let lines = production_lines(&file).len();
        if OVERSIZE.contains(&relative.as_str()) {
            assert!(lines > LIMIT, "{relative} is {lines} lines now: take it off OVERSIZE");
        } else {
            assert!(lines <= LIMIT, "{relative} has {lines} production lines (limit {LIMIT}): split it");
        }
    }
}
