//! The model: a [`Graph`] of typed layer nodes, the [`ParamStore`] of its named tensors,
//! and the files a text encoder carries verbatim (its tokenizer). Every pass takes and
//! returns one; [`crate::checkpoint`] reads and writes it as a directory.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::graph::Graph;
use crate::params::ParamStore;

/// A model as it lives on disk and in memory: graph + parameters (+ verbatim assets such
/// as the tokenizer of a text encoder, by file name).
#[derive(Debug, Clone)]
pub struct Model {
    pub graph: Graph,
    pub params: ParamStore,
    pub assets: BTreeMap<String, Vec<u8>>,
}

impl Model {
    /// A model without assets.
    pub fn new(graph: Graph, params: ParamStore) -> Self {
        Model {
            graph,
            params,
            assets: BTreeMap::new(),
        }
    }

    /// Renames every node, reference, tensor and mask whose name starts with `from` to
    /// start with `to` instead.
    pub fn rename_prefix(&mut self, from: &str, to: &str) {
        let re = |s: &mut String| {
            if let Some(rest) = s.strip_prefix(from) {
                *s = format!("{to}{rest}");
            }
        };
        let g = &mut self.graph;
        for n in &mut g.nodes {
            re(&mut n.name);
            n.inputs.iter_mut().for_each(re);
        }
        re(&mut g.output);
        g.masks.iter_mut().for_each(re);
        g.codecs = std::mem::take(&mut g.codecs)
            .into_iter()
            .map(|(mut k, c)| {
                re(&mut k);
                (k, c)
            })
            .collect();
        for name in self.params.names() {
            if name.starts_with(from) {
                let t = self.params.remove(&name).expect("listed above");
                let mut new = name.clone();
                re(&mut new);
                self.params.insert(new, t);
            }
        }
    }

    /// Runs the full consistency check (graph structure, shapes, store contents).
    pub fn check(&self) -> Result<()> {
        self.graph.validate()?;
        self.graph.check_params(&self.params)
    }
}
