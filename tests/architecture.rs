//! The architecture holds: no import cycle between the files of `src/`,
//! the folders import only from the layers below them, and no file grows
//! past what a reader takes in at once. ARCHITECTURE.md draws the layers.
//!
//! The import graph is read from the sources: every `crate::` and `super::`
//! path of a file (grouped `use` trees included; comments and unit tests
//! left out), resolved to the file of the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders of `src/`, lowest first. A folder may import from the
/// layers below it and from itself, never from its own layer or above.
const LAYERS: &[&[&str]] = &[
    &["model"],
    &["ops"],
    &["keys"],
    &["privacy", "storage", "audit"],
    &["registry"],
    &["ingest", "lifecycle"],
    &["access"],
    &["tools"],
    &["cli"],
];

/// Longest file allowed, in lines.
const MAX_LINES: usize = 600;

/// The module path of every source file (`access::api::denial`), with the
/// file's text.
fn modules() -> BTreeMap<String, (PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found.insert(parts.join("::"), (path, text));
        }
    }
    found
}

/// The text without comments and without the unit tests at its end.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/").map_or(text.len() - i, |end| end + 2);
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    let tests = ["#[cfg(test)]\nmod tests", "#[cfg(test)]\npub(crate) mod tests"]
        .iter()
        .filter_map(|marker| out.find(marker))
        .min();
    if let Some(at) = tests {
        out.truncate(at);
    }
    out
}

/// The identifier at the start of `text`, if any.
fn identifier(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The paths of a `{…}` use tree starting after its opening brace, each
/// prefixed with `prefix`; returns them and the length consumed.
fn group(text: &str, prefix: &[String]) -> (Vec<Vec<String>>, usize) {
    let mut paths = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let skipped = rest.len() - rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',').len();
        i += skipped;
        if text[i..].starts_with('}') {
            return (paths, i + 1);
        }
        let (mut found, used) = path(&text[i..], prefix.to_vec());
        paths.append(&mut found);
        i += used.max(1);
    }
    (paths, i)
}

/// The paths of one use tree or path expression, prefixed with `prefix`.
fn path(text: &str, mut prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut i = 0;
    loop {
        if text[i..].starts_with('{') {
            let (paths, used) = group(&text[i + 1..], &prefix);
            return (paths, i + 1 + used);
        }
        let Some(name) = identifier(&text[i..]) else { return (vec![prefix], i) };
        i += name.len();
        if name != "self" {
            prefix.push(name.to_string());
        }
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Every module path a file's code names through `crate::` or `super::`.
fn named_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let parent: Vec<String> = module.split("::").map(str::to_string).collect::<Vec<_>>();
    let parent = parent[..parent.len().saturating_sub(1)].to_vec();
    let mut paths = Vec::new();
    for (marker, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(at) = code[from..].find(marker) {
            let start = from + at;
            let preceded = code[..start].chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            from = start + marker.len();
            if !preceded {
                paths.extend(path(&code[from..], base.clone()).0);
            }
        }
    }
    paths
}

/// The items a facade re-exports from its own files (`pub use record::Cdr;`
/// in `model`): (facade, item) to the file that defines it, so that a path
/// through the facade counts as an import of that file.
fn reexports(modules: &BTreeMap<String, (PathBuf, String)>) -> BTreeMap<(String, String), String> {
    let mut found = BTreeMap::new();
    for (module, (_, text)) in modules {
        let code = code(text);
        let mut from = 0;
        while let Some(at) = code[from..].find("pub use ") {
            from += at + "pub use ".len();
            for named in path(&code[from..], Vec::new()).0 {
                let child = format!("{module}::{}", named[0]);
                if named.len() > 1 && modules.contains_key(&child) {
                    found.insert((module.clone(), named[named.len() - 1].clone()), child);
                }
            }
        }
    }
    found
}

/// The file-level import graph.
fn graph(modules: &BTreeMap<String, (PathBuf, String)>) -> BTreeMap<String, BTreeSet<String>> {
    let reexports = reexports(modules);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, (_, text)) in modules {
        let targets = edges.entry(module.clone()).or_default();
        for named in named_paths(module, &code(text)) {
            let Some(n) = (1..=named.len()).rev().find(|n| modules.contains_key(&named[..*n].join("::"))) else {
                continue;
            };
            let mut target = named[..n].join("::");
            if let Some(item) = named.get(n)
                && let Some(definer) = reexports.get(&(target.clone(), item.clone()))
            {
                target = definer.clone();
            }
            if target != *module && target != "lib" && target != "main" {
                targets.insert(target);
            }
        }
    }
    edges
}

/// The strongly connected components with more than one file (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn layer_of(module: &str) -> Option<usize> {
    let folder = module.split("::").next()?;
    LAYERS.iter().position(|layer| layer.contains(&folder))
}

#[test]
fn no_file_imports_another_that_imports_it_back() {
    let modules = modules();
    assert!(modules.len() > 50, "the sources were found");
    let edges = graph(&modules);
    assert!(edges["access::api::handlers"].contains("access::api::convert"), "grouped and super:: paths are read");
    let cycles = cycles(&edges);
    assert!(cycles.is_empty(), "import cycles between files: {cycles:?}");
}

#[test]
fn folders_import_only_from_the_layers_below() {
    let modules = modules();
    let mut violations = Vec::new();
    for (module, targets) in graph(&modules) {
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let from = layer_of(&module).unwrap_or_else(|| panic!("{module} is in no layer of LAYERS"));
        for target in targets {
            let same_folder = module.split("::").next() == target.split("::").next();
            let to = layer_of(&target).unwrap_or(usize::MAX);
            if !same_folder && to >= from {
                violations.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layers: {violations:#?}");
}

#[test]
fn no_source_file_is_longer_than_a_reader_takes_in_at_once() {
    let long: Vec<String> = modules()
        .into_values()
        .filter_map(|(path, text)| {
            let lines = text.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these along their seams: {long:?}");
}

#[test]
fn the_parser_sees_what_it_must() {
    let code = code("use crate::a::{b::{self, c}, d};\n// crate::commented\nfn f() { super::e::g(); }\n");
    let mut paths = named_paths("x::y", &code);
    paths.sort();
    let expect: Vec<Vec<String>> = [vec!["a", "b"], vec!["a", "b", "c"], vec!["a", "d"], vec!["x", "e", "g"]]
        .iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(paths, expect);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        edges.entry(from.to_string()).or_default().insert(to.to_string());
    }
    assert_eq!(cycles(&edges), vec![vec!["c".to_string(), "b".to_string(), "a".to_string()]], "a planted cycle");
}
