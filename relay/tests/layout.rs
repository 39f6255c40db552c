//! The relay's source as rooms: no two top-level modules use each other,
//! directly or in a circle; and no source file of the workspace grows past
//! what a reader takes in at once. Read from the files themselves, so a new
//! `use` that closes a circle fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const MAX_LINES: usize = 800;
/// Longest file of tests: suites are split by topic, and a topic's
/// scenarios read best together.
const MAX_TEST_LINES: usize = 1_000;
/// Files that hold tests only.
const TEST_FILES: &[&str] = &["tests.rs", "sim.rs", "testkit.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for the crate root and
/// the binary).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// Every top-level module the code of `text` names as `crate::<module>`,
/// comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let Some(module) = module_of(&f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(uses(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A circle of modules, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(c) = visit(m, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_reader_finds_uses_outside_comments_only() {
    let text = "use crate::node::Shared;\n// see crate::server\nlet x = crate::frames::f(); /// crate::admin\n";
    let found: Vec<_> = uses(text).into_iter().collect();
    assert_eq!(found, ["frames", "node"]);
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = graph();
    assert!(
        graph.len() > 10,
        "the relay's modules were not found: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules used in a circle: {}", cycle.join(" -> "));
    }
}

/// Whether a file holds tests only: a test target, or a test module of a
/// crate's source.
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    TEST_FILES.contains(&name)
        || path
            .components()
            .any(|c| c.as_os_str() == "tests" || c.as_os_str() == "benches")
}

#[test]
fn no_source_file_in_the_workspace_is_over_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = ["))
        .unwrap()
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .collect();
    assert!(members.contains(&"relay"), "members not read: {members:?}");
    let mut files = Vec::new();
    for m in &members {
        for dir in ["src", "tests", "benches"] {
            let d = root.join(m).join(dir);
            if d.is_dir() {
                rust_files(&d, &mut files);
            }
        }
    }
    assert!(files.len() > 100, "too few files found: {}", files.len());
    let too_long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&root).unwrap();
            let limit = if is_test_file(rel) {
                MAX_TEST_LINES
            } else {
                MAX_LINES
            };
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > limit).then(|| format!("{} ({lines} lines, limit {limit})", rel.display()))
        })
        .collect();
    assert!(too_long.is_empty(), "files over the limit: {too_long:?}");
}

#[test]
fn the_layout_section_names_every_module_in_an_order_that_holds() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let layout: Vec<String> = lib
        .lines()
        .skip_while(|l| !l.starts_with("//! # Layout"))
        .take_while(|l| !l.starts_with("//! # Life"))
        .filter_map(|l| l.strip_prefix("//! - "))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect();
    let graph = graph();
    let listed: BTreeSet<_> = layout.iter().cloned().collect();
    let modules: BTreeSet<_> = graph.keys().cloned().collect();
    assert_eq!(listed, modules, "lib.rs's Layout and the files differ");
    // Each module uses only those listed above it.
    for (i, m) in layout.iter().enumerate() {
        for used in &graph[m] {
            let j = layout.iter().position(|l| l == used);
            assert!(
                j.is_some_and(|j| j < i),
                "{m} uses {used}, which the Layout lists below it (or not at all)"
            );
        }
    }
}
