//! Optimizers over candle `Var`s with state that can be saved and restored exactly (so
//! `--resume` continues bit-for-bit): SGD with momentum, weight decay and Nesterov
//! (Sutskever et al. 2013), and AdamW (Loshchilov & Hutter 2019, decoupled weight decay).

use std::collections::{BTreeMap, HashSet};

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use super::update;
use crate::ops::{with_cpu, with_cpu_mut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Optimizer choice and hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    Adamw {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The same optimizer with base learning rate `lr`.
    pub fn with_lr(&self, lr: f64) -> Self {
        let mut c = self.clone();
        match &mut c {
            OptimizerConfig::Sgd { lr: l, .. } | OptimizerConfig::Adamw { lr: l, .. } => *l = lr,
        }
        c
    }

    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }
}

/// An optimizer bound to a list of variables.
pub struct Optimizer {
    cfg: OptimizerConfig,
    vars: Vec<(String, Var)>,
    /// Names that receive weight decay (conv/linear weights, not BN or biases).
    decay: HashSet<String>,
    /// First moment / momentum buffer and second moment, by variable name.
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    pub step: u64,
}

impl Optimizer {
    pub fn new(cfg: OptimizerConfig, vars: Vec<(String, Var)>, decay: HashSet<String>) -> Self {
        Optimizer {
            cfg,
            vars,
            decay,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            step: 0,
        }
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with learning rate `lr` (the schedule's value for this step): the fused
    /// in-place pass ([`super::update`]) for f32 variables, the composed candle form
    /// ([`Optimizer::step_reference`]) for any other dtype.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, true)
    }

    /// [`Optimizer::step`] through the composed candle form for every variable (the
    /// reference the fused pass is tested against).
    pub fn step_reference(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step_with(grads, lr, false)
    }

    fn step_with(&mut self, grads: &GradStore, lr: f64, fuse: bool) -> Result<()> {
        self.step += 1;
        for i in 0..self.vars.len() {
            let (name, var) = self.vars[i].clone();
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let fused = fuse
                && var.dtype() == DType::F32
                && g.dtype() == DType::F32
                && var.as_tensor().is_contiguous();
            if fused {
                self.fused(&name, &var, g, lr)?;
            } else {
                self.reference(&name, &var, g, lr)?;
            }
        }
        Ok(())
    }

    /// The weight decay of variable `name` (0 for those that take none).
    fn decay_of(&self, name: &str) -> f64 {
        if self.decay.contains(name) {
            self.weight_decay()
        } else {
            0.0
        }
    }

    /// The moment buffer `name` of `map` as a contiguous f32 tensor the update can write in
    /// place (zeros of `var`'s shape when there is none yet).
    fn buffer(map: &mut BTreeMap<String, Tensor>, name: &str, var: &Var) -> Result<Tensor> {
        let t = match map.get(name) {
            Some(t) if t.dims() != var.dims() => {
                return Err(Error::Train(format!(
                    "optimizer state of `{name}` is {:?}, the variable {:?}",
                    t.dims(),
                    var.dims()
                )))
            }
            Some(t) if t.dtype() == DType::F32 && t.is_contiguous() => return Ok(t.clone()),
            Some(t) => t.to_dtype(DType::F32)?.contiguous()?,
            None => Tensor::zeros(var.shape(), DType::F32, var.device())?,
        };
        map.insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn fused(&mut self, name: &str, var: &Var, g: &Tensor, lr: f64) -> Result<()> {
        let wd = self.decay_of(name);
        let w = var.as_tensor();
        match self.cfg {
            OptimizerConfig::Sgd {
                momentum, nesterov, ..
            } => {
                let s = update::SgdStep {
                    lr: lr as f32,
                    momentum: momentum as f32,
                    weight_decay: wd as f32,
                    nesterov,
                };
                if momentum <= 0.0 {
                    return with_cpu(g, |g| {
                        with_cpu_mut(w, |w| {
                            update::sgd(w, g, &mut [], s);
                            Ok(())
                        })
                    })?;
                }
                let buf = Self::buffer(&mut self.m, name, var)?;
                with_cpu(g, |g| {
                    with_cpu_mut(&buf, |b| {
                        nested(with_cpu_mut(w, |w| {
                            update::sgd(w, g, b, s);
                            Ok(())
                        }))
                    })
                })?
            }
            OptimizerConfig::Adamw {
                beta1, beta2, eps, ..
            } => {
                let s = update::AdamwStep {
                    lr: lr as f32,
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    eps: eps as f32,
                    weight_decay: wd as f32,
                    t: self.step as i32,
                };
                let m = Self::buffer(&mut self.m, name, var)?;
                let v = Self::buffer(&mut self.v, name, var)?;
                with_cpu(g, |g| {
                    with_cpu_mut(&m, |m| {
                        nested(with_cpu_mut(&v, |v| {
                            nested(with_cpu_mut(w, |w| {
                                update::adamw(w, g, m, v, s);
                                Ok(())
                            }))
                        }))
                    })
                })?
            }
        }
    }

    fn reference(&mut self, name: &str, var: &Var, g: &Tensor, lr: f64) -> Result<()> {
        // gradients can carry autograd history; state built from them must not, or every
        // step's graph stays alive through the momentum buffers
        let g = &g.detach();
        let w = &var.as_tensor().detach();
        let wd = self.decay_of(name);
        let new = match self.cfg {
            OptimizerConfig::Sgd {
                momentum, nesterov, ..
            } => {
                let g = if wd > 0.0 {
                    (g + (w * wd)?)?
                } else {
                    g.clone()
                };
                let d = if momentum > 0.0 {
                    let buf = match self.m.get(name) {
                        Some(b) => ((b * momentum)? + &g)?,
                        None => g.clone(),
                    };
                    self.m.insert(name.to_string(), buf.clone());
                    if nesterov {
                        (g + (buf * momentum)?)?
                    } else {
                        buf
                    }
                } else {
                    g
                };
                (w - (d * lr)?)?
            }
            OptimizerConfig::Adamw {
                beta1, beta2, eps, ..
            } => {
                let m = match self.m.get(name) {
                    Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                    None => (g * (1.0 - beta1))?,
                };
                let v = match self.v.get(name) {
                    Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                    None => (g.sqr()? * (1.0 - beta2))?,
                };
                let t = self.step as i32;
                let mh = (&m / (1.0 - beta1.powi(t)))?;
                let vh = (&v / (1.0 - beta2.powi(t)))?;
                self.m.insert(name.to_string(), m);
                self.v.insert(name.to_string(), v);
                let upd = (mh / (vh.sqrt()? + eps)?)?;
                ((w * (1.0 - lr * wd))? - (upd * lr)?)?
            }
        };
        var.set(&new)?;
        Ok(())
    }

    fn weight_decay(&self) -> f64 {
        match self.cfg {
            OptimizerConfig::Sgd { weight_decay, .. }
            | OptimizerConfig::Adamw { weight_decay, .. } => weight_decay,
        }
    }

    /// State tensors for a checkpoint (`m.<name>`, `v.<name>`).
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        for (k, t) in state {
            let (kind, name) = k
                .split_once('.')
                .ok_or_else(|| Error::Train(format!("bad optimizer key `{k}`")))?;
            match kind {
                "m" => self.m.insert(name.to_string(), t),
                "v" => self.v.insert(name.to_string(), t),
                _ => return Err(Error::Train(format!("bad optimizer key `{k}`"))),
            };
        }
        self.step = step;
        Ok(())
    }
}

/// A library result inside an in-place closure, as candle's error type.
fn nested(r: Result<()>) -> candle_core::Result<()> {
    r.map_err(crate::ops::op_err)
}
