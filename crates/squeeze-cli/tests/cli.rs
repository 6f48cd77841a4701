//! The CLI end to end: help text, refusal to overwrite the input model, recipe typos and
//! missing data reported with the file at fault, and compress → report on a real model.

use std::path::{Path, PathBuf};
use std::process::Command;

use squeeze::checkpoint;
use squeeze::zoo::{self, ZooOpts};

mod common;
use common::have_data;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_squeeze"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squeeze-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = bin().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn model_dir(d: &Path) -> PathBuf {
    let m = zoo::build("cnn", &ZooOpts::default(), 0).unwrap();
    let dir = d.join("cnn");
    checkpoint::save(&m, &dir).unwrap();
    dir
}

#[test]
fn help_lists_every_command() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for c in [
        "train", "distill", "eval", "embed", "export", "compress", "report", "bench", "demo",
    ] {
        assert!(out.contains(c), "--help lacks {c}");
    }
    let (ok, _, err) = run(&[
        "train",
        "--arch",
        "mlp",
        "--out",
        "/tmp/x",
        "--optimizer",
        "lion",
    ]);
    assert!(
        !ok && err.contains("--optimizer") && err.contains("lion"),
        "{err}"
    );
}

#[test]
fn compress_never_overwrites_its_input_and_reports_recipe_typos() {
    let d = tmp("compress");
    let m = model_dir(&d);
    let recipe = d.join("r.toml");
    std::fs::write(&recipe, "[[passes]]\ntype = \"fold_batch_norm\"\n").unwrap();
    let ms = m.to_str().unwrap();
    let (ok, _, err) = run(&[
        "compress",
        ms,
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        ms,
    ]);
    assert!(!ok && err.contains("never overwrites its input"), "{err}");
    let bad = d.join("typo.toml");
    std::fs::write(&bad, "[[passes]]\ntype = \"fold_batchnorms\"\n").unwrap();
    let out = d.join("out");
    let (ok, _, err) = run(&[
        "compress",
        ms,
        "--recipe",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("typo.toml") && err.contains("fold_batchnorms"),
        "{err}"
    );
    assert!(
        !out.exists(),
        "a failed compress must not leave output behind"
    );
    let (ok, _, err) = run(&[
        "compress",
        ms,
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--data",
        "/nonexistent",
    ]);
    assert!(
        !ok && err.contains("/nonexistent") && err.contains("dataset-fashion-mnist"),
        "{err}"
    );
}

#[test]
fn train_init_checks_the_architecture_and_protects_its_input() {
    let d = tmp("init");
    let m = model_dir(&d);
    let ms = m.to_str().unwrap();
    let x = d.join("x");
    let x = x.to_str().unwrap();
    let (ok, _, err) = run(&["train", "--arch", "mlp", "--init", ms, "--out", x]);
    assert!(
        !ok && err.contains("holds a `cnn` model") && err.contains("--arch mlp"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "train", "--arch", "cnn", "--init", ms, "--out", ms, "--force",
    ]);
    assert!(!ok && err.contains("never overwrites its input"), "{err}");
    let (ok, _, err) = run(&[
        "train", "--arch", "cnn", "--init", ms, "--depth", "2", "--out", x,
    ]);
    assert!(!ok && err.contains("--depth"), "{err}");
}

/// With a zero learning rate, fine-tuning from --init keeps the loaded weights bit for bit
/// (a fresh build would have seed 0's weights, not seed 7's).
#[test]
fn train_init_starts_from_the_saved_weights() {
    if !have_data() {
        return;
    }
    let d = tmp("init-real");
    let m = d.join("seed7");
    checkpoint::save(&zoo::build("cnn", &ZooOpts::default(), 7).unwrap(), &m).unwrap();
    let out = d.join("tuned");
    let (ok, _, err) = run(&[
        "train",
        "--arch",
        "cnn",
        "--init",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "1e-30", // the smallest step changes no weight (0 is refused)
        "--schedule",
        "constant",
        "--limit-train",
        "128",
    ]);
    assert!(ok, "{err}");
    let (a, b) = (
        checkpoint::load(&m).unwrap(),
        checkpoint::load(&out).unwrap(),
    );
    for name in ["block1.conv.weight", "fc2.weight"] {
        let (x, y) = (a.params.get(name).unwrap(), b.params.get(name).unwrap());
        let diff = x.sub(y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} changed");
    }
    let log = std::fs::read_to_string(out.join("train.json")).unwrap();
    assert!(log.contains("seed7"), "train.json must record --init");
}

#[test]
fn compress_and_report_on_real_data() {
    if !have_data() {
        return;
    }
    let d = tmp("real");
    let m = model_dir(&d);
    let recipe = d.join("r.toml");
    std::fs::write(&recipe, "[[passes]]\ntype = \"fold_batch_norm\"\n").unwrap();
    let out = d.join("folded");
    let (ok, _, err) = run(&[
        "compress",
        m.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rounds",
        "2",
    ]);
    assert!(ok, "{err}");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let (b, a) = (&rep["before"], &rep["after"]);
    let acc = |m: &serde_json::Value| m["accuracy"].as_f64().expect("accuracy is a number");
    assert_eq!(acc(b), acc(a), "folding must not change predictions");
    let params = |m: &serde_json::Value| m["params"].as_u64().expect("params is a number");
    assert!(params(a) < params(b));
    assert_eq!(rep["passes"][0]["label"], "folded 2 of 2 BatchNorm layers");
    // both sides of the comparison were timed together, interleaved
    for side in [b, a] {
        let method = side["timing"]["method"].as_str().expect("timing recorded");
        assert!(method.contains("interleaved over 2 rounds"), "{method}");
    }
    let (ok, table, err) = run(&[
        "report",
        m.to_str().unwrap(),
        out.to_str().unwrap(),
        "--rounds",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(
        table.contains("| model |") && table.lines().count() >= 4,
        "{table}"
    );
    assert!(
        table.contains("Speeds: 2 models timed in one process"),
        "{table}"
    );
    // against the first row: Δ quality and ratios; no per-model peak RSS from one process
    assert!(
        table.contains("| Δ quality |")
            && table.contains("| × time b1 |")
            && !table.contains("peak RSS"),
        "{table}"
    );
    // stored metrics only on request, labelled with date and machine, with one footer
    let (ok, table, err) = run(&["report", out.to_str().unwrap(), "--stored"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("(stored: 20")
            && table.contains("not comparable")
            && !table.contains("Speeds:"),
        "{table}"
    );
}

#[test]
fn distill_trains_resumes_strips_its_regressors_and_refuses_bad_options() {
    let d = tmp("distill");
    let teacher = d.join("teacher");
    let opts = ZooOpts {
        widths: Some(vec![4, 0, 8, 0]),
        depth: None,
    };
    checkpoint::save(&zoo::build("vgg", &opts, 0).unwrap(), &teacher).unwrap();
    let (t, out) = (teacher.to_str().unwrap(), d.join("student"));
    let o = out.to_str().unwrap();
    let base = [
        "distill",
        "--teacher",
        t,
        "--student",
        "vgg",
        "--widths",
        "2,0,4,0",
        "--out",
        o,
        "--limit-train",
        "256",
        "--hint",
        "features.0.relu=features.0.relu",
    ];
    let (ok, _, err) = run(&[&base[..], &["--alpha", "1.5"]].concat());
    assert!(!ok && err.contains("alpha"), "{err}");
    let (ok, _, err) = run(&[&base[..], &["--hint", "features.0.relu=missing"]].concat());
    assert!(!ok && err.contains("`missing`"), "{err}");
    let mut own = base.to_vec();
    own[8] = t; // --out the teacher's own directory
    let (ok, _, err) = run(&own);
    assert!(!ok && err.contains("never overwrites"), "{err}");
    // a student directory whose tensors are wider than its model.json claims
    let wide = d.join("wide");
    checkpoint::save(&zoo::build("vgg", &opts, 1).unwrap(), &wide).unwrap();
    let mj = wide.join("model.json");
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mj).unwrap()).unwrap();
    for n in g["nodes"].as_array_mut().unwrap() {
        let first = n["name"].as_str().unwrap().starts_with("features.0.");
        let op = &mut n["op"];
        for key in ["out_channels", "channels"] {
            if first && op.get(key).is_some() {
                op[key] = 2.into(); // the tensors hold 4
            }
        }
        if op["in_channels"] == 4 {
            op["in_channels"] = 2.into();
        }
    }
    std::fs::write(&mj, serde_json::to_string(&g).unwrap()).unwrap();
    let w = wide.to_str().unwrap();
    let (ok, _, err) = run(&["distill", "--teacher", t, "--student", w, "--out", o]);
    assert!(
        !ok && err.contains("--student") && err.contains("`features.0.") && err.contains("[2]"),
        "{err}"
    );
    if !have_data() {
        return;
    }
    let (ok, _, err) = run(&[&base[..], &["--epochs", "1"]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[&base[..], &["--epochs", "2", "--resume"]].concat());
    assert!(ok, "{err}");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("distill.json")).unwrap()).unwrap();
    assert_eq!(
        log["history"].as_array().unwrap().len(),
        2,
        "resumed to epoch 2"
    );
    let m = checkpoint::load(&out).unwrap();
    assert!(
        m.graph.nodes.iter().all(|n| !n.name.contains("regressor")),
        "the hint regressor is not part of the saved student"
    );
    assert!(out.join("metrics.json").exists());
    // stage-wise: one epoch on the hint alone, then one on the soft targets
    let staged = d.join("staged");
    let (ok, _, err) = run(&[
        &base[..8],
        &[staged.to_str().unwrap()],
        &base[9..],
        &["--epochs", "1", "--hint-epochs", "1"],
    ]
    .concat());
    assert!(ok, "{err}");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(staged.join("distill.json")).unwrap())
            .unwrap();
    assert_eq!(
        log["history"].as_array().unwrap().len(),
        2,
        "a hint epoch, then a soft-target epoch"
    );
    let m = checkpoint::load(&staged).unwrap();
    assert!(m.graph.nodes.iter().all(|n| !n.name.contains("regressor")));
}

#[test]
fn export_to_hf_refuses_what_hf_cannot_hold_and_writes_nothing() {
    let d = tmp("export-hf");
    let m = model_dir(&d);
    let out = d.join("cnn-hf");
    let (ok, _, err) = run(&[
        "export",
        m.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "an image model exported as HF BERT: {err}");
    assert!(
        err.contains("not a BERT encoder") && err.contains("--format native"),
        "{err}"
    );
    assert!(!out.exists(), "a refused export left {}", out.display());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn export_to_onnx_writes_the_file_and_its_report_refuses_an_opset_and_keeps_what_exists() {
    let d = tmp("export-onnx");
    let m = model_dir(&d);
    let out = d.join("cnn-onnx");
    let (m, o) = (m.to_str().unwrap(), out.to_str().unwrap());
    let export = |extra: &[&str]| {
        let mut a = vec!["export", m, "--format", "onnx", "--out", o];
        a.extend_from_slice(extra);
        run(&a)
    };
    let (ok, _, err) = export(&["--opset", "13"]);
    assert!(!ok && err.contains("opset 13"), "{err}");
    assert!(!out.exists(), "a refused export left {}", out.display());
    let (ok, _, err) = export(&[]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    assert!(bytes.len() > 1000);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("export.json")).unwrap()).unwrap();
    assert_eq!(report["inputs"], serde_json::json!(["input"]));
    assert_eq!(report["output"], "logits");
    assert_eq!(report["bytes"], bytes.len());
    // an existing output is never replaced without --force
    let (ok, _, err) = export(&[]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(out.join("model.onnx")).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&d);
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `--max-drop` on the committed zoo/mlp: one-shot 90% magnitude pruning loses tens of
/// points and is refused, naming the pass and the fine-tuned recipe, with nothing written;
/// the gradual (AGP) recipe it points to stays within the limit and is written.
#[test]
fn max_drop_refuses_a_one_shot_loss_and_passes_the_fine_tuned_recipe() {
    if !have_data() {
        return;
    }
    let d = tmp("max-drop");
    let r = repo();
    let compress = |recipe: &str, out: &Path| {
        run(&[
            "compress",
            r.join("zoo/mlp").to_str().unwrap(),
            "--recipe",
            r.join(recipe).to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-drop",
            "0.5",
            "--rounds",
            "0",
        ])
    };
    let refused = d.join("oneshot");
    let (ok, _, err) = compress("recipes/mlp-magnitude-90-oneshot.toml", &refused);
    assert!(!ok, "a 90% one-shot prune passed --max-drop 0.5: {err}");
    assert!(
        err.contains("--max-drop 0.5")
            && err.contains("cost most is passes[0] `magnitude`")
            && err.contains("recipes/mlp-agp-90.toml"),
        "{err}"
    );
    assert!(!refused.exists(), "a refused model was written");
    let kept = d.join("agp");
    let (ok, _, err) = compress("recipes/mlp-agp-90.toml", &kept);
    assert!(ok, "{err}");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("report.json")).unwrap()).unwrap();
    let drop = rep["max_drop"]["drop"].as_f64().unwrap();
    assert!(drop <= 0.5, "report.json records a drop of {drop}");
    assert_eq!(
        rep["max_drop"]["after_each_pass"].as_array().unwrap().len(),
        2
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn presets_resolve_by_model_kind_and_unknown_ones_are_named() {
    let (ok, out, err) = run(&["recipes"]);
    assert!(ok, "{err}");
    for p in [
        "int8",
        "int8-static",
        "int4",
        "sparse-50",
        "2of4",
        "deep-compression",
    ] {
        assert!(
            out.contains(&format!("\n{p}\n")),
            "`squeeze recipes` lacks {p}:\n{out}"
        );
    }
    let d = tmp("preset");
    let m = model_dir(&d);
    let o = d.join("o");
    let args = |p: &'static str| {
        vec![
            "compress".to_string(),
            m.to_str().unwrap().into(),
            "--preset".into(),
            p.into(),
            "--out".into(),
            o.to_str().unwrap().into(),
        ]
    };
    let run_s = |a: Vec<String>| run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, err) = run_s(args("int9"));
    assert!(
        !ok && err.contains("unknown preset `int9`") && err.contains("deep-compression"),
        "{err}"
    );
    let (ok, _, err) = run_s(args("2of4"));
    assert!(
        !ok && err.contains("no recipe for image models") && err.contains("int8"),
        "{err}"
    );
    assert!(!o.exists());
    let (ok, _, err) = run(&[
        "compress",
        m.to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--recipe"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// SIGINT inside an epoch: the run saves a checkpoint at its position, prints the exact
/// `--resume` command and exits 130; resuming finishes with weights identical to an
/// uninterrupted run (augmentation draws replayed); `--resume` on the finished run and
/// on a directory without a checkpoint say what they are.
#[test]
fn sigint_saves_a_mid_epoch_checkpoint_and_resume_is_exact() {
    sigint_then_resume("sigint", &["--arch", "mlp"]);
}

/// The same for a convolutional network (on part of the training set, to keep it short):
/// its weight gradients are summed in a fixed order, so the resumed run's bits match too.
#[test]
fn a_convolutional_network_resumes_to_the_same_bits() {
    sigint_then_resume(
        "sigint-conv",
        &["--arch", "lenet5", "--limit-train", "6000"],
    );
}

/// Trains `model` (architecture and data options) for 3 epochs, interrupted by SIGINT in
/// the second, resumes it, and checks the result against an uninterrupted run.
fn sigint_then_resume(name: &str, model: &[&str]) {
    use std::io::{BufRead, BufReader};
    if !have_data() {
        return;
    }
    let d = tmp(name);
    let train = |out: &Path| -> Vec<String> {
        // padding-crop augmentation makes the resumed epoch replay its random draws
        let run = ["--augment-pad", "2", "--epochs", "3", "--out"];
        ["train"]
            .iter()
            .chain(model)
            .chain(&run)
            .map(|s| s.to_string())
            .chain([out.to_str().unwrap().to_string()])
            .collect()
    };
    let (a, b) = (d.join("interrupted"), d.join("straight"));
    let mut child = bin()
        .args(train(&a))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        err += &line;
        err.push('\n');
        // the first progress line of the second epoch: mid-epoch
        if line.starts_with("epoch 2/3 step") {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    for line in lines {
        err += &line.unwrap();
        err.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let resume = format!("{} --resume", train(&a).join(" "));
    assert!(
        err.contains("continue with:") && err.contains(&resume),
        "{err}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert!(
        state["partial"]["batches"].is_u64(),
        "no mid-epoch position: {state}"
    );
    let mut args = train(&a);
    args.push("--resume".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, e) = run(&argv);
    assert!(ok, "{e}");
    let straight: Vec<String> = train(&b);
    let (ok, _, e) = run(&straight.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{e}");
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        weights(&a) == weights(&b),
        "the resumed run's weights differ"
    );
    let (ok, _, e) = run(&argv);
    assert!(ok && e.contains("the run is finished"), "{e}");
    let mut fresh = train(&d.join("never"));
    fresh.push("--resume".into());
    let (ok, _, e) = run(&fresh.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && e.contains("without --resume"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A seeded convolutional network trains to the same bits twice, and on one thread as on
/// the default pool: a convolution's weight gradient sums its images in a fixed order.
#[test]
fn seeded_conv_training_repeats_to_the_bit_on_any_thread_count() {
    if !have_data() {
        return;
    }
    let d = tmp("repeat");
    let train = |name: &str, threads: Option<&str>| {
        let out = d.join(name);
        let mut c = bin();
        c.args([
            "train",
            "--arch",
            "lenet5",
            "--augment-pad",
            "2",
            "--epochs",
            "1",
        ])
        .args(["--limit-train", "2000", "--out"])
        .arg(&out);
        if let Some(t) = threads {
            c.env("RAYON_NUM_THREADS", t);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let first = train("a", None);
    assert!(first == train("b", None), "two runs' weights differ");
    assert!(
        first == train("c", Some("1")),
        "one thread's weights differ from the default pool's"
    );
    let _ = std::fs::remove_dir_all(&d);
}
