//! The recipe entry of the `quantize` pass (`quant.rs`): bits, scale granularity, zero
//! points, activation scheme, rounding (round-to-nearest or GPTQ) and static clipping,
//! checked together and turned into the pass's [`Layout`] and [`Rounding`].

use serde::{Deserialize, Serialize};

use super::prune_recipe::{default_block, default_damp};
use super::{Declared, Pass, Quantize, Rounding};
use crate::error::{Error, Result};
use crate::kinds::qlinear::ActQuant;
use crate::math::qlayout::{Layout, Scales};
use crate::quant::calibrate::Clip;
use crate::quant::gptq::GptqOpts;

/// How the `quantize` pass rounds weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingName {
    #[default]
    Rtn,
    Gptq,
}

/// `quantize`: post-training quantization of Linear weights (and embedding tables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeOptions {
    pub bits: u8,
    #[serde(default)]
    pub group: Option<usize>,
    #[serde(default)]
    pub per_tensor: bool,
    #[serde(default)]
    pub zero_point: bool,
    /// int8: "dynamic" (default) or "static"; int4: "none" (default) or "dynamic".
    #[serde(default)]
    pub activations: Option<ActQuant>,
    #[serde(default)]
    pub rounding: RoundingName,
    /// Static int8 clipping: "min_max" (default), "mse" or { percentile = 99.99 }.
    #[serde(default = "default_clip")]
    pub clip: Clip,
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub embeddings: bool,
    /// GPTQ: columns per lazy-update block, dampening, act-order.
    #[serde(default = "default_block")]
    pub block: usize,
    #[serde(default = "default_damp")]
    pub damp: f64,
    #[serde(default)]
    pub act_order: bool,
}

fn default_clip() -> Clip {
    Clip::MinMax
}
fn yes() -> bool {
    true
}

impl Declared for QuantizeOptions {
    const HELP: &'static str =
        "post-training quantization of Linear weights and embedding tables: \
        `bits` 8 (`activations` \"dynamic\" or \"static\", `clip` for static) or 4 (weight-only, or \
        `activations` \"dynamic\": int8 codes per 32 inputs and an integer product), \
        scales per channel, `per_tensor` or per `group`, optional `zero_point`; `rounding` \"rtn\" \
        or \"gptq\" (`block`, `damp`, `act_order`)";
    const EXAMPLE: &'static str = "bits = 8, activations = \"dynamic\"";
    fn build(&self) -> Result<Box<dyn Pass>> {
        let layout = self.layout()?;
        let act = self.act()?;
        if let Clip::Percentile(p) = self.clip {
            if !(p > 0.0 && p <= 100.0) {
                return Err(err(format!(
                    "`clip`: percentile must be in (0, 100], got {p}"
                )));
            }
        }
        let (block, damp) = (self.block, self.damp);
        if block == 0 || !(damp > 0.0 && damp.is_finite()) {
            return Err(err(format!(
                "`block` must be positive and `damp` > 0, got {block} and {damp}"
            )));
        }
        Ok(Box::new(Quantize {
            layout,
            act,
            rounding: match self.rounding {
                RoundingName::Rtn => Rounding::Rtn,
                RoundingName::Gptq => Rounding::Gptq(GptqOpts {
                    block,
                    damp,
                    act_order: self.act_order,
                }),
            },
            clip: self.clip,
            layers: self.layers.clone(),
            embeddings: self.embeddings,
        }))
    }
}

fn err(m: String) -> Error {
    Error::pass("quantize", m)
}

impl QuantizeOptions {
    /// The stored layout, checked against a row length every group divides.
    fn layout(&self) -> Result<Layout> {
        let scales = match (self.group, self.per_tensor) {
            (Some(_), true) => {
                return Err(err("`group` and `per_tensor` exclude each other".into()))
            }
            (Some(g), false) => Scales::Group(g),
            (None, true) => Scales::Tensor,
            (None, false) => Scales::Channel,
        };
        let layout = Layout {
            bits: self.bits,
            scales,
            zero_point: self.zero_point,
        };
        let probe = match scales {
            Scales::Group(g) => g.max(32),
            _ => 32,
        };
        layout
            .check(probe)
            .map_err(|m| err(format!("`bits`/`group`: {m}")))?;
        Ok(layout)
    }

    /// The activation scheme: int8 weights take dynamic (default) or static activations,
    /// per channel or per tensor; int4 weights are weight-only (default) or dynamic.
    fn act(&self) -> Result<ActQuant> {
        let default = if self.bits == 8 {
            ActQuant::Dynamic
        } else {
            ActQuant::None
        };
        let act = self.activations.unwrap_or(default);
        let grouped = self.group.is_some();
        match (self.bits, act, grouped) {
            (8, ActQuant::None, _) => Err(err(
                "`activations`: int8 weights take \"dynamic\" or \"static\"".into(),
            )),
            (8, _, true) => Err(err(
                "`group`: int8 weights take per-channel or per-tensor scales".into(),
            )),
            (4, ActQuant::Static, _) => Err(err(
                "`activations`: int4 weights take \"none\" (weight-only) or \"dynamic\"".into(),
            )),
            _ => Ok(act),
        }
    }
}
