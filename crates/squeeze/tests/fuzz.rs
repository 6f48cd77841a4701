//! The loader fuzzer: structure-aware mutants (see `fuzz/mutate.rs`) of every file squeeze
//! reads — a native checkpoint's model.json and safetensors (header and data), the CSR,
//! shared/Huffman, int8 and int4 checkpoints, a Hugging Face BERT directory's config,
//! tokenizer, pooling, modules and sentence-transformers files, IDX images, STS-B pairs
//! and recipes. Each outcome is classified: a clean error, a success (then checked: the
//! model passes its checks and runs to finite outputs, an IDX file's data has the length
//! its dims say, STS-B scores lie in 0–5), or a failure (a panic, a broken invariant, a
//! case over [`SLOW_CASE`]). Any failure fails the test and its input is kept under
//! `target/fuzz-crashes/` (or `$SQUEEZE_FUZZ_CRASHES`); kept inputs moved to
//! `tests/fuzz-corpus/<target>/` are replayed first on every run.
//!
//! `SQUEEZE_FUZZ_CASES` (default [`CI_CASES`] per target) and `SQUEEZE_FUZZ_SEED` set the
//! run; `SQUEEZE_FUZZ_REPORT=FILE` writes the outcome counts as JSON; with
//! `SQUEEZE_FUZZ_TRACK=DIR` every case's input is written to DIR first, so that a case
//! that aborts the process (which no test can catch) is still on disk —
//! `scripts/fuzz.sh` runs this for hours that way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use squeeze::checkpoint;
use squeeze::formats::{hf_bert, load_any};
use squeeze::text::bert::{self, BertShape};

mod common;
#[path = "fuzz/mutate.rs"]
mod mutate;
use mutate::Rng;

/// Cases per target in the suite (14 targets: 28,000 cases, about 15 s on 2 cores).
const CI_CASES: usize = 2000;
/// Longest a single case may take.
const SLOW_CASE: Duration = Duration::from_secs(60);
/// Peak resident memory the whole run may reach: the largest legitimate load here is a
/// few hundred KB, so a size taken from a mutant at face value shows up.
const MAX_RSS_BYTES: u64 = 1 << 30;

type Mutator = fn(&[u8], &mut Rng) -> mutate::Mutant;
/// What a case's load gave: `Ok(true)` loaded and checked, `Ok(false)` a clean error,
/// `Err` a broken invariant.
type Outcome = Result<bool, String>;
/// Loads the target's directory after `file` in it was replaced by a mutant.
type Load = Box<dyn Fn(&Path, &str) -> Outcome + Sync + Send>;

/// One loader under test: a directory holding a valid instance, the files to mutate (each
/// with its mutator) and the load to run.
struct Target {
    name: &'static str,
    dir: PathBuf,
    files: Vec<(&'static str, Mutator)>,
    load: Load,
}

fn cases() -> usize {
    std::env::var("SQUEEZE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CASES)
}

fn seed() -> u64 {
    std::env::var("SQUEEZE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A model that loaded must pass its checks and map a batch to finite outputs.
fn runs(m: &squeeze::Model) -> Outcome {
    m.check()
        .map_err(|e| format!("loaded but fails its check: {e}"))?;
    let x = Tensor::ones((2, 1, 28, 28), DType::F32, &Device::Cpu).expect("ones");
    match squeeze::interp::predict(&m.graph, &m.params, &x) {
        Ok(y) => {
            let v: Vec<f32> = y
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| e.to_string())?;
            // values are bounded at load, so outputs of a checked model stay finite
            match v.iter().all(|x| x.is_finite()) {
                true => Ok(true),
                false => Err("loaded, checked, and ran to non-finite outputs".into()),
            }
        }
        Err(_) => Ok(false),
    }
}

fn native(name: &'static str, model: squeeze::Model, root: &Path) -> Target {
    let dir = root.join(name);
    checkpoint::save(&model, &dir).expect("save");
    Target {
        name,
        dir,
        files: vec![
            ("model.json", mutate::json as Mutator),
            ("model.safetensors", mutate::safetensors),
        ],
        load: Box::new(|d, _| match checkpoint::load(d) {
            Ok(m) => runs(&m),
            Err(_) => Ok(false),
        }),
    }
}

/// The zoo MLP pruned to CSR, or with shared weights stored through the Huffman codec.
fn pruned(shared: bool) -> squeeze::Model {
    use squeeze::math::codec::Codec;
    use squeeze::prune::{self, select, share, Pattern};
    let mut m = common::small("mlp");
    let names = ["fc1.weight", "fc2.weight", "fc3.weight"];
    let mut ws: Vec<_> = names.iter().map(|n| prune::read(&m, n).unwrap()).collect();
    select::magnitude(&mut ws, Pattern::Fraction(0.9), select::Group::Layer).unwrap();
    for w in &ws {
        prune::write(&mut m, w).unwrap();
        if shared {
            let cl = share::kmeans(&w.name, &w.values, &w.mask, 8);
            let t = Tensor::from_vec(cl.values(), w.shape.as_slice(), &Device::Cpu).unwrap();
            m.params.insert(w.name.clone(), t);
            m.graph
                .codecs
                .insert(w.name.clone(), Codec::Shared { bits: 3 });
        }
    }
    prune::materialize::materialize(&mut m, 0.85).unwrap();
    m
}

fn quantized(bits: u8, root: &Path) -> squeeze::Model {
    // int4 rows come in chunks of 32: an MLP whose hidden layers are 64 and 32 wide
    let layers = if bits == 4 {
        "\"fc2\", \"fc3\""
    } else {
        "\"fc1\", \"fc2\", \"fc3\""
    };
    let text = format!("[[passes]]\ntype = \"quantize\"\nbits = {bits}\nlayers = [{layers}]\n");
    let r = squeeze::passes::Recipe::parse(&text, Path::new("q.toml")).unwrap();
    let mut ctx = r.context(
        Path::new("/no-such-dir"),
        &root.join(format!("work-{bits}")),
    );
    let opts = squeeze::zoo::ZooOpts {
        widths: Some(vec![64, 32]),
        depth: None,
    };
    let m = squeeze::zoo::build("mlp", &opts, 0).unwrap();
    squeeze::passes::run_recipe(m, &r, &mut ctx).unwrap().0
}

/// lenet5 with binary or ternary conv2 and fc1 (packed levels, `bconv2d` / `blinear`).
fn packed(ternary: bool) -> squeeze::Model {
    use squeeze::kinds::fake_quant::{FakeQuant, WeightQuant};
    let mut m = common::small("lenet5");
    let q = FakeQuant {
        weights: if ternary {
            WeightQuant::Ternary
        } else {
            WeightQuant::Binary
        },
        bits: if ternary { 2 } else { 1 },
        act_bits: Some(8),
        act_max: 127,
        act_signed: false,
        step_lr: 1.0,
    };
    for node in ["conv2", "fc1"] {
        squeeze::quant::qat::attach(&mut m, node, q, Some(0.05)).unwrap();
    }
    squeeze::quant::qat::materialize(m).unwrap().0
}

/// A tiny BERT exported as a sentence-transformers directory with a WordPiece tokenizer.
fn hf_dir(root: &Path) -> PathBuf {
    let dir = root.join("hf");
    let shape = BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        dropout: 0.0,
        normalize: true,
        ..common::bert_shape(8, &[2, 2])
    };
    let mut m = bert::random(&shape, 3).unwrap();
    let words = ["the", "cat", "sat", "on", "mat", "hello", "world"];
    m.assets.insert(
        "tokenizer.json".into(),
        common::tokenizer::tokenizer_json(&words),
    );
    m.assets.insert(
        "sentence_bert_config.json".into(),
        br#"{"max_seq_length": 12, "do_lower_case": false}"#.to_vec(),
    );
    hf_bert::export(&m, &dir).unwrap();
    dir
}

fn hf_target(name: &'static str, file: &'static str, hf: &Path) -> Target {
    let dir = hf.with_file_name(name);
    common::copy_dir(hf, &dir);
    Target {
        name,
        dir,
        files: vec![(file, mutate::json as Mutator)],
        load: Box::new(|d, _| {
            let Ok(m) = load_any(d) else {
                return Ok(false);
            };
            m.check()
                .map_err(|e| format!("loaded but fails its check: {e}"))?;
            let Ok(enc) = squeeze::text::Encoder::new(&m) else {
                return Ok(false);
            };
            match enc.embed(&["hello world", "the cat sat on the mat"], 2, false) {
                Ok(e) if e.iter().flatten().all(|x| x.is_finite()) => Ok(true),
                Ok(_) => Err("an embedding holds non-finite values".into()),
                Err(_) => Ok(false),
            }
        }),
    }
}

fn idx_target(root: &Path) -> Target {
    let dir = root.join("idx");
    std::fs::create_dir_all(&dir).unwrap();
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
    idx.extend(0..24u8);
    std::fs::write(dir.join("images.idx"), idx).unwrap();
    Target {
        name: "idx",
        dir,
        files: vec![("images.idx", mutate::bytes as Mutator)],
        load: Box::new(|d, _| {
            let b = std::fs::read(d.join("images.idx")).unwrap();
            match squeeze::data::parse_idx(&b) {
                Ok(i) => {
                    let want: usize = i.dims.iter().product();
                    match i.data.len() == want {
                        true => Ok(true),
                        false => Err(format!("dims {:?} but {} data bytes", i.dims, i.data.len())),
                    }
                }
                Err(_) => Ok(false),
            }
        }),
    }
}

fn stsb_target(root: &Path) -> Target {
    let dir = root.join("stsb");
    std::fs::create_dir_all(&dir).unwrap();
    let lines = [
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.",
        "main-captions\tMSRvid\t2012test\t0004\t3.800\tA man is playing a flute.\tA man is playing a bamboo flute.",
        "main-captions\tMSRvid\t2012test\t0005\t0.500\tA man is slicing.\tA cat sleeps.",
    ];
    std::fs::write(dir.join("sts.csv"), lines.join("\n")).unwrap();
    Target {
        name: "stsb",
        dir,
        files: vec![("sts.csv", mutate::tsv as Mutator)],
        load: Box::new(|d, _| match squeeze::text::stsb::read(&d.join("sts.csv")) {
            Ok(p) if p.len() >= 3 && p.iter().all(|p| (0.0..=5.0).contains(&p.score)) => Ok(true),
            Ok(p) => Err(format!(
                "{} pairs accepted, scores {:?}",
                p.len(),
                p.iter().map(|p| p.score).collect::<Vec<_>>()
            )),
            Err(_) => Ok(false),
        }),
    }
}

fn recipe_target(root: &Path) -> Target {
    let dir = root.join("recipe");
    std::fs::create_dir_all(&dir).unwrap();
    // the repository's recipes, concatenated per file as seeds: one file per case
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    seeds.sort();
    for (i, s) in seeds.iter().enumerate().take(26) {
        let name = format!("r{}.toml", (b'a' + i as u8) as char);
        std::fs::copy(s, dir.join(name)).unwrap();
    }
    const NAMES: [&str; 26] = [
        "ra.toml", "rb.toml", "rc.toml", "rd.toml", "re.toml", "rf.toml", "rg.toml", "rh.toml",
        "ri.toml", "rj.toml", "rk.toml", "rl.toml", "rm.toml", "rn.toml", "ro.toml", "rp.toml",
        "rq.toml", "rr.toml", "rs.toml", "rt.toml", "ru.toml", "rv.toml", "rw.toml", "rx.toml",
        "ry.toml", "rz.toml",
    ];
    let n = seeds.len().min(26);
    Target {
        name: "recipe",
        dir,
        files: NAMES[..n]
            .iter()
            .map(|f| (*f, mutate::toml as Mutator))
            .collect(),
        load: Box::new(|d, file| Ok(squeeze::passes::Recipe::load(&d.join(file)).is_ok())),
    }
}

fn targets(root: &Path) -> Vec<Target> {
    let hf = hf_dir(root);
    vec![
        native("native", common::small("lenet5"), root),
        native("csr", pruned(false), root),
        native("shared-huffman", pruned(true), root),
        native("int8", quantized(8, root), root),
        native("int4", quantized(4, root), root),
        native("binary", packed(false), root),
        native("ternary", packed(true), root),
        hf_target("hf-config", "config.json", &hf),
        hf_target("hf-tokenizer", "tokenizer.json", &hf),
        hf_target("hf-pooling", "1_Pooling/config.json", &hf),
        hf_target("hf-modules", "modules.json", &hf),
        hf_target("hf-sentence-config", "sentence_bert_config.json", &hf),
        hf_target("hf-safetensors", "model.safetensors", &hf),
        idx_target(root),
        stsb_target(root),
        recipe_target(root),
    ]
}

/// Counts of one target's outcomes.
#[derive(Default, Clone, serde::Serialize)]
struct Tally {
    cases: usize,
    loaded: usize,
    refused: usize,
    failures: usize,
    slowest_ms: f64,
    /// Strict truncations that cut more than whitespace, and how many of them loaded.
    truncations: usize,
    truncations_loaded: usize,
}

/// Runs one case: `bytes` as `file` of the target (in its own copy of the directory),
/// restored afterwards. Returns the outcome, or the panic's message as a failure.
fn case(
    t: &Target,
    dir: &Path,
    file: &str,
    bytes: &[u8],
    orig: &[u8],
    track: Option<&Path>,
) -> (Outcome, Duration) {
    if let Some(tr) = track {
        let _ = std::fs::write(
            tr.join(format!("{}--{}", t.name, file.replace('/', "%"))),
            bytes,
        );
    }
    let p = dir.join(file);
    std::fs::write(&p, bytes).unwrap();
    let s = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.load)(dir, file)));
    let took = s.elapsed();
    std::fs::write(&p, orig).unwrap();
    let r = r.unwrap_or_else(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panicked: {msg}"))
    });
    (r, took)
}

fn keep_crash(target: &str, file: &str, bytes: &[u8]) -> PathBuf {
    let root = std::env::var_os("SQUEEZE_FUZZ_CRASHES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes"));
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let p = dir.join(format!("{}--{h:016x}", file.replace('/', "%")));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The kept crash inputs of `target` (file name `FILE--HASH`, `/` written `%`).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let file = name.split("--").next()?.replace('%', "/");
            Some((file, std::fs::read(e.path()).ok()?))
        })
        .collect()
}

/// All cases of target `t` (its corpus first), tallied; failures described in `fails`.
fn fuzz(t: &Target, n: usize, base: u64, fails: &Mutex<Vec<String>>) -> Tally {
    let track = std::env::var_os("SQUEEZE_FUZZ_TRACK").map(PathBuf::from);
    if let Some(tr) = &track {
        std::fs::create_dir_all(tr).unwrap();
    }
    let origs: BTreeMap<&str, Vec<u8>> = t
        .files
        .iter()
        .map(|(f, _)| (*f, std::fs::read(t.dir.join(f)).unwrap()))
        .collect();
    let mut tally = Tally::default();
    let record = |file: &str,
                  bytes: &[u8],
                  class: &str,
                  (r, took): (Outcome, Duration),
                  tally: &mut Tally| {
        tally.cases += 1;
        if class == mutate::TRUNCATED {
            tally.truncations += 1;
            tally.truncations_loaded += usize::from(matches!(r, Ok(true)));
        }
        tally.slowest_ms = tally.slowest_ms.max(took.as_secs_f64() * 1e3);
        let r = if took > SLOW_CASE {
            Err(format!("took {took:?}"))
        } else {
            r
        };
        match r {
            Ok(true) => tally.loaded += 1,
            Ok(false) => tally.refused += 1,
            Err(why) => {
                tally.failures += 1;
                let kept = keep_crash(t.name, file, bytes);
                fails.lock().unwrap().push(format!(
                    "{} / {file}: {why} (input kept at {})",
                    t.name,
                    kept.display()
                ));
            }
        }
    };
    for (file, bytes) in corpus(t.name) {
        let Some(orig) = origs.get(file.as_str()) else {
            continue;
        };
        let out = case(t, &t.dir, &file, &bytes, orig, track.as_deref());
        record(&file, &bytes, "corpus", out, &mut tally);
    }
    let mut r = Rng::new(base ^ (t.name.len() as u64 * 0x51_7cc1_b727_220a));
    for _ in 0..n {
        let (file, mutator) = t.files[r.below(t.files.len())];
        let orig = &origs[file];
        let (bytes, class) = mutator(orig, &mut r);
        let out = case(t, &t.dir, file, &bytes, orig, track.as_deref());
        record(file, &bytes, class, out, &mut tally);
    }
    tally
}

#[test]
fn every_loader_survives_structure_aware_mutants() {
    let root = common::tmpdir("fuzz");
    let ts = targets(&root);
    let n = cases();
    let base = seed();
    let fails = Mutex::new(Vec::new());
    let tallies = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(t) = ts.get(i) else { break };
                let tally = fuzz(t, n, base, &fails);
                tallies.lock().unwrap().insert(t.name, tally);
            });
        }
    });
    let tallies = tallies.into_inner().unwrap();
    let total: usize = tallies.values().map(|t| t.cases).sum();
    let seconds = started.elapsed().as_secs_f64();
    for (name, t) in &tallies {
        eprintln!(
            "{name:20} {:7} cases: {:7} loaded, {:7} refused cleanly, {} failures (slowest {:.0} ms)",
            t.cases, t.loaded, t.refused, t.failures, t.slowest_ms
        );
    }
    let rss = squeeze::eval::peak_rss_bytes().expect("Linux reports the peak RSS in /proc");
    eprintln!("{total} cases in {seconds:.0} s, peak RSS {} MB", rss >> 20);
    if let Some(path) = std::env::var_os("SQUEEZE_FUZZ_REPORT") {
        let report = serde_json::json!({
            "cases": total, "seconds": seconds, "seed": base, "cases_per_target": n,
            "peak_rss_bytes": rss, "targets": tallies,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
    let fails = fails.into_inner().unwrap();
    assert!(
        fails.is_empty(),
        "{} failures:\n{}",
        fails.len(),
        fails.join("\n")
    );
    assert!(
        rss < MAX_RSS_BYTES,
        "peak RSS {} MB: a mutant's size was taken at face value",
        rss >> 20
    );
    // every target both refuses and accepts some mutants: a mutator that is always
    // refused (or a loader that accepts anything) tests nothing
    for (name, t) in &tallies {
        assert!(
            t.refused * 10 >= t.cases,
            "{name}: only {} of {} mutants refused",
            t.refused,
            t.cases
        );
        assert!(
            t.loaded > 0,
            "{name}: no mutant loaded, so the checks after loading never ran"
        );
        // a file cut short is never whole: every loader of a binary or JSON file refuses
        // it (a TSV or TOML file cut between lines can still be a whole, shorter file)
        if !matches!(*name, "stsb" | "recipe") {
            assert!(t.truncations > 0, "{name}: no truncation was tried");
            assert_eq!(t.truncations_loaded, 0, "{name}: a truncated file loaded");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn absurd_hf_configs_name_the_field() {
    let root = common::tmpdir("absurd-hf");
    let hf = hf_dir(&root);
    let cfg = hf.join("config.json");
    let orig = std::fs::read_to_string(&cfg).unwrap();
    let with = |field: &str, value: &str| -> String {
        let mut v: serde_json::Value = serde_json::from_str(&orig).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&cfg, v.to_string()).unwrap();
        load_any(&hf).unwrap_err().to_string()
    };
    let e = with("num_hidden_layers", "2147483648");
    assert!(
        e.contains("config.json") && e.contains("holds 2 encoder layers"),
        "{e}"
    );
    let e = with("num_hidden_layers", "1");
    assert!(
        e.contains("config.json") && e.contains("drop_layers"),
        "{e}"
    );
    let e = with("layer_norm_eps", "-1");
    assert!(e.contains("layer_norm_eps"), "{e}");
    let e = with("num_attention_heads", "0");
    assert!(e.contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}
