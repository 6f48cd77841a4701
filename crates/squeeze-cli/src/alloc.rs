//! The allocator: mimalloc, told by training commands to keep freed memory instead of
//! returning it to the OS after a short delay. Training allocates and frees tensors of the
//! same few sizes every step (candle's backward makes a zeroed buffer and a sum for every
//! gradient); with purging, each step faulted those pages back in and the kernel zeroed
//! them again (transparent huge pages: 2 MB at a time) — the largest single cost in the
//! encoder's training step's profile. Inference commands keep the default: kept memory
//! raised the peak RSS of `squeeze eval` on int8 MiniLM from 108 to 142 MB.
//!
//! `embed` also runs on 4 KB pages ([`small_pages`]): mimalloc asks for transparent huge
//! pages, so every partly used 2 MB of its heaps (one per thread) was resident — 9 MB of
//! a 200 KB model's `embed`, 16 MB of int8 MiniLM's. Only `embed`: on 4 KB pages MiniLM's
//! batch-1 latency was 5–15% longer (the TLB misses of streaming its weights), its
//! batch-32 throughput unchanged, so `eval`, `report` and the benchmarks keep huge pages.

use std::ffi::c_long;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    // part of mimalloc's public API, linked in by the `mimalloc` crate
    #[cfg(test)]
    fn mi_option_get(option: i32) -> c_long;
    fn mi_option_set(option: i32, value: c_long);
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
