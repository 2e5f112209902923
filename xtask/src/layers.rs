//! The import check of `cargo xtask lint`: imports between the files of
//! `exitprof/src` and of `xtask/src` run one way. It reads every file's
//! `use` trees and inline `crate::`/`super::` paths (test modules
//! excluded), resolves them to files, and fails on
//!
//! - a cycle between files, and
//! - an import between top-level folders that ARCHITECTURE.md's codemap
//!   does not allow (its tables' "may import" column is the rule, so the
//!   document and the code cannot drift apart), and
//! - a file longer than [`MAX_LINES`] lines before its tests.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The longest a source file may be, tests not counted.
pub const MAX_LINES: usize = 500;

/// A module path inside a crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// One crate's source files by module path, and what each imports.
struct Graph {
    files: BTreeMap<ModPath, PathBuf>,
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

/// The module path of `file` under `src`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    // `a/mod.rs` is module `a`, `lib.rs` the library's root; `main.rs`
    // is a crate of its own (the binary), named `main` here.
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The code of a file without comments and without its test modules (a
/// `#[cfg(test)]` line followed by a `mod` item ends the part that counts).
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().contains("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" //").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The full paths of a `use` tree (`a::{b, c::{d, e}}` → `a::b`,
/// `a::c::d`, `a::c::e`).
fn expand_use(tree: &str) -> Vec<String> {
    // `x as y` keeps `x`; then whitespace goes.
    let tree: String = tree
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" as ", "#")
        .split_whitespace()
        .collect();
    let Some(open) = tree.find('{') else {
        let path = tree.split('#').next().unwrap_or(&tree);
        return vec![path.trim_end_matches("::").to_owned()];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand_use)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_owned()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// Whether a trimmed line starts a `use` item (`use`, `pub use`,
/// `pub(crate) use`, ...).
fn starts_use(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("pub ")
        .or_else(|| {
            line.strip_prefix("pub(")
                .and_then(|r| r.split_once(") ").map(|(_, r)| r))
        })
        .unwrap_or(line);
    rest.strip_prefix("use ")
}

/// Every path a file's code names: its `use` trees and inline paths
/// that start with `crate::`, `super::` or one of `children` (the
/// modules it declares).
fn paths_of(code: &str, children: &[String]) -> Vec<String> {
    let mut paths = Vec::new();
    let mut outside_use = String::new();
    let mut tree: Option<String> = None;
    for line in code.lines() {
        let trimmed = line.trim();
        if let Some(open) = tree.as_mut() {
            open.push_str(trimmed);
        } else if let Some(rest) = starts_use(trimmed) {
            tree = Some(rest.to_owned());
        } else {
            outside_use.push_str(line);
            outside_use.push('\n');
            continue;
        }
        if let Some(done) = tree.take_if(|t| t.ends_with(';')) {
            paths.extend(expand_use(done.trim_end_matches(';')));
        }
    }
    let starts = ["crate".to_owned(), "super".to_owned()]
        .into_iter()
        .chain(children.iter().cloned())
        .map(|s| format!("{s}::"));
    for start in starts {
        let mut text = outside_use.as_str();
        while let Some(at) = text.find(&start) {
            let word_start = at == 0 || {
                let c = text.as_bytes()[at - 1];
                !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
            };
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let path = path.trim_end_matches(':');
            if word_start && path.contains("::") {
                paths.push(path.to_owned());
            }
            text = &text[at + start.len()..];
        }
    }
    paths
}

impl Graph {
    /// Reads the crate under `src`.
    fn read(src: &Path) -> anyhow::Result<Self> {
        let mut list = Vec::new();
        rust_files(src, &mut list)?;
        let files: BTreeMap<ModPath, PathBuf> =
            list.into_iter().map(|f| (module_of(src, &f), f)).collect();
        let mut edges = BTreeMap::new();
        for (module, file) in &files {
            let code = code_of(&fs::read_to_string(file)?);
            let children: Vec<String> = files
                .keys()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .filter_map(|m| m.last().cloned())
                .collect();
            let mut to = BTreeSet::new();
            for path in paths_of(&code, &children) {
                if let Some(target) = Self::resolve(&files, module, &path)
                    && target != *module
                {
                    to.insert(target);
                }
            }
            edges.insert(module.clone(), to);
        }
        Ok(Self { files, edges })
    }

    /// The file a path names, if it names one of the crate's.
    fn resolve(files: &BTreeMap<ModPath, PathBuf>, from: &ModPath, path: &str) -> Option<ModPath> {
        let mut segments = path.split("::").filter(|s| !s.is_empty());
        let first = segments.next()?;
        // The module that `self` means in this file.
        let here = from.clone();
        let mut base: ModPath = match first {
            "crate" => Vec::new(),
            "self" => here,
            "super" => {
                // `a/b.rs` is module a::b and `a/mod.rs` module a: super
                // is one step up from either.
                let mut parent = here;
                parent.pop();
                parent
            }
            // A child module declared here (`use hooks::Hook` in mod.rs).
            name => {
                let mut child = here;
                child.push(name.to_owned());
                if !files.contains_key(&child) {
                    return None;
                }
                child
            }
        };
        for segment in segments {
            if segment == "super" {
                base.pop();
                continue;
            }
            let mut next = base.clone();
            next.push(segment.to_owned());
            if files.contains_key(&next) {
                base = next;
            } else {
                break;
            }
        }
        files.contains_key(&base).then_some(base)
    }

    /// Every cycle between files (strongly connected components of more
    /// than one file), as lists of module paths.
    fn cycles(&self) -> Vec<Vec<String>> {
        // Tarjan's algorithm.
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a ModPath, usize>,
            low: BTreeMap<&'a ModPath, usize>,
            stack: Vec<&'a ModPath>,
            on_stack: BTreeSet<&'a ModPath>,
            next: usize,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
            s.index.insert(v, s.next);
            s.low.insert(v, s.next);
            s.next += 1;
            s.stack.push(v);
            s.on_stack.insert(v);
            for w in s.graph.edges.get(v).into_iter().flatten() {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[w].min(s.low[v]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.index[w].min(s.low[v]);
                    s.low.insert(v, low);
                }
            }
            if s.low[v] == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    component.push(name(w));
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    s.out.push(component);
                }
            }
        }
        let mut state = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in self.files.keys() {
            if !state.index.contains_key(v) {
                visit(&mut state, v);
            }
        }
        state.out
    }
}

/// `crate::a::b` for people.
fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "crate (lib.rs)".to_owned()
    } else {
        format!("crate::{}", module.join("::"))
    }
}

/// The "may import" rules of one codemap table of ARCHITECTURE.md: folder
/// (or file) → the top-level modules it may import. Rows look like
/// ``| `bpf/` | what | host, model |``; `anything` allows all.
fn rules(architecture: &str, heading: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let at = architecture
        .find(heading)
        .with_context(|| format!("ARCHITECTURE.md has no {heading:?} section"))?;
    let mut rules = BTreeMap::new();
    for line in architecture[at..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let module = cells[1]
            .trim_matches('`')
            .trim_end_matches('/')
            .trim_end_matches(".rs")
            .to_owned();
        let allowed = cells[cells.len() - 2]
            .split(',')
            .map(|m| m.trim().trim_matches('`').trim_end_matches('/').to_owned())
            .filter(|m| !m.is_empty() && m != "—" && m != "nothing")
            .collect();
        rules.insert(module, allowed);
    }
    if rules.is_empty() {
        bail!("the {heading:?} section of ARCHITECTURE.md has no codemap table");
    }
    Ok(rules)
}

/// The violations of `rules` in `graph`.
fn violations(graph: &Graph, rules: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let top = |m: &ModPath| m.first().cloned().unwrap_or_else(|| "lib".to_owned());
    let mut out = Vec::new();
    for module in graph.files.keys() {
        if !rules.contains_key(&top(module)) {
            out.push(format!("{} is not in the codemap", name(module)));
        }
    }
    for (from, targets) in &graph.edges {
        let (a, allowed) = (top(from), rules.get(&top(from)));
        for to in targets {
            let b = top(to);
            let ok = a == b
                || allowed.is_some_and(|list| list.iter().any(|m| m == "anything" || *m == b));
            if !ok {
                out.push(format!(
                    "{} imports {}, but the codemap lets {a} import only {}",
                    name(from),
                    name(to),
                    allowed.map_or_else(|| "nothing".to_owned(), |l| l.join(", "))
                ));
            }
        }
    }
    out
}

/// Checks both crates against ARCHITECTURE.md.
///
/// # Errors
/// Every cycle and every import the codemap does not allow, one per line.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let architecture =
        fs::read_to_string(root.join("ARCHITECTURE.md")).context("ARCHITECTURE.md is missing")?;
    let mut problems = Vec::new();
    for (src, heading) in [
        ("exitprof/src", "### exitprof/src"),
        ("xtask/src", "### xtask/src"),
    ] {
        let graph = Graph::read(&root.join(src))?;
        for cycle in graph.cycles() {
            problems.push(format!("{src}: import cycle: {}", cycle.join(" <-> ")));
        }
        for v in violations(&graph, &rules(&architecture, heading)?) {
            problems.push(format!("{src}: {v}"));
        }
        for file in graph.files.values() {
            let text = fs::read_to_string(file)?;
            let lines = text
                .lines()
                .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
                .count();
            if lines > MAX_LINES {
                problems.push(format!(
                    "{}: {lines} lines before its tests (at most {MAX_LINES}): split it",
                    file.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the layout does not hold (ARCHITECTURE.md):\n{}",
            problems.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        assert_eq!(
            expand_use("crate::{\n    model::{Backend, events::{A, B}},\n    host::tracefs,\n}"),
            [
                "crate::model::Backend",
                "crate::model::events::A",
                "crate::model::events::B",
                "crate::host::tracefs"
            ]
        );
        assert_eq!(
            expand_use("super::plan::{self, Host}"),
            ["super::plan", "super::plan::Host"]
        );
        assert_eq!(expand_use("std::fs"), ["std::fs"]);
    }

    #[test]
    fn paths_skip_comments_and_tests() {
        let code = code_of(
            "use crate::a::B;\n// crate::c::D\nfn f() { crate::e::f(); super::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n",
        );
        assert_eq!(
            paths_of(&code, &[]),
            ["crate::a::B", "crate::e::f", "super::g"]
        );
        let code = "fn f() { host::run(); xhost::no(); \"crate::\"; }\n";
        assert_eq!(paths_of(code, &["host".into()]), ["host::run"]);
        assert_eq!(expand_use("a::Basic as B"), ["a::Basic"]);
    }

    /// The rules hold for the repository itself (also run by `lint`).
    #[test]
    fn this_repository_imports_one_way() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(root).unwrap();
    }
}
