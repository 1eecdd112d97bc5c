//! The proxy's modules form layers that only point down, with no cycles: read from the sources
//! (every `crate::` path, in `use` lines and inline), so a new import that points up, or closes a
//! cycle between files, fails here with the files and lines that do it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["headers", "telemetry"],
    &["http", "identity"],
    &["endpoint"],
    &["balance"],
    &["outbound", "inbound", "gateway", "admin"],
    &["config"],
    &["proxy", "callpath"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A source file's module path (`balance::pool`), from its path under `src/`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).filter(|p| *p != "mod").collect();
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` a line names, as module paths; `use crate::a::{b, c}` names `a::b` and
/// `a::c`, and a group that continues on the next lines names at least `a`.
fn crate_paths(line: &str) -> Vec<String> {
    let is_path = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let len = after.find(|c: char| !is_path(c)).unwrap_or(after.len());
        let path = after[..len].trim_end_matches(':');
        let tail = &after[len..];
        match tail.strip_prefix('{') {
            Some(group) if group.contains('}') => {
                let group = group.split('}').next().unwrap_or("");
                for member in group.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let member: String = member.chars().take_while(|c| is_path(*c)).collect();
                    let member = member.trim_end_matches(':');
                    found.push(match (path.is_empty(), member == "self") {
                        (_, true) => path.to_string(),
                        (true, false) => member.to_string(),
                        (false, false) => format!("{path}::{member}"),
                    });
                }
            }
            _ => found.push(path.to_string()),
        }
        rest = tail;
    }
    found.retain(|p| !p.is_empty());
    found
}

/// Paths relative to the file's module `from`: `super::x` (the parent's `x`, or the crate root's for
/// a top-level module), `super::super::x`, and `self::x`, rewritten as paths from the crate root.
fn relative_paths(line: &str, from: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    loop {
        let next = ["super::", "self::"]
            .iter()
            .filter_map(|p| rest.find(p))
            .filter(|&at| !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
            .min();
        let Some(at) = next else { break };
        let mut tail = &rest[at..];
        let mut up = 0;
        if let Some(t) = tail.strip_prefix("self::") {
            tail = t;
        }
        while let Some(t) = tail.strip_prefix("super::") {
            up += 1;
            tail = t;
        }
        let mut base: Vec<&str> = from.split("::").collect();
        for _ in 0..up {
            base.pop();
        }
        let base = base.join("::");
        // Just this path (and its group), rewritten from the crate root.
        let end = match tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            Some(i) if tail[i..].starts_with('{') => tail[i..].find('}').map_or(tail.len(), |j| i + j + 1),
            Some(i) => i,
            None => tail.len(),
        };
        for path in crate_paths(&format!("crate::{}", &tail[..end])) {
            found.push(if base.is_empty() { path } else { format!("{base}::{path}") });
        }
        rest = &tail[end..];
    }
    found
}

/// The longest known module that `path` starts with (`balance::pool::Endpoint` -> `balance::pool`).
fn module_named(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|candidate| modules.contains(candidate))
}

struct Graph {
    /// module -> module it uses -> where (file:line).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for path in crate_paths(code).into_iter().chain(relative_paths(code, &from)) {
                let Some(to) = module_named(&path, &modules) else { continue };
                if to != from {
                    let at = format!("{}:{}", file.strip_prefix(&src).unwrap_or(file).display(), n + 1);
                    edges.entry(from.clone()).or_default().entry(to).or_insert(at);
                }
            }
        }
    }
    Graph { edges }
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn every_module_belongs_to_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let unplaced: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| !matches!(m.as_str(), "lib" | "main"))
        .filter(|m| layer_of(top(m)).is_none())
        .collect();
    assert!(unplaced.is_empty(), "modules in no layer (add them to LAYERS): {unplaced:?}");
}

#[test]
fn imports_only_point_down() {
    let graph = graph();
    let mut upward = Vec::new();
    for (from, uses) in &graph.edges {
        for (to, at) in uses {
            if let (Some(a), Some(b)) = (layer_of(top(from)), layer_of(top(to)))
                && b > a
            {
                upward.push(format!("{at}: {from} (layer {a}) uses {to} (layer {b})"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that point up:\n{}", upward.join("\n"));
}

#[test]
fn no_cycle_between_modules() {
    let graph = graph();
    // Depth-first search for a back edge, at file granularity and between top-level modules.
    for granularity in ["file", "module"] {
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (from, uses) in &graph.edges {
            for (to, at) in uses {
                let (a, b) = match granularity {
                    "file" => (from.clone(), to.clone()),
                    _ => (top(from).to_string(), top(to).to_string()),
                };
                // A module using its own submodules (a `mod.rs` re-exporting them, as a facade) is
                // composition, not a cycle: only edges between siblings and across folders count.
                if a != b && !b.starts_with(&format!("{a}::")) {
                    edges.entry(a).or_default().entry(b).or_insert_with(|| at.clone());
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            panic!("a cycle between {granularity}s: {}", cycle.join(" -> "));
        }
    }
}

fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for (next, at) in edges.get(node).into_iter().flatten() {
            if let Some(mut cycle) = visit(next, edges, stack, done) {
                if let Some(last) = cycle.last_mut() {
                    last.push_str(&format!(" (via {at})"));
                }
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_check_sees_imports() {
    assert_eq!(crate_paths("use crate::balance::pool::Endpoint;"), ["balance::pool::Endpoint"]);
    assert_eq!(
        crate_paths("use crate::telemetry::{Direction, Telemetry};"),
        ["telemetry::Direction", "telemetry::Telemetry"]
    );
    assert_eq!(crate_paths("let x = crate::tls::spiffe_identity(c);"), ["tls::spiffe_identity"]);
    assert_eq!(crate_paths("use crate::balance::{self, pool::Pool};"), ["balance", "balance::pool::Pool"]);
    assert_eq!(crate_paths("use crate::telemetry::{"), ["telemetry"], "a group continued below");
    assert_eq!(relative_paths("use super::body::ResponseBody;", "http::errors"), ["http::body::ResponseBody"]);
    assert_eq!(
        relative_paths("use super::{Telemetry, labels::Limit};", "telemetry::events"),
        ["telemetry::Telemetry", "telemetry::labels::Limit"]
    );
    assert_eq!(
        relative_paths("use super::super::BalancerSettings;", "balance::discovery::tests"),
        ["balance::BalancerSettings"]
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeMap::from([("b".to_string(), "a.rs:1".to_string())]));
    edges.insert("b".to_string(), BTreeMap::from([("a".to_string(), "b.rs:1".to_string())]));
    assert!(find_cycle(&edges).is_some(), "a two-module cycle is found");
    edges.remove("b");
    assert!(find_cycle(&edges).is_none());
}
