//! No import cycles between the modules of `src/` (issue 16): each module may use modules that
//! do not, directly or through others, use it back. A cycle makes the modules in it one unit to
//! understand, test and change; this test names every cycle that appears, with the `use` or path
//! that closes it.
//!
//! The sources are read as Rust (`syn`): every `use` tree and every path starting at `crate`,
//! `super`, `self` or a child module's name counts as a dependency on the longest module prefix
//! it names. A parent declaring its children (`mod x;`) is not a dependency; test modules
//! (`#[cfg(test)]`) are left out.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Module path (`scope::write`; the crate root is "") → its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("main.rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(
        |a| matches!(&a.meta, syn::Meta::List(l) if l.path.is_ident("cfg") && l.tokens.to_string().contains("test")),
    )
}

/// Collects the absolute module paths a file's `use` trees and paths name.
struct Deps<'a> {
    here: Vec<String>,
    children: &'a BTreeSet<String>,
    found: Vec<(Vec<String>, usize)>,
    /// While inside a `pub use`: what it makes this module export.
    exporting: bool,
    module: Module,
}

/// What a module makes visible to its users: the names it defines, what it re-exports (name →
/// absolute path) and the modules it re-exports everything of (`pub use x::*`).
#[derive(Default)]
struct Module {
    defines: BTreeSet<String>,
    exports: BTreeMap<String, Vec<String>>,
    globs: Vec<Vec<String>>,
}

impl Deps<'_> {
    /// `segments` as written; `None` when the path is not into this crate.
    fn absolute(&self, segments: &[String]) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut rest = segments;
        match segments.first().map(String::as_str)? {
            "crate" => rest = &segments[1..],
            "self" => {
                out = self.here.clone();
                rest = &segments[1..];
            }
            "super" => {
                out = self.here.clone();
                while rest.first().map(String::as_str) == Some("super") {
                    out.pop()?;
                    rest = &rest[1..];
                }
            }
            first if self.children.contains(first) => out = self.here.clone(),
            _ => return None,
        }
        out.extend(rest.iter().cloned());
        Some(out)
    }

    fn add(&mut self, segments: Vec<String>, line: usize) {
        if let Some(abs) = self.absolute(&segments) {
            self.found.push((abs, line));
        }
    }

    fn export(&mut self, segments: Vec<String>, name: Option<String>) {
        let Some(abs) = self.absolute(&segments) else { return };
        match name {
            Some(n) => {
                self.module.exports.insert(n, abs);
            }
            None => self.module.globs.push(abs),
        }
    }

    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                if self.exporting {
                    let name = full.last().cloned();
                    self.export(full.clone(), name);
                }
                self.add(full, n.ident.span().start().line);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                if self.exporting {
                    self.export(full.clone(), Some(r.rename.to_string()));
                }
                self.add(full, r.ident.span().start().line);
            }
            syn::UseTree::Glob(g) => {
                if self.exporting {
                    self.export(prefix.clone(), None);
                }
                self.add(prefix.clone(), g.star_token.spans[0].start().line)
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.tree(prefix, t)),
        }
    }
}

impl<'ast> Visit<'ast> for Deps<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if !is_test_only(&u.attrs) {
            self.exporting = !matches!(u.vis, syn::Visibility::Inherited);
            self.tree(&mut Vec::new(), &u.tree);
            self.exporting = false;
        }
    }
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let name = match i {
            syn::Item::Const(x) => Some(&x.ident),
            syn::Item::Enum(x) => Some(&x.ident),
            syn::Item::Fn(x) => Some(&x.sig.ident),
            syn::Item::Static(x) => Some(&x.ident),
            syn::Item::Struct(x) => Some(&x.ident),
            syn::Item::Trait(x) => Some(&x.ident),
            syn::Item::Type(x) => Some(&x.ident),
            syn::Item::Union(x) => Some(&x.ident),
            syn::Item::Macro(x) => x.ident.as_ref(),
            _ => None,
        };
        if let Some(n) = name {
            self.module.defines.insert(n.to_string());
        }
        syn::visit::visit_item(self, i);
    }
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_only(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            let line = p.segments[0].ident.span().start().line;
            self.add(segments, line);
        }
        syn::visit::visit_path(self, p);
    }
}

/// Follows re-exports: a path to `m::Name` that `m` only re-exports (`pub use child::Name`, or
/// `pub use child::*` for a name `m` does not define) is a path into the module it comes from.
fn resolve(mods: &BTreeMap<String, PathBuf>, seen: &BTreeMap<String, Module>, abs: &[String]) -> String {
    let mut abs = abs.to_vec();
    for _ in 0..8 {
        let n = (0..=abs.len()).rev().find(|&n| mods.contains_key(&abs[..n].join("::"))).unwrap();
        let module = abs[..n].join("::");
        let (Some(name), Some(m)) = (abs.get(n), seen.get(&module)) else { return module };
        let redirected = match m.exports.get(name) {
            Some(target) => target.iter().chain(&abs[n + 1..]).cloned().collect(),
            None if !m.defines.contains(name) && !m.globs.is_empty() => {
                m.globs[0].iter().chain(&abs[n..]).cloned().collect()
            }
            None => return module,
        };
        abs = redirected;
    }
    panic!("re-exports loop at {}", abs.join("::"))
}

/// Module → (module it uses → the line of the first use).
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mods = modules(src);
    let mut seen = BTreeMap::new();
    let mut found = BTreeMap::new();
    for (name, file) in &mods {
        let here: Vec<String> = if name.is_empty() { vec![] } else { name.split("::").map(str::to_owned).collect() };
        let prefix = if name.is_empty() { String::new() } else { format!("{name}::") };
        let children: BTreeSet<String> = mods
            .keys()
            .filter_map(|m| m.strip_prefix(&prefix).filter(|rest| !rest.is_empty() && !rest.contains("::")))
            .map(str::to_owned)
            .collect();
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut deps = Deps { here, children: &children, found: vec![], exporting: false, module: Module::default() };
        deps.visit_file(&ast);
        seen.insert(name.clone(), deps.module);
        found.insert(name.clone(), deps.found);
    }
    let mut g = BTreeMap::new();
    for (name, paths) in found {
        let mut edges = BTreeMap::new();
        for (abs, line) in paths {
            let target = resolve(&mods, &seen, &abs);
            // A module re-exporting its own children is their facade, not their user.
            let own_child = target.strip_prefix(&format!("{name}::")).is_some() || name.is_empty();
            if target != name
                && !target.is_empty()
                && !(own_child
                    && seen[&name]
                        .exports
                        .values()
                        .chain(&seen[&name].globs)
                        .any(|e| e.join("::").starts_with(&target)))
            {
                edges.entry(target).or_insert(line);
            }
        }
        g.insert(name, edges);
    }
    g
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeMap<String, usize>>) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeMap<String, usize>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = vec![];
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_module_uses_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    let found = cycles(&g);
    let mut report = String::new();
    for comp in &found {
        report.push_str(&format!("cycle of {} modules:\n", comp.len()));
        for m in comp {
            for (to, line) in g[m].iter().filter(|(to, _)| comp.contains(to)) {
                report.push_str(&format!("  {m} -> {to} (line {line})\n"));
            }
        }
    }
    assert!(found.is_empty(), "{report}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edge = |pairs: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string(), 1);
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert!(cycles(&edge(&[("a", "b"), ("b", "c")])).is_empty());
    assert_eq!(cycles(&edge(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])), vec![vec!["a", "b", "c"]]);
    // And the sources are read: the crate has modules and edges.
    let g = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(g.len() > 40 && g["pipeline"].contains_key("route"), "{:?}", g.get("pipeline"));
}
