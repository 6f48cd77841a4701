//! The README's commands stay true: every `squeeze …` line of its shell blocks parses
//! (run with `--help` appended, so an unknown subcommand or flag fails), and the cheap ones
//! — eval, compress and report on the committed zoo models — run as written (timing cut
//! to one round) in a scratch directory that links the repository's inputs; none of them
//! may change, add or remove a file there (the checkout stays clean).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `squeeze …` command lines of the README's ```sh blocks, without comments and
/// optional `[…]` parts.
fn readme_commands() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    for block in text.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap();
        for line in block.lines() {
            let line = line.split(" #").next().unwrap().trim();
            let Some(rest) = line.strip_prefix("squeeze ") else {
                continue;
            };
            let mut plain = String::new();
            let mut depth = 0;
            for c in rest.chars() {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    c if depth == 0 => plain.push(c),
                    _ => {}
                }
            }
            out.push(plain.split_whitespace().map(String::from).collect());
        }
    }
    out
}

/// Every file under `root` (following the scratch directory's links) with its size and
/// modification time: two snapshots differ when a command wrote into the checkout.
fn snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(p, (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

fn run(dir: &Path, args: &[String]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), text)
}

/// A command that runs quickly on a committed zoo model.
fn cheap(args: &[String]) -> bool {
    matches!(args[0].as_str(), "eval" | "compress" | "report")
        && args.get(1).is_some_and(|a| a.starts_with("zoo/"))
}

#[test]
fn every_readme_command_parses_and_the_cheap_ones_run_as_written() {
    let cmds = readme_commands();
    assert!(
        cmds.len() >= 10,
        "found only {} squeeze commands",
        cmds.len()
    );
    let dir = std::env::temp_dir().join(format!("squeeze-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for link in [
        "zoo", "recipes", "data", "tools", "models", "results", "bench",
    ] {
        // models/ exists only once scripts/setup.sh has fetched all-MiniLM-L6-v2
        if let Ok(target) = repo().join(link).canonicalize() {
            std::os::unix::fs::symlink(target, dir.join(link)).unwrap();
        }
    }
    // without the data the cheap commands are only parsed, and the skip is said
    let have_data = common::have_data();
    let linked: Vec<PathBuf> = ["zoo", "recipes", "tools", "results", "bench"]
        .iter()
        .map(|l| dir.join(l))
        .collect();
    let before: Vec<_> = linked.iter().map(|l| snapshot(l)).collect();
    for args in &cmds {
        let mut help = args.clone();
        help.push("--help".into());
        let (ok, out) = run(&dir, &help);
        assert!(ok, "`squeeze {}` does not parse:\n{out}", args.join(" "));
        if cheap(args) && have_data {
            let mut fast = args.clone();
            let flag = if args[0] == "eval" {
                "--speed-runs"
            } else {
                "--rounds"
            };
            fast.extend([flag.to_string(), "1".into()]);
            let (ok, out) = run(&dir, &fast);
            assert!(ok, "`squeeze {}` fails as written:\n{out}", args.join(" "));
            for (l, b) in linked.iter().zip(&before) {
                let after = snapshot(l);
                let changed: Vec<_> = after
                    .iter()
                    .filter(|(p, m)| b.get(*p) != Some(m))
                    .map(|(p, _)| p.display().to_string())
                    .chain(
                        b.keys()
                            .filter(|p| !after.contains_key(*p))
                            .map(|p| format!("{} (removed)", p.display())),
                    )
                    .collect();
                assert!(
                    changed.is_empty(),
                    "`squeeze {}` changed the checkout: {changed:?}",
                    args.join(" ")
                );
            }
        }
    }
    // outputs go under runs/, nowhere else in the working directory
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let linked = [
            "zoo", "recipes", "data", "tools", "models", "results", "bench",
        ];
        assert!(
            name == "runs" || linked.contains(&name.as_str()),
            "a README command wrote `{name}` outside runs/"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
