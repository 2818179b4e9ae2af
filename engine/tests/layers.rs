//! The engine's modules depend only downward, and no files import each other in a loop.
//!
//! Every path a source file names (`crate::…`, `super::…`, outside comments) is an arrow from
//! that file to the file that defines it. The top-level modules sit on the layers below; an
//! arrow may point to its own layer or a lower one, never up, and the arrows between files
//! form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The engine's layers, from the bottom.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "hash",
            "trace",
            "telemetry",
            "metrics",
            "envelope",
            "db",
            "doorbell",
            "backoff",
        ],
    ),
    (
        "core",
        &[
            "aggregate",
            "store",
            "outbox",
            "command",
            "fold",
            "registry",
            "replay",
            "testing",
        ],
    ),
    ("messaging", &["transport", "consumer", "relay"]),
    ("sagas and read models", &["saga", "external", "projection"]),
    ("HTTP and operations", &["http", "ops", "console"]),
    ("application", &["app", "cli", "doc_fixtures"]),
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is on no layer: add it to LAYERS"))
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file (`consumer/mod.rs` → `[consumer]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The file defining the longest prefix of `path` that is a module with a file of its own.
fn file_of(
    modules: &BTreeMap<Vec<String>, PathBuf>,
    path: &[String],
) -> Option<(Vec<String>, PathBuf)> {
    (1..=path.len()).rev().find_map(|n| {
        modules
            .get(&path[..n])
            .map(|f| (path[..n].to_vec(), f.clone()))
    })
}

/// The paths a line of code names: `crate::a::b` and `super::a` (with the module it is in).
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (start, prefix) in [("crate::", None), ("super::", Some(()))] {
        let mut rest = code;
        while let Some(i) = rest.find(start) {
            let before = rest[..i].chars().last();
            rest = &rest[i + start.len()..];
            if before.is_some_and(ident) {
                continue;
            }
            let mut path: Vec<String> = match prefix {
                None => Vec::new(),
                Some(()) => here[..here.len().saturating_sub(1)].to_vec(),
            };
            let mut tail = rest;
            loop {
                let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
                if end == 0 {
                    break;
                }
                path.push(tail[..end].to_owned());
                match tail[end..].strip_prefix("::") {
                    Some(next) if next.starts_with(ident) => tail = next,
                    _ => break,
                }
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn modules_depend_only_downward_and_files_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_path(&src, f), f.clone()))
        .collect();
    let mut arrows: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (here, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for path in named_paths(code, here) {
                let Some((target, _)) = file_of(&modules, &path) else {
                    continue;
                };
                // A module's file and its children are one module's own business.
                if target.is_empty() || target == *here || here.starts_with(&target) {
                    continue;
                }
                if let (Some(from), Some(to)) = (here.first(), target.first()) {
                    if layer_of(to) > layer_of(from) {
                        upward.push(format!("{} -> {}", here.join("::"), target.join("::")));
                    }
                }
                arrows.entry(here.clone()).or_default().insert(target);
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run up the layers:\n{}",
        upward.join("\n")
    );

    // Depth-first search for a cycle of files.
    fn visit(
        node: &Vec<String>,
        arrows: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                return Some(stack[start..].to_vec());
            }
            _ => {}
        }
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in arrows.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, arrows, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in modules.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, &arrows, &mut state, &mut stack) {
            let names: Vec<String> = cycle.iter().map(|n| n.join("::")).collect();
            panic!(
                "files that import each other in a loop: {}",
                names.join(" -> ")
            );
        }
    }
}
