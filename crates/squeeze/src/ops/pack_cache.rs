//! The one cache of packed weights: a model's weights in the layouts the kernels read
//! ([`super::packed::PackedLinear`] for f32 Linear layers, [`PackedI8`] and
//! [`PackedBlocked`] for int8, [`PackedQ4`] for int4, [`PackedBits`] for binary and
//! ternary), made on first use and owned by the caller — a text encoder
//! keeps one for its lifetime, and the interpreter keeps one with the graph it runs — so
//! nothing stays packed after its model is gone.
//!
//! An inference-only model may also hand its weights over: [`PackCache::release_many`]
//! and [`PackCache::release_int8`] pack them under their parameter names for good, so the
//! caller can drop the stored originals (`crate::interp::keep_packed_only`) and the
//! process holds each weight once, in the layout its kernel reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId};

use super::packed::PackedLinear;
use super::qgemm::bits::PackedBits;
use super::qgemm::panel::PackedI8;
use super::qgemm::panel_blocked::PackedBlocked;
use super::qgemm::panel_q4::PackedQ4;
use crate::error::{Error, Result};

/// Packed weights kept beyond one call, at most this many per form (the oldest go first).
const CACHE_CAP: usize = 64;

/// Packed forms of stored weight tensors, by tensor identity (a replaced tensor has a new
/// one) and whatever else the form depends on (`K`), made on first use.
struct Kept<T, K> {
    entries: Mutex<Vec<(K, Arc<T>)>>,
}

impl<T, K: PartialEq + Copy> Default for Kept<T, K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, K: PartialEq + Copy> Kept<T, K> {
    const fn new() -> Self {
        Kept {
            entries: Mutex::new(Vec::new()),
        }
    }

    /// The packed form under key `id`, made by `make` on first use.
    fn get(&self, id: K, make: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        if let Some((_, p)) = self
            .entries
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .find(|e| e.0 == id)
        {
            return Ok(p.clone());
        }
        let p = Arc::new(make()?);
        let mut c = self.entries.lock().map_err(|_| poisoned())?;
        if !c.iter().any(|e| e.0 == id) {
            if c.len() == CACHE_CAP {
                c.remove(0);
            }
            c.push((id, p.clone()));
        }
        Ok(p)
    }
}

/// The packed forms of a model's weights, made on first use and kept by their owner (a
/// text encoder, or the graph being run): f32 Linear panels by parameter name (checked
/// against the tensors' identities), int8 panels by the identity of the stored codes
/// tensor (a replaced tensor has a new one and is packed anew).
#[derive(Default)]
pub struct PackCache {
    map: Mutex<HashMap<String, Packed>>,
    /// Linear groups resolved once, by their first node's name ([`LinearGroup`]).
    groups: Mutex<HashMap<String, Arc<LinearGroup>>>,
    /// Int8 panels that stand in for released codes, by node name.
    released_int8: Mutex<HashMap<String, Arc<PackedBlocked>>>,
    int8: Kept<PackedI8, TensorId>,
    blocked: Kept<PackedBlocked, (TensorId, usize)>,
    bits: Kept<PackedBits, TensorId>,
    int4: Kept<PackedQ4, TensorId>,
}

impl std::fmt::Debug for PackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackCache")
    }
}

/// What a group of Linear nodes (one, or siblings run as one product) needs at inference,
/// resolved once against a parameter store and kept while the store's stamp holds (the
/// caller compares it): the nodes, each one's output rows, their biases joined (zeros for
/// a node without one) and the packed product. A batch-1 sentence runs 24 or more of
/// these products; resolving the names, tensors and joined bias each time cost about a
/// microsecond apiece.
pub struct LinearGroup {
    /// The parameter store's stamp the group was resolved against.
    pub stamp: u64,
    pub nodes: Vec<String>,
    pub rows: Vec<usize>,
    pub bias: Option<Tensor>,
    pub packed: Arc<PackedLinear>,
}

/// A cache entry: the packed form of weights, with the identities of the tensors it was
/// packed from, or `None` once those were released (then it stands in for them).
struct Packed {
    ids: Option<Vec<TensorId>>,
    /// Output rows of each weight, in order.
    rows: Vec<usize>,
    packed: Arc<PackedLinear>,
}

/// The packed row-concatenation of `ws`, with each one's rows.
fn pack_rows(ws: &[&Tensor]) -> Result<(Vec<usize>, Arc<PackedLinear>)> {
    let rows = ws
        .iter()
        .map(|w| w.dim(0))
        .collect::<candle_core::Result<_>>()?;
    let packed = match ws {
        [w] => PackedLinear::pack(w)?,
        _ if ws.iter().all(|w| w.dims() == ws[0].dims()) => {
            PackedLinear::pack(&Tensor::cat(ws, 0)?)?.interleaved(ws.len())
        }
        _ => PackedLinear::pack(&Tensor::cat(ws, 0)?)?,
    };
    Ok((rows, Arc::new(packed)))
}

fn poisoned() -> Error {
    Error::Graph("pack cache poisoned".into())
}

impl PackCache {
    /// The packed form of parameter `name`, whose current tensor is `w`.
    pub fn get(&self, name: &str, w: &Tensor) -> Result<Arc<PackedLinear>> {
        self.get_many(&[name], &[w])
    }

    /// The packed row-concatenation of weights `ws` (parameters `names`, all [·, K]): one
    /// product computes every weight's outputs, side by side in `names`' order.
    pub fn get_many(&self, names: &[&str], ws: &[&Tensor]) -> Result<Arc<PackedLinear>> {
        let key = names.join("+");
        let ids: Vec<TensorId> = ws.iter().map(|w| w.id()).collect();
        let mut map = self.map.lock().map_err(|_| poisoned())?;
        if let Some(e) = map.get(&key) {
            if e.ids.as_ref() == Some(&ids) {
                return Ok(e.packed.clone());
            }
        }
        let (rows, packed) = pack_rows(ws)?;
        let ids = Some(ids);
        map.insert(
            key,
            Packed {
                ids,
                rows,
                packed: packed.clone(),
            },
        );
        Ok(packed)
    }

    /// Packs weights `ws` (parameters `names`) as [`Self::get_many`] does, for good: the
    /// packed form then stands in for them, found by [`Self::released`] once the caller
    /// has dropped the originals.
    pub fn release_many(&self, names: &[&str], ws: &[&Tensor]) -> Result<()> {
        let (rows, packed) = pack_rows(ws)?;
        let mut map = self.map.lock().map_err(|_| poisoned())?;
        map.insert(
            names.join("+"),
            Packed {
                ids: None,
                rows,
                packed,
            },
        );
        Ok(())
    }

    /// The packed form released weights `names` left behind (as [`Self::release_many`]
    /// grouped them), with each weight's output rows; `None` if they were not released.
    pub fn released(&self, names: &[&str]) -> Result<Option<(Vec<usize>, Arc<PackedLinear>)>> {
        let map = self.map.lock().map_err(|_| poisoned())?;
        Ok(map
            .get(&names.join("+"))
            .filter(|e| e.ids.is_none())
            .map(|e| (e.rows.clone(), e.packed.clone())))
    }

    /// The Linear group led by node `first`, as last resolved ([`LinearGroup`]).
    pub fn group(&self, first: &str) -> Result<Option<Arc<LinearGroup>>> {
        let m = self.groups.lock().map_err(|_| poisoned())?;
        Ok(m.get(first).cloned())
    }

    /// Keeps `g` as the group led by its first node, replacing what was resolved before.
    pub fn keep_group(&self, g: LinearGroup) -> Result<Arc<LinearGroup>> {
        let g = Arc::new(g);
        let first = g.nodes.first().cloned().unwrap_or_default();
        let mut m = self.groups.lock().map_err(|_| poisoned())?;
        m.insert(first, g.clone());
        Ok(g)
    }

    /// Keeps `panels` as the stand-in for node `node`'s released int8 codes.
    pub fn release_int8(&self, node: &str, panels: Arc<PackedBlocked>) -> Result<()> {
        let mut m = self.released_int8.lock().map_err(|_| poisoned())?;
        m.insert(node.to_string(), panels);
        Ok(())
    }

    /// The int8 panels that stand in for node `node`'s released codes, if released.
    pub fn released_int8(&self, node: &str) -> Result<Option<Arc<PackedBlocked>>> {
        let m = self.released_int8.lock().map_err(|_| poisoned())?;
        Ok(m.get(node).cloned())
    }

    /// The int8 panels of the stored codes tensor `id` (the static convolution's), made
    /// by `make` on first use.
    pub fn int8(
        &self,
        id: TensorId,
        make: impl FnOnce() -> Result<PackedI8>,
    ) -> Result<Arc<PackedI8>> {
        self.int8.get(id, make)
    }

    /// The bit-plane panels of the stored binary/ternary tensor `id`, made by `make` on
    /// first use.
    pub fn bits(
        &self,
        id: TensorId,
        make: impl FnOnce() -> Result<PackedBits>,
    ) -> Result<Arc<PackedBits>> {
        self.bits.get(id, make)
    }

    /// The int8 panels of the stored codes tensor `id` for activation blocks of `block`
    /// inputs (the quantized Linear's), made by `make` on first use.
    pub fn int8_blocked(
        &self,
        (id, block): (TensorId, usize),
        make: impl FnOnce() -> Result<PackedBlocked>,
    ) -> Result<Arc<PackedBlocked>> {
        self.blocked.get((id, block), make)
    }

    /// The int4 nibble panels of the stored codes tensor `id` (the int4 × int8 Linear's),
    /// made by `make` on first use.
    pub fn int4(
        &self,
        id: TensorId,
        make: impl FnOnce() -> Result<PackedQ4>,
    ) -> Result<Arc<PackedQ4>> {
        self.int4.get(id, make)
    }
}
