//! A graph's cache slot: where a layer above (the interpreter) keeps what it compiled
//! for this graph, so that a forward does not redo it. The graph does not know what is
//! kept (a type-erased value per key); the keeper checks each entry against the graph's
//! [`super::Graph::fingerprint`], so an edited graph never runs a stale entry. Cloning a
//! graph gives an empty slot, and graphs compare equal whatever their slots hold.

use std::any::Any;
use std::sync::{Arc, Mutex};

/// Entries kept per graph (run plans per mode — train, eval, eval with taps, … — and the
/// packed weights); the oldest goes first.
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
        let found = self
            .lock()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone());
        if let Some(v) = found.and_then(|v| v.downcast::<T>().ok()) {
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
