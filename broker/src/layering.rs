//! A check that the library's modules depend on each other in one direction only, as the
//! crate documentation describes: it reads the sources and fails on any cycle between
//! top-level modules, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file under `src/` belongs to (`None` for binaries).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    if first == "bin" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_owned())
}

/// The modules `code` names as `crate::<module>`, also inside `crate::{a, b::c}` groups;
/// comment lines are skipped (doc links are not dependencies).
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    out.insert(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
    }
    out.remove("");
    out
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("source directory readable");
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A cycle reachable from `node` that no earlier search (`done`) has cleared, if any.
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = cycle_from(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn top_level_modules_depend_on_each_other_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(&src).ok()?))
        .collect();
    assert!(modules.contains("broker") && modules.contains("session"));
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = file.strip_prefix(&src).ok().and_then(module_of) else {
            continue;
        };
        let code = std::fs::read_to_string(file).expect("source readable");
        let uses: Vec<String> = named_modules(&code)
            .into_iter()
            .filter(|m| *m != module && modules.contains(m))
            .collect();
        graph.entry(module).or_default().extend(uses);
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = cycle_from(&graph, module, &mut Vec::new(), &mut done) {
            panic!(
                "modules depend on each other in a circle: {}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn the_check_sees_grouped_paths_and_skips_comments() {
    let code =
        "use crate::{broker::Broker, codec};\n/// [`crate::admin`]\nlet x = crate::session::y;";
    let found: Vec<String> = named_modules(code).into_iter().collect();
    assert_eq!(found, ["broker", "codec", "session"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    let cycle = cycle_from(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(cycle.expect("a cycle"), ["a", "b", "a"]);
}

/// What the protocol rules (`session/protocol/`, the state machine among them) may name: the
/// leaves and the session itself — never the broker, the hooks, plugins (nor the plugin API),
/// the connection task, listeners or the management API. A unit test of the machine needs
/// none of them.
const PROTOCOL_MAY_NAME: &[&str] = &[
    "codec", "config", "delayed", "message", "metrics", "router", "session",
];

#[test]
fn the_protocol_layer_reaches_nothing_but_leaves_and_the_session() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session/protocol");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with("machine/mod.rs")));
    for file in &files {
        let code = std::fs::read_to_string(file).expect("source readable");
        let beyond: Vec<String> = named_modules(&code)
            .into_iter()
            .filter(|m| !PROTOCOL_MAY_NAME.contains(&m.as_str()))
            .collect();
        assert!(
            beyond.is_empty(),
            "{} names {beyond:?}: the protocol layer must get what it needs as inputs",
            file.display()
        );
        let plugins = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| l.contains("plugin_api::"));
        assert!(!plugins, "{} names plugin_api", file.display());
    }
}
