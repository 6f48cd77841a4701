//! CondenseNet as a pass (Huang et al. 2018): learned group convolution on the selected
//! convolutions during a fine-tuning run ([`crate::prune::condense`]: group lasso,
//! condensation stages, masks), then materialization — each condensed convolution becomes
//! a channel gather (the index layer: group g's ⌈I/C⌉ kept inputs, groups one after the
//! other) feeding a standard group convolution with G groups. CondenseNet learns the 1×1
//! convolutions' groups and uses a fixed group convolution for the 3×3 ones; a fixed
//! grouping is the special case of a learned one whose index is contiguous, so this pass
//! learns both. The materialized network computes what the masked dense one computes.

use candle_core::{DType, Device, Tensor};

use serde::{Deserialize, Serialize};

use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::{Node, Op};
use crate::kinds::conv2d::Conv2d;
use crate::kinds::gather::ChannelGather;
use crate::model::Model;
use crate::prune::condense::{Condense as Hook, LearnedGroups};

const PASS: &str = "condense";

/// The pass: which convolutions (default: every ungrouped one with more than one input
/// channel whose outputs split into `groups`), G, C, the group-lasso weight and the
/// fine-tuning epochs (default: the recipe's `[finetune] epochs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condense {
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default = "default_condense")]
    pub groups: usize,
    #[serde(default = "default_condense")]
    pub condensation: usize,
    #[serde(default = "default_lasso")]
    pub lasso: f64,
    #[serde(default)]
    pub epochs: Option<usize>,
}

fn default_condense() -> usize {
    4
}
fn default_lasso() -> f64 {
    1e-5
}

impl Declared for Condense {
    const HELP: &'static str = "CondenseNet's learned group convolution: `groups` (4) groups per \
        convolution (`layers`; default every ungrouped one with more than one input), group \
        lasso `lasso` (1e-5) and `condensation` (4) − 1 condensation stages over the first half \
        of `epochs` of fine-tuning; materialized as channel gather + group convolution";
    const EXAMPLE: &'static str = "groups = 4, condensation = 4, epochs = 3";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let bad = |m: &str| Err(Error::pass(PASS, m.to_string()));
        if self.groups == 0 {
            return bad("`groups` must be positive");
        }
        if self.condensation < 2 {
            return bad(
                "`condensation` must be at least 2 (each group keeps 1/condensation of the inputs)",
            );
        }
        if !(self.lasso.is_finite() && self.lasso >= 0.0) {
            return bad("`lasso` must be a finite, non-negative weight");
        }
        if self.epochs == Some(0) {
            return bad("`epochs` must be positive: condensation happens while training");
        }
        Ok(Box::new(self.clone()))
    }
}

/// Whether `c` can take learned groups, and if not why.
fn eligible(c: &Conv2d, groups: usize) -> std::result::Result<(), String> {
    if c.groups != 1 {
        return Err("is grouped already".into());
    }
    if !c.is_square() {
        return Err("has a rectangular kernel".into());
    }
    if c.in_channels < 2 {
        return Err("has a single input channel".into());
    }
    if !c.out_channels.is_multiple_of(groups) {
        return Err(format!(
            "has {} output channels, not a multiple of `groups` = {groups}",
            c.out_channels
        ));
    }
    Ok(())
}

/// Rewrites convolution `l.node` as gather → group convolution over the inputs `l` keeps.
/// Every group must keep the same number of inputs.
pub fn materialize(model: &mut Model, l: &LearnedGroups) -> Result<()> {
    let kept: Vec<Vec<usize>> = (0..l.groups).map(|g| l.kept(g)).collect();
    let m = kept[0].len();
    if m == 0 || kept.iter().any(|k| k.len() != m) {
        let counts: Vec<usize> = kept.iter().map(Vec::len).collect();
        return Err(Error::pass(
            PASS,
            format!("`{}`: groups keep {counts:?} inputs; a group convolution needs equal, non-zero counts", l.node),
        ));
    }
    let i = model
        .graph
        .index_of(&l.node)
        .ok_or_else(|| Error::pass(PASS, format!("no node `{}`", l.node)))?;
    let Op::Conv2d(c) = model.graph.nodes[i].op.clone() else {
        return Err(Error::pass(
            PASS,
            format!("`{}` is not a convolution", l.node),
        ));
    };
    let index_name = format!("{}_index", l.node);
    if model.graph.node(&index_name).is_some() {
        return Err(Error::pass(
            PASS,
            format!("the model already has a node `{index_name}`"),
        ));
    }
    let key = l.weight();
    let w = crate::params::f32_values(model.params.get(&key)?)?;
    let (per, kk, g) = (l.out / l.groups, l.kk, l.groups);
    let mut wg = Vec::with_capacity(l.out * m * kk);
    for o in 0..l.out {
        for &inp in &kept[o / per] {
            wg.extend_from_slice(&w[(o * l.inp + inp) * kk..][..kk]);
        }
    }
    let index: Vec<u32> = kept.iter().flatten().map(|&i| i as u32).collect();
    let gather = Node {
        name: index_name.clone(),
        inputs: model.graph.nodes[i].inputs.clone(),
        op: Op::ChannelGather(ChannelGather { channels: g * m }),
    };
    let node = &mut model.graph.nodes[i];
    node.inputs = vec![index_name.clone()];
    node.op = Op::Conv2d(Conv2d {
        in_channels: g * m,
        groups: g,
        ..c.clone()
    });
    model.graph.nodes.insert(i, gather);
    let dev = &Device::Cpu;
    model.params.insert(
        format!("{index_name}.index"),
        Tensor::from_vec(index, g * m, dev)?.to_dtype(DType::U32)?,
    );
    model.params.insert(
        key,
        Tensor::from_vec(wg, (l.out, m, c.kernel, c.kernel), dev)?,
    );
    Ok(())
}

impl Pass for Condense {
    fn name(&self) -> &'static str {
        PASS
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        super::require_dense(&model, PASS)?;
        let check = |c: &Conv2d| eligible(c, self.groups);
        let names = super::select_convs(&model, &self.layers, PASS, check, |_| true)?;
        if names.is_empty() {
            return Err(Error::pass(
                PASS,
                "the model has no convolution to condense",
            ));
        }
        let layers = names
            .iter()
            .map(|n| {
                LearnedGroups::new(
                    n,
                    model.params.get(&format!("{n}.weight"))?.dims(),
                    self.groups,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let macs = |m: &Model| crate::eval::static_cost(m).map(|c| c.macs);
        let before = macs(&model)?;
        let steps = ctx.finetune_steps(&model, self.epochs)?;
        let mut hook = Hook::new(layers, self.condensation, self.lasso, steps);
        let hist = ctx.finetune(&mut model, self.epochs, &mut hook)?;
        hook.finish(&model.params)?;
        let mut kept = serde_json::Map::new();
        for l in &hook.layers {
            kept.insert(
                l.node.clone(),
                format!("{} of {}", l.kept(0).len(), l.inp).into(),
            );
            materialize(&mut model, l)?;
        }
        model.graph.validate()?;
        model.graph.check_params(&model.params)?;
        let after = macs(&model)?;
        let label = format!(
            "{} convolutions → gather + {}-group convolution (condensation {}): {before} → {after} MACs; {}",
            names.len(),
            self.groups,
            self.condensation,
            super::finetune::summary(&hist)
        );
        let details = serde_json::json!({
            "layers": names, "groups": self.groups, "condensation": self.condensation,
            "lasso": self.lasso, "inputs_per_group": kept,
            "macs_before": before, "macs_after": after, "finetune": hist,
        });
        super::done(model, self.name(), label, details)
    }
}
