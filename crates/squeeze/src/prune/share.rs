//! Weight sharing (Deep Compression, Han et al. 2016): the surviving weights of a layer are
//! clustered by 1-D k-means into 2^bits centroids, linearly initialized between the
//! smallest and largest weight (the initialization the paper found best: it keeps the few
//! large weights represented), and every weight is replaced by its centroid. Centroids are
//! then fine-tuned: [`ShareHook`] runs after each optimizer step and moves every centroid
//! by the sum of its members' updates, so for SGD (with momentum, Nesterov and weight
//! decay, all linear in the gradient) a centroid follows exactly the paper's summed
//! gradient; pruned weights (index none) stay zero.

use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::train::Hooks;

/// Assignment of a pruned entry.
pub const NONE: u16 = u16::MAX;

/// One layer's clustering.
#[derive(Debug, Clone)]
pub struct Clusters {
    pub name: String,
    /// Centroid index per entry ([`NONE`] for pruned entries).
    pub assign: Vec<u16>,
    pub centroids: Vec<f64>,
}

impl Clusters {
    /// The shared values (zero where pruned).
    pub fn values(&self) -> Vec<f32> {
        self.assign
            .iter()
            .map(|&a| {
                if a == NONE {
                    0.0
                } else {
                    self.centroids[a as usize] as f32
                }
            })
            .collect()
    }

    /// The clustering an already-shared tensor implies: one centroid per distinct
    /// non-zero value.
    pub fn of_shared(name: &str, values: &[f32]) -> Self {
        let c = crate::math::codec::codebook(values);
        let assign = values
            .iter()
            .map(|v| match c.binary_search_by(|x| x.total_cmp(v)) {
                Ok(i) if *v != 0.0 => i as u16,
                _ => NONE,
            })
            .collect();
        Clusters {
            name: name.into(),
            assign,
            centroids: c.into_iter().map(f64::from).collect(),
        }
    }
}

/// Lloyd iterations of the 1-D k-means.
const ITERS: usize = 30;

/// 1-D k-means with `k` linearly initialized centroids over the entries of `values` whose
/// `mask` is 1 (and which are non-zero).
pub fn kmeans(name: &str, values: &[f32], mask: &[u8], k: usize) -> Clusters {
    let live: Vec<usize> = (0..values.len())
        .filter(|&i| mask[i] != 0 && values[i] != 0.0)
        .collect();
    let mut assign = vec![NONE; values.len()];
    if live.is_empty() || k == 0 {
        return Clusters {
            name: name.into(),
            assign,
            centroids: vec![],
        };
    }
    let (lo, hi) = live.iter().fold((f64::MAX, f64::MIN), |(l, h), &i| {
        let v = values[i] as f64;
        (l.min(v), h.max(v))
    });
    let mut c: Vec<f64> = (0..k)
        .map(|j| {
            if k == 1 {
                (lo + hi) / 2.0
            } else {
                lo + (hi - lo) * j as f64 / (k - 1) as f64
            }
        })
        .collect();
    for _ in 0..ITERS {
        let (mut sum, mut cnt) = (vec![0.0; k], vec![0usize; k]);
        for &i in &live {
            let j = nearest(&c, values[i] as f64);
            assign[i] = j as u16;
            sum[j] += values[i] as f64;
            cnt[j] += 1;
        }
        let mut moved = false;
        for j in 0..k {
            if cnt[j] > 0 {
                let m = sum[j] / cnt[j] as f64;
                moved |= m != c[j];
                c[j] = m;
            }
        }
        if !moved {
            break;
        }
    }
    for &i in &live {
        assign[i] = nearest(&c, values[i] as f64) as u16;
    }
    Clusters {
        name: name.into(),
        assign,
        centroids: c,
    }
}

/// Index of the centroid nearest `v` (centroids ascending, as Lloyd keeps them in 1-D).
fn nearest(c: &[f64], v: f64) -> usize {
    let p = c.partition_point(|&x| x < v);
    match (p.checked_sub(1), c.get(p)) {
        (Some(a), Some(&b)) if (v - c[a]) <= (b - v) => a,
        (Some(a), None) => a,
        _ => p.min(c.len() - 1),
    }
}

/// Centroid fine-tuning through the trainer.
pub struct ShareHook {
    pub layers: Vec<Clusters>,
}

impl Hooks for ShareHook {
    fn after_step(&mut self, vars: &[(String, Var)]) -> Result<()> {
        for cl in &mut self.layers {
            let Some((_, var)) = vars.iter().find(|(n, _)| *n == cl.name) else {
                continue;
            };
            let t = var.as_tensor();
            let w: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let mut delta = vec![0.0f64; cl.centroids.len()];
            for (a, v) in cl.assign.iter().zip(&w) {
                if *a != NONE {
                    delta[*a as usize] += *v as f64 - cl.centroids[*a as usize];
                }
            }
            for (c, d) in cl.centroids.iter_mut().zip(delta) {
                *c += d;
            }
            var.set(&Tensor::from_vec(cl.values(), t.shape(), t.device())?)?;
        }
        Ok(())
    }
}
