//! The model view v2: every layer kind provides its whole definition (shape, tensors,
//! cost, forward = reference), typed tensors and format-2 checkpoints (version 1 still
//! loads), masks that are saved and survive training and resume, and every kernel path
//! the CPU supports against its reference.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use squeeze::graph::{Graph, Op};
use squeeze::interp::ForwardOpts;
use squeeze::kinds::{Inputs, NodeRun, TensorRole};
use squeeze::{checkpoint, Model};

mod common;
use common::{max_abs, uniform};

/// Max abs difference between an f32 kernel path and its f64/reference composition.
const PATH_TOL: f32 = 2e-4;

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(uniform(n, seed), shape, &Device::Cpu).unwrap()
}

/// Batch-of-2 input tensors for an example's per-sample shapes.
fn example_inputs(rule: Inputs, shapes: &[Vec<usize>]) -> Vec<Tensor> {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut full = vec![2];
            full.extend(s);
            let last_mask = rule == Inputs::MaskLast && i + 1 == shapes.len();
            if rule == Inputs::TokenIds {
                let ids: Vec<u32> = (0..2 * s[0] as u32).map(|j| j % 5).collect();
                Tensor::from_vec(ids, full, &Device::Cpu).unwrap()
            } else if last_mask {
                let mut m = vec![1f32; 2 * s[0]];
                m[2 * s[0] - 1] = 0.0; // one padded token
                Tensor::from_vec(m, full, &Device::Cpu).unwrap()
            } else {
                rand_t(&full, 11 + i as u64)
            }
        })
        .collect()
}

fn run(op: &Op, params: &squeeze::params::ParamStore, ins: &[Tensor]) -> Tensor {
    let node = squeeze::graph::Node {
        name: "n".into(),
        inputs: vec![],
        op: op.clone(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut stats = Vec::new();
    let opts = ForwardOpts::eval();
    let packs = squeeze::interp::PackCache::default();
    let mut cx = NodeRun {
        node: &node,
        params,
        ins,
        opts: &opts,
        packs: &packs,
        fuse_relu: false,
        fuse_pool: None,
        fuse_gelu: false,
        residual: None,
        hand_to: None,
        rng: &mut rng,
        bn_stats: &mut stats,
    };
    op.def().forward(&mut cx).unwrap()
}

fn to_f64(ts: &[Tensor]) -> Vec<Tensor> {
    ts.iter()
        .map(|t| {
            if t.dtype() == DType::F32 {
                t.to_dtype(DType::F64).unwrap()
            } else {
                t.clone()
            }
        })
        .collect()
}

/// Multiply-accumulates of each kind's example, counted by hand from the example's
/// attributes and input shapes (a new kind adds its line: a kind cannot report a cost
/// nobody checked). Element-wise, normalization, pooling and lookup kinds count 0 by the
/// convention the FLOP reports state.
fn hand_macs(kind: &str) -> u64 {
    match kind {
        "linear" => 6 * 5,                  // in 6 × out 5
        "conv2d" => 36 * 9,                 // 4×3×3 outputs × (2 inputs / 2 groups × 3×3)
        "attention" => 2 * (4 * 4 * 3) * 2, // 2 heads × L×L×d, for QKᵀ and for AV
        "sparse_linear" => 12,              // one per stored non-zero
        "qlinear" => 64 * 5,                // in 64 × out 5
        "qconv2d" => (4 * 3 * 3) * 2 * 9,   // 36 outputs × (2 inputs × 3×3)
        "bconv2d" => (5 * 5 * 6) * 3 * 9,   // 150 outputs × (3 inputs × 3×3)
        "blinear" => 21 * 5,                // in 21 × out 5
        "batch_norm" | "max_pool2d" | "avg_pool2d" | "dropout" | "embedding" | "layer_norm"
        | "channel_gather" | "qembedding" | "relu" | "gelu" | "global_avg_pool" | "flatten"
        | "add" | "concat" | "mean_pool" | "cls_pool" | "max_pool_tokens" | "l2_normalize" => 0,
        k => panic!("no hand count for kind `{k}`: add its line to hand_macs"),
    }
}

#[test]
fn every_kind_is_defined_completely_and_its_kernel_matches_its_reference() {
    let examples = Op::examples();
    let mut names: Vec<&str> = examples.iter().map(|e| e.op.kind()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), examples.len(), "kind names must be unique");
    for (ei, ex) in examples.iter().enumerate() {
        let def = ex.op.def();
        let kind = def.name();
        // the op is its own model.json schema
        let json = serde_json::to_string(&ex.op).unwrap();
        assert!(json.contains(&format!("\"type\":\"{kind}\"")), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), ex.op);
        let ins: Vec<&[usize]> = ex.inputs.iter().map(Vec::as_slice).collect();
        let out = def
            .out_shape(&ins)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(
            def.out_shape(&ins[..ins.len() - 1]).is_err(),
            "{kind}: arity unchecked"
        );
        // tensors: unique suffixes, stored = logical except packed ones (integer codes,
        // or CSR values standing for the whole weight), which store no more than they mean
        let specs = def.tensors();
        let mut params = squeeze::params::ParamStore::new();
        for (si, s) in specs.iter().enumerate() {
            if s.role != TensorRole::Packed {
                assert_eq!(s.stored, s.logical, "{kind}.{}", s.suffix);
            } else {
                assert!(
                    s.stored.iter().product::<usize>() <= s.logical_len(),
                    "{kind}.{}",
                    s.suffix
                );
            }
            let mut t = rand_t(&s.stored, 100 * ei as u64 + si as u64);
            if s.dtype == squeeze::kinds::Dtype::U32 {
                // indices into the example's smallest axis (2)
                let v: Vec<u32> = (0..s.stored.iter().product::<usize>() as u32)
                    .map(|i| i % 2)
                    .collect();
                t = Tensor::from_vec(v, s.stored.as_slice(), &Device::Cpu).unwrap();
            }
            if s.role == TensorRole::Buffer {
                t = (t.abs().unwrap() + 0.5).unwrap(); // variances must be positive
            }
            if let Some((_, fixed)) = ex.tensors.iter().find(|(n, _)| *n == s.suffix) {
                t = fixed.clone();
            }
            assert!(
                !params.contains(&format!("n.{}", s.suffix)),
                "{kind}: suffix twice"
            );
            params.insert(format!("n.{}", s.suffix), t);
        }
        assert_eq!(
            def.macs(&ins, &out),
            hand_macs(kind),
            "{kind}: multiply-accumulates of its example against the hand count"
        );
        // the node's own tensor shapes reproduce the op
        let dims = |s: &str| {
            params
                .get(&format!("n.{s}"))
                .ok()
                .map(|t| t.dims().to_vec())
        };
        if let Some(op) = def.refreshed(&dims, &ins) {
            assert_eq!(op, ex.op, "{kind}: refreshed from unchanged tensors");
        }
        // inference path (f32) against the differentiable reference (f64)
        let xs = example_inputs(def.inputs(), &ex.inputs);
        let y = run(&ex.op, &params, &xs);
        let mut want = vec![2];
        want.extend(&out);
        assert_eq!(y.dims(), want.as_slice(), "{kind}: output vs out_shape");
        let p64 = squeeze::interp::store_to_dtype(&params, DType::F64).unwrap();
        let y64 = run(&ex.op, &p64, &to_f64(&xs));
        let d = max_abs(&y, &y64.to_dtype(DType::F32).unwrap());
        assert!(
            d < PATH_TOL,
            "{kind}: f32 kernel vs f64 reference differ by {d}"
        );
    }
}

fn zoo_dir(arch: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../zoo")
        .join(arch)
}

#[test]
fn version_1_checkpoints_load_and_resave_as_version_2_with_a_tensor_table() {
    let dir = zoo_dir("mlp");
    let v1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        v1["format_version"], 1,
        "the committed zoo models are version 1"
    );
    let m = checkpoint::load(&dir).unwrap();
    let out = common::tmpdir("v2");
    checkpoint::save(&m, &out).unwrap();
    let v2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(v2["format_version"], 2);
    assert_eq!(v2["tensors"]["fc1.weight"]["dtype"], "f32");
    assert_eq!(v2["tensors"]["fc1.weight"]["role"], "param");
    assert_eq!(
        v2["tensors"]["fc1.weight"]["shape"],
        serde_json::json!([300, 784])
    );
    let back = checkpoint::load(&out).unwrap();
    assert_eq!(back.graph, m.graph);
    for (k, t) in m.params.iter() {
        assert_eq!(max_abs(t, back.params.get(k).unwrap()), 0.0, "{k}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The small mlp with a u8 mask keeping every other weight of `fc1.weight`.
fn masked_mlp() -> Model {
    common::masked_mlp(|i| i % 2 == 1)
}

#[test]
fn masks_are_typed_tensors_saved_with_the_model() {
    let m = masked_mlp();
    m.check().unwrap();
    let dir = common::tmpdir("mask");
    checkpoint::save(&m, &dir).unwrap();
    let back = checkpoint::load(&dir).unwrap();
    assert_eq!(back.graph.masks, vec!["fc1.weight".to_string()]);
    let a: Vec<u8> = common::values_of(m.params.get("fc1.weight.mask").unwrap());
    let b: Vec<u8> = common::values_of(back.params.get("fc1.weight.mask").unwrap());
    assert_eq!(a, b);
    // masks do not count as parameters, bytes count as stored
    let plain = squeeze::eval::static_cost(&common::small("mlp")).unwrap();
    assert_eq!(squeeze::eval::static_cost(&m).unwrap().params, plain.params);
    // a mask in the store that the graph does not declare is dangling; an f32 mask is
    // the wrong dtype; a mask on a buffer or unknown tensor is refused
    let mut g2 = m.clone();
    g2.graph.masks.clear();
    assert!(g2.check().unwrap_err().to_string().contains("dangling"));
    let mut g3 = m.clone();
    let f = g3
        .params
        .get("fc1.weight.mask")
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    g3.params.insert("fc1.weight.mask", f);
    let e = g3.check().unwrap_err().to_string();
    assert!(e.contains("fc1.weight.mask") && e.contains("U8"), "{e}");
    let mut g4 = m.clone();
    g4.graph.masks.push("nope.weight".into());
    assert!(g4.check().unwrap_err().to_string().contains("nope.weight"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn masked_weights_stay_zero_through_training_and_an_exact_resume() {
    use squeeze::train::{self, NoHooks, OptimizerConfig, Schedule, TrainConfig};
    let data = common::synthetic(64, 3);
    let cfg = TrainConfig {
        epochs: 2,
        batch_size: 16,
        optimizer: OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        schedule: Schedule::Constant { warmup_epochs: 0.0 },
        seed: 3,
        augment_pad: 0,
        limit_train: None,
    };
    let zeros = |m: &Model| -> bool {
        let w: Vec<f32> = common::values_of(m.params.get("fc1.weight").unwrap());
        w.iter().step_by(2).all(|v| *v == 0.0) && w.iter().skip(1).step_by(2).any(|v| *v != 0.0)
    };
    let a_dir = common::tmpdir("mask-train-a");
    let mut a = masked_mlp();
    train::train(&mut a, &data, &data, &cfg, &a_dir, false, &mut NoHooks).unwrap();
    assert!(zeros(&a), "pruned weights must stay exactly zero");
    // their gradients were masked too: the momentum buffer never saw them
    let opt = squeeze::checkpoint::load_tensors(
        &train::checkpoint_dir(&a_dir).join("optimizer.safetensors"),
    )
    .unwrap();
    let m: Vec<f32> = common::values_of(&opt["m.fc1.weight"]);
    assert!(
        m.iter().step_by(2).all(|v| *v == 0.0),
        "pruned gradients reach the optimizer"
    );
    assert!(m.iter().skip(1).step_by(2).any(|v| *v != 0.0));
    struct StopAfterOne;
    impl train::Hooks for StopAfterOne {
        fn should_stop(&self, done: usize) -> bool {
            done == 1
        }
    }
    let b_dir = common::tmpdir("mask-train-b");
    let mut b = masked_mlp();
    train::train(&mut b, &data, &data, &cfg, &b_dir, false, &mut StopAfterOne).unwrap();
    let mut resumed = common::small("mlp"); // replaced by the checkpoint, masks included
    train::train(&mut resumed, &data, &data, &cfg, &b_dir, true, &mut NoHooks).unwrap();
    assert_eq!(resumed.graph.masks, a.graph.masks);
    for (k, t) in a.params.iter() {
        let u = resumed.params.get(k).unwrap();
        let as_f64 = |x: &Tensor| common::values_of::<f64>(&x.to_dtype(DType::F64).unwrap());
        let same = as_f64(t) == as_f64(u);
        assert!(same, "{k} differs after resume");
    }
    for d in [a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn degenerate_graphs_are_errors_that_name_the_node() {
    let bad = |g: &Graph| g.validate().unwrap_err().to_string();
    let mut g = Graph::new("x", &[]);
    g.push("cat", Op::Concat, &["input", "input"]);
    assert!(bad(&g).contains("input_shape"), "{}", bad(&g));
    let conv = |k| {
        Op::Conv2d(squeeze::kinds::conv2d::Conv2d {
            in_channels: 1,
            out_channels: 2,
            kernel: k,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
            width: None,
            quant: None,
        })
    };
    let mut g = Graph::new("x", &[1, 4, 4]);
    g.push("c", conv(0), &["input"]);
    assert!(bad(&g).contains("node `c`") && bad(&g).contains("`kernel` must be positive"));
    let mut g = Graph::new_tokens("x");
    g.push(
        "lin",
        Op::Linear(squeeze::kinds::linear::Linear {
            in_features: 4,
            out_features: 0,
            bias: false,
            quant: None,
        }),
        &["input"],
    );
    assert!(bad(&g).contains("node `lin`"), "{}", bad(&g));
    let mut g = Graph::new("x", &[4]);
    g.push(
        "ln",
        Op::LayerNorm(squeeze::kinds::layer_norm::LayerNorm { dim: 4, eps: -1.0 }),
        &["input"],
    );
    assert!(bad(&g).contains("`eps` must be in (0, 1]"), "{}", bad(&g));
}
