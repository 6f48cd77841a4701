//! The transformer path: a tiny random BERT for the invariants (gradients reach every
//! parameter and match central differences; padding does not change an embedding; the
//! packed inference path matches the plain forward, and so does a store that keeps only
//! the packed form of its Linear weights; HF
//! export → import is exact; bad HF directories give clear errors), STS-B parsing and
//! correlations, and — when `scripts/fetch-minilm.sh` has fetched it — the real
//! all-MiniLM-L6-v2 against golden embeddings from sentence-transformers.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use squeeze::formats::{hf_bert, load_any};
use squeeze::graph::trainable_names;
use squeeze::interp::{forward_tokens, keep_packed_only, store_to_dtype, ForwardOpts, PackCache};
use squeeze::text::bert::{self, BertShape, LayerShape};
use squeeze::text::{pad_batch, stsb, Encoder};
use squeeze::Model;

mod common;
use common::{max_abs, tmpdir as tmp};

/// Min cosine between our embeddings and sentence-transformers' (issue target).
const GOLDEN_COSINE: f64 = 0.99999;
/// Max relative error between autograd and central differences in f64.
const GRAD_TOL: f64 = 1e-6;
/// Max abs change of an embedding when the batch adds padding.
const PAD_TOL: f32 = 1e-5;

fn tiny_shape() -> BertShape {
    BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        vocab: 30,
        max_positions: 12,
        segments: 2,
        hidden: 8,
        eps: 1e-12,
        dropout: 0.1,
        layers: vec![
            LayerShape {
                heads: 2,
                head_dim: 4,
                intermediate: 16,
            },
            // uneven on purpose: pruning makes layers differ
            LayerShape {
                heads: 1,
                head_dim: 4,
                intermediate: 8,
            },
        ],
        normalize: true,
    }
}

fn tiny() -> Model {
    bert::random(&tiny_shape(), 7).unwrap()
}

fn ids_mask() -> (Tensor, Tensor) {
    let a: &[u32] = &[2, 5, 9, 3];
    let b: &[u32] = &[2, 7, 3];
    pad_batch(&[a, b]).unwrap()
}

#[test]
fn every_bert_parameter_gets_a_nonzero_gradient() {
    let m = tiny();
    let (store, vars) = m.params.with_vars(&trainable_names(&m.graph)).unwrap();
    let (ids, mask) = ids_mask();
    let out = forward_tokens(&m.graph, &store, &ids, &mask, &ForwardOpts::train(3)).unwrap();
    let r = Tensor::randn(0f32, 1.0, out.output.dims(), &Device::Cpu).unwrap();
    let grads = (out.output * r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        vars.len(),
        5 + 16 * 2,
        "trainable tensors of a 2-layer BERT"
    );
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let s: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(s > 0.0, "{name}: gradient is zero");
    }
}

#[test]
fn bert_gradients_match_central_differences() {
    let m = tiny();
    let p64 = store_to_dtype(&m.params, DType::F64).unwrap();
    let names = trainable_names(&m.graph);
    let (store, vars) = p64.with_vars(&names).unwrap();
    let (ids, mask) = ids_mask();
    let mask = mask.to_dtype(DType::F64).unwrap();
    let eval = ForwardOpts::eval();
    let out = forward_tokens(&m.graph, &store, &ids, &mask, &eval)
        .unwrap()
        .output;
    let r = Tensor::randn(0f64, 1.0, out.dims(), &Device::Cpu).unwrap();
    let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let loss = |p: &squeeze::params::ParamStore| -> f64 {
        let o = forward_tokens(&m.graph, p, &ids, &mask, &eval)
            .unwrap()
            .output;
        (o * &r).unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    for (name, v) in &vars {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = p64
            .get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // a spread of elements per tensor (rows 2, 5, 7, 3 of embedding tables are used)
        for i in (0..base.len())
            .step_by((base.len() / 6).max(1))
            .chain([base.len() - 1])
        {
            let at = |d: f64| {
                let mut b = base.clone();
                b[i] += d;
                let mut p = p64.clone();
                let shape = p64.get(name).unwrap().shape().clone();
                p.insert(
                    name.clone(),
                    Tensor::from_vec(b, shape, &Device::Cpu).unwrap(),
                );
                loss(&p)
            };
            let h = 1e-6;
            let num = (at(h) - at(-h)) / (2.0 * h);
            let err = (num - g[i]).abs() / (1.0 + num.abs());
            assert!(
                err < GRAD_TOL,
                "{name}[{i}]: autograd {} vs numeric {num}",
                g[i]
            );
        }
    }
}

#[test]
fn padding_in_a_batch_leaves_each_embedding_unchanged() {
    let m = tiny();
    let run = |seqs: &[&[u32]]| {
        let (ids, mask) = pad_batch(seqs).unwrap();
        let o = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
        o.output.to_vec2::<f32>().unwrap()
    };
    let short: &[u32] = &[2, 7, 3];
    let long: &[u32] = &[2, 5, 9, 11, 13, 3];
    let alone = run(&[short]);
    let padded = run(&[long, short]);
    let diff = alone[0]
        .iter()
        .zip(&padded[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < PAD_TOL, "padding changed the embedding by {diff}");
}

/// Max abs difference between the packed inference path (q/k/v as one product) and the
/// plain forward.
const PACKED_TOL: f32 = 1e-5;

#[test]
fn packed_sibling_projections_match_the_plain_forward() {
    let m = tiny();
    assert_eq!(
        m.graph.sibling_groups().len(),
        2,
        "one q/k/v group per layer"
    );
    let (ids, mask) = ids_mask();
    let plain = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
    let packed = ForwardOpts {
        packed: Some(Default::default()),
        ..ForwardOpts::eval()
    };
    for _ in 0..2 {
        // the second pass reads the cached panels
        let o = forward_tokens(&m.graph, &m.params, &ids, &mask, &packed).unwrap();
        let diff = max_abs(&o.output, &plain.output);
        assert!(diff < PACKED_TOL, "packed forward differs by {diff}");
    }
    // … with each layer's FFN run as one chained job
    let plan = squeeze::interp::plan_for(&m.graph, &packed).unwrap();
    let name = |i: usize| m.graph.nodes[i].name.as_str();
    let chained: Vec<(&str, &str)> = (plan.chain.iter().enumerate())
        .filter_map(|(i, c)| c.map(|j| (name(i), name(j))))
        .collect();
    let ffn = |l| {
        (
            format!("encoder.layer.{l}.intermediate.dense"),
            format!("encoder.layer.{l}.output.dense"),
        )
    };
    let want: Vec<(String, String)> = (0..2).map(ffn).collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(chained, want);
    // a store whose weight and bias were replaced is resolved anew (same cache, same
    // node names): the packed forward follows the new tensors, not what it kept
    let mut p = m.params.clone();
    for name in [
        "encoder.layer.0.attention.self.key.weight",
        "encoder.layer.1.intermediate.dense.bias",
    ] {
        let t = p.get(name).unwrap().clone();
        p.insert(name, t.affine(-2.0, 0.3).unwrap());
    }
    let want = forward_tokens(&m.graph, &p, &ids, &mask, &ForwardOpts::eval()).unwrap();
    assert!(max_abs(&want.output, &plain.output) > 10.0 * PACKED_TOL);
    let o = forward_tokens(&m.graph, &p, &ids, &mask, &packed).unwrap();
    let diff = max_abs(&o.output, &want.output);
    assert!(
        diff < PACKED_TOL,
        "a replaced weight: packed forward differs by {diff}"
    );
}

/// Packed-only inference runs the packed path's own kernels on the same panels.
const PACKED_ONLY_TOL: f32 = 0.0;

/// `m` through a one-pass recipe (no data needed: dynamic quantization).
fn quantized(m: Model, pass: &str) -> Model {
    let r = squeeze::passes::Recipe::parse(pass, Path::new("q.toml")).unwrap();
    let work = tmp("text-quant");
    let mut ctx = r.context(Path::new("/no-such-dir"), &work);
    let (out, _) = squeeze::passes::run_recipe(m, &r, &mut ctx).unwrap();
    let _ = std::fs::remove_dir_all(work);
    out
}

#[test]
fn a_packed_only_store_embeds_the_same_without_its_linear_weights() {
    let dynamic = "[[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"dynamic\"\n";
    let (ids, mask) = ids_mask();
    // rows of 64 and 128 inputs: two and four of the int8 activation blocks
    let mut s = common::bert_shape(64, &[2, 2]);
    for l in &mut s.layers {
        (l.head_dim, l.intermediate) = (32, 128);
    }
    let wide = bert::random(&s, 5).unwrap();
    for (what, m, stored) in [
        ("f32", wide.clone(), "weight"),
        ("int8 dynamic", quantized(wide, dynamic), "weight_q"),
    ] {
        let packed = |c: &Arc<PackCache>| ForwardOpts {
            packed: Some(c.clone()),
            ..ForwardOpts::eval()
        };
        let fresh = Arc::new(PackCache::default());
        let before = forward_tokens(&m.graph, &m.params, &ids, &mask, &packed(&fresh)).unwrap();
        let mut p = m.params.clone();
        let packs = Arc::new(PackCache::default());
        let dropped = keep_packed_only(&m.graph, &mut p, &packs).unwrap();
        // exactly the Linear layers' weights left the store, and nothing else
        let mut layers: Vec<String> = m
            .graph
            .nodes
            .iter()
            .filter(|n| n.op.kind().ends_with("linear"))
            .map(|n| format!("{}.{stored}", n.name))
            .collect();
        assert_eq!(layers.len(), 12, "{what}: q, k, v, out and 2 FFN per layer");
        layers.sort(); // the store's order
        let gone: Vec<String> = m
            .params
            .names()
            .into_iter()
            .filter(|n| !p.contains(n))
            .collect();
        assert_eq!(gone, layers, "{what}");
        let bytes: usize = layers
            .iter()
            .map(|n| m.params.get(n).unwrap())
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        assert_eq!(dropped, bytes, "{what}");
        for _ in 0..2 {
            let after = forward_tokens(&m.graph, &p, &ids, &mask, &packed(&packs)).unwrap();
            let d = max_abs(&after.output, &before.output);
            assert!(
                d <= PACKED_ONLY_TOL,
                "{what}: packed-only forward differs by {d}"
            );
        }
        // without the packs that stand in for them, the missing weights are named
        let e = forward_tokens(&m.graph, &p, &ids, &mask, &ForwardOpts::eval()).unwrap_err();
        let named = layers
            .iter()
            .any(|l| e.to_string().contains(&format!("`{l}` is missing")));
        assert!(named, "{what}: {e}");
    }
}

/// A fused plan (`ForwardOpts::eval`) embeds exactly as the plan in which `tapped`'s taps
/// keep the fused nodes apart, with and without a pack cache.
fn fusion_changes_nothing(m: &Model, tapped: &ForwardOpts) {
    let (ids, mask) = ids_mask();
    for packed in [None, Some(Default::default())] {
        let fused = ForwardOpts {
            packed: packed.clone(),
            ..ForwardOpts::eval()
        };
        let apart = ForwardOpts {
            packed,
            ..tapped.clone()
        };
        let a = forward_tokens(&m.graph, &m.params, &ids, &mask, &fused).unwrap();
        let b = forward_tokens(&m.graph, &m.params, &ids, &mask, &apart).unwrap();
        assert_eq!(max_abs(&a.output, &b.output), 0.0);
    }
}

/// Over parameters that track gradients, weight `name` gets the same (non-zero) gradient
/// from the fused eval plan as from the one `tapped` keeps apart: fusions that would leave
/// the graph stay graph operations there.
fn fusion_keeps_the_gradient(m: &Model, name: &str, tapped: &ForwardOpts) {
    let (ids, mask) = ids_mask();
    let (store, vars) = m.params.with_vars(&trainable_names(&m.graph)).unwrap();
    let w = vars.iter().find(|(n, _)| n == name).expect("the weight");
    let grad = |opts: &ForwardOpts| {
        let out = forward_tokens(&m.graph, &store, &ids, &mask, opts).unwrap();
        let grads = out.output.sum_all().unwrap().backward().unwrap();
        grads.get(w.1.as_tensor()).expect("a gradient").clone()
    };
    let (fused, apart) = (grad(&ForwardOpts::eval()), grad(tapped));
    let s: f32 = apart.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(s > 0.0);
    assert_eq!(max_abs(&fused, &apart), 0.0);
}

#[test]
fn the_residual_sum_runs_inside_its_linear_at_inference_and_changes_nothing() {
    let m = tiny();
    let named = |kind: &str| -> Vec<String> {
        let nodes = m.graph.nodes.iter().filter(|n| n.op.kind() == kind);
        nodes.map(|n| n.name.clone()).collect()
    };
    let sums: Vec<String> = named("add")
        .into_iter()
        .filter(|n| n.ends_with("residual"))
        .collect();
    assert_eq!(sums.len(), 4, "two per layer");
    let by = |opts: &ForwardOpts, name: &str| common::absorbed_by(&m.graph, opts, name);
    let tapped = ForwardOpts {
        taps: sums.iter().cloned().collect(),
        ..ForwardOpts::eval()
    };
    for s in &sums {
        assert_eq!(by(&ForwardOpts::eval(), s), Some("linear"), "{s}");
        assert_eq!(by(&ForwardOpts::train(0), s), None, "{s}");
        assert_eq!(by(&tapped, s), None, "{s}");
    }
    // dropout is the identity at inference: absorbed by whatever precedes it, not in train
    for d in named("dropout") {
        assert!(by(&ForwardOpts::eval(), &d).is_some(), "{d}");
        assert_eq!(by(&ForwardOpts::train(0), &d), None, "{d}");
    }
    // added in the product's tiles: the same values as the Add node's own pass; over
    // parameters that track gradients the sum stays a graph operation
    fusion_changes_nothing(&m, &tapped);
    fusion_keeps_the_gradient(&m, "encoder.layer.0.attention.output.dense.weight", &tapped);
}

#[test]
fn the_ffn_gelu_runs_inside_its_linear_at_inference_and_changes_nothing() {
    let dynamic = "[[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"dynamic\"\n";
    for m in [tiny(), quantized(tiny(), dynamic)] {
        let gelus: Vec<String> = m
            .graph
            .nodes
            .iter()
            .filter(|n| n.op.kind() == "gelu")
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(gelus.len(), 2, "one per layer");
        let absorbed_by =
            |opts: &ForwardOpts, name: &str| common::absorbed_by(&m.graph, opts, name);
        let tapped = ForwardOpts {
            taps: gelus.iter().cloned().collect(),
            ..ForwardOpts::eval()
        };
        for g in &gelus {
            let by = absorbed_by(&ForwardOpts::eval(), g);
            assert!(matches!(by, Some("linear" | "qlinear")), "{g}: {by:?}");
            assert_eq!(absorbed_by(&ForwardOpts::train(0), g), None, "{g}");
            assert_eq!(absorbed_by(&tapped, g), None, "{g}");
        }
        // in place on the product's output: the same values as the GELU node's own pass
        fusion_changes_nothing(&m, &tapped);
    }
    // an inference plan over parameters that track gradients applies the GELU as a node
    // of the graph, not in place: the FFN weights get the gradient the unfused plan gives
    let tapped = ForwardOpts {
        taps: vec!["encoder.layer.0.intermediate.gelu".into()]
            .into_iter()
            .collect(),
        ..ForwardOpts::eval()
    };
    fusion_keeps_the_gradient(
        &tiny(),
        "encoder.layer.0.intermediate.dense.weight",
        &tapped,
    );
}

#[test]
fn too_long_inputs_and_bad_ids_are_errors_not_panics() {
    let m = tiny();
    let long: Vec<u32> = (0..13).map(|i| i % 30).collect();
    let (ids, mask) = pad_batch(&[long.as_slice()]).unwrap();
    let e = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap_err();
    assert!(e.to_string().contains("12 positions"), "{e}");
    let bad: &[u32] = &[2, 30];
    let (ids, mask) = pad_batch(&[bad]).unwrap();
    let e = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap_err();
    assert!(e.to_string().contains("token id 30"), "{e}");
}

/// The tiny model with uniform layers (HF's BertConfig needs one FFN width).
fn tiny_uniform() -> Model {
    let mut s = tiny_shape();
    s.layers[1] = s.layers[0];
    bert::random(&s, 8).unwrap()
}

#[test]
fn hf_export_then_import_is_exact() {
    let m = tiny_uniform();
    let dir = tmp("export");
    hf_bert::export(&m, &dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let back = load_any(&dir).unwrap();
    assert_eq!(back.graph.nodes, m.graph.nodes);
    for (k, t) in m.params.iter() {
        let d: f32 = (t - back.params.get(k).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{k} changed in the round trip");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pruned_heads_export_through_hf_config_but_uneven_ffn_is_refused() {
    let mut s = tiny_shape();
    s.layers[1].intermediate = 16; // one FFN width, layer 1 keeps 1 of 2 heads
    let m = bert::random(&s, 9).unwrap();
    assert!(hf_bert::export_blocker(&m).is_none());
    let dir = tmp("pruned");
    hf_bert::export(&m, &dir).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["pruned_heads"]["1"], serde_json::json!([1]));
    assert_eq!(load_any(&dir).unwrap().graph.nodes, m.graph.nodes);
    std::fs::remove_dir_all(&dir).unwrap();
    let why = hf_bert::export_blocker(&tiny()).unwrap();
    assert!(why.contains("FFN widths differ"), "{why}");
}

#[test]
fn bad_hf_directories_name_the_file_and_problem() {
    let m = tiny_uniform();
    let dir = tmp("bad");
    hf_bert::export(&m, &dir).unwrap();
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"bert\"", "\"gpt2\"")).unwrap();
    let e = load_any(&dir).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("gpt2"), "{e}");
    std::fs::write(&cfg, &text).unwrap();
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_any(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = load_any(Path::new("/nonexistent/model"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such model directory"), "{e}");
}

#[test]
fn stsb_parsing_tolerates_extra_columns_and_names_bad_lines() {
    let ok = "g\tf\t2012\t1\t4.5\tA man.\tA person.\n\
              g\tf\t2012\t2\t0.0\tCats.\tDogs.\textra\tcols\n";
    let pairs = stsb::parse(ok).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].b, "Dogs.");
    let e = stsb::parse("a\tb\tc\n").unwrap_err();
    assert!(e.contains("line 1") && e.contains("at least 7"), "{e}");
    let e = stsb::parse(&format!("{ok}g\tf\t2012\t3\tfive\tA.\tB.\n")).unwrap_err();
    assert!(e.contains("line 3") && e.contains("column 5"), "{e}");
}

#[test]
fn spearman_averages_ties_like_scipy() {
    // scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]).statistic = 0.9486832980505138
    let r = stsb::spearman(&[1., 2., 2., 3.], &[1., 3., 2., 4.]);
    assert!((r - 0.948_683_298_050_513_8).abs() < 1e-12, "{r}");
    assert_eq!(stsb::ranks(&[10., 20., 20., 5.]), vec![2., 3.5, 3.5, 1.]);
}

/// Set (by `.ci/run`) when the real model must be present: its absence fails the test.
const REQUIRE_MODEL: &str = "SQUEEZE_REQUIRE_MODEL";

fn real_model() -> Option<Model> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        let msg = format!(
            "real all-MiniLM-L6-v2 test: {} is missing (run scripts/fetch-minilm.sh)",
            dir.display()
        );
        common::skip(&msg);
        assert!(
            std::env::var(REQUIRE_MODEL).is_err(),
            "{REQUIRE_MODEL} is set, so the model must be present: {msg}"
        );
        return None;
    }
    Some(load_any(&dir).unwrap())
}

#[test]
fn minilm_matches_sentence_transformers_golden_embeddings() {
    let Some(m) = real_model() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("../../tools/golden_sentences.txt")).unwrap();
    let sentences: Vec<&str> = text.lines().collect();
    let gold =
        squeeze::checkpoint::load_tensors(&root.join("tests/fixtures/minilm_golden.safetensors"))
            .unwrap()["embeddings"]
            .to_vec2::<f32>()
            .unwrap();
    assert_eq!(sentences.len(), gold.len());
    let ours = Encoder::new(&m)
        .unwrap()
        .embed(&sentences, 16, false)
        .unwrap();
    let mut max_diff = 0f32;
    for (i, (a, b)) in ours.iter().zip(&gold).enumerate() {
        let c = stsb::cosine(a, b);
        assert!(
            c >= GOLDEN_COSINE,
            "sentence {i} {:?}: cosine {c}",
            sentences[i]
        );
        max_diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(max_diff, f32::max);
    }
    eprintln!(
        "golden: {} sentences, max abs diff {max_diff:e}",
        ours.len()
    );
}

#[test]
fn sparse_and_masked_encoders_are_refused_by_hf_export_with_the_reason() {
    use squeeze::prune::{self, select, Pattern};
    let mut m = tiny_uniform();
    let name = "encoder.layer.0.intermediate.dense.weight";
    let mut ws = vec![prune::read(&m, name).unwrap()];
    select::magnitude(&mut ws, Pattern::Fraction(0.9), select::Group::Layer).unwrap();
    prune::write(&mut m, &ws[0]).unwrap();
    let why = hf_bert::export_blocker(&m).unwrap();
    assert!(why.contains("materialize"), "{why}");
    let (ids, mask) = ids_mask();
    let opts = squeeze::interp::ForwardOpts::eval();
    let run = |m: &Model| {
        squeeze::interp::forward_tokens(&m.graph, &m.params, &ids, &mask, &opts)
            .unwrap()
            .output
    };
    let simulated = run(&m);
    prune::materialize::materialize(&mut m, 0.75).unwrap();
    let why = hf_bert::export_blocker(&m).unwrap();
    assert!(
        why.contains("encoder.layer.0.intermediate.dense") && why.contains("CSR"),
        "{why}"
    );
    // the CSR encoder computes what the masked one did
    let d = common::max_abs(&run(&m), &simulated);
    assert!(
        d < 1e-5,
        "materialized vs simulated embeddings differ by {d}"
    );
}
