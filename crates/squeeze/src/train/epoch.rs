//! One epoch of a training run: seeded shuffling, batches (augmented where the source
//! allows), the scheduled learning rate, a step each, and progress — a bar on a terminal,
//! a log line every tenth of the epoch otherwise. A stop request ([`super::request_stop`])
//! ends the epoch before its next step with its position; a resumed epoch replays the
//! random draws of the batches already done (shuffle and augmentation), so it continues
//! exactly where it stopped.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use super::progress::fmt_opt;
use super::{stop_requested, train_step, EpochLog, Hooks, Optimizer, PartialEpoch, Run};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::params::ParamStore;

/// A progress reporter: indicatif bar on a terminal, silent otherwise.
fn progress(len: usize, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    let style =
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb.set_prefix(format!("{}/{epochs}", epoch + 1));
    pb
}

/// How an epoch ended: all its batches, or stopped before one of them.
pub(super) enum EpochEnd {
    Done(EpochLog),
    Stopped(PartialEpoch),
}

/// One epoch of a run in progress.
pub(super) struct Epoch<'a, 'r> {
    pub model: &'a Model,
    pub params: &'a mut ParamStore,
    pub opt: &'a mut Optimizer,
    pub run: &'a Run<'r>,
    /// Training examples used.
    pub n: usize,
    pub epoch: usize,
    pub per_epoch: usize,
    /// The run's one bar in compact progress ([`super::set_progress_label`]).
    pub bar: Option<&'a indicatif::ProgressBar>,
}

impl Epoch<'_, '_> {
    /// Trains the epoch's batches from `from`'s position (the start when `None`).
    pub fn run(&mut self, hooks: &mut dyn Hooks, from: Option<&PartialEpoch>) -> Result<EpochEnd> {
        let (cfg, epoch, per_epoch) = (self.run.cfg, self.epoch, self.per_epoch);
        let start = std::time::Instant::now();
        let mut order: Vec<usize> = (0..self.n).collect();
        let mut rng =
            StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        order.shuffle(&mut rng);
        let pb = match self.bar {
            Some(b) => b.clone(),
            None => progress(per_epoch, epoch, cfg.epochs),
        };
        let compact = self.bar.is_some();
        let (mut loss_sum, mut correct, mut seen) = (0.0, Some(0usize), 0usize);
        let (skip, before) = from.map_or((0, 0.0), |p| {
            (loss_sum, correct, seen) = (p.loss_sum, p.correct, p.seen);
            (p.batches, p.seconds)
        });
        let seconds = |start: std::time::Instant| before + start.elapsed().as_secs_f64();
        let total = per_epoch * cfg.epochs;
        for (b, idx) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let aug = (cfg.augment_pad > 0).then_some((&mut rng, cfg.augment_pad));
            if b < skip {
                // done before the interruption: only its augmentation draws are replayed
                if aug.is_some() {
                    self.run.train.batch(idx, aug)?;
                }
                pb.inc(1);
                continue;
            }
            if stop_requested() {
                if !compact {
                    pb.finish_and_clear();
                }
                return Ok(EpochEnd::Stopped(PartialEpoch {
                    batches: b,
                    loss_sum,
                    correct,
                    seen,
                    seconds: seconds(start),
                }));
            }
            let batch = self.run.train.batch(idx, aug)?;
            let step = epoch * per_epoch + b;
            let lr = cfg.optimizer.lr() * cfg.schedule.factor(step, total, per_epoch);
            let seed = cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9);
            let (lv, c) = train_step(
                self.model,
                self.params,
                self.opt,
                &batch,
                (lr, seed),
                self.run.objective,
                hooks,
            )
            .map_err(|e| Error::Train(format!("epoch {} step {b}: {e}", epoch + 1)))?;
            correct = correct.zip(c).map(|(a, b)| a + b);
            loss_sum += lv * idx.len() as f64;
            seen += idx.len();
            pb.inc(1);
            // without a terminal the bar is hidden: log a line every tenth of the epoch instead
            let log_line = !compact && pb.is_hidden() && b > 0 && b % (per_epoch / 10).max(1) == 0;
            if b % 10 == 0 || log_line {
                let ips = seen as f64 / seconds(start);
                let acc = fmt_opt(correct.map(|c| c as f64 / seen as f64));
                let msg = format!("loss {:.4} acc {acc} {ips:.0} ex/s", loss_sum / seen as f64);
                if log_line {
                    eprintln!(
                        "epoch {}/{} step {b}/{per_epoch}: {msg}",
                        epoch + 1,
                        cfg.epochs
                    );
                }
                pb.set_message(msg);
            }
        }
        if !compact {
            pb.finish_and_clear();
        }
        let secs = seconds(start);
        Ok(EpochEnd::Done(EpochLog {
            epoch: epoch + 1,
            loss: loss_sum / seen as f64,
            train_accuracy: correct.map(|c| c as f64 / seen as f64),
            valid_accuracy: None,
            valid_loss: None,
            seconds: secs,
            images_per_s: seen as f64 / secs,
        }))
    }
}
