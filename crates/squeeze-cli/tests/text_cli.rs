//! The text-encoder commands end to end on a tiny random BERT with a hand-written WordPiece
//! tokenizer: `embed` (.npy and .jsonl, in input order), `eval --task stsb`, `export
//! --format hf` (and its refusal, with nothing written, for uneven FFN widths), `bench
//! text`'s record of what made and what measured each encoder, and the errors for an
//! unknown output extension and a malformed STS-B line.

use std::path::{Path, PathBuf};
use std::process::Command;

use squeeze::checkpoint;
use squeeze::text::bert::{self, BertShape, LayerShape};

const WORDS: &[&str] = &[
    "a", "man", "woman", "is", "playing", "guitar", "dog", "runs", ".", "the",
];

fn bin(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_squeeze"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squeeze-textcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[path = "../../squeeze/tests/common/tokenizer.rs"]
mod tokenizer;

fn tokenizer_json() -> Vec<u8> {
    tokenizer::tokenizer_json(WORDS)
}

fn tiny_model(d: &Path, uniform: bool) -> PathBuf {
    let l = LayerShape {
        heads: 2,
        head_dim: 4,
        intermediate: 16,
    };
    let l2 = if uniform {
        l
    } else {
        LayerShape {
            intermediate: 8,
            ..l
        }
    };
    let shape = BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        vocab: 4 + WORDS.len(),
        max_positions: 16,
        segments: 2,
        hidden: 8,
        eps: 1e-12,
        dropout: 0.1,
        layers: vec![l, l2],
        normalize: true,
    };
    let mut m = bert::random(&shape, 3).unwrap();
    m.assets.insert("tokenizer.json".into(), tokenizer_json());
    let dir = d.join(if uniform { "bert" } else { "bert-uneven" });
    checkpoint::save(&m, &dir).unwrap();
    dir
}

#[test]
fn embed_writes_npy_and_jsonl_in_input_order() {
    let d = tmp("embed");
    let model = tiny_model(&d, true);
    let input = d.join("in.txt");
    std::fs::write(
        &input,
        "A man is playing guitar.\nthe dog runs\n\nA man is playing guitar.\n",
    )
    .unwrap();
    let (npy, jsonl) = (d.join("e.npy"), d.join("e.jsonl"));
    let m = model.to_str().unwrap();
    for out in [&npy, &jsonl] {
        let (ok, _, err) = bin(&[
            "embed",
            m,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
    }
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + hlen]);
    assert!(
        header.contains("'shape': (4, 8)") && (10 + hlen).is_multiple_of(64),
        "{header}"
    );
    assert_eq!(bytes.len(), 10 + hlen + 4 * 8 * 4);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0]["embedding"], rows[3]["embedding"],
        "same sentence, same embedding"
    );
    assert_ne!(rows[0]["embedding"], rows[1]["embedding"]);
    let (ok, _, err) = bin(&[
        "embed",
        m,
        "--input",
        input.to_str().unwrap(),
        "--out",
        "/tmp/x.csv",
    ]);
    assert!(!ok && err.contains(".npy or .jsonl"), "{err}");
}

#[test]
fn a_20_mb_line_embeds_like_its_first_words() {
    let d = tmp("embed-long");
    let model = tiny_model(&d, true);
    let m = model.to_str().unwrap();
    let embed = |text: String, name: &str| -> Vec<serde_json::Value> {
        let input = d.join(format!("{name}.txt"));
        std::fs::write(&input, text).unwrap();
        let out = d.join(format!("{name}.jsonl"));
        let (ok, _, err) = bin(&[
            "embed",
            m,
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // the tiny model reads 16 positions: 40 words are already past its last token
    let long = embed(
        format!("{}\nthe dog runs\n", "the dog runs. ".repeat(1_500_000)),
        "long",
    );
    let short = embed(
        format!("{}\nthe dog runs\n", "the dog runs. ".repeat(10)),
        "short",
    );
    assert_eq!(long.len(), 2);
    assert_eq!(long, short, "cutting a line must not change its embedding");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn eval_stsb_reports_correlations_and_names_bad_lines() {
    let d = tmp("eval");
    let model = tiny_model(&d, true);
    let more = d.join("more.txt");
    std::fs::write(&more, "the guitar is old\na cat sleeps\n".repeat(4)).unwrap();
    let sts = d.join("sts.csv");
    let line = |s: f64, a: &str, b: &str| format!("g\tf\t2012\t1\t{s}\t{a}\t{b}\n");
    let good = line(5.0, "a man is playing", "a man is playing")
        + &line(0.5, "the dog runs", "a woman is playing guitar")
        + &line(2.0, "a dog", "the man runs");
    std::fs::write(&sts, &good).unwrap();
    let (ok, out, err) = bin(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        sts.to_str().unwrap(),
        "--json",
        "--speed-runs",
        "1",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "spearman",
        "pearson",
        "params",
        "size_bytes",
        "latency_ms_b1",
        "throughput_b32",
        "peak_rss_bytes",
    ] {
        assert!(!v[k].is_null(), "eval JSON lacks {k}: {v}");
    }
    // the quality and cost numbers are the library's own, exactly
    let m = squeeze::formats::load_any(&model).unwrap();
    let pairs = squeeze::text::stsb::read(&sts).unwrap();
    let (rho, r) = squeeze::text::Encoder::new(&m)
        .unwrap()
        .stsb(&pairs, 32, false)
        .unwrap();
    assert_eq!(v["spearman"].as_f64(), Some(rho), "{v}");
    assert_eq!(v["pearson"].as_f64(), Some(r), "{v}");
    let cost = squeeze::eval::static_cost(&m).unwrap();
    assert_eq!(v["params"].as_u64(), Some(cost.params as u64), "{v}");
    assert_eq!(
        v["size_bytes"].as_u64(),
        Some(checkpoint::size_on_disk(&model).unwrap()),
        "{v}"
    );
    let (ok, table, err) = bin(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        sts.to_str().unwrap(),
        "--speed-runs",
        "1",
    ]);
    assert!(
        ok && table.contains("STS-B ρ") && table.contains("(b32)"),
        "{table}{err}"
    );
    std::fs::write(&sts, good + "broken line without tabs\n").unwrap();
    let (ok, _, err) = bin(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        sts.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("sts.csv") && err.contains("line 4"),
        "{err}"
    );
    let (ok, _, err) = bin(&["eval", model.to_str().unwrap(), "--task", "fmnist"]);
    assert!(!ok && err.contains("--task stsb"), "{err}");
}

fn export_hf(model: &str, out: &str, force: bool) -> (bool, String, String) {
    let mut args = vec!["export", model, "--format", "hf", "--out", out];
    if force {
        args.push("--force");
    }
    bin(&args)
}

#[test]
fn export_hf_writes_hf_or_refuses_with_a_reason() {
    let d = tmp("export");
    let model = tiny_model(&d, true);
    let out = d.join("hf");
    let (ok, _, err) = export_hf(model.to_str().unwrap(), out.to_str().unwrap(), false);
    assert!(ok, "{err}");
    for f in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
        "tokenizer.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let (ok, _, err) = export_hf(model.to_str().unwrap(), out.to_str().unwrap(), false);
    assert!(!ok && err.contains("--force"), "{err}");
    let uneven = tiny_model(&d, false);
    let out2 = d.join("refused");
    let (ok, _, err) = export_hf(uneven.to_str().unwrap(), out2.to_str().unwrap(), false);
    assert!(
        !ok && err.contains("FFN widths differ") && err.contains("--format native"),
        "{err}"
    );
    assert!(!out2.exists(), "a refused export wrote {}", out2.display());
    let (ok, _, err) = export_hf(model.to_str().unwrap(), model.to_str().unwrap(), true);
    assert!(!ok && err.contains("never overwrites"), "{err}");
}

#[test]
fn distill_trains_a_sentence_encoder_on_its_teachers_embeddings() {
    let d = tmp("distill");
    let teacher = tiny_model(&d, true);
    let sentences = d.join("sentences.txt");
    std::fs::write(
        &sentences,
        "a man is playing guitar\nthe dog runs\na woman is playing\nthe man runs .\n".repeat(4),
    )
    .unwrap();
    let more = d.join("more.txt");
    std::fs::write(&more, "the guitar is old\na cat sleeps\n".repeat(4)).unwrap();
    let sts = sts_pairs(&d);
    let (t, s, e) = (
        teacher.to_str().unwrap(),
        sentences.to_str().unwrap(),
        sts.to_str().unwrap(),
    );
    let out = d.join("student");
    let o = out.to_str().unwrap();
    let args = [
        "distill",
        "--teacher",
        t,
        "--student",
        t,
        "--out",
        o,
        "--sentences",
        s,
        "--sentences",
        more.to_str().unwrap(),
        "--eval-pairs",
        e,
        "--epochs",
        "2",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
    ];
    let (ok, _, err) = bin(&[&args[..], &["--hint", "a=b"]].concat());
    assert!(!ok && err.contains("--hint"), "{err}");
    let (ok, _, err) = bin(&[&args[..], &["--embedding-loss", "l1"]].concat());
    assert!(!ok && err.contains("--embedding-loss"), "{err}");
    let mut zoo = args.to_vec();
    zoo[4] = "vgg";
    let (ok, _, err) = bin(&zoo);
    assert!(!ok && err.contains("sentence encoder"), "{err}");
    let (ok, _, err) = bin(&args);
    assert!(ok, "{err}");
    // both files, 16 + 8 sentences, the last tenth held out
    assert!(err.contains("on 22 sentences (2 held out)"), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(m["spearman"].is_number(), "{m}");
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("distill.json")).unwrap()).unwrap();
    assert_eq!(log["history"].as_array().unwrap().len(), 2);
    assert!(log["distill_wall_s"].as_f64().unwrap() > 0.0);
}

/// Three scored STS-B pairs of the tokenizer's words, as `d/sts.csv`.
fn sts_pairs(d: &Path) -> PathBuf {
    let sts = d.join("sts.csv");
    let line = |s: f64, a: &str, b: &str| format!("g\tf\t2012\t1\t{s}\t{a}\t{b}\n");
    let pairs = line(5.0, "a man is playing", "a man is playing")
        + &line(0.5, "the dog runs", "a woman is playing guitar")
        + &line(2.0, "a dog", "the man runs");
    std::fs::write(&sts, pairs).unwrap();
    sts
}

#[test]
fn bench_text_records_what_made_each_encoder_and_what_measured_it() {
    let d = tmp("bench-text");
    let model = tiny_model(&d, true);
    let sts = sts_pairs(&d);
    let recipe = d.join("int8.toml");
    std::fs::write(
        &recipe,
        "[[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"dynamic\"\n",
    )
    .unwrap();
    let int8 = d.join("int8");
    let (m, r, q) = (
        model.to_str().unwrap(),
        recipe.to_str().unwrap(),
        int8.to_str().unwrap(),
    );
    let data = sts.to_str().unwrap();
    let compress = [
        "compress", m, "--recipe", r, "--out", q, "--data", data, "--rounds", "0",
    ];
    let (ok, _, err) = bin(&compress);
    assert!(ok, "{err}");
    let out = d.join("bench.json");
    let variant = format!("int8={q}");
    let args = [
        "bench",
        "text",
        "--model",
        m,
        "--data",
        data,
        "--python",
        "none",
        "--rounds",
        "1",
        "--latency-sentences",
        "2",
        "--variant",
        &variant,
        "--out",
        out.to_str().unwrap(),
    ];
    let (ok, _, err) = bin(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(int8.join("report.json")).unwrap()).unwrap();
    // the variant's command is the compress that made it; both name the benchmark that
    // measured them; the original, made elsewhere, names the benchmark as its command
    let made = report["command"].as_str().unwrap();
    assert!(made.contains(" compress ") && made.contains(q), "{made}");
    assert_eq!(v["int8"]["command"].as_str(), Some(made));
    for key in ["f32", "int8"] {
        let by = v[key]["measured_by"].as_str().unwrap_or_default();
        assert!(
            by.contains(" bench text ") && by.contains(&variant),
            "{key}: {by}"
        );
    }
    assert_eq!(v["f32"]["command"], v["f32"]["measured_by"]);
}
