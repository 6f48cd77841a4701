//! Post-training quantization (issue 11): the stored format's round trip, GPTQ against
//! round-to-nearest, quantized layers against their simulated (fake-quant) form, the pass,
//! a store that keeps only the packed weights, and corrupt files. The int8/int4 kernels' exactness tests live with the kernels
//! (`src/ops/tests/qgemm.rs`).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use squeeze::checkpoint::{self, Model};
use squeeze::data::FashionMnist;
use squeeze::graph::{Graph, Op};
use squeeze::interp::{forward, keep_packed_only, predict, store_to_dtype, ForwardOpts, PackCache};
use squeeze::kinds::qlinear::{ActQuant, QLinear};
use squeeze::math::hessian::InputStats;
use squeeze::params::ParamStore;
use squeeze::passes::{run_recipe, Recipe};
use squeeze::quant::gptq::{gptq, output_error, GptqOpts};
use squeeze::quant::layout::{Layout, Scales};
use squeeze::quant::QWeight;

mod common;
use common::{layouts, max_abs, small, uniform, weights};

/// Slack over the half-scale bound for f32 rounding of `v / s` and `s·q`.
const ROUND_SLACK: f32 = 1e-6;
/// Max abs difference between a quantized layer's kernel and its simulated f64 form.
const SIM_TOL: f32 = 1e-4;

#[test]
fn round_trip_error_is_at_most_half_a_scale_per_element() {
    let (rows, cols) = (6, 128);
    let w = weights(rows * cols, 1);
    for layout in layouts() {
        let q = QWeight::quantize(&w, rows, cols, layout).unwrap();
        assert_eq!(q.stored_bytes(), layout.stored_bytes(rows, cols));
        let back = q.dequantize();
        let bl = layout.block_len(cols);
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            let s = q.scales[layout.scale_index(i / cols, (i % cols) / bl, cols)];
            assert!(
                (a - b).abs() <= s / 2.0 + ROUND_SLACK,
                "{}: element {i}: {a} → {b}, scale {s}",
                layout.label()
            );
        }
    }
    // bad layouts say why
    let e = QWeight::quantize(
        &w,
        rows,
        cols,
        Layout {
            bits: 4,
            scales: Scales::Group(48),
            zero_point: false,
        },
    );
    assert!(e.unwrap_err().to_string().contains("group 48"));
    let e = QWeight::quantize(
        &w[..rows * 100],
        rows,
        100,
        Layout {
            bits: 4,
            scales: Scales::Channel,
            zero_point: false,
        },
    );
    assert!(e.unwrap_err().to_string().contains("chunks of 32"));
    let mut nan = w.clone();
    nan[3] = f32::NAN;
    let e = QWeight::quantize(&nan, rows, cols, Layout::INT8_CHANNEL).unwrap_err();
    assert!(e.to_string().contains("element 3"), "{e}");
}

/// Calibration inputs with correlated columns (what makes error feedback pay).
fn correlated(rows: usize, cols: usize, seed: u64) -> Tensor {
    let base = uniform(rows * 8, seed);
    let mix = uniform(8 * cols, seed + 1);
    let noise = uniform(rows * cols, seed + 2);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            (0..8)
                .map(|j| base[r * 8 + j] * mix[j * cols + c])
                .sum::<f32>()
                + 0.05 * noise[i]
        })
        .collect();
    Tensor::from_vec(x, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn gptq_output_error_on_its_calibration_data_is_below_round_to_nearest() {
    let (rows, cols) = (24, 128);
    let mut stats = InputStats::new(cols, true);
    stats.add(&correlated(512, cols, 21)).unwrap();
    let w = weights(rows * cols, 23);
    for layout in layouts()
        .into_iter()
        .filter(|l| l.bits == 4 || l.scales == Scales::Channel)
    {
        let rtn = QWeight::quantize(&w, rows, cols, layout).unwrap();
        for act_order in [false, true] {
            let o = GptqOpts {
                block: 32,
                damp: 0.01,
                act_order,
            };
            let g = gptq(&w, rows, &stats, layout, o).unwrap();
            let (eg, er) = (
                output_error(&w, &g, &stats).unwrap(),
                output_error(&w, &rtn, &stats).unwrap(),
            );
            assert!(
                eg < 0.8 * er,
                "{} act_order={act_order}: GPTQ {eg} vs RTN {er}",
                layout.label()
            );
            // codes stay in the format: the stored values decode within the block scale range
            assert_eq!(g.codes.len(), rtn.codes.len());
            assert_decodes_in_range(&g);
        }
    }
}

/// Every decoded value of `q` is a whole number of its block's scale steps within the
/// code range: symmetric codes in [−2^(b−1), 2^(b−1) − 1], or with zero points a span of
/// 2^b − 1 steps.
fn assert_decodes_in_range(q: &QWeight) {
    let l = q.layout;
    let per = match l.scales {
        Scales::Tensor => q.rows * q.cols,
        Scales::Channel => q.cols,
        Scales::Group(g) => g,
    };
    let (lo, hi) = if l.zero_point {
        (-(1i32 << l.bits) + 1, (1i32 << l.bits) - 1)
    } else {
        (-(1i32 << (l.bits - 1)), (1i32 << (l.bits - 1)) - 1)
    };
    let mut row = vec![0f32; q.cols];
    for r in 0..q.rows {
        q.view().dequantize_row(r, &mut row);
        for (c, v) in row.iter().enumerate() {
            let s = q.scales[(r * q.cols + c) / per];
            let steps = v / s;
            assert!(
                (steps - steps.round()).abs() < 1e-3,
                "{}: ({r}, {c}) = {v} is not a whole number of steps {s}",
                l.label()
            );
            assert!(
                steps.round() as i32 >= lo && steps.round() as i32 <= hi,
                "{}: ({r}, {c}) = {v} is {steps} steps of {s}, outside [{lo}, {hi}]",
                l.label()
            );
        }
    }
}

/// A one-node graph `y = qlinear(x)` with a [n, k] weight.
fn qlinear_model(layout: Layout, act: ActQuant, n: usize, k: usize) -> Model {
    let q = QWeight::quantize(&weights(n * k, 31), n, k, layout).unwrap();
    let mut g = Graph::new("q", &[k]);
    g.push(
        "fc",
        Op::QLinear(QLinear {
            in_features: k,
            out_features: n,
            bias: true,
            layout,
            act,
            input_codes: None,
        }),
        &["input"],
    );
    let mut p = ParamStore::new();
    let (codes, scales, zeros) = q.tensors().unwrap();
    p.insert("fc.weight_q", codes);
    p.insert("fc.weight_scale", scales);
    if let Some(z) = zeros {
        p.insert("fc.weight_zero", z);
    }
    if act == ActQuant::Static {
        p.insert(
            "fc.input_scale",
            Tensor::from_vec(vec![0.9f32 / 127.0], 1, &Device::Cpu).unwrap(),
        );
    }
    p.insert(
        "fc.bias",
        Tensor::from_vec(uniform(n, 33), n, &Device::Cpu).unwrap(),
    );
    let m = Model::new(g, p);
    m.graph.validate().unwrap();
    m.graph.check_params(&m.params).unwrap();
    m
}

#[test]
fn quantized_layers_equal_their_simulated_fake_quant_form() {
    let cases = [
        (Layout::INT8_CHANNEL, ActQuant::Dynamic),
        (
            Layout {
                bits: 8,
                scales: Scales::Tensor,
                zero_point: false,
            },
            ActQuant::Static,
        ),
        (
            Layout {
                bits: 4,
                scales: Scales::Group(64),
                zero_point: false,
            },
            ActQuant::None,
        ),
        // int4 × dynamic int8 (the integer product), asymmetric blocks too
        (
            Layout {
                bits: 4,
                scales: Scales::Group(64),
                zero_point: false,
            },
            ActQuant::Dynamic,
        ),
        (
            Layout {
                bits: 4,
                scales: Scales::Group(32),
                zero_point: true,
            },
            ActQuant::Dynamic,
        ),
    ];
    for (layout, act) in cases {
        let m = qlinear_model(layout, act, 40, 128);
        let p64 = store_to_dtype(&m.params, DType::F64).unwrap();
        for batch in [1, 5, 80] {
            let x = Tensor::from_vec(uniform(batch * 128, 41), (batch, 128), &Device::Cpu).unwrap();
            let got = predict(&m.graph, &m.params, &x).unwrap();
            let sim = predict(&m.graph, &p64, &x.to_dtype(DType::F64).unwrap()).unwrap();
            let d = max_abs(&got, &sim.to_dtype(DType::F32).unwrap());
            assert!(d < SIM_TOL, "{} {act:?} batch {batch}: {d}", layout.label());
        }
    }
}

fn apply(m: Model, text: &str) -> squeeze::Result<Model> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = Recipe::parse(text, Path::new("q.toml"))?;
    let work = common::tmpdir(&format!("quant-work-{n}"));
    let mut ctx = r
        .context(Path::new("/no-such-dir"), &work)
        .with_images(FashionMnist {
            train: common::synthetic(96, 1),
            valid: common::synthetic(32, 2),
            test: common::synthetic(32, 3),
        });
    let out = run_recipe(m, &r, &mut ctx).map(|(m, _)| m);
    let _ = std::fs::remove_dir_all(work);
    out
}

#[test]
fn the_quantize_pass_keeps_the_classifier_in_f32_and_survives_a_save_and_load() {
    let m = small("mlp");
    let x = common::batch(4, 3);
    let want = predict(&m.graph, &m.params, &x).unwrap();
    let recipes = [
        "[[passes]]\ntype = \"quantize\"\nbits = 8\n",
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\nclip = \"mse\"\n",
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\nclip = { percentile = 99.9 }\nlayers = [\"fc1\", \"fc2\", \"fc3\"]\n",
    ];
    for (i, text) in recipes.iter().enumerate() {
        let q = apply(m.clone(), text).unwrap();
        let kinds: Vec<&str> = q.graph.nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "qlinear").count(),
            if i == 2 { 3 } else { 2 },
            "{kinds:?}"
        );
        let got = predict(&q.graph, &q.params, &x).unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .max_keepdim(0)
            .unwrap();
        let rel = max_abs(&got, &want) / scale.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(
            rel < 0.05,
            "recipe {i}: logits moved by {rel} of their range"
        );
        let dir = common::tmpdir(&format!("quant-mlp-{i}"));
        checkpoint::save(&q, &dir).unwrap();
        let back = checkpoint::load(&dir).unwrap();
        assert_eq!(
            max_abs(&predict(&back.graph, &back.params, &x).unwrap(), &got),
            0.0
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Largest difference between the int8 convolution kernels and the simulated f64 network,
/// relative to the logits' range (a code that rounds the other way between f32 and f64
/// at an inner layer moves the logits by about one activation step).
const CONV_SIM_TOL: f32 = 1e-3;

#[test]
fn static_int8_convolutions_equal_their_simulated_form_with_and_without_fusion_and_int8_handoff() {
    let q = apply(
        small("vgg"),
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"fold_batch_norm\"\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\n",
    )
    .unwrap();
    let relus: Vec<String> = q
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Relu))
        .map(|n| n.name.clone())
        .collect();
    let convs = q
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "qconv2d")
        .count();
    assert!(convs >= 3 && relus.len() >= 3, "{convs} qconv2d, {relus:?}");
    // max-pools after a convolution's ReLU: fused into it unless tapped
    let pools: Vec<String> = q
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::MaxPool2d(_)) && relus.contains(&n.inputs[0]))
        .map(|n| n.name.clone())
        .collect();
    assert!(!pools.is_empty());
    // the run plan: each such pool and its ReLU are absorbed by the convolution at
    // inference; in training, and when the pools are tapped, only the ReLU is
    use squeeze::interp::plan_for;
    let absorbed_by = |opts: &ForwardOpts, name: &str| common::absorbed_by(&q.graph, opts, name);
    let tapped = ForwardOpts {
        taps: pools.iter().cloned().collect(),
        ..Default::default()
    };
    for pool in &pools {
        let relu = &q.graph.node(pool).unwrap().inputs[0];
        assert_eq!(
            absorbed_by(&ForwardOpts::eval(), pool),
            Some("qconv2d"),
            "{pool}"
        );
        assert_eq!(
            absorbed_by(&ForwardOpts::eval(), relu),
            Some("qconv2d"),
            "{relu}"
        );
        assert_eq!(absorbed_by(&ForwardOpts::train(0), pool), None, "{pool}");
        assert_eq!(absorbed_by(&ForwardOpts::train(0), relu), Some("qconv2d"));
        assert_eq!(absorbed_by(&tapped, pool), None, "{pool}");
        assert_eq!(absorbed_by(&tapped, relu), Some("qconv2d"));
    }
    // at inference each int8 convolution whose only reader (after its fused ReLU and
    // pool) is another hands it int8 codes; never in training, nor past a tap
    let hands = |opts: &ForwardOpts| {
        let plan = plan_for(&q.graph, opts).unwrap();
        plan.hands.iter().flatten().count()
    };
    assert!(
        hands(&ForwardOpts::eval()) >= 2,
        "{}",
        hands(&ForwardOpts::eval())
    );
    assert_eq!(hands(&ForwardOpts::train(0)), 0);
    let relus_tapped = ForwardOpts {
        taps: relus.iter().cloned().collect(),
        ..Default::default()
    };
    assert_eq!(hands(&relus_tapped), 0);
    // compiled once per mode and kept with the graph: asking again adds no entry and
    // returns the same plan; a clone starts empty
    let kept = q.graph.cache.len();
    assert!(kept >= 3, "{kept}");
    let a = plan_for(&q.graph, &tapped).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &a,
        &plan_for(&q.graph, &tapped).unwrap()
    ));
    assert_eq!(q.graph.cache.len(), kept);
    assert!(q.graph.clone().cache.is_empty());
    let p64 = store_to_dtype(&q.params, DType::F64).unwrap();
    // one image (its pixel blocks in parallel) and a batch (images in parallel)
    for batch in [1, 3] {
        let x = common::batch(batch, 5);
        let got = predict(&q.graph, &q.params, &x).unwrap();
        let sim = predict(&q.graph, &p64, &x.to_dtype(DType::F64).unwrap()).unwrap();
        let range = got.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let d =
            max_abs(&got, &sim.to_dtype(DType::F32).unwrap()) / range.to_scalar::<f32>().unwrap();
        assert!(d < CONV_SIM_TOL, "batch {batch}: {d} of the logits' range");
        // tapping the ReLUs turns the fusion and the int8 handoff off: the same values,
        // computed in two nodes and through f32 between the convolutions
        let opts = squeeze::interp::ForwardOpts {
            taps: relus.iter().cloned().collect(),
            ..Default::default()
        };
        let unfused = squeeze::interp::forward(&q.graph, &q.params, &x, &opts).unwrap();
        assert_eq!(max_abs(&unfused.output, &got), 0.0, "batch {batch}");
        // tapping the max-pools turns only the pool fusion off: the pool of the rescaled
        // outputs equals the rescale of the pooled products exactly
        let opts = squeeze::interp::ForwardOpts {
            taps: pools.iter().cloned().collect(),
            ..Default::default()
        };
        let unpooled = squeeze::interp::forward(&q.graph, &q.params, &x, &opts).unwrap();
        assert_eq!(max_abs(&unpooled.output, &got), 0.0, "batch {batch}");
    }
}

#[test]
fn a_packed_only_store_predicts_the_same_without_its_weights() {
    // static int8 layers (their int8 panels) and the f32 classifier (its f32 panels)
    let recipe = "[calibration]\nsource = \"fashion-mnist\"\nsamples = 32\nbatch_size = 16\n\n\
                  [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\n";
    let q = apply(small("mlp"), recipe).unwrap();
    let x = common::batch(6, 5);
    let opts = |c: &Arc<PackCache>| ForwardOpts {
        packed: Some(c.clone()),
        ..ForwardOpts::eval()
    };
    let fresh = Arc::new(PackCache::default());
    let want = forward(&q.graph, &q.params, &x, &opts(&fresh))
        .unwrap()
        .output;
    let (mut p, packs) = (q.params.clone(), Arc::new(PackCache::default()));
    keep_packed_only(&q.graph, &mut p, &packs).unwrap();
    let gone: Vec<String> = q
        .params
        .names()
        .into_iter()
        .filter(|n| !p.contains(n))
        .collect();
    assert_eq!(gone, ["fc1.weight_q", "fc2.weight_q", "fc3.weight"]);
    let got = forward(&q.graph, &p, &x, &opts(&packs)).unwrap().output;
    assert_eq!(
        max_abs(&got, &want),
        0.0,
        "the same kernels on the same panels"
    );
}

#[test]
fn corrupt_quantized_files_are_errors_that_name_the_tensor() {
    let q = apply(small("mlp"), "[[passes]]\ntype = \"quantize\"\nbits = 8\n").unwrap();
    let dir = common::tmpdir("quant-corrupt");
    checkpoint::save(&q, &dir).unwrap();
    let wpath = dir.join("model.safetensors");
    let good = checkpoint::load_tensors(&wpath).unwrap();
    let cases: Vec<(&str, Tensor)> = vec![
        // one scale too few
        (
            "fc1.weight_scale",
            good["fc1.weight_scale"].narrow(0, 0, 299).unwrap(),
        ),
        // truncated codes
        (
            "fc2.weight_q",
            good["fc2.weight_q"].narrow(0, 0, 50).unwrap(),
        ),
        // codes of the wrong type
        (
            "fc1.weight_q",
            good["fc1.weight_q"].to_dtype(DType::F32).unwrap(),
        ),
    ];
    for (name, bad) in cases {
        let mut map = good.clone();
        map.insert(name.into(), bad);
        checkpoint::save_tensors(&wpath, &map).unwrap();
        let e = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
    checkpoint::save_tensors(&wpath, &good).unwrap();
    // an unknown layout in model.json
    let jpath = dir.join("model.json");
    let json = std::fs::read_to_string(&jpath).unwrap();
    for (from, to, want) in [
        ("\"bits\": 8", "\"bits\": 5", "bits"),
        ("\"scales\": \"channel\"", "\"scales\": \"rows\"", "rows"),
    ] {
        assert!(json.contains(from), "{from} not in model.json");
        std::fs::write(&jpath, json.replacen(from, to, 1)).unwrap();
        let e = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_quantize_options_are_recipe_errors_that_name_the_field() {
    let p = "[[passes]]\ntype = \"quantize\"\n";
    for (text, want) in [
        ("bits = 3\n", "bits"),
        ("bits = 8\ngroup = 64\n", "group"),
        ("bits = 4\nactivations = \"static\"\n", "activations"),
        ("bits = 8\nactivations = \"none\"\n", "activations"),
        ("bits = 4\ngroup = 48\n", "group"),
        ("bits = 4\ngroup = 64\nper_tensor = true\n", "per_tensor"),
        ("bits = 8\nclip = { percentile = 0.0 }\n", "clip"),
        ("bits = 8\nrounding = \"gtpq\"\n", "gtpq"),
        ("bits = 8\ngroupsize = 64\n", "groupsize"),
    ] {
        let e = Recipe::parse(&format!("{p}{text}"), Path::new("q.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("q.toml"), "{text}: {e}");
    }
    let e = apply(small("mlp"), &format!("{p}bits = 8\nlayers = [\"fc9\"]\n")).unwrap_err();
    assert!(e.to_string().contains("fc9"), "{e}");
    let e = apply(
        small("vgg"),
        &format!("{p}bits = 8\nlayers = [\"features.0.conv\"]\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("activations = \"static\""), "{e}");
    let e = apply(small("mlp"), &format!("{p}bits = 4\nlayers = [\"fc1\"]\n")).unwrap_err();
    assert!(
        e.to_string().contains("fc1.weight") && e.to_string().contains("chunks of 32"),
        "{e}"
    );
}

/// Max abs difference between the grouped q/k/v int8 call and the per-node calls.
const GROUP_TOL: f32 = 1e-6;

#[test]
fn an_int8_encoder_runs_q_k_v_as_one_call_equal_to_the_per_node_calls() {
    grouped_q_k_v_equal_the_per_node_calls("bits = 8\n", 0.99);
}

#[test]
fn an_int4_encoder_runs_q_k_v_as_one_call_equal_to_the_per_node_calls() {
    // int4 weights with int8 activation blocks: the nibble panels' joined product
    grouped_q_k_v_equal_the_per_node_calls(
        "bits = 4\ngroup = 32\nactivations = \"dynamic\"\n",
        0.95,
    );
}

/// A random two-layer encoder quantized by `scheme` runs each layer's q/k/v as one group
/// whose outputs equal the nodes run one by one; the encoder stays within cosine
/// `min_cos` of the f32 one.
fn grouped_q_k_v_equal_the_per_node_calls(scheme: &str, min_cos: f32) {
    use squeeze::interp::{forward_tokens, ForwardOpts};
    // inputs of every Linear in whole blocks of 32 (the int4 × int8 product's), heads
    // of 16 so that a layer's q/k/v span several panels
    let mut shape = common::bert_shape(64, &[4, 2]);
    for l in &mut shape.layers {
        (l.head_dim, l.intermediate) = (16, 96);
    }
    let m = squeeze::text::bert::random(&shape, 5).unwrap();
    let q = apply(
        m.clone(),
        &format!("[[passes]]\ntype = \"quantize\"\n{scheme}"),
    )
    .unwrap();
    let kinds: Vec<&str> = q.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert!(
        !kinds.contains(&"linear") && !kinds.contains(&"embedding"),
        "{kinds:?}"
    );
    assert_eq!(
        q.graph.sibling_groups().len(),
        2,
        "one q/k/v group per layer"
    );
    let ids = Tensor::from_vec(vec![2u32, 5, 9, 3, 2, 7, 3, 0], (2, 4), &Device::Cpu).unwrap();
    let mask =
        Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 1., 1., 0.], (2, 4), &Device::Cpu).unwrap();
    let grouped = forward_tokens(&q.graph, &q.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
    // tapping a member disables the group: every node runs alone
    let taps = q
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "qlinear")
        .map(|n| n.name.clone());
    let alone = ForwardOpts {
        taps: taps.collect(),
        ..ForwardOpts::eval()
    };
    let single = forward_tokens(&q.graph, &q.params, &ids, &mask, &alone).unwrap();
    let d = max_abs(&grouped.output, &single.output);
    assert!(d <= GROUP_TOL, "grouped vs per-node: {d}");
    // and the int8 encoder stays close to the f32 one
    let f = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        f.output.flatten_all().unwrap().to_vec1().unwrap(),
        grouped.output.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let cos = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|y| y * y).sum::<f32>().sqrt());
    assert!(cos > min_cos, "{scheme}: cosine to f32 {cos}");
}
