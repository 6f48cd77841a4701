//! What a training run shows and how it is stopped, process-wide: the stop request a
//! signal handler sets (the run saves a resumable checkpoint and returns), whether a run
//! is active, and the progress — a bar and a line per epoch, or with a label one bar per
//! run and one closing line (the compact form `compress` and `search` use).

use super::EpochLog;

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks every training run of this process to stop before its next step, save a
/// resumable checkpoint (mid-epoch, with its data-order position) and return
/// [`crate::error::Error::Interrupted`]. It only sets a flag, so a signal handler may call it.
pub fn request_stop() {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether [`request_stop`] was called.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

static LABEL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Compact progress for the training runs that follow: with a label, each run shows one
/// bar over all its steps (prefixed by the label; hidden without a terminal) and prints a
/// single line when it ends, instead of a bar per epoch and a line per epoch. `None`
/// restores the detailed form.
pub fn set_progress_label(label: Option<String>) {
    *LABEL.lock().unwrap_or_else(|e| e.into_inner()) = label;
}

pub(super) fn progress_label() -> Option<String> {
    LABEL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The one bar of a compact run.
pub(super) fn run_bar(label: &str, steps: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(steps as u64);
    let style =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_prefix(label.to_string());
    pb
}

static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a training loop ([`super::fit`]) is running in this process: only then does a stop
/// request end in a checkpoint.
pub fn training_active() -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::SeqCst) > 0
}

/// Counts one running [`super::fit`] while it lives.
pub(super) struct Active;

impl Active {
    pub(super) fn start() -> Self {
        ACTIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An accuracy or loss for a progress line (4 decimals), `-` where there is none.
pub(super) fn fmt_opt(a: Option<f64>) -> String {
    a.map_or("-".into(), |v| format!("{v:.4}"))
}

/// The line of a finished epoch `(epoch, epochs)`: on the run's bar in compact progress,
/// else printed.
pub(super) fn epoch_done(
    bar: Option<&indicatif::ProgressBar>,
    (epoch, epochs): (usize, usize),
    log: &EpochLog,
) {
    let line = format!(
        "epoch {}/{epochs}: loss {:.4}  train acc {}  valid acc {}  valid loss {}  {:.1}s  {:.0} ex/s",
        epoch + 1,
        log.loss,
        fmt_opt(log.train_accuracy),
        fmt_opt(log.valid_accuracy),
        fmt_opt(log.valid_loss),
        log.seconds,
        log.images_per_s
    );
    match bar {
        Some(b) => b.set_message(line),
        None => eprintln!("{line}"),
    }
}

/// The one closing line of a compact run (its bar cleared): epochs trained, seconds, and
/// the last validation accuracy (or loss, for objectives without one).
pub(super) fn run_done(bar: &indicatif::ProgressBar, label: &str, history: &[EpochLog], secs: f64) {
    bar.finish_and_clear();
    let last = history.last();
    let (what, value) = match last {
        Some(EpochLog {
            valid_accuracy: Some(a),
            ..
        }) => ("accuracy", format!("{a:.4}")),
        Some(h) => ("loss", fmt_opt(h.valid_loss)),
        None => ("loss", "-".into()),
    };
    eprintln!(
        "      {label}: trained {} epoch(s) in {secs:.0} s, validation {what} {value}",
        history.len()
    );
}
