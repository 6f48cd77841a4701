//! Weight sharing and materialization passes. `share` clusters each selected weight into
//! 2^bits centroids (Deep Compression's k-means), records the shared codec so the
//! checkpoint stores codebook + Huffman-coded indices, and optionally fine-tunes the
//! centroids. `materialize` folds the masks of a simulated sparse model into its weights
//! and turns sufficiently sparse Linear layers into CSR `sparse_linear` nodes.

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::math::codec::Codec;
use crate::model::Model;
use crate::prune::materialize::{materialize_by, CsrRule};
use crate::prune::share::{kmeans, Clusters, ShareHook};
use crate::prune::{self, targets};

/// The sharing pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Share {
    pub bits: u8,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
    /// Learning rate of the centroid fine-tuning (default: the `[finetune]` optimizer's).
    /// Each centroid moves by the sum of its members' updates, so large clusters want a
    /// smaller rate than the weights did.
    #[serde(default)]
    pub lr: Option<f64>,
}

impl Declared for Share {
    const HELP: &'static str = "weight sharing (Deep Compression): 2^`bits` k-means centroids per \
        layer (`layers`), centroids fine-tuned for `finetune_epochs` at `lr`, stored with \
        Huffman coding";
    const EXAMPLE: &'static str = "bits = 5, finetune_epochs = 1";
    fn build(&self) -> Result<Box<dyn Pass>> {
        Codec::Shared { bits: self.bits }
            .validate()
            .map_err(|m| Error::pass("share", m))?;
        if self.lr.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
            return Err(Error::pass(
                "share",
                format!("`lr` must be positive, got {:?}", self.lr),
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

impl Pass for Share {
    fn name(&self) -> &'static str {
        "share"
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let names = targets(&model, self.layers.as_deref(), self.name())?;
        let mut layers = Vec::new();
        for name in &names {
            let w = prune::read(&model, name)?;
            let cl = kmeans(name, &w.values, &w.mask, 1usize << self.bits);
            let t = candle_core::Tensor::from_vec(
                cl.values(),
                w.shape.as_slice(),
                &candle_core::Device::Cpu,
            )?;
            model.params.insert(name.clone(), t);
            model
                .graph
                .codecs
                .insert(name.clone(), Codec::Shared { bits: self.bits });
            layers.push(cl);
        }
        // tensors an earlier `share` pass coded keep their codebooks through this fine-tuning
        for name in model.graph.codecs.keys().filter(|n| !names.contains(n)) {
            let w = prune::read(&model, name)?;
            layers.push(Clusters::of_shared(name, &w.values));
        }
        let mut hist = Vec::new();
        if let Some(e) = self.finetune_epochs.filter(|e| *e > 0) {
            let mut hook = ShareHook { layers };
            hist = ctx.finetune_lr(&mut model, Some(e), self.lr, &mut hook)?;
        }
        let mut label = format!(
            "{} weight tensors share {} centroids each",
            names.len(),
            1usize << self.bits
        );
        if !hist.is_empty() {
            label.push_str(&format!("; centroids {}", super::finetune::summary(&hist)));
        }
        let details = serde_json::json!({ "bits": self.bits, "layers": names, "finetune": hist });
        super::done(model, self.name(), label, details)
    }
}

/// One clause for the timed layers that went (`to_csr`) or did not go to CSR: how many,
/// and the range of CSR's speed relative to dense at batch 1 and 256.
fn measured_summary(folded: &[crate::prune::materialize::Folded], to_csr: bool) -> Option<String> {
    let c: Vec<_> = folded
        .iter()
        .filter(|f| f.csr == to_csr)
        .filter_map(|f| f.measured.as_ref().filter(|c| c.speedup_b1 > 0.0))
        .collect();
    if c.is_empty() {
        return None;
    }
    let range = |v: Vec<f64>| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        match (hi - lo).abs() < 0.005 {
            true => format!("{lo:.2}×"),
            false => format!("{lo:.2}–{hi:.2}×"),
        }
    };
    Some(format!(
        "{} layer(s) {} (CSR {} dense's speed at batch 1, {} at 256)",
        c.len(),
        if to_csr { "→ CSR" } else { "kept dense" },
        range(c.iter().map(|c| c.speedup_b1).collect()),
        range(c.iter().map(|c| c.speedup_b256).collect()),
    ))
}

/// Masks folded; sufficiently sparse Linear layers become CSR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Materialize {
    /// Linear layers at least this sparse become CSR; absent: those that time faster as
    /// CSR on this CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sparsity: Option<f64>,
}

impl Declared for Materialize {
    const HELP: &'static str = "fold masks into weights; a sparse Linear layer becomes a CSR \
        `sparse_linear` node where CSR times faster than dense on this CPU at batch 1 and 256 \
        (measured per layer, cached per CPU), or where it is at least `min_sparsity` sparse if \
        given";
    const EXAMPLE: &'static str = "min_sparsity = 0.8";
    fn build(&self) -> Result<Box<dyn Pass>> {
        if let Some(m) = self.min_sparsity.filter(|m| !(0.0..=1.0).contains(m)) {
            return Err(Error::pass(
                "materialize",
                format!("`min_sparsity` must be in [0, 1], got {m}"),
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

impl Pass for Materialize {
    fn name(&self) -> &'static str {
        "materialize"
    }

    fn apply(&self, mut model: Model, _ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let rule = self
            .min_sparsity
            .map_or(CsrRule::Measured, CsrRule::AtLeast);
        let folded = materialize_by(&mut model, rule)?;
        let csr = folded.iter().filter(|f| f.csr).count();
        let mut label = format!(
            "{} masks folded into their weights, {csr} layers stored as CSR",
            folded.len()
        );
        let timed: Vec<String> = [true, false]
            .iter()
            .filter_map(|&to_csr| measured_summary(&folded, to_csr))
            .collect();
        if !timed.is_empty() {
            label += &format!(" (measured on this CPU: {})", timed.join("; "));
        }
        let details = serde_json::json!({ "min_sparsity": self.min_sparsity, "weights": folded });
        super::done(model, self.name(), label, details)
    }
}
