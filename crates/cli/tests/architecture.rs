//! ARCHITECTURE.md's invariants, checked mechanically on the sources:
//!
//! - dependencies point one way (`cli → server → service → store → domain`,
//!   `service → rsa → protocol`, `client → protocol`);
//! - the protocol crate does no I/O and reads no clock or environment;
//! - `unsafe` appears only in the audited FFI module `crates/rsa/src/ffi.rs`,
//!   and every other crate root forbids it;
//! - no production source file grows past 400 lines (the files that still do
//!   are listed here and may only shrink off the list);
//! - the crate graph is an allow-list: every edge between the workspace's
//!   crates is listed, so a new one fails until it is placed deliberately;
//! - no production function grows past 50 lines (a ratchet, like the file
//!   one: what is listed may only leave the list), and no cycle appears
//!   between a crate's modules.
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
        .chain(&["hsm/src/lib.rs"])
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

/// Every edge between the workspace's crates (`[dependencies]`, by crate
/// directory), allowed one by one.
const CRATE_GRAPH: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("entropy", &[]),
    ("protocol", &[]),
    ("rsa", &["protocol"]),
    ("hsm", &["protocol"]),
    ("store", &["domain", "entropy"]),
    ("service", &["domain", "entropy", "hsm", "protocol", "rsa", "store"]),
    ("server", &["entropy", "protocol", "service", "store"]),
    ("client", &["entropy", "protocol"]),
    ("load", &["client", "entropy", "protocol"]),
    ("cli", &["client", "hsm", "load", "protocol", "rsa", "server", "service", "store"]),
];

#[test]
fn the_crate_graph_is_the_allowed_one() {
    let mut crates: Vec<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    let mut listed: Vec<&str> = CRATE_GRAPH.iter().map(|(k, _)| *k).collect();
    listed.sort_unstable();
    assert_eq!(crates, listed, "every crate has its place in CRATE_GRAPH");
    for (krate, allowed) in CRATE_GRAPH {
        let mut edges: Vec<String> =
            dependencies(krate).into_iter().filter_map(|d| d.strip_prefix("blindpass-").map(str::to_owned)).collect();
        edges.sort();
        let mut allowed: Vec<&str> = allowed.to_vec();
        allowed.sort_unstable();
        assert_eq!(edges, allowed, "crates/{krate}'s edges are not the allowed ones (CRATE_GRAPH)");
    }
}

/// A production function's name and length in lines, for every function of
/// `path` with a body (rustfmt's layout: the body closes on a line of its
/// own at the signature's indentation).
fn functions(path: &Path) -> Vec<(String, usize)> {
    let lines = production_lines(path);
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let mut rest = line.trim_start();
        for prefix in ["pub(crate) ", "pub(super) ", "pub ", "const ", "async ", "unsafe ", "extern \"C\" "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(signature) = rest.strip_prefix("fn ") else { continue };
        let name: String = signature.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        // The signature ends at the first `{` or `;` that ends a line.
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || (j == i && t.ends_with('}'))
        }) else {
            continue;
        };
        let opened = lines[open].trim_end();
        if opened.ends_with(';') {
            continue; // a declaration without a body
        }
        if open == i && opened.ends_with('}') {
            found.push((name, 1));
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) {
            found.push((name, end - i + 1));
        }
    }
    found
}

/// Production functions over 50 lines, as `crates/…/file.rs::name` (a
/// ratchet: none may join, and a listed one leaves as soon as it is split).
const LONG_FUNCTIONS: &[&str] = &[
    "crates/cli/src/admin.rs::run_keys",
    "crates/server/src/openapi.rs::operation",
    "crates/server/src/openapi.rs::routes",
    "crates/store/src/conformance/relays.rs::concurrent_spends_each_have_one_winner",
];

#[test]
fn no_production_function_grows_past_50_lines() {
    const LIMIT: usize = 50;
    let root = root();
    let mut long = Vec::new();
    for file in rust_files(&root.join("crates")) {
        let relative = file.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if relative.split('/').nth(2) != Some("src") {
            continue;
        }
        for (name, lines) in functions(&file) {
            if lines > LIMIT {
                long.push((format!("{relative}::{name}"), lines));
            }
        }
    }
    for (function, lines) in &long {
        assert!(LONG_FUNCTIONS.contains(&function.as_str()), "{function} has {lines} lines (limit {LIMIT}): split it");
    }
    for listed in LONG_FUNCTIONS {
        assert!(long.iter().any(|(f, _)| f == listed), "{listed} is short now: take it off LONG_FUNCTIONS");
    }
}

/// The crate-level modules `file`'s production code names with `crate::`.
fn module_uses(file: &Path) -> Vec<String> {
    let text = production_lines(file).iter().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut used = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, …}`: the first segment of each item.
            let (mut depth, mut item_start, mut end) = (0usize, 0usize, group.len());
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        end = i;
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        used.push(ident(group[item_start..i].trim()));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            used.push(ident(group[item_start..end].trim()));
        } else {
            used.push(ident(rest));
        }
    }
    used.retain(|u| !u.is_empty());
    used
}

/// Each crate's module cycles, as `crate: a, b, …` (the modules of one
/// strongly connected group, sorted), from `crate::` paths between its
/// top-level modules.
fn module_cycles() -> Vec<String> {
    let mut cycles = Vec::new();
    for (krate, _) in CRATE_GRAPH {
        let src = root().join("crates").join(krate).join("src");
        let module_of = |file: &Path| -> Option<String> {
            let relative = file.strip_prefix(&src).ok()?;
            let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
            let name = first.trim_end_matches(".rs").to_owned();
            (name != "lib" && name != "main").then_some(name)
        };
        let files = rust_files(&src);
        let mut modules: Vec<String> = files.iter().filter_map(|f| module_of(f)).collect();
        modules.sort();
        modules.dedup();
        let index = |m: &str| modules.iter().position(|x| x == m);
        let n = modules.len();
        let mut reach = vec![vec![false; n]; n];
        for file in &files {
            let Some(from) = module_of(file).and_then(|m| index(&m)) else { continue };
            for used in module_uses(file) {
                if let Some(to) = index(&used).filter(|&to| to != from) {
                    reach[from][to] = true;
                }
            }
        }
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    if reach[i][k] && reach[k][j] {
                        reach[i][j] = true;
                    }
                }
            }
        }
        let mut seen = vec![false; n];
        for i in 0..n {
            if seen[i] {
                continue;
            }
            let group: Vec<usize> = (0..n).filter(|&j| j == i || (reach[i][j] && reach[j][i])).collect();
            for &j in &group {
                seen[j] = true;
            }
            if group.len() > 1 {
                let names: Vec<&str> = group.iter().map(|&j| modules[j].as_str()).collect();
                cycles.push(format!("{krate}: {}", names.join(", ")));
            }
        }
    }
    cycles
}

#[test]
fn no_module_cycle_appears() {
    let cycles = module_cycles();
    assert!(cycles.is_empty(), "module cycles (give what both sides use a module of its own): {cycles:?}");
}
