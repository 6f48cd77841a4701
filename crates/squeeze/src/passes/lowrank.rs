//! The `low_rank` pass: truncated-SVD factorization of Linear and Conv2d layers into two
//! smaller layers (the method and the reasons for its shape are in [`crate::lowrank`]).
//! The rank of each layer comes from one rule: `rank` for all, `ranks` per layer, `energy`
//! (fraction of singular-value energy kept) or `keep` (fraction of each layer's parameters
//! kept). Convolutions take `form` "unfold" or "spatial"; Linear layers may take an
//! activation-aware `scaling` ("asvd" or "whiten") from calibration inputs. Optional
//! `finetune_epochs` through the one trainer (images: cross-entropy; text: the original's
//! embeddings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::prune::{input_stats, linear_groups, progress};
use super::{Declared, Pass, PassCtx, PassRecord};
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::lowrank::{
    self, choose_rank, decompose, shape_of, ColumnScale, Form, LayerShape, RankRule,
};
use crate::model::Model;
use crate::train::NoHooks;

const PASS: &str = "low_rank";

/// How a convolution is read as a matrix (recipe names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormName {
    #[default]
    Unfold,
    Spatial,
}

impl From<FormName> for Form {
    fn from(f: FormName) -> Form {
        match f {
            FormName::Unfold => Form::Unfold,
            FormName::Spatial => Form::Spatial,
        }
    }
}

/// Plain or activation-aware SVD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    #[default]
    None,
    Asvd,
    Whiten,
}

fn half() -> f64 {
    0.5
}

fn one_percent() -> f64 {
    0.01
}

/// The `low_rank` pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowRank {
    /// The layers (default: with `ranks`, its keys; else every Linear and groups-1 Conv2d
    /// but the output layer and convolutions of one input channel).
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default)]
    pub rank: Option<usize>,
    #[serde(default)]
    pub ranks: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    pub energy: Option<f64>,
    #[serde(default)]
    pub keep: Option<f64>,
    #[serde(default)]
    pub form: FormName,
    #[serde(default)]
    pub scaling: Scaling,
    /// ASVD's exponent on the per-channel RMS.
    #[serde(default = "half")]
    pub alpha: f64,
    /// Whitening's diagonal damping, relative to the mean of the second moment's diagonal.
    #[serde(default = "one_percent")]
    pub damp: f64,
    #[serde(default)]
    pub finetune_epochs: usize,
}

impl Declared for LowRank {
    const HELP: &'static str = "low-rank factorization by truncated SVD: each Linear/Conv2d of \
        `layers` becomes two smaller layers; the rank from `rank`, per-layer `ranks`, \
        `energy` kept or `keep` (fraction of the layer's parameters); convolutions in `form` \
        \"unfold\" (k×k then 1×1) or \"spatial\" (k×1 then 1×k); Linear layers with `scaling` \
        \"none\", \"asvd\" (`alpha`) or \"whiten\" (`damp`) from calibration; then \
        `finetune_epochs`";
    const EXAMPLE: &'static str = "keep = 0.5, form = \"spatial\"";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let rules = [
            self.rank.is_some(),
            self.ranks.is_some(),
            self.energy.is_some(),
            self.keep.is_some(),
        ];
        if rules.iter().filter(|r| **r).count() != 1 {
            return Err(Error::pass(
                PASS,
                "set exactly one of `rank`, `ranks`, `energy` and `keep`",
            ));
        }
        let bad = |msg: String| Err(Error::pass(PASS, msg));
        if let Some(e) = self.energy.filter(|e| !(*e > 0.0 && *e <= 1.0)) {
            return bad(format!("`energy` = {e} must lie in (0, 1]"));
        }
        if let Some(k) = self.keep.filter(|k| !(*k > 0.0 && *k < 1.0)) {
            return bad(format!("`keep` = {k} must lie in (0, 1)"));
        }
        if self.rank == Some(0) {
            return bad("`rank` = 0: a rank must be at least 1".into());
        }
        if let Some((l, _)) = self.ranks.iter().flatten().find(|(_, r)| **r == 0) {
            return bad(format!("`ranks.{l}` = 0: a rank must be at least 1"));
        }
        if self.ranks.as_ref().is_some_and(BTreeMap::is_empty)
            || self.layers.as_ref().is_some_and(Vec::is_empty)
        {
            return bad("`layers` / `ranks` is empty".into());
        }
        let in_range = (0.0..=1.0).contains(&self.alpha) && self.damp > 0.0 && self.damp <= 1.0;
        if !in_range {
            return bad(format!(
                "`alpha` = {} must lie in [0, 1] and `damp` = {} in (0, 1]",
                self.alpha, self.damp
            ));
        }
        if self.scaling != Scaling::None && self.form == FormName::Spatial {
            return bad(
                "`scaling` applies to Linear layers; `form` = \"spatial\" is for convolutions"
                    .into(),
            );
        }
        Ok(Box::new(self.clone()))
    }
}

impl LowRank {
    /// The rank rule of `layer` (`build` admits exactly one rule, and `shapes` a rank for
    /// every listed layer).
    fn rule(&self, layer: &str) -> Result<RankRule> {
        Ok(match (self.rank, &self.ranks, self.energy, self.keep) {
            (Some(r), ..) => RankRule::Rank(r),
            (_, Some(m), ..) => RankRule::Rank(m.get(layer).copied().unwrap_or(0)),
            (_, _, Some(e), _) => RankRule::Energy(e),
            (.., Some(k)) => RankRule::Params(k),
            _ => {
                return Err(Error::pass(
                    PASS,
                    "set exactly one of `rank`, `ranks`, `energy` and `keep`",
                ))
            }
        })
    }

    /// The layers to factorize with their shapes, every named one checked.
    fn shapes(&self, model: &Model) -> Result<Vec<LayerShape>> {
        let named = self
            .layers
            .clone()
            .or_else(|| self.ranks.as_ref().map(|m| m.keys().cloned().collect()));
        let form = self.form.into();
        let Some(names) = named else {
            return Ok(default_layers(model)
                .iter()
                .filter_map(|n| shape_of(model, n, form).ok())
                .collect());
        };
        let mut out = Vec::new();
        for n in &names {
            let s = shape_of(model, n, form)
                .map_err(|why| Error::pass(PASS, format!("`layers`: `{n}` {why}")))?;
            if self.scaling != Scaling::None && !s.columns_are_inputs() {
                return Err(Error::pass(
                    PASS,
                    format!("`layers`: `{n}` is a convolution; `scaling` applies to Linear layers"),
                ));
            }
            out.push(s);
        }
        if let (Some(l), Some(m)) = (&self.layers, &self.ranks) {
            if let Some(k) = m.keys().find(|k| !l.contains(k)) {
                return Err(Error::pass(
                    PASS,
                    format!("`ranks.{k}` names a layer missing from `layers`"),
                ));
            }
            if let Some(n) = l.iter().find(|n| !m.contains_key(*n)) {
                return Err(Error::pass(
                    PASS,
                    format!("`layers`: `{n}` has no rank in `ranks`"),
                ));
            }
        }
        Ok(out)
    }

    /// The column scale of each Linear layer from the calibration inputs (identity for
    /// plain SVD), keyed by node.
    fn scales(
        &self,
        model: &Model,
        shapes: &[LayerShape],
        ctx: &mut PassCtx,
    ) -> Result<BTreeMap<String, ColumnScale>> {
        let mut out = BTreeMap::new();
        if self.scaling == Scaling::None {
            return Ok(out);
        }
        let names: Vec<String> = shapes
            .iter()
            .map(|s| format!("{}.weight", s.node))
            .collect();
        for (cols, nodes) in linear_groups(model, &names, PASS)? {
            let stats = input_stats(ctx, model, &nodes[0], cols, self.scaling == Scaling::Whiten)?;
            let scale = match self.scaling {
                Scaling::Asvd => ColumnScale::asvd(&stats.sq, stats.rows, self.alpha),
                _ => ColumnScale::whitening(&stats.hessian()?, cols, self.damp)?,
            };
            for n in nodes {
                out.insert(n, scale.clone());
            }
        }
        Ok(out)
    }
}

/// Every Linear and groups-1 Conv2d except the output layer and convolutions that read a
/// single channel (the image itself), in graph order.
pub fn default_layers(model: &Model) -> Vec<String> {
    let g = &model.graph;
    g.nodes
        .iter()
        .filter(|n| n.name != g.output)
        .filter(|n| match &n.op {
            Op::Linear(_) => true,
            Op::Conv2d(c) => c.groups == 1 && c.in_channels > 1,
            _ => false,
        })
        .map(|n| n.name.clone())
        .collect()
}

impl Pass for LowRank {
    fn name(&self) -> &'static str {
        PASS
    }

    fn apply(&self, mut model: Model, ctx: &mut PassCtx) -> Result<(Model, PassRecord)> {
        let shapes = self.shapes(&model)?;
        if shapes.is_empty() {
            return Err(Error::pass(PASS, "the model has no layer to factorize"));
        }
        let mut scales = self.scales(&model, &shapes, ctx)?;
        let bar = progress(shapes.len(), PASS);
        let (mut done, mut kept_dense) = (Vec::new(), Vec::new());
        for s in &shapes {
            bar.inc(1);
            let w = s.matrix(&model)?;
            let scale = scales.remove(&s.node).unwrap_or(ColumnScale::Identity);
            let d = decompose(&w, s.rows, s.cols, scale)
                .map_err(|e| Error::pass(PASS, format!("`{}`: {e}", s.node)))?;
            let r = choose_rank(self.rule(&s.node)?, s, Some(&d), &s.node)
                .map_err(|e| Error::pass(PASS, e.to_string()))?;
            if r * s.params_per_rank() >= s.full_params() {
                kept_dense.push(serde_json::json!({ "layer": s.node, "rank": r }));
                continue;
            }
            done.push(lowrank::apply(&mut model, s, &d, r)?);
        }
        bar.finish_and_clear();
        if done.is_empty() {
            return Err(Error::pass(PASS, "no layer was factorized: at the chosen ranks no factor pair is smaller than its layer"));
        }
        model.graph.validate()?;
        model.graph.check_params(&model.params)?;
        let hist = if self.finetune_epochs > 0 {
            ctx.finetune(&mut model, Some(self.finetune_epochs), &mut NoHooks)?
        } else {
            Vec::new()
        };
        let (before, after): (usize, usize) = done.iter().fold((0, 0), |(a, b), f| {
            (a + f.params_before, b + f.params_after)
        });
        let svd = match self.scaling {
            Scaling::None => "truncated SVD",
            Scaling::Asvd => "ASVD",
            Scaling::Whiten => "whitened SVD",
        };
        let convs = shapes.iter().any(|s| !s.columns_are_inputs());
        let form = match (convs, self.form) {
            (false, _) => "",
            (true, FormName::Unfold) => ", convolutions unfolded",
            (true, FormName::Spatial) => ", convolutions spatially",
        };
        let label = format!(
            "{} layers factorized by {svd}{form}: {before} → {after} parameters in them",
            done.len()
        );
        let details = serde_json::json!({
            "layers": done, "kept_dense": kept_dense, "params_before": before, "params_after": after,
            "finetune": hist,
        });
        super::done(model, PASS, label, details)
    }
}
