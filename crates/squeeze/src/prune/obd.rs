//! Optimal Brain Damage (LeCun, Denker & Solla 1989): the saliency of weight k is
//! `s_k = ½·h_kk·w_k²`, the second-order increase of the loss when w_k is set to zero with
//! the Hessian taken as diagonal. Two estimators of diag(H) of the mean cross-entropy over
//! labelled batches:
//!
//! - **Fisher** (Gauss–Newton): per example, `Σ_c p_c·(∂ log p_c/∂w)²` — the expectation
//!   over the model's own predictive distribution, computed exactly (one backward per
//!   class). For softmax cross-entropy this is the Gauss–Newton diagonal, and for a ReLU
//!   network (piecewise linear in any single weight) it equals the Hessian diagonal away
//!   from kinks.
//! - **Hutchinson**: `E[v ⊙ Hv]` over Rademacher probes `v`, with `Hv` from central
//!   differences of gradients, `(g(w+εv) − g(w−εv)) / 2ε` (candle has no double backward).
//!   Unbiased, but noisy: more probes, less noise.
//!
//! The OBD loop (train → saliencies → delete the lowest → retrain) is the `obd` pass.

use candle_core::{DType, Tensor, Var, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::interp::{forward, ForwardOpts};
use crate::model::Model;
use crate::train::Batch;

/// How diag(H) is estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    #[default]
    Fisher,
    Hutchinson,
}

/// Central-difference step of the Hutchinson Hessian-vector products.
pub const HV_STEP: f64 = 1e-3;

/// The model's parameters with `names` as variables.
fn vars_of(model: &Model, names: &[String]) -> Result<(crate::params::ParamStore, Vec<Var>)> {
    let (p, vars) = model.params.with_vars(names)?;
    Ok((p, vars.into_iter().map(|(_, v)| v).collect()))
}

fn images(b: &Batch) -> Result<(&Tensor, &Tensor)> {
    match b {
        Batch::Images { x, labels } => Ok((x, labels)),
        Batch::Tokens { .. } => Err(Error::Data(
            "Optimal Brain Damage needs a classifier with labelled images".into(),
        )),
    }
}

fn flat(g: Option<&Tensor>, n: usize) -> Result<Vec<f64>> {
    match g {
        Some(g) => Ok(g.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?),
        None => Ok(vec![0.0; n]),
    }
}

/// diag(H) of the mean cross-entropy over `batches`, one vector per weight of `names`.
pub fn hessian_diag(
    model: &Model,
    names: &[String],
    batches: &[Batch],
    est: Estimator,
    probes: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    match est {
        Estimator::Fisher => fisher(model, names, batches),
        Estimator::Hutchinson => hutchinson(model, names, batches, probes.max(1), seed),
    }
}

fn zeros(vars: &[Var]) -> Vec<Vec<f64>> {
    vars.iter().map(|v| vec![0.0; v.elem_count()]).collect()
}

fn fisher(model: &Model, names: &[String], batches: &[Batch]) -> Result<Vec<Vec<f64>>> {
    let (params, vars) = vars_of(model, names)?;
    let mut acc = zeros(&vars);
    let mut n = 0usize;
    for b in batches {
        let (x, _) = images(b)?;
        for i in 0..x.dim(0)? {
            let xi = x.narrow(0, i, 1)?;
            let logits = forward(&model.graph, &params, &xi, &ForwardOpts::eval())?.output;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let p: Vec<f64> = logp.exp()?.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            for (c, &pc) in p.iter().enumerate() {
                if pc < 1e-10 {
                    continue;
                }
                let grads = logp.get(0)?.get(c)?.neg()?.backward()?;
                for (a, v) in acc.iter_mut().zip(&vars) {
                    let g = flat(grads.get(v.as_tensor()), a.len())?;
                    for (s, gv) in a.iter_mut().zip(g) {
                        *s += pc * gv * gv;
                    }
                }
            }
            n += 1;
        }
    }
    let n = n.max(1) as f64;
    Ok(acc
        .into_iter()
        .map(|a| a.into_iter().map(|v| v / n).collect())
        .collect())
}

/// Gradients of the batch's mean cross-entropy with respect to `vars`.
fn grads(
    model: &Model,
    params: &crate::params::ParamStore,
    vars: &[Var],
    b: &Batch,
) -> Result<Vec<Vec<f64>>> {
    let (x, labels) = images(b)?;
    let logits = forward(&model.graph, params, x, &ForwardOpts::eval())?.output;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    let g = loss.backward()?;
    vars.iter()
        .map(|v| flat(g.get(v.as_tensor()), v.elem_count()))
        .collect()
}

fn shift(vars: &[Var], base: &[Tensor], probe: &[Vec<f64>], eps: f64) -> Result<()> {
    for ((v, b), p) in vars.iter().zip(base).zip(probe) {
        let d = Tensor::from_vec(p.clone(), b.shape(), b.device())?.to_dtype(b.dtype())?;
        v.set(&(b + (d * eps)?)?)?;
    }
    Ok(())
}

fn hutchinson(
    model: &Model,
    names: &[String],
    batches: &[Batch],
    probes: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    let (params, vars) = vars_of(model, names)?;
    let base: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acc = zeros(&vars);
    let mut count = 0usize;
    for b in batches {
        for _ in 0..probes {
            let v: Vec<Vec<f64>> = acc
                .iter()
                .map(|a| {
                    (0..a.len())
                        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                        .collect()
                })
                .collect();
            shift(&vars, &base, &v, HV_STEP)?;
            let gp = grads(model, &params, &vars, b)?;
            shift(&vars, &base, &v, -HV_STEP)?;
            let gm = grads(model, &params, &vars, b)?;
            for (((a, vi), p), m) in acc.iter_mut().zip(&v).zip(&gp).zip(&gm) {
                for k in 0..a.len() {
                    a[k] += vi[k] * (p[k] - m[k]) / (2.0 * HV_STEP);
                }
            }
            count += 1;
        }
    }
    // the variables are this function's own copies (`with_vars`): the model is untouched
    let n = count.max(1) as f64;
    Ok(acc
        .into_iter()
        .map(|a| a.into_iter().map(|v| v / n).collect())
        .collect())
}

/// OBD saliencies `½·max(h, 0)·w²` (a negative estimate counts as zero curvature).
pub fn saliency(h: &[f64], w: &[f32]) -> Vec<f32> {
    h.iter()
        .zip(w)
        .map(|(h, w)| (0.5 * h.max(0.0) * (*w as f64) * (*w as f64)) as f32)
        .collect()
}
