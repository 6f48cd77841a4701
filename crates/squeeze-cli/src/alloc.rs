//! The allocator: mimalloc, told by training commands to keep freed memory instead of
//! returning it to the OS after a short delay. Training allocates and frees tensors of the
//! same few sizes every step (candle's backward makes a zeroed buffer and a sum for every
//! gradient); with purging, each step faulted those pages back in and the kernel zeroed
//! them again (transparent huge pages: 2 MB at a time) — the largest single cost in the
//! encoder's training step's profile. Inference commands keep the default: kept memory
//! raised the peak RSS of `squeeze eval` on int8 MiniLM from 108 to 142 MB.
//!
//! `embed`, whose one job is a file of embeddings at the least memory, allocates from the
//! C library's malloc instead ([`lean_heap`]): mimalloc keeps freed pages for a second
//! (v3's purge delay) and spreads the activations of each batch's sizes over fresh pages,
//! so 100 sentences of int8 MiniLM peaked at 65 MB against 55 MB on malloc, f32 at 129
//! against 121 MB; purging at once (delay 0) was as lean but 1.6× slower on 3,000
//! sentences, where malloc ran as fast as mimalloc (5.5 against 5.2–5.4 s). A block goes
//! back to the allocator that made it, whatever the mode when it is freed.
//!
//! `embed` also runs on 4 KB pages ([`small_pages`]): mimalloc asks for transparent huge
//! pages, so every partly used 2 MB of its heaps (one per thread) was resident — 9 MB of
//! a 200 KB model's `embed`, 16 MB of int8 MiniLM's. Only `embed`: on 4 KB pages MiniLM's
//! batch-1 latency was 5–15% longer (the TLB misses of streaming its weights), its
//! batch-32 throughput unchanged, so `eval`, `report` and the benchmarks keep huge pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_long, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: Heap = Heap;

extern "C" {
    // part of mimalloc's public API, linked in by the `mimalloc` crate
    #[cfg(test)]
    fn mi_option_get(option: i32) -> c_long;
    fn mi_option_set(option: i32, value: c_long);
    fn mi_is_in_heap_region(p: *const c_void) -> bool;
}

/// Whether new blocks come from the C library's malloc ([`lean_heap`]).
static LEAN: AtomicBool = AtomicBool::new(false);

/// New blocks from mimalloc, or from malloc once [`lean_heap`] was called; each block is
/// freed and resized by the allocator that owns it (mimalloc's page map says which).
struct Heap;

/// Whether mimalloc made block `p`.
fn mimalloc_owns(p: *mut u8) -> bool {
    // SAFETY: a lookup in mimalloc's page map, defined for any address.
    unsafe { mi_is_in_heap_region(p as *const c_void) }
}

// SAFETY: every call is forwarded to one of two allocators that uphold GlobalAlloc's
// contract, and a block is always returned to (or resized by) the one that made it.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        match LEAN.load(Ordering::Relaxed) {
            true => System.alloc(l),
            false => MiMalloc.alloc(l),
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        match LEAN.load(Ordering::Relaxed) {
            true => System.alloc_zeroed(l),
            false => MiMalloc.alloc_zeroed(l),
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        match mimalloc_owns(p) {
            true => MiMalloc.dealloc(p, l),
            false => System.dealloc(p, l),
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        match mimalloc_owns(p) {
            true => MiMalloc.realloc(p, l, size),
            false => System.realloc(p, l, size),
        }
    }
}

/// From now on new blocks come from the C library's malloc (see the module notes).
pub fn lean_heap() {
    LEAN.store(true, Ordering::Relaxed);
}

/// `mi_option_purge_delay` in the option enum of the mimalloc (v3) the crate builds.
const PURGE_DELAY: i32 = 15;

/// Freed memory is never purged (delay −1), unless `MIMALLOC_PURGE_DELAY` says otherwise.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: plain calls into the C allocator's option table.
        unsafe { mi_option_set(PURGE_DELAY, -1) }
    }
}

/// Returns the free pages inside malloc's heap to the OS (`malloc_trim`): what the
/// set-up's transient allocations left behind.
pub fn trim_lean_heap() {
    // SAFETY: a plain call into the C library's allocator.
    unsafe { libc::malloc_trim(0) };
}

/// The process's pages stay 4 KB (`prctl(PR_SET_THP_DISABLE)`, checked by the kernel at
/// each page fault, so it holds for the heap mimalloc reserved before `main`). A refusal
/// (a kernel without the call) leaves huge pages on: memory, not correctness.
pub fn small_pages() {
    // SAFETY: a plain system call on this process, with the arguments it documents.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// The purge delay in force (ms; −1 = never).
#[cfg(test)]
fn purge_delay() -> c_long {
    // SAFETY: as above.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // mimalloc's documented defaults for this option are 10 ms (v2) or 1000 ms (v3):
        // any other value means PURGE_DELAY names a different option
        let before = super::purge_delay();
        assert!(
            before == 10 || before == 1000 || before == -1,
            "option {} reads {before}: not the purge delay",
            super::PURGE_DELAY
        );
        std::env::remove_var("MIMALLOC_PURGE_DELAY");
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
    }
}
