//! Quantization-aware training and binary/ternary weights, at the model level:
//! materialized models against their simulated form, and recipe errors that name the
//! field. (LSQ's gradient, the straight-through estimator and the bit-plane kernels are
//! tested beside the kernels, `src/ops/tests/bits.rs`.)

mod common;

use std::path::Path;

use candle_core::Tensor;
use squeeze::graph::Op;
use squeeze::interp::{forward, ForwardOpts};
use squeeze::kinds::fake_quant::{FakeQuant, WeightQuant};
use squeeze::model::Model;
use squeeze::passes::Recipe;
use squeeze::quant::qat::{attach, materialize};

/// A vgg with a 72-column, a 288-column (int4) conv and a 1568-column classifier.
fn model() -> Model {
    let opts = squeeze::zoo::ZooOpts {
        widths: Some(vec![8, 32, 0, 32, 0]),
        depth: None,
    };
    squeeze::zoo::build("vgg", &opts, 3).unwrap()
}

fn fq(weights: WeightQuant, bits: u8) -> FakeQuant {
    FakeQuant {
        weights,
        bits,
        act_bits: Some(if bits <= 2 { 8 } else { 4 }),
        act_max: if bits <= 2 { 127 } else { 15 },
        act_signed: false,
        step_lr: 1.0,
    }
}

/// Tolerance of materialized against simulated logits, relative to their largest
/// magnitude: both compute the same integer codes; only f32 summation order differs.
const MATERIALIZED_TOL: f32 = 1e-3;

fn logits(m: &Model, x: &Tensor) -> Tensor {
    forward(&m.graph, &m.params, x, &ForwardOpts::eval())
        .unwrap()
        .output
}

#[test]
fn materialized_layers_compute_what_the_simulated_ones_did() {
    let x = common::batch(40, 11).relu().unwrap(); // > one 32-row block of the blinear kernel
    for (w, bits) in [
        (WeightQuant::Lsq, 4),
        (WeightQuant::Lsq, 2),
        (WeightQuant::Binary, 1),
        (WeightQuant::Ternary, 2),
    ] {
        let mut m = model();
        for node in ["features.3.conv", "features.7.conv", "classifier"] {
            let mut q = fq(w, bits);
            if node == "classifier" && w.has_step() {
                // the quantized Linear kernel's codes stop at ±64
                (q.act_bits, q.act_max) = (Some(4), 15);
            }
            attach(&mut m, node, q, Some(0.05)).unwrap();
        }
        let r = Recipe::parse(
            "[[passes]]\ntype = \"fold_batch_norm\"\n",
            Path::new("fold.toml"),
        )
        .unwrap();
        let mut ctx = r.context(Path::new("/no-such-dir"), &common::tmpdir("qat-fold"));
        let (sim, _) = squeeze::passes::run_recipe(m, &r, &mut ctx).unwrap();
        let want = logits(&sim, &x);
        let (mat, done) = materialize(sim).unwrap();
        assert_eq!(done.len(), 3);
        let kinds: Vec<&str> = mat.graph.nodes.iter().map(|n| n.op.kind()).collect();
        let expect = if w.has_step() { "qconv2d" } else { "bconv2d" };
        assert_eq!(
            kinds.iter().filter(|k| **k == expect).count(),
            2,
            "{kinds:?}"
        );
        if let Some(Op::QConv2d(c)) = mat.graph.node("features.7.conv").map(|n| &n.op) {
            assert_eq!(c.layout.bits, 4, "288-column rows are stored as int4");
        }
        // every packed level counts as a parameter; ternary zeros are not non-zero
        let cost = squeeze::eval::static_cost(&mat).unwrap();
        let before = squeeze::eval::static_cost(&model()).unwrap();
        assert!(cost.nonzero_params <= cost.params && cost.params + 200 >= before.params);
        let packed = squeeze::quant::nonzero_quantized(&mat).unwrap();
        let levels = 32 * 8 * 9 + 32 * 32 * 9 + 10 * 1568; // the three quantized layers
        match w {
            WeightQuant::Binary => assert_eq!(packed, levels, "every binary level is ±1"),
            _ => assert!(
                packed > levels / 4 && packed <= levels,
                "{packed} of {levels}"
            ),
        }
        let got = logits(&mat, &x);
        let scale = common::values_of::<f32>(&want)
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        let diff = common::max_abs(&got, &want);
        assert!(
            diff <= MATERIALIZED_TOL * scale.max(1.0),
            "{w:?}/{bits}: {diff} (scale {scale})"
        );
    }
}

fn build_err(pass: &str) -> String {
    let text = format!("[[passes]]\ntype = \"qat\"\n{pass}\n");
    match Recipe::parse(&text, Path::new("bad-qat.toml")) {
        Ok(_) => panic!("`{pass}` was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_qat_options_name_the_file_and_field() {
    for (opt, want) in [
        ("bits = 9", "bits"),
        ("bits = 0", "bits"),
        ("weights = \"binary\"\nbits = 4", "bits"),
        ("scale_lr = 0.0", "scale_lr"),
        ("scale_lr = -1.0", "scale_lr"),
        ("act_bits = 1", "act_bits"),
        ("weights = \"quaternary\"", "quaternary"),
    ] {
        let e = build_err(opt);
        assert!(
            e.contains(want) && e.contains("bad-qat.toml"),
            "`{opt}`: {e}"
        );
    }
}

/// Runs a one-pass `qat` recipe on `m` (no data directory: errors come before any).
fn apply(m: Model, pass: &str) -> String {
    let text = format!("[[passes]]\ntype = \"qat\"\n{pass}\n");
    let r = Recipe::parse(&text, Path::new("qat.toml")).unwrap();
    let mut ctx = r.context(Path::new("/no-such-dir"), &common::tmpdir("qat-apply"));
    match squeeze::passes::run_recipe(m, &r, &mut ctx) {
        Ok(_) => panic!("`{pass}` ran"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_layers_and_models_without_weight_layers_are_named() {
    let e = apply(model(), "layers = [\"features.3.conv\", \"fc9\"]");
    assert!(e.contains("`fc9`") && e.contains("layers"), "{e}");
    let e = apply(model(), "layers = [\"features.3.bn\"]");
    assert!(
        e.contains("features.3.bn") && e.contains("batch_norm"),
        "{e}"
    );
    // a graph with no Linear or Conv2d layer at all
    let mut g = squeeze::graph::Graph::new("flat", &[1, 28, 28]);
    g.push("flatten", Op::Flatten, &[squeeze::graph::INPUT]);
    let m = Model {
        graph: g,
        params: Default::default(),
        assets: Default::default(),
    };
    let e = apply(m, "weights = \"binary\"");
    assert!(e.contains("no Linear or Conv2d layer"), "{e}");
}

#[test]
fn packed_levels_of_the_wrong_length_are_refused_naming_the_tensor() {
    let mut m = model();
    let q = fq(WeightQuant::Ternary, 2);
    attach(&mut m, "features.7.conv", q, Some(0.05)).unwrap();
    let (m, _) = materialize(m).unwrap();
    let dir = common::tmpdir("qat-bad-bits");
    squeeze::checkpoint::save(&m, &dir).unwrap();
    // the file written again with one row byte cut from the packed levels
    let file = dir.join("model.safetensors");
    let mut ts = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let name = "features.7.conv.weight_bits";
    let t = ts[name].clone();
    ts.insert(
        name.to_string(),
        t.narrow(1, 0, t.dim(1).unwrap() - 1).unwrap(),
    );
    candle_core::safetensors::save(&ts, &file).unwrap();
    let e = squeeze::checkpoint::load(&dir).unwrap_err().to_string();
    assert!(e.contains(name), "{e}");
}

#[test]
fn binary_convolutions_that_the_kernel_cannot_run_are_refused_when_materializing() {
    let mut m = model();
    attach(
        &mut m,
        "features.3.conv",
        fq(WeightQuant::Binary, 1),
        Some(0.05),
    )
    .unwrap();
    let i = m.graph.index_of("features.3.conv").unwrap();
    if let Op::Conv2d(c) = &mut m.graph.nodes[i].op {
        c.width = Some(squeeze::kinds::conv2d::Axis {
            kernel: 1,
            stride: 1,
            padding: 0,
        });
    }
    let e = materialize(m).unwrap_err().to_string();
    assert!(e.contains("features.3.conv") && e.contains("square"), "{e}");
}
