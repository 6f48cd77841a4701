//! The parameter store: every tensor of a model by name (`<node>.<param>`), trainable
//! parameters and buffers (BatchNorm running statistics) alike. Graph nodes refer to these
//! names; `Graph::check_params` proves a store matches a graph exactly (no missing, no
//! dangling, right shapes, finite values).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{CpuStorage, DType, Storage, Tensor, Var};

use crate::error::{Error, Result};
use crate::tensor::Dtype;

/// The largest magnitude a stored float may have (the committed models stay below 10;
/// 3e38 is finite but overflows the first matmul).
pub const MAX_VALUE: f32 = 1e8;

/// Named tensors of a model.
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    tensors: BTreeMap<String, Tensor>,
    /// Which name → tensor map this is ([`Self::stamp`]).
    stamp: u64,
}

/// A stamp no store has had yet.
fn fresh_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_map(tensors: BTreeMap<String, Tensor>) -> Self {
        ParamStore {
            tensors,
            stamp: fresh_stamp(),
        }
    }

    /// Two stores with the same stamp map every name to the same tensor: a store gets a
    /// new stamp whenever a name is inserted or removed, and a clone keeps its source's
    /// until then. (What is resolved from a store once — a Linear group's packed
    /// weights — stays valid while the stamp does.)
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingParam(name.to_string()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.stamp = fresh_stamp();
        self.tensors.insert(name.into(), t);
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.stamp = fresh_stamp();
        self.tensors.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The underlying map (for saving).
    pub fn map(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// A deep copy whose tensors share no storage with `self` (so training the copy leaves
    /// the original untouched).
    pub fn deep_clone(&self) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.tensors {
            out.insert(k.clone(), t.copy()?.detach());
        }
        Ok(ParamStore::from_map(out))
    }

    /// Errors naming the first floating-point tensor that holds a NaN, an infinity or a
    /// value beyond ±[`MAX_VALUE`].
    pub fn check_finite(&self) -> Result<()> {
        for (name, t) in &self.tensors {
            if !Dtype::of(t.dtype()).is_some_and(Dtype::is_float) {
                continue;
            }
            let bad = with_f32s(t, |v| {
                v.iter()
                    .position(|x| !x.is_finite() || x.abs() > MAX_VALUE)
                    .map(|i| (i, v[i]))
            })?;
            match bad {
                Some((i, x)) if !x.is_finite() => {
                    return Err(Error::Graph(format!(
                        "tensor `{name}` holds a non-finite value ({x}) at flat index {i}"
                    )))
                }
                Some((i, x)) => {
                    return Err(Error::Graph(format!(
                        "tensor `{name}` holds {x} at flat index {i}, beyond ±{MAX_VALUE:e}: a \
                         trained network's values are many orders of magnitude smaller, and \
                         products of such values overflow f32"
                    )))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Number of non-zero scalars in the floating-point tensors whose names satisfy `keep`.
    pub fn count_nonzero(&self, keep: impl Fn(&str) -> bool) -> Result<usize> {
        let mut n = 0;
        for (_, t) in self.tensors.iter().filter(|(k, _)| keep(k)) {
            if !Dtype::of(t.dtype()).is_some_and(Dtype::is_float) {
                continue;
            }
            n += with_f32s(t, |v| v.iter().filter(|x| **x != 0.0).count())?;
        }
        Ok(n)
    }

    /// Turns the named tensors into trainable variables. The returned store shares storage
    /// with the variables, so an optimizer step on a `Var` is seen by the next forward.
    pub fn with_vars(&self, trainable: &[String]) -> Result<(ParamStore, Vec<(String, Var)>)> {
        let mut store = self.clone();
        let mut vars = Vec::new();
        for name in trainable {
            let var = Var::from_tensor(self.get(name)?)?;
            store.insert(name.clone(), var.as_tensor().clone());
            vars.push((name.clone(), var));
        }
        Ok((store, vars))
    }
}

/// `f` over the elements of `t` in row-major order, as f32: borrowed in place when `t` is
/// a contiguous f32 CPU tensor (a model's stored weights), so that checking or counting
/// the weights of a large model costs no copy of its largest tensor; converted otherwise.
pub fn with_f32s<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(all)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&all[a..b]));
        }
    }
    Ok(f(&f32_values(t)?))
}

/// The elements of `t` in row-major order, as f32.
pub fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The borrowed view and the copying fallback agree: a stored (contiguous) tensor, a
    /// contiguous slice with an offset, a transposed (strided) tensor and an f64 tensor
    /// all visit their elements in row-major order.
    #[test]
    fn with_f32s_visits_row_major_values_borrowed_or_copied() -> Result<()> {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((3, 4))?;
        let seen = |t: &Tensor| with_f32s(t, |v| v.to_vec());
        assert_eq!(seen(&t)?, f32_values(&t)?);
        let rows = t.narrow(0, 1, 2)?;
        assert_eq!(seen(&rows)?, (4..12).map(|x| x as f32).collect::<Vec<_>>());
        let tt = t.t()?;
        assert_eq!(seen(&tt)?, f32_values(&tt)?);
        assert_eq!(seen(&tt)?[..3], [0.0, 4.0, 8.0]);
        let d = t.to_dtype(DType::F64)?;
        assert_eq!(seen(&d)?, f32_values(&t)?);
        Ok(())
    }

    /// A clone shares its source's stamp until either changes a name; an insert, a
    /// removal or a deep copy (new tensors) gives a stamp no other store has.
    #[test]
    fn the_stamp_changes_with_every_change_of_names_or_tensors() -> Result<()> {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        let mut a = ParamStore::from_map(BTreeMap::from([("w".to_string(), t.clone())]));
        let b = a.clone();
        assert_eq!(a.stamp(), b.stamp());
        assert_ne!(a.deep_clone()?.stamp(), a.stamp());
        a.insert("w", t);
        assert_ne!(a.stamp(), b.stamp());
        let before = a.stamp();
        a.remove("w");
        assert_ne!(a.stamp(), before);
        Ok(())
    }
}
