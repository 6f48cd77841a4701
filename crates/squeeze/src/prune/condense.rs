//! Learned group convolution, the training half of CondenseNet (Huang et al. 2018). The
//! output filters of a convolution are split into G contiguous groups; during the first
//! half of a fine-tuning run a group-lasso term λ·Σ_g Σ_i ‖W[group g, input i]‖₂ pushes
//! whole (group, input channel) columns toward zero, and C − 1 condensation stages, evenly
//! spaced over that half, each remove from every group the input channels whose column has
//! the smallest L1 norm, until each group reads ⌈I/C⌉ of the I inputs. The second half
//! trains the condensed structure. The removed columns are held at zero by masks applied
//! after every optimizer step (the simulated form); `passes::condense` then materializes
//! each layer as a channel gather followed by a standard group convolution.

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::train::Hooks;

/// Keeps the group-lasso norm differentiable where a column is exactly zero.
const LASSO_EPS: f64 = 1e-12;

/// One convolution under learned grouping: weight `[out, inp, k, k]`, `groups` contiguous
/// groups of output filters, and which inputs each group still reads.
#[derive(Debug, Clone)]
pub struct LearnedGroups {
    /// The convolution node.
    pub node: String,
    pub out: usize,
    pub inp: usize,
    /// k·k.
    pub kk: usize,
    pub groups: usize,
    /// `alive[g][i]`: group g still reads input channel i.
    pub alive: Vec<Vec<bool>>,
}

impl LearnedGroups {
    /// A layer whose every group reads every input; `out` must divide into `groups`.
    pub fn new(node: &str, shape: &[usize], groups: usize) -> Result<Self> {
        let [out, inp, kh, kw] = shape else {
            return Err(Error::Graph(format!(
                "`{node}`: learned groups need a [out, in, k, k] convolution weight, got {shape:?}"
            )));
        };
        if groups == 0 || !out.is_multiple_of(groups) {
            return Err(Error::Graph(format!(
                "`{node}`: its {out} output channels do not split into {groups} groups"
            )));
        }
        Ok(LearnedGroups {
            node: node.into(),
            out: *out,
            inp: *inp,
            kk: kh * kw,
            groups,
            alive: vec![vec![true; *inp]; groups],
        })
    }

    pub fn weight(&self) -> String {
        format!("{}.weight", self.node)
    }

    /// Inputs each group keeps at the end: ⌈inp / condensation⌉.
    pub fn final_keep(&self, condensation: usize) -> usize {
        self.inp.div_ceil(condensation.max(1)).max(1)
    }

    /// The inputs group `g` reads, ascending.
    pub fn kept(&self, g: usize) -> Vec<usize> {
        (0..self.inp).filter(|&i| self.alive[g][i]).collect()
    }

    /// L1 norm of column (group g, input i) of `w` (row-major `[out, inp, kk]`).
    fn column_l1(&self, w: &[f32], g: usize, i: usize) -> f64 {
        let per = self.out / self.groups;
        (g * per..(g + 1) * per)
            .map(|o| {
                let at = (o * self.inp + i) * self.kk;
                w[at..at + self.kk]
                    .iter()
                    .map(|v| v.abs() as f64)
                    .sum::<f64>()
            })
            .sum()
    }

    /// Drops, in every group, the alive inputs of smallest column L1 norm until `keep`
    /// remain (ties: the lower index stays).
    pub fn condense(&mut self, w: &[f32], keep: usize) {
        for g in 0..self.groups {
            let mut alive: Vec<(f64, usize)> = self
                .kept(g)
                .into_iter()
                .map(|i| (self.column_l1(w, g, i), i))
                .collect();
            if alive.len() <= keep {
                continue;
            }
            alive.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            for &(_, i) in &alive[..alive.len() - keep] {
                self.alive[g][i] = false;
            }
        }
    }

    /// The mask `[out, inp, k, k]` (1 = kept) as f32.
    pub fn mask(&self, dims: &[usize]) -> Result<Tensor> {
        let per = self.out / self.groups;
        let mut m = vec![0f32; self.out * self.inp * self.kk];
        for o in 0..self.out {
            for i in 0..self.inp {
                if self.alive[o / per][i] {
                    m[(o * self.inp + i) * self.kk..][..self.kk].fill(1.0);
                }
            }
        }
        Ok(Tensor::from_vec(m, dims, &Device::Cpu)?)
    }

    /// Σ_g Σ_i ‖W[group g, input i]‖₂ over `w` `[out, inp, k, k]`, differentiable.
    pub fn group_lasso(&self, w: &Tensor) -> Result<Tensor> {
        let per = self.out / self.groups;
        let cols = w
            .to_dtype(DType::F32)?
            .reshape((self.groups, per, self.inp, self.kk))?
            .sqr()?
            .sum(D::Minus1)?
            .sum(1)?;
        Ok((cols + LASSO_EPS)?.sqrt()?.sum_all()?)
    }
}

/// The trainer hook: group lasso in the condensing half, condensation stages, masks.
pub struct Condense {
    pub layers: Vec<LearnedGroups>,
    condensation: usize,
    lasso: f64,
    /// Optimizer steps between condensation stages.
    every: usize,
    step: usize,
    stages_done: usize,
    masks: Vec<Option<Tensor>>,
}

impl Condense {
    /// Stages spread over the first half of `total_steps`.
    pub fn new(
        layers: Vec<LearnedGroups>,
        condensation: usize,
        lasso: f64,
        total_steps: usize,
    ) -> Self {
        let stages = condensation.saturating_sub(1).max(1);
        let every = (total_steps / 2 / stages).max(1);
        let masks = vec![None; layers.len()];
        Condense {
            layers,
            condensation,
            lasso,
            every,
            step: 0,
            stages_done: 0,
            masks,
        }
    }

    fn stages(&self) -> usize {
        self.condensation.saturating_sub(1)
    }

    /// Inputs per group after stage `k` of `n`: from all of `inp` down to `last`, linearly.
    pub fn keep_after(inp: usize, last: usize, k: usize, n: usize) -> usize {
        if n == 0 || k >= n {
            return last;
        }
        inp - ((inp - last) * k).div_ceil(n)
    }

    /// Runs the next condensation stage on the current weights (`weight(name)`).
    fn stage(&mut self, weight: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        self.stages_done += 1;
        let (k, n, c) = (self.stages_done, self.stages(), self.condensation);
        for (l, mask) in self.layers.iter_mut().zip(&mut self.masks) {
            let name = l.weight();
            let t = weight(&name)
                .ok_or_else(|| Error::Train(format!("condense: `{name}` is not trained")))?;
            let w = crate::params::f32_values(&t)?;
            let keep = Self::keep_after(l.inp, l.final_keep(c), k, n);
            l.condense(&w, keep);
            *mask = Some(l.mask(t.dims())?.to_dtype(t.dtype())?);
        }
        // stage k of C − 1 leaves (C − k)/C of each group's inputs
        eprintln!(
            "condensation stage {k}/{n}: {} layers, each group reads {}/{c} of its inputs",
            self.layers.len(),
            c - k
        );
        Ok(())
    }

    /// Whether every condensation stage has run.
    pub fn finished(&self) -> bool {
        self.stages_done >= self.stages()
    }

    /// Runs the stages a run too short for its schedule did not reach, on `params`.
    pub fn finish(&mut self, params: &ParamStore) -> Result<()> {
        while !self.finished() {
            self.stage(&|n| params.get(n).ok().cloned())?;
        }
        Ok(())
    }
}

impl Hooks for Condense {
    fn regularizer(&self, params: &ParamStore) -> Result<Option<Tensor>> {
        if self.lasso == 0.0 || self.finished() {
            return Ok(None);
        }
        let terms = self
            .layers
            .iter()
            .map(|l| l.group_lasso(params.get(&l.weight())?));
        crate::train::weighted_sum(terms, self.lasso)
    }

    fn after_step(&mut self, vars: &[(String, Var)]) -> Result<()> {
        self.step += 1;
        if !self.finished() && self.step.is_multiple_of(self.every) {
            self.stage(&|n| {
                vars.iter()
                    .find(|(v, _)| v == n)
                    .map(|(_, var)| var.as_tensor().clone())
            })?;
        }
        for (l, mask) in self.layers.iter().zip(&self.masks) {
            let Some(mask) = mask else { continue };
            let name = l.weight();
            if let Some((_, var)) = vars.iter().find(|(v, _)| *v == name) {
                var.set(&(var.as_tensor() * mask)?)?;
            }
        }
        Ok(())
    }
}
