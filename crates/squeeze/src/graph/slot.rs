//! A graph's cache slot: where a layer above (the interpreter) keeps what it made for
//! this graph, so that a forward does not redo it. The graph does not know what is kept (a
//! type-erased value per key); the keeper chooses keys that stay valid: run plans are
//! keyed by the graph's [`super::Graph::fingerprint`] and the mode, so an edited graph
//! never runs a stale plan, and packed weights check their tensors' identities
//! themselves. The least recently used entry goes first when the slot is full, so what
//! every forward uses (the packed weights, the eval plan) stays while one-off modes (a
//! calibration's taps) come and go. Cloning a graph gives an empty slot, and graphs
//! compare equal whatever their slots hold.

use std::any::Any;
use std::sync::{Arc, Mutex};

/// Entries kept per graph (run plans per mode — train, eval, eval with taps, … — and the
/// packed weights); the least recently used goes first.
const MAX_ENTRIES: usize = 16;

type Entry = (u64, Arc<dyn Any + Send + Sync>);

/// Compiled values by key.
#[derive(Default)]
pub struct CacheSlot(Mutex<Vec<Entry>>);

impl CacheSlot {
    /// The value kept under `key`, or the one `make` builds (then kept).
    pub fn get_or<T: Any + Send + Sync, E>(
        &self,
        key: u64,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        if let Some(v) = self.recent(key).and_then(|v| v.downcast::<T>().ok()) {
            return Ok(v);
        }
        let v = Arc::new(make()?);
        let mut entries = self.lock();
        entries.retain(|(k, _)| *k != key);
        if entries.len() >= MAX_ENTRIES {
            entries.remove(0);
        }
        entries.push((key, v.clone()));
        Ok(v)
    }

    /// The entry under `key`, moved to the most recently used end.
    fn recent(&self, key: u64) -> Option<Arc<dyn Any + Send + Sync>> {
        let mut entries = self.lock();
        let i = entries.iter().position(|(k, _)| *k == key)?;
        let e = entries.remove(i);
        let v = e.1.clone();
        entries.push(e);
        Some(v)
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // a panic while the lock was held leaves at worst a missing entry
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for CacheSlot {
    fn clone(&self) -> Self {
        CacheSlot::default()
    }
}

impl PartialEq for CacheSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for CacheSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheSlot({} entries)", self.len())
    }
}
