//! Output directories that can never destroy an input. Every command that writes a model
//! goes through here before it computes anything:
//! - `--out` may not be, contain or lie inside any input (paths compared after resolving
//!   symbolic links, so a link to the input is the input);
//! - an advisory lock (`.NAME.lock` beside the target) makes a second concurrent writer
//!   fail at once, with the first one's PID;
//! - the result is built in a hidden sibling `.NAME.tmp-PID` and renamed into place; a
//!   directory is replaced (`--force`) only when squeeze wrote it, which the marker file
//!   [`MARKER`] inside it says;
//! - temporary directories are removed on error, on SIGINT/SIGTERM/SIGHUP (see
//!   [`crate::cleanup`]), and, when a run was killed outright, by the next run to the
//!   same target (they are named by PID, and a live PID's are left alone).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cleanup;

/// The file inside every directory squeeze writes; `--force` replaces only those.
pub const MARKER: &str = ".squeeze-output";

/// What older squeeze versions wrote into an output directory, before the marker existed:
/// a directory holding only these (and a model) also counts as squeeze's own.
const OWN_ENTRIES: &[&str] = &[
    "model.json",
    "model.safetensors",
    "metrics.json",
    "report.json",
    "train.json",
    "distill.json",
    "checkpoint",
    "hints-stage",
    "config.json",
    "modules.json",
    "1_Pooling",
    "report.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
];

/// `p` as an absolute path with symbolic links resolved: its longest existing ancestor
/// canonicalized, the rest appended.
pub fn resolved(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut existing = abs.as_path();
    let mut tail = Vec::new();
    while existing.canonicalize().is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(n), Some(parent)) => {
                tail.push(n.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    for n in tail.iter().rev() {
        out.push(n);
    }
    Ok(out)
}

/// Refuses an `out` that is, contains or lies inside one of `inputs` (each named by its
/// flag for the message).
pub fn check_disjoint(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    check_disjoint_as("--out", out, inputs)
}

/// [`check_disjoint`] for an output given by flag `out_flag`.
pub fn check_disjoint_as(out_flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let o = resolved(out)?;
    for (flag, input) in inputs {
        if !input.exists() {
            continue; // a missing input is reported by the command that reads it
        }
        let i = resolved(input)?;
        let why = if o == i {
            "is"
        } else if i.starts_with(&o) {
            "contains"
        } else if o.starts_with(&i) {
            "lies inside"
        } else {
            continue;
        };
        bail!(
            "{out_flag} {} {why} the input {flag} {}; squeeze never overwrites its inputs or \
             writes into them",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// Whether `dir` is a directory squeeze wrote: it has the marker, or (made before the
/// marker) holds a model or a demo report and nothing but squeeze's own files and such
/// directories (the demo's, one level down).
pub fn written_by_squeeze(dir: &Path) -> bool {
    owned(dir, 1)
}

fn owned(dir: &Path, depth: usize) -> bool {
    if dir.join(MARKER).is_file() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let entries: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    let has_model = entries.iter().any(|(n, _)| {
        ["model.json", "config.json", "checkpoint", "report.md"].contains(&n.as_str())
    });
    has_model
        && entries.iter().all(|(n, p)| {
            OWN_ENTRIES.contains(&n.as_str()) || (depth > 0 && p.is_dir() && owned(p, depth - 1))
        })
}

/// Refuses to replace an existing `out` unless it is empty, or `force` is given and squeeze
/// wrote it. `what` says how to continue instead (e.g. "pass --resume to continue").
pub fn check_replace(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if !non_empty {
        return Ok(());
    }
    if !written_by_squeeze(out) {
        bail!(
            "--out {} is a non-empty directory that squeeze did not write (no {MARKER} \
             marker in it); squeeze never replaces it, not even with --force: choose \
             another --out or empty it yourself",
            out.display()
        );
    }
    if !force {
        bail!(
            "--out {} already holds squeeze's output; pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// The parent directory of `out` (created) and `out`'s file name.
fn parent_and_name(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("--out {}: not a directory name", out.display()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| {
        format!(
            "--out {}: cannot create its parent directory",
            out.display()
        )
    })?;
    Ok((parent, name))
}

/// The advisory lock on a target: held while the command runs, released (and its file
/// removed) when dropped.
pub struct Lock {
    path: PathBuf,
    _file: File,
    /// A directory this run created and marked: removed again if the run leaves nothing
    /// else in it (it failed before writing anything).
    created: Option<PathBuf>,
}

impl Lock {
    /// Takes the lock on `out` or fails naming the process that holds it.
    pub fn take(out: &Path) -> Result<Lock> {
        let (parent, name) = parent_and_name(out)?;
        let path = parent.join(format!(".{name}.lock"));
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| {
                    format!("--out {}: cannot create {}", out.display(), path.display())
                })?;
            if file.try_lock().is_err() {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "--out {} is being written by another squeeze process (pid {}); wait for \
                     it to finish or choose another --out",
                    out.display(),
                    pid.trim()
                );
            }
            // the file may have been removed by the previous holder between our open and
            // our lock: then the lock is on a dead inode, so start again
            if same_inode(&file, &path) {
                std::fs::write(&path, std::process::id().to_string())?;
                cleanup::register(&path);
                return Ok(Lock {
                    path,
                    _file: file,
                    created: None,
                });
            }
        }
    }
}

fn same_inode(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(dir) = &self.created {
            let only_marker = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()).all(|e| e.file_name() == MARKER))
                .unwrap_or(false);
            if only_marker {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // removed while still held, so a waiting opener re-checks the inode
        let _ = std::fs::remove_file(&self.path);
        cleanup::unregister(&self.path);
    }
}

/// Removes `.NAME.tmp-PID`, `.NAME.old-PID` and `.NAME.work-PID` siblings of `out` left by
/// squeeze processes that no longer run.
fn remove_stale(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = f.strip_prefix(&format!(".{name}.")) else {
            continue;
        };
        let pid = ["tmp-", "old-", "work-"]
            .iter()
            .find_map(|k| rest.strip_prefix(k))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| !cleanup::alive(*p)) {
            eprintln!(
                "removing {} left by an interrupted squeeze run (pid {pid})",
                e.path().display()
            );
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// An output being built: checked, locked, staged in a temporary sibling, committed by a
/// rename. Dropped without [`Staged::commit`], it removes what it wrote.
pub struct Staged {
    out: PathBuf,
    tmp: PathBuf,
    work: PathBuf,
    parent: PathBuf,
    name: String,
    _lock: Lock,
}

impl Staged {
    /// Validates `out` against `inputs` and what it holds, takes its lock, removes stale
    /// temporaries of killed runs and creates the staging directory — all before any work.
    pub fn begin(out: &Path, inputs: &[(&str, &Path)], force: bool) -> Result<Staged> {
        check_disjoint(out, inputs)?;
        let lock = Lock::take(out)?;
        check_replace(out, force)?;
        let (parent, name) = parent_and_name(out)?;
        remove_stale(&parent, &name);
        let pid = std::process::id();
        let tmp = parent.join(format!(".{name}.tmp-{pid}"));
        let work = parent.join(format!(".{name}.work-{pid}"));
        for d in [&tmp, &work] {
            cleanup::register(d);
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("--out {}: cannot write {}", out.display(), tmp.display()))?;
        Ok(Staged {
            out: out.to_path_buf(),
            tmp,
            work,
            parent,
            name,
            _lock: lock,
        })
    }

    /// Where the result is written until it is committed.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// A scratch directory for the command's own use (fine-tuning checkpoints), removed
    /// at the end whatever happens.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Marks the staged directory as squeeze's and renames it into place (an old output,
    /// checked at [`Staged::begin`], is moved aside first and removed after).
    pub fn commit(self) -> Result<()> {
        write_marker(&self.tmp)?;
        sync_dir(&self.tmp);
        let old = self
            .parent
            .join(format!(".{}.old-{}", self.name, std::process::id()));
        let replaced = self.out.symlink_metadata().is_ok();
        if replaced {
            cleanup::register(&old);
            std::fs::rename(&self.out, &old)
                .with_context(|| format!("moving the old {} aside", self.out.display()))?;
        }
        std::fs::rename(&self.tmp, &self.out)
            .with_context(|| format!("moving the result into {}", self.out.display()))?;
        sync_dir(&self.parent);
        if replaced {
            let _ = std::fs::remove_dir_all(&old);
            cleanup::unregister(&old);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for d in [&self.tmp, &self.work] {
            let _ = std::fs::remove_dir_all(d);
            cleanup::unregister(d);
        }
    }
}

/// The temporary name an output file is written under before it is renamed into place.
pub fn tmp_file(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(s)
}

/// Flushes a directory's entries to disk (best effort: a rename is durable only then).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Claims `out` for a command that writes into it in place (training, which checkpoints
/// there and resumes from it): checked against `inputs`, locked, and marked as squeeze's.
/// A directory with a finished model needs `resume` or `force`; one squeeze did not write
/// is refused either way.
pub fn claim_in_place(
    out: &Path,
    inputs: &[(&str, &Path)],
    force: bool,
    resume: bool,
) -> Result<Lock> {
    check_disjoint(out, inputs)?;
    let mut lock = Lock::take(out)?;
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !written_by_squeeze(out) {
        bail!(
            "--out {} is a non-empty directory that squeeze did not write (no {MARKER} \
             marker in it); squeeze never writes into it, not even with --force",
            out.display()
        );
    }
    if !resume && !force && out.join(squeeze::checkpoint::GRAPH_FILE).exists() {
        bail!(
            "{} already holds a model; pass --resume to continue its training or --force \
             to replace it",
            out.display()
        );
    }
    if !out.exists() {
        lock.created = Some(out.to_path_buf());
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create it", out.display()))?;
    if !out.join(MARKER).exists() {
        write_marker(out)?;
    }
    Ok(lock)
}

/// Marks `dir` as squeeze's output: the version and the command that wrote it.
fn write_marker(dir: &Path) -> Result<()> {
    let info = serde_json::json!({
        "written_by": format!("squeeze {}", env!("CARGO_PKG_VERSION")),
        "command": crate::invocation::invocation(),
    });
    std::fs::write(dir.join(MARKER), serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("cannot write into {}", dir.display()))
}
