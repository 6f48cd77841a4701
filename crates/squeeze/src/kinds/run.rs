//! What a kind's forward sees while one node runs ([`NodeRun`]) and the options of a whole
//! forward pass ([`ForwardOpts`]) that the interpreter hands down to every node.

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::Tensor;
use rand::rngs::StdRng;

use super::Node;
use crate::error::Result;
use crate::ops::batchnorm::BatchStats;
use crate::ops::pack_cache::PackCache;
use crate::params::ParamStore;

/// Options of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOpts {
    /// Train mode: batch statistics, dropout on.
    pub train: bool,
    /// Seed of the dropout masks of this pass.
    pub seed: u64,
    /// Nodes whose inputs and output to capture.
    pub taps: HashSet<String>,
    /// Packed Linear weights for small-batch inference (kept by a long-lived caller such
    /// as a text encoder); without it small batches use the unpacked kernel.
    pub packed: Option<Arc<PackCache>>,
}

impl ForwardOpts {
    pub fn eval() -> Self {
        Self::default()
    }
    pub fn train(seed: u64) -> Self {
        ForwardOpts {
            train: true,
            seed,
            ..Self::default()
        }
    }
}

/// Everything a kind's forward may use while one node runs.
pub struct NodeRun<'a> {
    pub node: &'a Node,
    pub params: &'a ParamStore,
    /// The values of the node's inputs, in order.
    pub ins: &'a [Tensor],
    pub opts: &'a ForwardOpts,
    /// Where the node's packed weights are kept: the caller's cache
    /// ([`ForwardOpts::packed`]) or the one the interpreter keeps with the graph.
    pub packs: &'a PackCache,
    /// Fusion: a BatchNorm or int8 convolution also applies the ReLU that is its only
    /// reader.
    pub fuse_relu: bool,
    /// Fusion (inference): an int8 convolution also applies the max-pool (window,
    /// stride) that is the only reader of its output (or of its fused ReLU).
    pub fuse_pool: Option<(usize, usize)>,
    /// Fusion (inference): a Linear also applies the GELU that is its only reader.
    pub fuse_gelu: bool,
    /// Fusion (inference): a Linear also adds this, the other input of the residual Add
    /// that is its only reader ([`super::Absorb::Residual`]).
    pub residual: Option<&'a Tensor>,
    /// Inference: the int8 convolution that reads this node's output as int8 codes (the
    /// run plan's handoff; the node then returns those codes, channels-last).
    pub hand_to: Option<&'a Node>,
    /// The pass's seeded generator (dropout masks).
    pub rng: &'a mut StdRng,
    /// Train-mode batch statistics, appended by BatchNorm nodes.
    pub bn_stats: &'a mut Vec<(String, BatchStats)>,
}

thread_local! {
    /// The buffer [`NodeRun::param`] spells names in.
    static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl NodeRun<'_> {
    /// The node's tensor `suffix` (e.g. `weight`).
    pub fn param(&self, suffix: &str) -> Result<&Tensor> {
        // the name is spelled in a per-thread buffer: a batch-1 sentence asks for
        // about fifty tensors, and each `format!` was an allocation
        NAME.with(|n| {
            let mut n = n.borrow_mut();
            n.clear();
            n.push_str(&self.node.name);
            n.push('.');
            n.push_str(suffix);
            self.params.get(&n)
        })
    }
    /// The first input.
    pub fn x(&self) -> &Tensor {
        &self.ins[0]
    }
}
