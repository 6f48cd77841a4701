//! What squeeze guarantees about a user's files, tried through the CLI as a user would:
//! `--out` equal to an input, its parent, a child, or a symbolic link to either is refused
//! with every input file unchanged; `--force` replaces only what squeeze wrote; a bad
//! `--out` is reported before any work; a second concurrent writer fails at once;
//! interrupted runs leave no temporary directory (SIGTERM cleans up at once, a run killed
//! outright is cleaned up by the next); and a training run killed at any write boundary of
//! its checkpoint resumes to the bit-identical result, while a torn checkpoint is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use squeeze::checkpoint;
use squeeze::zoo::{self, ZooOpts};

mod common;
use common::have_data;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_squeeze"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squeeze-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let o = bin().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Every file under `dir` with its bytes (links not followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = p.symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                out.insert(
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            }
        }
    }
    out
}

/// A sandbox `sb/p/mlp` (a saved model) with a sibling file the user cares about.
fn sandbox(name: &str) -> (PathBuf, PathBuf) {
    let sb = tmp(name);
    let p = sb.join("p");
    let m = zoo::build("mlp", &ZooOpts::default(), 0).unwrap();
    checkpoint::save(&m, &p.join("mlp")).unwrap();
    std::fs::write(p.join("notes.txt"), "the user's own file").unwrap();
    std::fs::write(sb.join("r.toml"), "[[passes]]\ntype = \"materialize\"\n").unwrap();
    (sb, p.join("mlp"))
}

#[test]
fn out_equal_to_containing_inside_or_linking_to_an_input_is_refused() {
    let (sb, model) = sandbox("disjoint");
    let p = sb.join("p");
    std::os::unix::fs::symlink(&model, sb.join("link-model")).unwrap();
    std::os::unix::fs::symlink(&p, sb.join("link-parent")).unwrap();
    let before = snapshot(&sb);
    let recipe = sb.join("r.toml");
    let outs = [
        model.clone(),
        p.clone(),
        model.join("sub"),
        sb.join("link-model"),
        sb.join("link-parent"),
        sb.join("link-model/new"),
        sb.clone(),
    ];
    for out in &outs {
        for force in [false, true] {
            let m = model.to_str().unwrap();
            let o = out.to_str().unwrap();
            let mut compress = vec![
                "compress",
                m,
                "--recipe",
                recipe.to_str().unwrap(),
                "--out",
                o,
            ];
            let mut export = vec!["export", m, "--format", "native", "--out", o];
            if force {
                compress.push("--force");
                export.push("--force");
            }
            for args in [compress, export] {
                let (ok, err) = run(&args);
                assert!(!ok, "{args:?} succeeded");
                assert!(
                    err.contains("never overwrites its inputs") || err.contains("did not write"),
                    "{args:?}: {err}"
                );
            }
        }
    }
    // the recipe file is an input too
    let (ok, err) = run(&[
        "compress",
        model.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        recipe.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--recipe"), "{err}");
    assert_eq!(snapshot(&sb), before, "an input file changed");
    let _ = std::fs::remove_dir_all(&sb);
}

#[test]
fn force_replaces_only_what_squeeze_wrote() {
    let (sb, model) = sandbox("force");
    let m = model.to_str().unwrap();
    // a directory of the user's, not squeeze's
    let theirs = sb.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("thesis.tex"), "years of work").unwrap();
    let (ok, err) = run(&[
        "export",
        m,
        "--format",
        "native",
        "--out",
        theirs.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        !ok && err.contains("did not write") && err.contains(".squeeze-output"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(theirs.join("thesis.tex")).unwrap(),
        b"years of work"
    );
    // squeeze's own output: refused without --force, replaced with it
    let ours = sb.join("ours");
    let o = ours.to_str().unwrap();
    assert!(run(&["export", m, "--format", "native", "--out", o]).0);
    assert!(ours.join(".squeeze-output").is_file());
    let (ok, err) = run(&["export", m, "--format", "native", "--out", o]);
    assert!(!ok && err.contains("--force"), "{err}");
    let (ok, err) = run(&["export", m, "--format", "native", "--out", o, "--force"]);
    assert!(ok, "{err}");
    let left: Vec<_> = std::fs::read_dir(&sb)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with(".ours")),
        "temporary or lock files left: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&sb);
}

#[test]
fn a_bad_out_is_reported_before_any_work() {
    let (sb, model) = sandbox("bad-out");
    let file = sb.join("p/notes.txt");
    let under_file = file.join("out");
    // the recipe does not exist: the --out error must come first
    let (ok, err) = run(&[
        "compress",
        model.to_str().unwrap(),
        "--recipe",
        "/no/such/recipe.toml",
        "--out",
        under_file.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--out") && !err.contains("recipe.toml"),
        "{err}"
    );
    let (ok, err) = run(&[
        "export",
        model.to_str().unwrap(),
        "--format",
        "native",
        "--out",
        file.to_str().unwrap(),
        "--force",
    ]);
    assert!(!ok && err.contains("not a directory"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"the user's own file");
    let _ = std::fs::remove_dir_all(&sb);
}

/// Waits until `f` holds (60 s at most).
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries of `dir` whose names start with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn spawn(args: &[&str]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn concurrent_writers_fail_and_interrupted_runs_leave_nothing_behind() {
    if !have_data() {
        return;
    }
    let (sb, _) = sandbox("concurrent");
    let zoo_mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../zoo/mlp");
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../")
        .join(squeeze::data::DEFAULT_DIR);
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/mlp-magnitude-90.toml");
    let out = sb.join("out");
    let compress = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "compress",
            zoo_mlp.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = compress(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // a first writer, fine-tuning for a while; a second one to the same --out fails
    let first = spawn(&argv);
    wait_for("the first writer's staging directory", || {
        !entries(&sb, ".out.tmp-").is_empty()
    });
    let (ok, err) = run(&argv);
    assert!(
        !ok && err.contains("being written by another squeeze process"),
        "{err}"
    );
    // SIGTERM: the first one removes its temporary directories and lock, and says so
    signal(&first, "-TERM");
    let o = first.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(128 + 15),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        entries(&sb, ".out").is_empty(),
        "left behind: {:?}",
        entries(&sb, ".out")
    );
    assert!(!out.exists());
    // SIGKILL leaves them; the next run to that --out removes them (even one that fails)
    let killed = spawn(&argv);
    wait_for("the staging directory", || {
        !entries(&sb, ".out.tmp-").is_empty()
    });
    signal(&killed, "-KILL");
    let _ = killed.wait_with_output();
    assert!(!entries(&sb, ".out.tmp-").is_empty());
    let bad = compress(&[]);
    let mut bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    bad[3] = "/no/such/recipe.toml";
    let (ok, err) = run(&bad);
    assert!(!ok && err.contains("interrupted squeeze run"), "{err}");
    assert!(
        entries(&sb, ".out").is_empty(),
        "left behind: {:?}",
        entries(&sb, ".out")
    );
    let _ = std::fs::remove_dir_all(&sb);
}

/// Trains the small MLP into `out` for `epochs` epochs (optionally resuming, or with a
/// fault injected); returns success and stderr.
fn train(out: &Path, epochs: &str, resume: bool, fault: Option<String>) -> (bool, String) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../")
        .join(squeeze::data::DEFAULT_DIR);
    let mut c = bin();
    c.args([
        "train",
        "--arch",
        "mlp",
        "--widths",
        "64,32",
        "--epochs",
        epochs,
        "--limit-train",
        "2000",
        "--out",
    ])
    .arg(out)
    .arg("--data")
    .arg(&data);
    if resume {
        c.arg("--resume");
    }
    if let Some(f) = fault {
        c.env("SQUEEZE_FAULT", f);
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn resume_after_a_kill_at_every_write_boundary_is_bit_identical() {
    if !have_data() {
        return;
    }
    let sb = tmp("fault");
    let whole = sb.join("whole");
    let (ok, err) = train(&whole, "3", false, None);
    assert!(ok, "{err}");
    let want = std::fs::read(whole.join("model.safetensors")).unwrap();
    for step in 1..=squeeze::train::commit::STEPS {
        let out = sb.join(format!("fault-{step}"));
        let (ok, err) = train(&out, "3", false, Some(format!("2:{step}")));
        assert!(
            !ok && err.contains("SQUEEZE_FAULT"),
            "boundary {step}: {err}"
        );
        let (ok, err) = train(&out, "3", true, None);
        assert!(ok, "resume after boundary {step}: {err}");
        let got = std::fs::read(out.join("model.safetensors")).unwrap();
        assert!(
            got == want,
            "boundary {step}: the resumed weights differ from the uninterrupted run's"
        );
        let left = entries(&out, "checkpoint.");
        assert!(left.is_empty(), "boundary {step}: left {left:?}");
    }
    // a torn checkpoint (weights cut short) is refused, naming the file
    let ck = whole.join("checkpoint/model.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, err) = train(&whole, "4", true, None);
    assert!(
        !ok && err.contains("torn") && err.contains("model.safetensors"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&sb);
}

#[test]
fn absurd_numbers_are_refused_before_any_work() {
    let (sb, model) = sandbox("absurd");
    let m = model.to_str().unwrap();
    let out = sb.join("o");
    let o = out.to_str().unwrap();
    for (args, flag) in [
        (
            vec!["eval", m, "--speed-runs", "9223372036854775808"],
            "--speed-runs",
        ),
        (vec!["eval", m, "--speed-runs", "1e15"], "--speed-runs"),
        (
            vec![
                "train",
                "--arch",
                "mlp",
                "--widths",
                "2000000000",
                "--out",
                o,
            ],
            "--widths",
        ),
        (
            vec!["train", "--arch", "resnet", "--depth", "100000", "--out", o],
            "--depth",
        ),
        (
            vec!["train", "--arch", "mlp", "--lr", "0", "--out", o],
            "--lr",
        ),
        (
            vec![
                "train",
                "--arch",
                "mlp",
                "--epochs",
                "9223372036854775807",
                "--out",
                o,
            ],
            "--epochs",
        ),
        (
            vec![
                "compress",
                m,
                "--recipe",
                "r.toml",
                "--rounds",
                "9223372036854775808",
                "--out",
                o,
            ],
            "--rounds",
        ),
    ] {
        let (ok, err) = run(&args);
        assert!(
            !ok && err.contains(flag)
                && (err.contains("out of range") || err.contains("whole number")),
            "{args:?}: {err}"
        );
    }
    let recipe = sb.join("big.toml");
    for body in [
        "[[passes]]\ntype = \"obd\"\nsparsity = 0.5\nrounds = 2147483648\n",
        "[[passes]]\ntype = \"magnitude\"\nsparsity = 0.5\nfinetune_epochs = 9223372036854775807\n",
    ] {
        std::fs::write(&recipe, body).unwrap();
        let (ok, err) = run(&[
            "compress",
            m,
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            o,
        ]);
        assert!(
            !ok && err.contains("big.toml") && err.contains("out of range"),
            "{err}"
        );
    }
    assert!(!out.exists(), "a refused command left {}", out.display());
    let _ = std::fs::remove_dir_all(&sb);
}

#[test]
fn report_json_never_lands_in_a_model_and_records_every_model() {
    let (sb, model) = sandbox("report-json");
    let before = snapshot(&sb.join("p"));
    let inside = model.join("report.json");
    let (ok, err) = run(&[
        "report",
        model.to_str().unwrap(),
        "--rounds",
        "0",
        "--json",
        inside.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("--json") && err.contains("lies inside"),
        "{err}"
    );
    assert_eq!(snapshot(&sb.join("p")), before, "a model directory changed");
    if !have_data() {
        let _ = std::fs::remove_dir_all(&sb);
        return common::skip("report --json on real data (Fashion-MNIST is not installed)");
    }
    let out = sb.join("r.json");
    let (ok, err) = run(&[
        "report",
        model.to_str().unwrap(),
        "--rounds",
        "1",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let models = doc["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert!(models[0]["metrics"]["accuracy"].as_f64().is_some(), "{doc}");
    assert!(doc["command"].as_str().unwrap().contains("report"), "{doc}");
    assert!(doc["measured"]["machine"].as_str().is_some(), "{doc}");
    let _ = std::fs::remove_dir_all(&sb);
}
