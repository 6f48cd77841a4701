//! Crash-consistent training checkpoints. An epoch's weights, optimizer state and
//! `state.json` form one unit: they are written into `checkpoint.next/`, each file
//! flushed to disk, `state.json` last with the size and checksum of every other file; then
//! the old `checkpoint/` is moved aside to `checkpoint.prev/`, the new one renamed into
//! place, and the old one removed. A process killed at any point leaves either the old
//! unit or the new one whole, and [`recover`] finds it: `checkpoint/` if it verifies,
//! else a complete `checkpoint.next/` (killed between the two renames), else
//! `checkpoint.prev/`. A unit whose files do not match its manifest is refused with a
//! message, never resumed from.
//!
//! `SQUEEZE_FAULT=EPOCH:STEP` aborts the process at write boundary STEP (1..=[`STEPS`]) of
//! epoch EPOCH, so tests can kill a run at every boundary and prove the resumed result
//! bit-identical.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{TrainConfig, TrainState};
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::model::Model;

pub(super) const STATE_FILE: &str = "state.json";
pub(super) const OPT_FILE: &str = "optimizer.safetensors";
/// Write boundaries of one commit (for fault injection).
pub const STEPS: usize = 6;

/// Size and checksum of one file of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub bytes: u64,
    pub fnv64: String,
}

/// The directory where per-epoch checkpoints live inside an output directory.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    out.join(format!("checkpoint.{suffix}"))
}

/// Aborts at boundary `step` of the epoch whose number is `epoch` when `SQUEEZE_FAULT`
/// asks for it.
fn fault(epoch: usize, step: usize) {
    if let Ok(v) = std::env::var("SQUEEZE_FAULT") {
        if v == format!("{epoch}:{step}") {
            eprintln!("SQUEEZE_FAULT: aborting at boundary {step} of epoch {epoch}");
            std::process::abort();
        }
    }
}

/// FNV-1a over 8-byte words (tail bytes one by one): a checksum against torn writes.
fn checksum(path: &Path) -> Result<FileSum> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h: u64 = 0xcbf29ce484222325;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        let mut words = buf[..n].chunks_exact(8);
        for w in &mut words {
            h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .wrapping_mul(0x100000001b3);
        }
        for &b in words.remainder() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    Ok(FileSum {
        bytes,
        fnv64: format!("{h:016x}"),
    })
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Writes the unit of epoch `state.epochs_done` and makes it the checkpoint.
pub(super) fn save(
    out: &Path,
    model: &Model,
    state: &TrainState,
    opt: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let epoch = state.epochs_done;
    let (ck, next, prev) = (
        checkpoint_dir(out),
        sibling(out, "next"),
        sibling(out, "prev"),
    );
    if next.exists() {
        std::fs::remove_dir_all(&next).map_err(|e| Error::io(&next, e))?;
    }
    checkpoint::save(model, &next)?;
    fault(epoch, 1);
    checkpoint::save_tensors(&next.join(OPT_FILE), opt)?;
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&next).map_err(|e| Error::io(&next, e))? {
        let p = e.map_err(|e| Error::io(&next, e))?.path();
        sync(&p)?;
        let name = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        files.insert(name, checksum(&p)?);
    }
    fault(epoch, 2);
    let unit = TrainState {
        files,
        ..state.clone()
    };
    let json = serde_json::to_vec_pretty(&unit).map_err(|e| Error::Train(e.to_string()))?;
    checkpoint::write_atomic(&next.join(STATE_FILE), &json)?;
    sync(&next.join(STATE_FILE))?;
    sync(&next)?;
    fault(epoch, 3);
    if ck.exists() {
        if prev.exists() {
            std::fs::remove_dir_all(&prev).map_err(|e| Error::io(&prev, e))?;
        }
        std::fs::rename(&ck, &prev).map_err(|e| Error::io(&ck, e))?;
    }
    fault(epoch, 4);
    std::fs::rename(&next, &ck).map_err(|e| Error::io(&ck, e))?;
    sync(out)?;
    fault(epoch, 5);
    if prev.exists() {
        std::fs::remove_dir_all(&prev).map_err(|e| Error::io(&prev, e))?;
    }
    fault(epoch, 6);
    Ok(())
}

/// The state of the unit in `dir` if its files match its manifest; why not otherwise.
fn verify(dir: &Path) -> std::result::Result<TrainState, String> {
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(|e| format!("{}: {e}", sp.display()))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", sp.display()))?;
    if state.files.is_empty() {
        // written before checkpoints carried a manifest: nothing to check against
        return Ok(state);
    }
    for (name, want) in &state.files {
        let p = dir.join(name);
        let got = checksum(&p).map_err(|e| e.to_string())?;
        if &got != want {
            return Err(format!(
                "{} has {} bytes (checksum {}), but {} records {} bytes (checksum {}): the \
                 checkpoint was torn by an interrupted write",
                p.display(),
                got.bytes,
                got.fnv64,
                sp.display(),
                want.bytes,
                want.fnv64
            ));
        }
    }
    Ok(state)
}

/// Makes `out/checkpoint` the last whole unit (see the module doc) and returns its state;
/// `None` when `out` holds no checkpoint at all; an error when the only one is torn.
pub fn recover(out: &Path) -> Result<Option<TrainState>> {
    let (ck, next, prev) = (
        checkpoint_dir(out),
        sibling(out, "next"),
        sibling(out, "prev"),
    );
    let mut why = None;
    if ck.exists() {
        match verify(&ck) {
            Ok(s) => {
                for d in [&next, &prev] {
                    let _ = std::fs::remove_dir_all(d);
                }
                return Ok(Some(s));
            }
            Err(e) => why = Some(e),
        }
    }
    for cand in [&next, &prev] {
        if !cand.exists() {
            continue;
        }
        if let Ok(s) = verify(cand) {
            if ck.exists() {
                std::fs::remove_dir_all(&ck).map_err(|e| Error::io(&ck, e))?;
            }
            std::fs::rename(cand, &ck).map_err(|e| Error::io(cand, e))?;
            eprintln!(
                "resuming from {}, the last whole checkpoint (epoch {}) left by an \
                 interrupted save",
                cand.display(),
                s.epochs_done
            );
            for d in [&next, &prev] {
                let _ = std::fs::remove_dir_all(d);
            }
            return Ok(Some(s));
        }
    }
    match why {
        Some(w) => Err(Error::Train(format!("cannot resume: {w}"))),
        None => Ok(None),
    }
}

/// The training state saved in `out`'s per-epoch checkpoint, if there is a whole one.
pub fn saved_state(out: &Path) -> Option<TrainState> {
    recover(out).ok().flatten()
}

type Resumed = (Model, TrainState, BTreeMap<String, Tensor>);

/// The model, state and optimizer state to continue from (options other than `epochs`
/// must equal the checkpoint's).
pub(super) fn load(out: &Path, cfg: &TrainConfig) -> Result<Resumed> {
    let dir = checkpoint_dir(out);
    let sp = dir.join(STATE_FILE);
    let state = recover(out)?.ok_or_else(|| {
        Error::file(
            &sp,
            "cannot resume: there is no checkpoint to continue from",
        )
    })?;
    let same = TrainConfig {
        epochs: cfg.epochs,
        ..state.config.clone()
    };
    if &same != cfg {
        return Err(Error::file(&sp, "cannot resume: the training options differ from the checkpoint's (only --epochs may change)"));
    }
    let model = checkpoint::load(&dir)?;
    let opt = checkpoint::load_tensors(&dir.join(OPT_FILE))?;
    Ok((
        model,
        TrainState {
            config: cfg.clone(),
            ..state
        },
        opt,
    ))
}
