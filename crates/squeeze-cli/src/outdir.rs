//! Output directories: never the input, never silently replaced, and written whole — a
//! command builds its result in a hidden temporary sibling and renames it into place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Refuses `out` when it is the input directory, or a non-empty directory without `force`.
pub fn check_out(input: &Path, out: &Path, force: bool) -> Result<()> {
    if same_dir(input, out) {
        bail!(
            "--out {} is the input model's directory; squeeze never overwrites its input",
            out.display()
        );
    }
    let non_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !force {
        bail!(
            "{} already exists and is not empty; pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// A fresh hidden temporary directory beside `out`.
pub fn tmp_sibling(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    Ok(tmp)
}

/// Replaces `out` with the finished temporary directory `tmp`.
pub fn commit_dir(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing old {}", out.display()))?;
    }
    std::fs::rename(tmp, out).with_context(|| format!("moving result into {}", out.display()))
}
