//! The write order of a set of resources by their references. HAPI enforces referential
//! integrity: a resource may be written only when what it references exists (or is written in
//! the same transaction), and deleted only when nothing references it (or the referrer is
//! deleted in the same transaction). So the resources form a graph (edge: referrer → target),
//! its strongly connected components are found (Tarjan; a reference cycle is one component),
//! and components are written targets first — and deleted referrers first, the reverse — packed
//! into transactions without ever splitting a component.
use crate::fhir::canonical;
use crate::fhir::reference::{self, Target};
use serde_json::Value;
use std::collections::HashMap;

/// Resources (`Type/id` as the upstream holds them) and the references between them.
pub struct Graph {
    keys: Vec<String>,
    index: HashMap<String, usize>,
    edges: Vec<Vec<usize>>,
}

impl Graph {
    pub fn new(keys: Vec<String>) -> Graph {
        let index = keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
        let edges = vec![Vec::new(); keys.len()];
        Graph { keys, index, edges }
    }

    pub fn key(&self, node: usize) -> &str {
        &self.keys[node]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds an edge from `from` to every resource of the graph that `body` (in upstream form)
    /// references: relative `Type/id[/_history/v]`, absolute under `base`, and canonicals written
    /// as relative literals (HAPI resolves those like references). Others are not in the graph.
    pub fn add_references(&mut self, from: usize, body: &Value, base: &str) {
        let mut targets = Vec::new();
        let mut body = body.clone();
        let _ = reference::for_each_mut(&mut body, &mut |r: &mut String| {
            match reference::parse(r) {
                Target::Relative(l) => targets.push(format!("{}/{}", l.rtype, l.id)),
                Target::Absolute { base: b, literal } if b == base => {
                    targets.push(format!("{}/{}", literal.rtype, literal.id))
                }
                _ => {}
            }
            Ok::<_, ()>(())
        });
        let _ = canonical::for_each_mut(&mut body, &mut |c: &mut String| {
            if let Some((l, _)) = canonical::tenant_literal(c) {
                targets.push(format!("{}/{}", l.rtype, l.id));
            }
            Ok::<_, ()>(())
        });
        for t in targets {
            if let Some(&to) = self.index.get(&t) {
                self.edges[from].push(to);
            }
        }
        self.edges[from].sort_unstable();
        self.edges[from].dedup();
    }

    /// The strongly connected components, each sorted, in dependency order: every component
    /// comes after all the components it references (iterative Tarjan: no recursion depth limit).
    pub fn components(&self) -> Vec<Vec<usize>> {
        let n = self.keys.len();
        let mut index: Vec<Option<usize>> = vec![None; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        let mut counter = 0;
        for root in 0..n {
            if index[root].is_some() {
                continue;
            }
            let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
            index[root] = Some(counter);
            low[root] = counter;
            counter += 1;
            stack.push(root);
            on_stack[root] = true;
            while let Some(&mut (v, ref mut next)) = calls.last_mut() {
                if let Some(&w) = self.edges[v].get(*next) {
                    *next += 1;
                    match index[w] {
                        None => {
                            index[w] = Some(counter);
                            low[w] = counter;
                            counter += 1;
                            stack.push(w);
                            on_stack[w] = true;
                            calls.push((w, 0));
                        }
                        Some(iw) if on_stack[w] => low[v] = low[v].min(iw),
                        Some(_) => {}
                    }
                    continue;
                }
                calls.pop();
                if let Some(&(u, _)) = calls.last() {
                    low[u] = low[u].min(low[v]);
                }
                if Some(low[v]) == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    component.sort_unstable();
                    out.push(component);
                }
            }
        }
        out
    }
}

/// Components packed in order into batches of about `size` (a component is never split: one
/// larger than `size` is a batch of its own).
pub fn batches(components: &[Vec<usize>], size: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for c in components {
        if !current.is_empty() && current.len() + c.len() > size {
            out.push(std::mem::take(&mut current));
        }
        current.extend(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// For each batch, the batches it must wait for. `targets_first` (writes): a batch waits for
/// the batches holding what its resources reference. Otherwise (deletes): a batch waits for the
/// batches holding the resources that reference its own.
pub fn dependencies(graph: &Graph, batches: &[Vec<usize>], targets_first: bool) -> Vec<Vec<usize>> {
    let mut batch_of = vec![usize::MAX; graph.len()];
    for (b, nodes) in batches.iter().enumerate() {
        for &n in nodes {
            batch_of[n] = b;
        }
    }
    let mut deps: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); batches.len()];
    for (b, nodes) in batches.iter().enumerate() {
        for &n in nodes {
            for &m in &graph.edges[n] {
                let other = batch_of[m];
                if other == b || other == usize::MAX {
                    continue;
                }
                if targets_first {
                    deps[b].insert(other);
                } else {
                    deps[other].insert(b);
                }
            }
        }
    }
    deps.into_iter().map(|d| d.into_iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph(resources: &[(&str, Value)]) -> Graph {
        let mut g = Graph::new(resources.iter().map(|(k, _)| k.to_string()).collect());
        for (i, (_, body)) in resources.iter().enumerate() {
            g.add_references(i, body, "http://up/fhir");
        }
        g
    }

    fn named(g: &Graph, comps: &[Vec<usize>]) -> Vec<Vec<String>> {
        comps.iter().map(|c| c.iter().map(|&i| g.key(i).to_owned()).collect()).collect()
    }

    #[test]
    fn targets_come_before_referrers_and_a_cycle_stays_together() {
        let g = graph(&[
            ("Observation/o1", json!({"subject": {"reference": "Patient/a"}})),
            ("Patient/a", json!({"link": [{"other": {"reference": "http://up/fhir/Patient/b"}}]})),
            ("Patient/b", json!({"link": [{"other": {"reference": "Patient/a/_history/1"}}]})),
            (
                "Encounter/e",
                json!({"subject": {"reference": "Patient/b"}, "x": {"reference": "http://other/fhir/Patient/zz"}}),
            ),
            ("Organization/solo", json!({})),
            ("Questionnaire/q", json!({})),
            (
                "QuestionnaireResponse/r",
                json!({"resourceType": "QuestionnaireResponse", "questionnaire": "Questionnaire/q"}),
            ),
        ]);
        let comps = g.components();
        let names = named(&g, &comps);
        let pos = |k: &str| names.iter().position(|c| c.iter().any(|x| x == k)).unwrap();
        assert!(names.contains(&vec!["Patient/a".to_owned(), "Patient/b".to_owned()]), "{names:?}");
        assert!(pos("Patient/a") < pos("Observation/o1"));
        assert!(pos("Patient/b") < pos("Encounter/e"));
        assert!(pos("Questionnaire/q") < pos("QuestionnaireResponse/r"), "a relative canonical is a dependency");
        assert_eq!(comps.iter().map(Vec::len).sum::<usize>(), 7, "every resource exactly once");
    }

    #[test]
    fn a_long_chain_needs_no_recursion() {
        let n = 100_000;
        let mut g = Graph::new((0..n).map(|i| format!("Basic/b{i}")).collect());
        for i in 0..n - 1 {
            g.add_references(i, &json!({"r": {"reference": format!("Basic/b{}", i + 1)}}), "http://up/fhir");
        }
        let comps = g.components();
        assert_eq!(comps.len(), n);
        assert_eq!(g.key(comps[0][0]), format!("Basic/b{}", n - 1), "the end of the chain is written first");
    }

    #[test]
    fn batches_never_split_a_component() {
        let comps = vec![vec![0], vec![1, 2, 3], vec![4], vec![5, 6, 7, 8, 9, 10], vec![11]];
        assert_eq!(batches(&comps, 4), vec![vec![0, 1, 2, 3], vec![4], vec![5, 6, 7, 8, 9, 10], vec![11]]);
        assert_eq!(batches(&[], 4), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn a_batch_waits_for_what_it_references_or_for_its_referrers() {
        let g = graph(&[
            ("Patient/a", json!({})),
            ("Observation/o1", json!({"subject": {"reference": "Patient/a"}})),
            ("Observation/o2", json!({"subject": {"reference": "Patient/a"}})),
        ]);
        let plan = vec![vec![0], vec![1], vec![2]];
        assert_eq!(dependencies(&g, &plan, true), vec![vec![], vec![0], vec![0]]);
        let reversed = vec![vec![1], vec![2], vec![0]];
        assert_eq!(dependencies(&g, &reversed, false), vec![vec![], vec![], vec![0, 1]]);
    }
}
