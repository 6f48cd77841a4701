//! What a run removes if it is interrupted: temporary directories and lock files are
//! registered here while they exist, and SIGINT, SIGTERM or SIGHUP removes them before the
//! process exits (128 + the signal's number, as a shell reports it). While a training loop
//! runs, the first SIGINT or SIGTERM instead asks it to stop before its next step and save
//! a resumable checkpoint ([`squeeze::train::request_stop`]; the command then returns and
//! exits 130, see [`crate::interrupt`]); a second signal removes and exits at once. The
//! signal handler only writes the signal's number to a pipe; a thread reading that pipe
//! does the rest, outside signal context.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
static INSTALL: Once = Once::new();

/// Installs the signal handling now (commands that train call it first thing).
pub fn arm() {
    INSTALL.call_once(install);
}

/// Removes `path` (a directory or a file) if the process is interrupted.
pub fn register(path: &Path) {
    INSTALL.call_once(install);
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.to_path_buf());
}

/// Forgets `path` (it was committed or removed).
pub fn unregister(path: &Path) {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

/// Whether a process with this PID runs (a PID of another user's process counts too).
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a full or closed pipe only loses the byte.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

fn install() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) fills the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return; // without the pipe, interrupts keep their default action
    }
    PIPE_WRITE.store(fds[1], Ordering::Relaxed);
    let read = fds[0];
    std::thread::spawn(move || {
        let mut b = 0u8;
        loop {
            // SAFETY: reads one byte into `b` from the pipe this thread owns.
            let n = unsafe { libc::read(read, (&mut b as *mut u8).cast(), 1) };
            if n != 1 {
                return;
            }
            let graceful = [libc::SIGINT, libc::SIGTERM].contains(&(b as libc::c_int));
            if graceful && squeeze::train::training_active() && !squeeze::train::stop_requested() {
                squeeze::train::request_stop();
                eprintln!(
                    "\nstopping after the current step and saving a checkpoint (signal again \
                     to quit at once)"
                );
                continue;
            }
            break;
        }
        let paths = PATHS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in &paths {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
        eprintln!("interrupted (signal {b}): removed the run's temporary files");
        std::process::exit(128 + b as i32);
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls write(2) on a pipe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}
