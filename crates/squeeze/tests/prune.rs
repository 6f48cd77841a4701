//! Unstructured pruning and weight sharing: the invariants of each method (issue 10).

use candle_core::{DType, Device, Tensor};
use squeeze::checkpoint::{self, Model};
use squeeze::graph::{Graph, Op};
use squeeze::interp::predict;
use squeeze::kinds::linear::Linear;
use squeeze::math::codec::Codec;
use squeeze::math::{huffman, linalg};
use squeeze::params::ParamStore;
use squeeze::prune::obd::{hessian_diag, Estimator};
use squeeze::prune::obs::{sparsegpt, wanda, InputStats, SparseGptOpts};
use squeeze::prune::select::{self, Group};
use squeeze::prune::{self, agp::Agp, share, Pattern, Weight};
use squeeze::train::Batch;

mod common;
use common::{lcg, max_abs};

/// Relative tolerance of the Fisher diagonal against the exact Hessian diagonal of a ReLU
/// network (equal away from kinks; f64 finite differences).
const FISHER_TOL: f64 = 1e-5;
/// Mean relative error allowed of the Hutchinson estimate with 4,000 probes.
const HUTCH_TOL: f64 = 0.1;
/// Max abs difference between logits of simulated and materialized models (f32).
const LOGIT_TOL: f32 = 1e-4;

fn uniform(n: usize, seed: u64) -> Vec<f64> {
    lcg(seed)
        .skip(1)
        .take(n)
        .map(|s| ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
        .collect()
}

/// A 4 → 6 → 3 ReLU MLP in f64 and 12 labelled examples.
fn tiny_mlp() -> (Model, Batch) {
    let mut g = Graph::new("tiny", &[4]);
    g.push(
        "fc1",
        Op::Linear(Linear {
            in_features: 4,
            out_features: 6,
            bias: true,
            quant: None,
        }),
        &["input"],
    );
    g.push("relu", Op::Relu, &["fc1"]);
    g.push(
        "fc2",
        Op::Linear(Linear {
            in_features: 6,
            out_features: 3,
            bias: true,
            quant: None,
        }),
        &["relu"],
    );
    let dev = Device::Cpu;
    let mut p = ParamStore::new();
    for (name, shape, seed) in [
        ("fc1.weight", vec![6, 4], 1),
        ("fc1.bias", vec![6], 2),
        ("fc2.weight", vec![3, 6], 3),
        ("fc2.bias", vec![3], 4),
    ] {
        let n = shape.iter().product();
        p.insert(
            name,
            Tensor::from_vec(uniform(n, seed), shape, &dev).unwrap(),
        );
    }
    let x = Tensor::from_vec(uniform(48, 9), (12, 4), &dev).unwrap();
    let labels = Tensor::from_vec((0..12u32).map(|i| i % 3).collect::<Vec<_>>(), 12, &dev).unwrap();
    (Model::new(g, p), Batch::Images { x, labels })
}

fn mean_ce(model: &Model, b: &Batch) -> f64 {
    let Batch::Images { x, labels } = b else {
        unreachable!()
    };
    let logits = predict(&model.graph, &model.params, x).unwrap();
    candle_nn::loss::cross_entropy(&logits, labels)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Exact diag(H) by central differences of the loss's second derivative along each axis.
fn exact_diag(model: &Model, b: &Batch, name: &str) -> Vec<f64> {
    let w: Vec<f64> = common::values_of(model.params.get(name).unwrap());
    let shape = model.params.get(name).unwrap().dims().to_vec();
    let h = 1e-4;
    let at = |v: &[f64]| {
        let mut m = model.clone();
        m.params.insert(
            name,
            Tensor::from_vec(v.to_vec(), shape.as_slice(), &Device::Cpu).unwrap(),
        );
        mean_ce(&m, b)
    };
    let l0 = at(&w);
    (0..w.len())
        .map(|i| {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += h;
            m[i] -= h;
            (at(&p) - 2.0 * l0 + at(&m)) / (h * h)
        })
        .collect()
}

#[test]
fn obd_estimators_match_the_exact_hessian_diagonal_of_a_tiny_mlp() {
    let (model, batch) = tiny_mlp();
    let names = vec!["fc1.weight".to_string(), "fc2.weight".to_string()];
    let batches = vec![batch.clone()];
    let fisher = hessian_diag(&model, &names, &batches, Estimator::Fisher, 1, 0).unwrap();
    let hutch = hessian_diag(&model, &names, &batches, Estimator::Hutchinson, 4000, 1).unwrap();
    for (k, name) in names.iter().enumerate() {
        let exact = exact_diag(&model, &batch, name);
        let scale = exact.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!(scale > 1e-3, "{name}: degenerate test network");
        for (i, (f, e)) in fisher[k].iter().zip(&exact).enumerate() {
            assert!(
                (f - e).abs() <= FISHER_TOL * scale + 1e-6,
                "{name}[{i}]: Fisher {f} vs exact {e}"
            );
        }
        let err: f64 = hutch[k]
            .iter()
            .zip(&exact)
            .map(|(a, e)| (a - e).abs())
            .sum::<f64>();
        let mass: f64 = exact.iter().map(|e| e.abs()).sum();
        assert!(
            err / mass < HUTCH_TOL,
            "{name}: Hutchinson mean relative error {}",
            err / mass
        );
    }
}

fn weight(rows: usize, cols: usize, seed: u64) -> Weight {
    Weight {
        name: "w".into(),
        shape: vec![rows, cols],
        values: uniform(rows * cols, seed)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        mask: vec![1; rows * cols],
    }
}

/// Correlated calibration inputs `[n, cols]`: a few latent factors plus noise.
fn inputs(n: usize, cols: usize) -> Vec<f32> {
    let z = uniform(n * 4, 21);
    let a = uniform(4 * cols, 22);
    let e = uniform(n * cols, 23);
    (0..n * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let s: f64 = (0..4).map(|k| z[r * 4 + k] * a[k * cols + c]).sum();
            (s + 0.1 * e[i]) as f32
        })
        .collect()
}

fn output_error(w0: &Weight, w: &Weight, x: &[f32], cols: usize) -> f64 {
    let rows = w0.shape[0];
    let mut err = 0.0;
    for xr in x.chunks(cols) {
        for r in 0..rows {
            let dot = |v: &[f32]| {
                v[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(xr)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
            };
            err += (dot(&w0.values) - dot(&w.values)).powi(2);
        }
    }
    err
}

#[test]
fn sparsegpt_reconstructs_a_layer_better_than_magnitude_and_respects_the_pattern() {
    let (rows, cols, n) = (16, 32, 256);
    let x = inputs(n, cols);
    let mut stats = InputStats::new(cols, true);
    stats
        .add(&Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).unwrap())
        .unwrap();
    let w0 = weight(rows, cols, 5);
    for pattern in [Pattern::Fraction(0.5), Pattern::NofM { n: 2, m: 4 }] {
        let mut mag = w0.clone();
        mag.mask = select::masks(
            std::slice::from_ref(&w0),
            &[select::magnitudes(&w0)],
            pattern,
            Group::Row,
        )
        .unwrap()
        .remove(0);
        for (v, k) in mag.values.iter_mut().zip(&mag.mask) {
            *v *= f32::from(*k);
        }
        let mut sg = w0.clone();
        sparsegpt(
            &mut sg,
            &stats,
            pattern,
            SparseGptOpts {
                block: 8,
                damp: 0.01,
            },
        )
        .unwrap();
        let mut wd = w0.clone();
        wanda(&mut wd, &stats, pattern).unwrap();
        let pruned = sg.values.iter().filter(|v| **v == 0.0).count();
        assert_eq!(
            pruned,
            rows * cols / 2,
            "{pattern:?}: SparseGPT prunes exactly half"
        );
        assert_eq!(wd.mask.iter().filter(|k| **k == 0).count(), rows * cols / 2);
        if let Pattern::NofM { n, m } = pattern {
            for w in [
                &sg.values,
                &wd.values
                    .iter()
                    .zip(&wd.mask)
                    .map(|(v, k)| v * *k as f32)
                    .collect::<Vec<_>>(),
            ] {
                for g in w.chunks(m) {
                    assert!(
                        g.iter().filter(|v| **v != 0.0).count() <= n,
                        "{g:?} breaks {n}:{m}"
                    );
                }
            }
        }
        let (e_mag, e_sg) = (
            output_error(&w0, &mag, &x, cols),
            output_error(&w0, &sg, &x, cols),
        );
        assert!(
            e_sg < 0.5 * e_mag,
            "{pattern:?}: SparseGPT error {e_sg} vs magnitude {e_mag}"
        );
    }
}

#[test]
fn cholesky_factors_reconstruct_and_invert() {
    let n = 7;
    let a = uniform(n * n, 3);
    // A Aᵀ + I is symmetric positive definite
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>()
                + f64::from(u8::from(i == j));
        }
    }
    let l = linalg::cholesky(&h, n).unwrap();
    let u = linalg::inverse_upper_cholesky(&h, n).unwrap();
    for i in 0..n {
        for j in 0..n {
            let llt: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
            assert!((llt - h[i * n + j]).abs() < 1e-10);
            // (UᵀU) H = I
            let id: f64 = (0..n)
                .map(|k| (0..n).map(|q| u[q * n + i] * u[q * n + k]).sum::<f64>() * h[k * n + j])
                .sum();
            assert!(
                (id - f64::from(u8::from(i == j))).abs() < 1e-9,
                "({i},{j}) = {id}"
            );
            if j < i {
                assert_eq!(u[i * n + j], 0.0, "U is upper triangular");
            }
        }
    }
    let mut bad = h.clone();
    bad[0] = -1.0;
    assert!(linalg::cholesky(&bad, n)
        .unwrap_err()
        .to_string()
        .contains("positive definite"));
}

#[test]
fn global_and_layer_masks_hit_the_requested_sparsity_and_keep_pruned_weights_pruned() {
    let mut ws = vec![weight(10, 20, 1), weight(5, 8, 2)];
    ws[0].mask[3] = 0; // already pruned, though large
    ws[0].values[3] = 5.0;
    select::magnitude(&mut ws, Pattern::Fraction(0.5), Group::Layer).unwrap();
    assert_eq!(ws[0].mask.iter().filter(|k| **k == 0).count(), 100);
    assert_eq!(ws[1].mask.iter().filter(|k| **k == 0).count(), 20);
    assert_eq!(ws[0].mask[3], 0);
    select::magnitude(&mut ws, Pattern::Fraction(0.8), Group::Global).unwrap();
    assert!((prune::sparsity(&ws) - 0.8).abs() < 1e-9);
    assert_eq!(ws[0].mask[3], 0);
    // AGP's cubic schedule rises monotonically to the target
    let s: Vec<f64> = (0..=10).map(|k| Agp::target(0.9, k, 10)).collect();
    assert_eq!(s[0], 0.0);
    assert!((s[10] - 0.9).abs() < 1e-12);
    assert!(s.windows(2).all(|w| w[1] > w[0]));
    assert!(s[5] > 0.5 * 0.9, "cubic: most pruning happens early");
}

#[test]
fn kmeans_with_enough_centroids_is_lossless_and_sharing_is_what_the_codec_stores() {
    let vals: Vec<f32> = (0..200)
        .map(|i| [0.0, -0.5, 0.25, 1.5, -2.0][i % 5])
        .collect();
    let mask: Vec<u8> = vals.iter().map(|v| u8::from(*v != 0.0)).collect();
    let cl = share::kmeans("w", &vals, &mask, 4);
    assert_eq!(cl.values(), vals, "2^b ≥ distinct values: lossless");
    let many: Vec<f32> = uniform(500, 8).into_iter().map(|v| v as f32).collect();
    let cl = share::kmeans("w", &many, &vec![1; 500], 8);
    let shared = cl.values();
    let mut distinct = shared.clone();
    distinct.sort_by(f32::total_cmp);
    distinct.dedup();
    assert!(distinct.len() <= 8);
    let codec = Codec::Shared { bits: 3 };
    assert_eq!(
        codec.decode(&codec.encode(&shared).unwrap(), 500).unwrap(),
        shared
    );
    assert!(Codec::Shared { bits: 2 }
        .encode(&shared)
        .unwrap_err()
        .to_string()
        .contains("distinct"));
}

#[test]
fn huffman_and_the_shared_codec_round_trip_and_reject_corrupt_bytes() {
    let skewed: Vec<u16> = lcg(4)
        .take(5000)
        .map(|s| (1 + (s >> 33) % 1000).ilog2() as u16)
        .collect();
    for stream in [skewed.clone(), vec![7; 100], vec![], (0..256).collect()] {
        let alpha = stream.iter().max().map_or(0, |m| *m as usize + 1);
        let bytes = huffman::encode(&stream, alpha);
        let at = &mut 0;
        let (code, mut r) = huffman::open(&bytes, at).unwrap();
        let back: Vec<u16> = (0..stream.len())
            .map(|_| code.read(&mut r).unwrap())
            .collect();
        assert_eq!(back, stream);
    }
    // long gaps (filler symbols), a sparse tensor
    let mut v = vec![0.0f32; 3000];
    for (k, i) in [0usize, 1, 700, 701, 2999].iter().enumerate() {
        v[*i] = [0.5, -0.5, 0.25, 0.5, 1.0][k];
    }
    let codec = Codec::Shared { bits: 2 };
    let blob = codec.encode(&v).unwrap();
    assert_eq!(codec.decode(&blob, 3000).unwrap(), v);
    assert!(codec.decode(&blob, 2999).is_err(), "wrong element count");
    for cut in 0..blob.len() {
        assert!(
            codec.decode(&blob[..cut], 3000).is_err(),
            "truncated at {cut} decoded"
        );
    }
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0xA5;
        let _ = codec.decode(&b, 3000); // an error or other values, never a panic
    }
}

fn sparse_mlp() -> Model {
    let mut m = common::small("mlp");
    let mut ws: Vec<Weight> = ["fc1.weight", "fc2.weight", "fc3.weight"]
        .iter()
        .map(|n| prune::read(&m, n).unwrap())
        .collect();
    select::magnitude(&mut ws, Pattern::Fraction(0.9), Group::Layer).unwrap();
    for w in &ws {
        prune::write(&mut m, w).unwrap();
    }
    m
}

#[test]
fn materialized_and_shared_models_give_the_simulated_logits_after_a_save_and_load() {
    let x = Tensor::from_vec(
        uniform(3 * 784, 11)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (3, 1, 28, 28),
        &Device::Cpu,
    )
    .unwrap();
    let sim = sparse_mlp();
    let want = predict(&sim.graph, &sim.params, &x).unwrap();
    let mut mat = sim.clone();
    let folded = prune::materialize::materialize(&mut mat, 0.75).unwrap();
    assert!(folded.iter().all(|f| f.csr));
    assert!(mat.graph.masks.is_empty());
    assert!(mat
        .graph
        .nodes
        .iter()
        .any(|n| n.op.kind() == "sparse_linear"));
    let dir = common::tmpdir("prune-materialized");
    checkpoint::save(&mat, &dir).unwrap();
    let back = checkpoint::load(&dir).unwrap();
    for m in [&mat, &back] {
        let got = predict(&m.graph, &m.params, &x).unwrap();
        assert!(max_abs(&got, &want) < LOGIT_TOL);
        // batch 1 takes the other kernel shape
        let one = predict(&m.graph, &m.params, &x.narrow(0, 1, 1).unwrap()).unwrap();
        assert!(max_abs(&one, &want.narrow(0, 1, 1).unwrap()) < LOGIT_TOL);
    }
    let dense_size = checkpoint::size_on_disk(&dir).unwrap();
    // shared weights: the codec stores codebook + Huffman streams, the loader restores them
    let mut shared = sim.clone();
    for name in ["fc1.weight", "fc2.weight", "fc3.weight"] {
        let w = prune::read(&shared, name).unwrap();
        let cl = share::kmeans(name, &w.values, &w.mask, 16);
        shared.params.insert(
            name,
            Tensor::from_vec(cl.values(), w.shape.as_slice(), &Device::Cpu).unwrap(),
        );
        shared
            .graph
            .codecs
            .insert(name.into(), Codec::Shared { bits: 4 });
    }
    prune::materialize::materialize(&mut shared, 0.75).unwrap();
    let want = predict(&shared.graph, &shared.params, &x).unwrap();
    let sdir = common::tmpdir("prune-shared");
    checkpoint::save(&shared, &sdir).unwrap();
    let back = checkpoint::load(&sdir).unwrap();
    assert_eq!(back.graph.codecs.len(), 3);
    let got = predict(&back.graph, &back.params, &x).unwrap();
    assert_eq!(max_abs(&got, &want), 0.0, "decoding is exact");
    assert!(
        checkpoint::size_on_disk(&sdir).unwrap() * 3 < dense_size,
        "shared storage is smaller"
    );
    // a corrupt blob is an error naming the file and tensor, never a panic
    let wpath = sdir.join("model.safetensors");
    let mut map = checkpoint::load_tensors(&wpath).unwrap();
    let blob: Vec<u8> = map["fc1.weight"].to_vec1().unwrap();
    let n = blob.len() / 2;
    map.insert(
        "fc1.weight".into(),
        Tensor::from_vec(blob[..n].to_vec(), n, &Device::Cpu).unwrap(),
    );
    checkpoint::save_tensors(&wpath, &map).unwrap();
    let e = checkpoint::load(&sdir).unwrap_err().to_string();
    assert!(
        e.contains("fc1.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&sdir);
    let _ = DType::F32;
}

/// `materialize` without `min_sparsity` stores a layer as CSR only where the (cached)
/// measurement on this CPU says CSR is faster: the cache decides each layer, the decision
/// and its speed-ups are recorded, and either storage computes the masked model's logits.
#[test]
fn measured_csr_choice_follows_the_per_cpu_cache_and_keeps_the_logits() {
    use squeeze::prune::csr_choice::{cache_key, Choice};
    use squeeze::prune::materialize::{materialize_by, CsrRule};
    let dir = common::tmpdir("csr-cache");
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: no other test of this binary reads SQUEEZE_CACHE_DIR
    unsafe { std::env::set_var("SQUEEZE_CACHE_DIR", &dir) };
    let sim = sparse_mlp();
    let x = Tensor::from_vec(
        uniform(2 * 784, 5)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (2, 1, 28, 28),
        &Device::Cpu,
    )
    .unwrap();
    let want = predict(&sim.graph, &sim.params, &x).unwrap();
    let shapes = [("fc1", 300, 784), ("fc2", 100, 300), ("fc3", 10, 100)];
    for csr in [true, false] {
        let mut cache = std::collections::BTreeMap::new();
        for (_, rows, cols) in shapes {
            let c = Choice {
                csr,
                speedup_b1: if csr { 1.5 } else { 0.5 },
                speedup_b256: if csr { 1.2 } else { 0.6 },
                cached: false,
            };
            cache.insert(cache_key(rows, cols, 0.9).unwrap(), c);
        }
        std::fs::write(
            dir.join("csr-choice.json"),
            serde_json::to_vec(&cache).unwrap(),
        )
        .unwrap();
        let mut m = sim.clone();
        let folded = materialize_by(&mut m, CsrRule::Measured).unwrap();
        for f in &folded {
            let c = f
                .measured
                .as_ref()
                .expect("a measured decision is recorded");
            assert!(c.cached, "{} was timed, not read from the cache", f.weight);
            assert_eq!(f.csr, csr, "{}", f.weight);
        }
        let sparse_nodes = m
            .graph
            .nodes
            .iter()
            .filter(|n| n.op.kind() == "sparse_linear")
            .count();
        assert_eq!(sparse_nodes, if csr { 3 } else { 0 });
        let got = predict(&m.graph, &m.params, &x).unwrap();
        assert!(max_abs(&got, &want) < LOGIT_TOL);
    }
    unsafe { std::env::remove_var("SQUEEZE_CACHE_DIR") };
}
