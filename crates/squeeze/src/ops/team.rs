//! A team of spinning helper threads for the small parallel products of inference: the
//! caller publishes a job (a closure over part indices), every member — the caller too —
//! claims parts from one atomic counter, and the caller waits by spinning until the last
//! part is done. A job costs a few hundred nanoseconds where a fork through the general
//! work-stealing pool costs microseconds (a job pushed, stolen, its latch set and
//! noticed), which at batch 1 is as long as a small layer's product: a text encoder runs
//! 24–60 of them per sentence. Helpers spin for a while after each job, yielding the core
//! to any other runnable thread between looks, then sleep until the next one — the
//! active-wait policy of OpenMP runtimes that inference engines run their kernels on.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a helper keeps looking for work after its last job before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

/// Looks at the job word between two yields of the core.
const LOOKS_PER_YIELD: u32 = 64;

/// The published job: a type-erased `&(dyn Fn(usize) + Sync)` and its part count.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    parts: usize,
}

struct Shared {
    /// Bumped once per job; helpers compare it with the last one they saw.
    epoch: AtomicU64,
    job: Mutex<Option<JobPtr>>,
    /// The next part index to claim.
    next: AtomicUsize,
    /// Parts not finished yet.
    left: AtomicUsize,
    /// Helpers holding the current job's pointer.
    active: AtomicUsize,
    panicked: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced while the publishing call waits for every
// part to finish, so the job it points to outlives every use (see `run`).
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

/// The team: helper count and the shared job slot.
pub struct Team {
    helpers: usize,
    shared: &'static Shared,
    /// Serializes jobs from different callers.
    busy: Mutex<()>,
}

thread_local! {
    /// Set on helpers and inside a job: a nested call runs its parts inline.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The process's team: one helper per core beyond the caller's.
pub fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        }));
        let mut started = 0;
        for i in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("squeeze-team-{i}"))
                .spawn(move || helper(shared));
            if spawned.is_ok() {
                started += 1;
            }
        }
        Team {
            helpers: started,
            shared,
            busy: Mutex::new(()),
        }
    })
}

impl Team {
    /// Members that work on a job (the caller and the helpers).
    pub fn size(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `f(0) … f(parts − 1)` on the team and returns when all are done; inline when
    /// there is nobody to share with, inside another job, or while another caller's job
    /// runs. A part that panics makes this call panic after the others finish.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = |f: &(dyn Fn(usize) + Sync)| (0..parts).for_each(f);
        if parts <= 1 || self.helpers == 0 || INSIDE.with(Cell::get) {
            return inline(f);
        }
        let Ok(_guard) = self.busy.try_lock() else {
            return inline(f);
        };
        let s = self.shared;
        // SAFETY: only the lifetime is erased; this call does not return before every
        // part has run (`left` reaches 0), and nobody reads the pointer after that.
        let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Job { f, parts };
        s.next.store(0, Ordering::Relaxed);
        s.left.store(parts, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        if let Ok(mut slot) = s.job.lock() {
            *slot = Some(JobPtr(&job));
        }
        s.epoch.fetch_add(1, Ordering::Release);
        if s.sleepers.lock().map(|n| *n > 0).unwrap_or(false) {
            s.wake.notify_all();
        }
        INSIDE.with(|c| c.set(true));
        work(s, &job);
        INSIDE.with(|c| c.set(false));
        while s.left.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        // withdraw the job, then wait for the helpers that took its pointer before that
        // (they find no part left, but still hold the pointer)
        if let Ok(mut slot) = s.job.lock() {
            *slot = None;
        }
        while s.active.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        if s.panicked.load(Ordering::Relaxed) {
            panic!("a part of a parallel kernel panicked");
        }
    }
}

/// Elements from which [`rows_mut`] splits its work over the team.
pub const PAR_ELEMS: usize = 1 << 14;

/// The rows of `len` values `width` wide, and the parts [`rows_mut`] and [`rows_of`]
/// split them into: one per team member, one below [`PAR_ELEMS`] values.
fn row_parts(len: usize, width: usize) -> (usize, usize) {
    let rows = len.checked_div(width).unwrap_or(0);
    match len >= PAR_ELEMS {
        true => (rows, team().size().min(rows)),
        false => (rows, 1),
    }
}

/// Runs `f(first_row, rows)` over `data` (rows of `width` values) split into one range of
/// whole rows per team member — on the caller alone below [`PAR_ELEMS`] values.
pub fn rows_mut<T: Send>(data: &mut [T], width: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let (rows, parts) = row_parts(data.len(), width);
    if parts <= 1 {
        return f(0, data);
    }
    let base = Ptr(data.as_mut_ptr());
    team().run(parts, &|p| {
        let (r0, r1) = (p * rows / parts, (p + 1) * rows / parts);
        // SAFETY: parts own disjoint row ranges of `data`, which outlives the job
        let part = unsafe { base.slice(r0 * width, (r1 - r0) * width) };
        f(r0, part)
    });
}

/// Runs `f(first_row, rows)` over the rows of `data` (`width` values each) as
/// [`rows_mut`] splits them, read-only: for kernels that write their rows' results
/// elsewhere.
pub fn rows_of<T: Sync>(data: &[T], width: usize, f: &(dyn Fn(usize, &[T]) + Sync)) {
    let (rows, parts) = row_parts(data.len(), width);
    if parts <= 1 {
        return f(0, data);
    }
    team().run(parts, &|p| {
        let (r0, r1) = (p * rows / parts, (p + 1) * rows / parts);
        f(r0, &data[r0 * width..r1 * width])
    });
}

/// `f(0) … f(count − 1)` in one contiguous share of the indices per member — the split
/// of the products' equal tasks, where claiming them one by one from the shared counter
/// costs more than it evens out.
pub fn shares(count: usize, f: &(dyn Fn(usize) + Sync)) {
    let members = team().size().min(count).max(1);
    team().run(members, &|t| {
        (t * count / members..(t + 1) * count / members).for_each(f)
    });
}

/// [`shares`] of fallible tasks: every task runs; the first error, if any.
pub fn try_shares<E: Send>(
    count: usize,
    f: &(dyn Fn(usize) -> std::result::Result<(), E> + Sync),
) -> std::result::Result<(), E> {
    let first: Mutex<Option<E>> = Mutex::new(None);
    shares(count, &|i| {
        if let Err(e) = f(i) {
            if let Ok(mut slot) = first.lock() {
                slot.get_or_insert(e);
            }
        }
    });
    match first.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// A buffer written by the parts of one job (or the tasks of one kernel call), each its
/// own elements.
pub(crate) struct Ptr<T>(pub(crate) *mut T);

// (not derived: that would ask `T: Copy`, and a pointer copies whatever it points to)
impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}

// SAFETY: parts write disjoint elements, and the job ends before the buffer is read.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// The element `i` on.
    ///
    /// # Safety
    /// `i` is within the buffer and no other part writes it.
    pub(crate) unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }

    /// Elements `at..at + len`.
    ///
    /// # Safety
    /// The range is inside the buffer and no other part touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, at: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(at), len)
    }
}

/// Claims and runs parts of `job` until none is left.
fn work(s: &Shared, job: &Job) {
    loop {
        let p = s.next.fetch_add(1, Ordering::Relaxed);
        if p >= job.parts {
            return;
        }
        // SAFETY: the publisher keeps the closure alive until `left` reaches 0, which
        // cannot happen before this part is counted below.
        let f = unsafe { &*job.f };
        if catch_unwind(AssertUnwindSafe(|| f(p))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.left.fetch_sub(1, Ordering::Release);
    }
}

/// A helper's life: look for a new job (spinning, yielding now and then), work on it,
/// and sleep after a while without one.
fn helper(s: &'static Shared) {
    INSIDE.with(|c| c.set(true));
    let mut seen = s.epoch.load(Ordering::Acquire);
    loop {
        let idle_since = Instant::now();
        let mut looks = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                // the pointer is taken and `active` raised under the slot's lock, so the
                // publisher, which withdraws the job under that lock and then waits for
                // `active` to fall, cannot return while this helper holds it
                let job = s.job.lock().ok().and_then(|j| {
                    if j.is_some() {
                        s.active.fetch_add(1, Ordering::AcqRel);
                    }
                    *j
                });
                if let Some(JobPtr(j)) = job {
                    // SAFETY: see above: the job outlives this use
                    work(s, unsafe { &*j });
                    s.active.fetch_sub(1, Ordering::AcqRel);
                }
                break;
            }
            looks += 1;
            if looks.is_multiple_of(LOOKS_PER_YIELD) {
                if idle_since.elapsed() > SPIN {
                    sleep_until_job(s, seen);
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Sleeps until the epoch moves past `seen`.
fn sleep_until_job(s: &Shared, seen: u64) {
    let Ok(mut n) = s.sleepers.lock() else { return };
    *n += 1;
    while s.epoch.load(Ordering::Acquire) == seen {
        n = match s.wake.wait(n) {
            Ok(n) => n,
            Err(_) => return,
        };
    }
    *n -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Runs `parts` parts counting each one's runs.
    fn counts(parts: usize) -> Vec<u32> {
        let hits: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
        team().run(parts, &|p| {
            hits[p].fetch_add(1, Ordering::Relaxed);
        });
        hits.into_iter().map(AtomicU32::into_inner).collect()
    }

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in 0..40 {
            for _ in 0..20 {
                assert!(counts(parts).iter().all(|&c| c == 1), "{parts} parts");
            }
        }
    }

    #[test]
    fn rows_mut_visits_every_row_once_with_its_index() {
        for (rows, width) in [(0, 4), (1, 3), (7, 5), (5000, 7), (33, 1000)] {
            let mut v = vec![0usize; rows * width];
            rows_mut(&mut v, width, &|r0, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x += r0 * width + i + 1;
                }
            });
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i + 1),
                "{rows}x{width}"
            );
        }
    }

    #[test]
    fn try_shares_runs_every_task_once_and_returns_an_error() {
        let hits: Vec<AtomicU32> = (0..50).map(|_| AtomicU32::new(0)).collect();
        let r: std::result::Result<(), usize> = try_shares(50, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            if i % 7 == 3 {
                Err(i)
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(i) if i % 7 == 3));
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        assert_eq!(try_shares::<()>(5, &|_| Ok(())), Ok(()));
        // fewer tasks than members, and none
        assert_eq!(try_shares::<()>(1, &|_| Ok(())), Ok(()));
        assert_eq!(try_shares::<()>(0, &|_| Err(())), Ok(()));
    }

    #[test]
    fn a_job_inside_a_part_runs_inline() {
        let total = AtomicUsize::new(0);
        team().run(4, &|_| {
            team().run(3, &|q| {
                total.fetch_add(q + 1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.into_inner(), 4 * 6);
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_team_goes_on() {
        let r = catch_unwind(|| team().run(8, &|p| assert!(p != 5, "part 5 fails")));
        assert!(r.is_err());
        assert!(counts(8).iter().all(|&c| c == 1));
    }

    #[test]
    fn callers_on_several_threads_each_get_their_parts_done() {
        std::thread::scope(|sc| {
            for t in 0..4 {
                sc.spawn(move || {
                    for i in 0..200 {
                        let parts = 1 + (t + i) % 7;
                        assert!(counts(parts).iter().all(|&c| c == 1));
                    }
                });
            }
        });
    }
}
