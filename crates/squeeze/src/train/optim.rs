//! Optimizers over candle `Var`s with state that can be saved and restored exactly (so
//! `--resume` continues bit-for-bit): SGD with momentum, weight decay and Nesterov
//! (Sutskever et al. 2013), and AdamW (Loshchilov & Hutter 2019, decoupled weight decay).

use std::collections::{BTreeMap, HashSet};

use candle_core::{backprop::GradStore, Tensor, Var};
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

    /// One update with learning rate `lr` (the schedule's value for this step).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // gradients can carry autograd history; state built from them must not, or every
            // step's graph stays alive through the momentum buffers
            let g = &g.detach();
            let w = &var.as_tensor().detach();
            let wd = if self.decay.contains(name) {
                self.weight_decay()
            } else {
                0.0
            };
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
                        self.m.insert(name.clone(), buf.clone());
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
                    self.m.insert(name.clone(), m);
                    self.v.insert(name.clone(), v);
                    let upd = (mh / (vh.sqrt()? + eps)?)?;
                    ((w * (1.0 - lr * wd))? - (upd * lr)?)?
                }
            };
            var.set(&new)?;
        }
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
