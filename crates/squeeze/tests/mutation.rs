//! Mutation tests of the loaders: seeded byte flips, truncations and numeric-field changes
//! of a small native checkpoint (model.json and model.safetensors), a Hugging Face BERT
//! config and an IDX header. Every mutant must load or fail with an error — never panic,
//! never abort — and the whole run must stay within a memory bound (a size read from a
//! file is bounded by what the file holds before anything is allocated from it).

use std::path::Path;

use squeeze::checkpoint;
use squeeze::data::parse_idx;
use squeeze::formats::{hf_bert, load_any};
use squeeze::text::bert::{self, BertShape};

mod common;
use common::lcg;

/// Mutants per file kind.
const MUTANTS: usize = 120;
/// Peak resident memory the whole test may reach (the largest legitimate load here is a
/// few hundred KB; an absurd size taken at face value would allocate gigabytes).
const MAX_RSS_BYTES: u64 = 1 << 30;

/// Values that break naive size arithmetic.
const ABSURD: [&str; 8] = [
    "0",
    "-1",
    "1e300",
    "4294967295",
    "2147483648",
    "18446744073709551615",
    "99999999999",
    "0.5",
];

/// One mutant of `text`: a byte flip, a truncation or a numeric literal replaced.
fn mutate(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut r = lcg(seed);
    let mut next = |n: usize| (r.next().expect("endless") >> 33) as usize % n.max(1);
    match next(3) {
        0 => {
            let mut b = bytes.to_vec();
            let i = next(b.len());
            b[i] ^= 1 << next(8);
            b
        }
        1 => bytes[..next(bytes.len())].to_vec(),
        _ => {
            // replace the k-th run of digits by an absurd value
            let s = String::from_utf8_lossy(bytes).into_owned();
            let runs: Vec<(usize, usize)> = digit_runs(&s);
            if runs.is_empty() {
                return bytes.to_vec();
            }
            let (a, b) = runs[next(runs.len())];
            format!("{}{}{}", &s[..a], ABSURD[next(ABSURD.len())], &s[b..]).into_bytes()
        }
    }
}

fn digit_runs(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(a)) => {
                out.push((a, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Runs `f` on each mutant of `file` (restored afterwards); panics are failures.
fn each_mutant(file: &Path, seed: u64, f: impl Fn() -> bool) -> (usize, usize) {
    let orig = std::fs::read(file).unwrap();
    let (mut ok, mut err) = (0, 0);
    for i in 0..MUTANTS {
        let m = mutate(&orig, seed * 1000 + i as u64);
        std::fs::write(file, &m).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f));
        match r {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(_) => panic!(
                "mutant {i} of {} panicked: {:?}",
                file.display(),
                String::from_utf8_lossy(&m[..m.len().min(400)])
            ),
        }
    }
    std::fs::write(file, orig).unwrap();
    (ok, err)
}

/// A tiny 2-layer BERT exported as a HF directory under a fresh temporary path.
fn exported_bert(name: &str) -> std::path::PathBuf {
    let dir = common::tmpdir(name);
    let shape = BertShape {
        dropout: 0.0,
        normalize: false,
        ..common::bert_shape(8, &[2, 2])
    };
    hf_bert::export(&bert::random(&shape, 3).unwrap(), &dir).unwrap();
    dir
}

fn peak_rss() -> u64 {
    squeeze::eval::peak_rss_bytes().unwrap_or(0)
}

#[test]
fn mutated_checkpoints_configs_and_idx_headers_never_panic() {
    // native checkpoint
    let dir = common::tmpdir("mutate-native");
    checkpoint::save(&common::small("lenet5"), &dir).unwrap();
    for (k, f) in ["model.json", "model.safetensors"].iter().enumerate() {
        let (ok, err) = each_mutant(&dir.join(f), k as u64 + 1, || {
            checkpoint::load(&dir).is_ok_and(|m| m.check().is_ok())
        });
        assert!(
            err > MUTANTS / 3,
            "{f}: only {err} of {ok}+{err} mutants refused"
        );
    }
    // HF BERT config
    let hf = exported_bert("mutate-hf");
    let (_, err) = each_mutant(&hf.join("config.json"), 7, || load_any(&hf).is_ok());
    assert!(err > MUTANTS / 3, "config.json: only {err} mutants refused");
    // IDX header (2 images of 3×4 bytes)
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
    idx.extend(0..24u8);
    for i in 0..MUTANTS * 4 {
        let mut m = idx.clone();
        let mut r = lcg(i as u64 + 99);
        let at = (r.next().unwrap() >> 33) as usize % 16; // a header byte
        m[at] = (r.next().unwrap() >> 56) as u8;
        let res = std::panic::catch_unwind(|| parse_idx(&m).is_ok());
        assert!(res.is_ok(), "IDX header {:?} panicked", &m[..16]);
    }
    assert!(
        peak_rss() < MAX_RSS_BYTES,
        "peak RSS {} MB: a mutant's size was taken at face value",
        peak_rss() >> 20
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&hf);
}

#[test]
fn absurd_hf_configs_name_the_field() {
    let hf = exported_bert("absurd-hf");
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
    let e = with("layer_norm_eps", "-1");
    assert!(e.contains("layer_norm_eps"), "{e}");
    let e = with("num_attention_heads", "0");
    assert!(e.contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&hf);
}

/// zoo/mlp-shaped models in the three materialized forms: CSR layers, shared weights
/// stored through the Huffman codec, and int8 quantized layers.
fn pruned_checkpoints() -> Vec<(std::path::PathBuf, squeeze::Model)> {
    use squeeze::math::codec::Codec;
    use squeeze::prune::{self, select, share, Pattern};
    let mut out = Vec::new();
    for (name, shared) in [("mutate-csr", false), ("mutate-shared", true)] {
        let mut m = common::small("mlp");
        let names = ["fc1.weight", "fc2.weight", "fc3.weight"];
        let mut ws: Vec<_> = names.iter().map(|n| prune::read(&m, n).unwrap()).collect();
        select::magnitude(&mut ws, Pattern::Fraction(0.9), select::Group::Layer).unwrap();
        for w in &ws {
            prune::write(&mut m, w).unwrap();
            if shared {
                let cl = share::kmeans(&w.name, &w.values, &w.mask, 8);
                let t = candle_core::Tensor::from_vec(
                    cl.values(),
                    w.shape.as_slice(),
                    &candle_core::Device::Cpu,
                );
                m.params.insert(w.name.clone(), t.unwrap());
                m.graph
                    .codecs
                    .insert(w.name.clone(), Codec::Shared { bits: 3 });
            }
        }
        prune::materialize::materialize(&mut m, 0.85).unwrap();
        let dir = common::tmpdir(name);
        checkpoint::save(&m, &dir).unwrap();
        out.push((dir, m));
    }
    // and quantized: int8 qlinear nodes (codes, scales) from the quantize pass
    let r = squeeze::passes::Recipe::parse(
        "[[passes]]\ntype = \"quantize\"\nbits = 8\nlayers = [\"fc1\", \"fc2\", \"fc3\"]\n",
        Path::new("q.toml"),
    )
    .unwrap();
    let work = common::tmpdir("mutate-quant-work");
    let mut ctx = r.context(Path::new("/no-such-dir"), &work);
    let (m, _) = squeeze::passes::run_recipe(common::small("mlp"), &r, &mut ctx).unwrap();
    let _ = std::fs::remove_dir_all(work);
    let dir = common::tmpdir("mutate-quant");
    checkpoint::save(&m, &dir).unwrap();
    out.push((dir, m));
    out
}

#[test]
fn mutated_sparse_shared_and_quantized_checkpoints_load_and_run_or_fail_cleanly() {
    let x = candle_core::Tensor::ones(
        (1, 1, 28, 28),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (k, (dir, _)) in pruned_checkpoints().iter().enumerate() {
        for (j, f) in ["model.json", "model.safetensors"].iter().enumerate() {
            let (ok, err) = each_mutant(&dir.join(f), 40 + 2 * k as u64 + j as u64, || {
                // a mutant that loads must also run (or refuse to) without panicking
                checkpoint::load(dir)
                    .is_ok_and(|m| squeeze::interp::predict(&m.graph, &m.params, &x).is_ok())
            });
            // every byte of an int8 code tensor is a valid code, so more of the quantized
            // file's mutants load (and run: no panic is the invariant)
            let refused = if k == 2 && j == 1 {
                MUTANTS / 5
            } else {
                MUTANTS / 3
            };
            assert!(
                err > refused,
                "{f}: only {err} of {ok}+{err} mutants refused"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        peak_rss() < MAX_RSS_BYTES,
        "peak RSS {} MB",
        peak_rss() >> 20
    );
}
