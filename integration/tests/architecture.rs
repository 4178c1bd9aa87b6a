//! The rooms of `proxy/src` depend on each other one way: no module cycle
//! between top-level modules (`net` below everything, `telemetry` below
//! the protocols, the listener pipeline below the protocols it serves).
//! Read from the `crate::` paths in the sources, so a cycle cannot come
//! back unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `directory`.
fn sources(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules `text` names through `crate::` paths, including
/// the grouped form `crate::{a, b::c}`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let identifier = |rest: &str| -> String {
        rest.chars()
            .take_while(|character| character.is_ascii_alphanumeric() || *character == '_')
            .collect()
    };
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = identifier(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = identifier(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn top_level_modules_of_the_proxy_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&root) {
        let relative = file.strip_prefix(&root).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let edges = graph.entry(module.clone()).or_default();
        for name in referenced(&text) {
            if name != module {
                edges.insert(name);
            }
        }
    }
    assert!(graph.len() > 10, "read the proxy's modules: {graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(start) = path.iter().position(|on_path| on_path == module) {
            panic!("module cycle: {} -> {module}", path[start..].join(" -> "));
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn grouped_and_plain_paths_are_both_read() {
    let names = referenced("use crate::{net, telemetry::metrics::X};\nlet a = crate::tls::accept;");
    assert_eq!(
        names,
        ["net", "telemetry", "tls"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
}
