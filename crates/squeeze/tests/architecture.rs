//! The house rules, enforced: the library's modules stand on declared layers ([`LAYERS`],
//! the one place the order is written) and a module imports only from its own layer or
//! below; modules of one layer never import each other in a circle; and the files of the
//! library and the CLI form at most [`MAX_FILE_CIRCLES`] import circles, none spanning
//! more than one folder. Imports are read from the sources (`crate::…` paths anywhere in
//! the code, `super::…` paths, grouped `use` lists included), not from the compiler.
//!
//! `cargo test --release -p squeeze --test architecture -- --nocapture` prints the counts
//! (`results/house.json` records them); `SQUEEZE_ARCH_ROOT=DIR` reads another checkout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, from the ground up: each top-level module (a folder or a file
/// under `src/`) on exactly one. A module may import its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("errors", &["error"]),
    (
        "ground: plain data and shared maths",
        &["isa", "tensor", "math", "params", "data", "limits", "onnx"],
    ),
    ("kernels", &["ops"]),
    ("layer kinds", &["kinds"]),
    ("graph", &["graph"]),
    ("model and checkpoints", &["model", "checkpoint"]),
    ("interpreter and run plan", &["interp"]),
    ("analysis and model builders", &["coupling", "zoo", "text"]),
    ("trainer", &["train"]),
    ("methods", &["prune", "quant", "distill", "lowrank"]),
    ("evaluation and formats", &["eval", "formats"]),
    ("passes and recipes", &["passes"]),
    ("search over passes", &["search"]),
    ("crate root (re-exports)", &["lib"]),
];

/// Upward imports that stay, each with its reason: (importing file, imported module, why).
const ALLOWED_UP: &[(&str, &str, &str)] = &[];

/// File-level import circles tolerated (each inside one folder).
const MAX_FILE_CIRCLES: usize = 2;

fn root() -> PathBuf {
    match std::env::var_os("SQUEEZE_ARCH_ROOT") {
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// A source file: its crate (`squeeze` or `cli`) and path under that crate's `src/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct File {
    krate: &'static str,
    rel: PathBuf,
}

impl File {
    /// The module path of the file (`kinds/mod.rs` → `["kinds"]`, `lib.rs` → `[]`).
    fn module(&self) -> Vec<String> {
        let mut parts: Vec<String> = self
            .rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        parts
    }
    /// The top-level module the file belongs to (`lib` for the crate root).
    fn top(&self) -> String {
        self.module()
            .first()
            .cloned()
            .unwrap_or_else(|| "lib".into())
    }
    fn folder(&self) -> String {
        format!(
            "{}/{}",
            self.krate,
            self.rel.parent().unwrap_or(Path::new("")).display()
        )
    }
    fn label(&self) -> String {
        format!("{}/{}", self.krate, self.rel.display())
    }
}

fn sources(dir: &Path, krate: &'static str) -> Vec<(File, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((File { krate, rel }, strip_comments(&text)));
            }
        }
    }
    out.sort();
    out
}

/// The code without `//` comments (doc comments name paths that are not imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path that follows `prefix` (`crate::` or `super::`), as lists of segments; a
/// grouped list `prefix{a::b, c}` gives one path per item.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find(prefix) {
        let start = at + i;
        at = start + prefix.len();
        let before = code[..start].chars().last();
        if prefix == "super::" && before.is_some_and(|c| c == ':') {
            continue; // super::super::… is read from the first `super::`
        }
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        out.extend(parse_tree(&code[at..]));
    }
    out
}

/// The paths of a use-tree at the start of `s`: `a::b::c`, or `{a, b::{c, d}}`.
fn parse_tree(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        return split_top(&rest[..end])
            .into_iter()
            .flat_map(|item| parse_tree(&item))
            .collect();
    }
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let n = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        segs.push(rest[..n].to_string());
        rest = &rest[n..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return parse_tree(r)
                    .into_iter()
                    .map(|tail| segs.iter().cloned().chain(tail).collect())
                    .collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    if segs.is_empty() {
        vec![]
    } else {
        vec![segs]
    }
}

/// Items of a brace group split at top-level commas.
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().filter(|x| !x.trim().is_empty()).collect()
}

/// The file a module path (segments under `src/`) resolves to: the deepest prefix of
/// the path that is a module file.
fn resolve(src: &Path, segs: &[String]) -> Option<PathBuf> {
    for n in (0..=segs.len()).rev() {
        let base: PathBuf = segs[..n].iter().collect();
        let candidates = if n == 0 {
            vec![PathBuf::from("lib.rs"), PathBuf::from("main.rs")]
        } else {
            vec![base.with_extension("rs"), base.join("mod.rs")]
        };
        if let Some(c) = candidates.into_iter().find(|c| src.join(c).is_file()) {
            return Some(c);
        }
    }
    None
}

/// Import arrows between files (`from → to`), self-imports dropped.
fn arrows(files: &[(File, String)], srcs: &BTreeMap<&str, PathBuf>) -> BTreeSet<(File, File)> {
    let mut out = BTreeSet::new();
    for (f, code) in files {
        let src = &srcs[f.krate];
        let module = f.module();
        let mut targets = Vec::new();
        for p in paths_after(code, "crate::") {
            targets.extend(resolve(src, &p));
        }
        for p in paths_after(code, "super::") {
            // `super` of `a/b.rs` and of `a/b/mod.rs` (module a::b) is module `a`
            let parent = &module[..module.len().saturating_sub(1)];
            let full: Vec<String> = parent.iter().cloned().chain(p).collect();
            targets.extend(resolve(src, &full));
        }
        for t in targets {
            let to = File {
                krate: f.krate,
                rel: t,
            };
            if to != *f {
                out.insert((f.clone(), to));
            }
        }
    }
    out
}

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&top))
}

/// Strongly connected components with more than one node (import circles).
fn circles<T: Ord + Clone>(nodes: &BTreeSet<T>, edges: &BTreeSet<(T, T)>) -> Vec<Vec<T>> {
    let reach = |from: &T| -> BTreeSet<T> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for (a, b) in edges.iter().filter(|(a, _)| *a == n) {
                let _ = a;
                if seen.insert(b.clone()) {
                    stack.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<T, BTreeSet<T>> = nodes.iter().map(|n| (n.clone(), reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if done.contains(n) || !reach[n].contains(n) {
            continue;
        }
        let comp: Vec<T> = nodes
            .iter()
            .filter(|m| reach[n].contains(*m) && reach[*m].contains(n))
            .cloned()
            .collect();
        done.extend(comp.iter().cloned());
        out.push(comp);
    }
    out
}

struct House {
    files: Vec<File>,
    arrows: BTreeSet<(File, File)>,
}

fn read_house() -> House {
    let root = root();
    let srcs: BTreeMap<&str, PathBuf> = [
        ("squeeze", root.join("crates/squeeze/src")),
        ("cli", root.join("crates/squeeze-cli/src")),
    ]
    .into_iter()
    .collect();
    let mut files = sources(&srcs["squeeze"], "squeeze");
    files.extend(sources(&srcs["cli"], "cli"));
    let arrows = arrows(&files, &srcs);
    House {
        files: files.into_iter().map(|(f, _)| f).collect(),
        arrows,
    }
}

#[test]
fn every_library_module_has_a_layer() {
    let house = read_house();
    let missing: BTreeSet<String> = house
        .files
        .iter()
        .filter(|f| f.krate == "squeeze" && layer_of(&f.top()).is_none())
        .map(|f| f.top())
        .collect();
    assert!(
        missing.is_empty(),
        "modules on no layer of LAYERS: {missing:?}"
    );
}

#[test]
fn imports_go_down_the_layers_and_folders_form_no_circle() {
    let house = read_house();
    let lib: Vec<&(File, File)> = house
        .arrows
        .iter()
        .filter(|(a, _)| a.krate == "squeeze")
        .collect();
    let mut up = Vec::new();
    for (a, b) in &lib {
        let (la, lb) = (layer_of(&a.top()), layer_of(&b.top()));
        let (Some(la), Some(lb)) = (la, lb) else {
            continue;
        };
        let allowed = ALLOWED_UP
            .iter()
            .any(|(f, m, _)| a.label().ends_with(f) && b.top() == *m);
        if lb > la && !allowed {
            up.push(format!(
                "{} ({}) -> {} ({})",
                a.label(),
                LAYERS[la].0,
                b.label(),
                LAYERS[lb].0
            ));
        }
    }
    // circles between top-level modules (folders), the CLI counted as one
    let tops: BTreeSet<String> = house.files.iter().map(top_key).collect();
    let top_edges: BTreeSet<(String, String)> = house
        .arrows
        .iter()
        .map(|(a, b)| (top_key(a), top_key(b)))
        .filter(|(a, b)| a != b)
        .collect();
    let module_circles = circles(&tops, &top_edges);
    let file_nodes: BTreeSet<File> = house.files.iter().cloned().collect();
    let file_circles = circles(&file_nodes, &house.arrows);
    let largest = file_circles.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "{{\"upward_imports\": {}, \"circles\": {}, \"largest_circle_files\": {}, \
         \"module_circles\": {}, \"arrows\": {}}}",
        up.len(),
        file_circles.len(),
        largest,
        module_circles.len(),
        house.arrows.len()
    );
    for c in &file_circles {
        let names: Vec<String> = c.iter().map(File::label).collect();
        println!("circle: {}", names.join(", "));
    }
    assert!(
        up.is_empty(),
        "imports that go up a layer:\n{}",
        up.join("\n")
    );
    assert!(
        module_circles.is_empty(),
        "modules that import each other in a circle: {module_circles:?}"
    );
    for c in &file_circles {
        let folders: BTreeSet<String> = c.iter().map(File::folder).collect();
        assert_eq!(folders.len(), 1, "a circle spans folders: {c:?}");
    }
    assert!(
        file_circles.len() <= MAX_FILE_CIRCLES,
        "{} file-level import circles (at most {MAX_FILE_CIRCLES})",
        file_circles.len()
    );
}

/// A file's top-level module, with the crate (the CLI's files each count as their own).
fn top_key(f: &File) -> String {
    match f.krate {
        "cli" => format!("cli::{}", f.top()),
        _ => f.top(),
    }
}

/// The reader itself: grouped and nested use lists, `super` paths, and comments.
#[test]
fn the_import_reader_sees_grouped_and_nested_paths() {
    let code = strip_comments(
        "use crate::{error::Result, graph::{Graph, Node}};\n// use crate::passes;\nlet x = crate::ops::fast::gelu(y);\nuse super::{couple::Seg, Op};",
    );
    let c = paths_after(&code, "crate::");
    assert!(c.contains(&vec!["error".into(), "Result".into()]));
    assert!(c.contains(&vec!["graph".into(), "Node".into()]));
    assert!(c.contains(&vec!["ops".into(), "fast".into(), "gelu".into()]));
    assert!(
        !c.iter().any(|p| p[0] == "passes"),
        "a comment is not an import"
    );
    let s = paths_after(&code, "super::");
    assert_eq!(s.len(), 2);
    let edges: BTreeSet<(u8, u8)> = [(1, 2), (2, 3), (3, 1), (3, 4)].into_iter().collect();
    let nodes: BTreeSet<u8> = [1, 2, 3, 4].into_iter().collect();
    assert_eq!(circles(&nodes, &edges), vec![vec![1, 2, 3]]);
}
