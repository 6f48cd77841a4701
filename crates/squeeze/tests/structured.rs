//! Structured pruning (channels, heads, FFN units): the allocator's cut is always whole —
//! on every zoo architecture and a 2-layer BERT with uneven heads the cut model computes
//! what the masked model computes, saves, loads, and its FLOPs are the count read off its
//! tensors; the Taylor score is the finite-difference loss change; Network Slimming's
//! penalty reaches BatchNorm scales only; iterative rounds reach the target; bad recipes
//! are refused naming the field.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use squeeze::coupling::{ChannelGroup, MemberRole};
use squeeze::data::FashionMnist;
use squeeze::eval::static_cost;
use squeeze::graph::{infer_shapes_at, Op};
use squeeze::interp::{forward_tokens, predict, ForwardOpts};
use squeeze::passes::{run_recipe, Recipe};
use squeeze::prune::channel::slim::Slimming;
use squeeze::prune::channel::taylor::{calibration_loss, first_order};
use squeeze::prune::channel::{
    candidates, plan, scores, Allocation, Amount, Criterion, Target, Unit,
};
use squeeze::train::{Batch, Hooks};
use squeeze::Model;

mod common;

/// Max abs output change between the masked and the cut model (f32 reassociation only).
const CUT_TOL: f32 = 1e-4;
/// Relative gap allowed between the Taylor estimate and the finite-difference slope.
const TAYLOR_REL_TOL: f64 = 0.05;

fn amount(m: &Model) -> squeeze::Result<Amount> {
    let c = static_cost(m)?;
    Ok(Amount {
        params: c.params as u64,
        macs: c.macs,
    })
}

/// Zeroes every channel of `g` not in `keep`, in its producer and norm members (running
/// statistics left alone): the simulated cut.
fn mask_group(m: &mut Model, g: &ChannelGroup, keep: &[usize]) {
    for mem in g.members.iter().filter(|x| x.role != MemberRole::Consumer) {
        if mem.param.ends_with("running_mean") || mem.param.ends_with("running_var") {
            continue;
        }
        let t = m.params.get(&mem.param).unwrap();
        let mut mask = vec![1f32; t.dim(mem.axis).unwrap()];
        let positions: Vec<usize> = mem.map.clone().unwrap_or_else(|| (0..g.channels).collect());
        for (j, c) in positions.iter().enumerate() {
            if keep.binary_search(c).is_err() {
                let a = mem.offset + j * mem.per_channel;
                mask[a..a + mem.per_channel].fill(0.0);
            }
        }
        let mut shape = vec![1; t.rank()];
        shape[mem.axis] = mask.len();
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
        let z = t
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_mul(&mask)
            .unwrap();
        m.params.insert(mem.param.clone(), z);
    }
}

/// Multiply-accumulates per example read off the stored tensors: every convolution's
/// kernel volume times its output positions, every Linear's weight times its rows.
/// Text encoders at the cost's sequence length, attention adding 2·L²·(heads·head_dim)
/// (QKᵀ and AV).
fn counted_macs(m: &Model) -> u64 {
    let seq = squeeze::eval::TEXT_COST_SEQ;
    let shapes = infer_shapes_at(&m.graph, seq).unwrap();
    let mut macs = 0u64;
    for n in &m.graph.nodes {
        let w = || {
            m.params
                .get(&format!("{}.weight", n.name))
                .unwrap()
                .elem_count() as u64
        };
        let out = &shapes[&n.name];
        macs += match &n.op {
            Op::Conv2d(_) => w() * (out[1] * out[2]) as u64,
            Op::Linear(_) => w() * out[..out.len() - 1].iter().product::<usize>() as u64,
            Op::Attention(_) => 2 * (seq * seq * out[out.len() - 1]) as u64,
            _ => 0,
        };
    }
    macs
}

fn outputs(m: &Model) -> Tensor {
    if m.graph.is_text() {
        let seqs: [&[u32]; 2] = [&[2, 5, 9, 3, 11], &[2, 7, 3]];
        let (ids, mask) = squeeze::text::pad_batch(&seqs).unwrap();
        forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval())
            .unwrap()
            .output
    } else {
        predict(&m.graph, &m.params, &common::batch(3, 11)).unwrap()
    }
}

/// Plans a global L1 cut of 40% of the FLOPs, then checks: every group was cut whole
/// (the model is consistent), the cut model equals the masked one, it saves and loads,
/// and its FLOPs equal the count read off its tensors.
fn check_whole_cut(name: &str, model: Model) {
    let groups = candidates(&model, None).unwrap();
    assert!(!groups.is_empty(), "{name}: no candidate group");
    let s = scores(&model, &groups, Criterion::L1, &[], 0).unwrap();
    let base = amount(&model).unwrap();
    let target = Target {
        fraction: 0.4,
        unit: Unit::Flops,
        allocation: Allocation::Global,
        min_channels: 1,
        baseline: base.macs as f64,
    };
    let p = plan(&model, &groups, &s, false, &target, &amount).unwrap();
    p.model.check().unwrap();
    let after = amount(&p.model).unwrap();
    assert!(
        after.macs as f64 <= 0.6 * base.macs as f64 * (1.0 + 1e-9),
        "{name}: {} of {} MACs left",
        after.macs,
        base.macs
    );
    let mut masked = model.clone();
    for (g, (sources, keep)) in groups.iter().zip(&p.keep) {
        assert_eq!(&g.sources, sources);
        mask_group(&mut masked, g, keep);
    }
    let d = common::max_abs(&outputs(&masked), &outputs(&p.model));
    assert!(
        d < CUT_TOL,
        "{name}: the cut model differs from the masked one by {d}"
    );
    let dir = common::tmpdir(&format!("structured-{name}"));
    squeeze::save(&p.model, &dir).unwrap();
    let loaded = squeeze::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        static_cost(&loaded).unwrap().macs,
        counted_macs(&loaded),
        "{name}"
    );
    assert_eq!(
        common::max_abs(&outputs(&loaded), &outputs(&p.model)),
        0.0,
        "{name}"
    );
}

#[test]
fn every_zoo_model_is_cut_whole_and_counts_its_flops_right() {
    for arch in ["mlp", "lenet5", "vgg", "resnet", "densenet", "densenet-bc"] {
        check_whole_cut(arch, common::small(arch));
    }
}

#[test]
fn a_bert_with_uneven_heads_loses_heads_and_ffn_units_whole() {
    let m = squeeze::text::bert::random(&common::bert_shape(12, &[3, 2]), 4).unwrap();
    let kinds: Vec<&str> = candidates(&m, None)
        .unwrap()
        .iter()
        .map(|g| squeeze::prune::channel::group_kind(&m, g))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "heads").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "ffn").count(),
        2,
        "{kinds:?}"
    );
    check_whole_cut("bert", m);
}

fn image_batch(n: usize, seed: u64) -> Batch {
    let set = common::synthetic(n, seed);
    let idx: Vec<usize> = (0..n).collect();
    let (x, labels) = set.batch(&idx, None).unwrap();
    Batch::Images { x, labels }
}

/// The loss after scaling every trainable slice of channel `c` of `g` by `1 − eps`.
fn loss_scaled(m: &Model, g: &ChannelGroup, c: usize, eps: f64, b: &Batch) -> f64 {
    let mut m = m.clone();
    let trainable = squeeze::graph::trainable_names(&m.graph);
    for mem in g.members.iter().filter(|x| trainable.contains(&x.param)) {
        let t = m.params.get(&mem.param).unwrap();
        let mut f = vec![1f64; t.dim(mem.axis).unwrap()];
        let a = mem.offset + c * mem.per_channel;
        f[a..a + mem.per_channel].fill(1.0 - eps);
        let mut shape = vec![1; t.rank()];
        shape[mem.axis] = f.len();
        let f = Tensor::from_vec(f, shape, &Device::Cpu).unwrap();
        let t = t.to_dtype(DType::F64).unwrap().broadcast_mul(&f).unwrap();
        m.params.insert(mem.param.clone(), t);
    }
    for (k, t) in m.params.map().clone() {
        m.params.insert(k, t.to_dtype(DType::F64).unwrap());
    }
    let b = match b {
        Batch::Images { x, labels } => Batch::Images {
            x: x.to_dtype(DType::F64).unwrap(),
            labels: labels.clone(),
        },
        _ => unreachable!(),
    };
    calibration_loss(&m, &m.params, &b, 0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn the_taylor_score_is_the_finite_difference_loss_change() {
    let m = common::small("vgg");
    let b = image_batch(16, 3);
    let groups = candidates(&m, None).unwrap();
    let est = first_order(&m, &groups, &b, 0).unwrap();
    let eps = 1e-4;
    let mut checked = 0;
    for (g, e) in groups.iter().zip(&est) {
        for c in 0..g.channels {
            // scaling the channel by 1 − ε moves the loss by −ε·Σ w·g to first order
            let slope =
                (loss_scaled(&m, g, c, -eps, &b) - loss_scaled(&m, g, c, eps, &b)) / (2.0 * eps);
            let scale = e.iter().map(|v| v.abs()).fold(1e-6, f64::max);
            assert!(
                (slope - e[c]).abs() <= TAYLOR_REL_TOL * scale,
                "{:?} channel {c}: Taylor {} vs finite difference {slope}",
                g.sources,
                e[c]
            );
            checked += 1;
        }
    }
    assert!(checked >= 8);
}

#[test]
fn the_slimming_penalty_reaches_batchnorm_scales_only() {
    let m = common::small("vgg");
    let names = squeeze::graph::trainable_names(&m.graph);
    let (params, vars) = m.params.with_vars(&names).unwrap();
    let hook = Slimming::new(&m, 0.25).unwrap();
    let r = hook.regularizer(&params).unwrap().unwrap();
    let grads = r.backward().unwrap();
    let mut scales = 0;
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor());
        let is_scale = name.ends_with(".bn.weight");
        if !is_scale {
            let nonzero = g.map_or(0.0, |g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            assert_eq!(nonzero, 0.0, "the L1 penalty reached {name}");
            continue;
        }
        scales += 1;
        let g: Vec<f32> = g.unwrap().to_vec1().unwrap();
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for (g, w) in g.iter().zip(&w) {
            assert_eq!(*g, 0.25 * if *w >= 0.0 { 1.0 } else { -1.0 }, "{name}");
        }
    }
    assert_eq!(scales, 3, "every BatchNorm of the small vgg");
}

fn splits() -> FashionMnist {
    FashionMnist {
        train: common::synthetic(96, 1),
        valid: common::synthetic(32, 2),
        test: common::synthetic(32, 3),
    }
}

fn apply(m: Model, text: &str) -> squeeze::Result<(Model, Vec<squeeze::passes::PassRecord>)> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = Recipe::parse(text, Path::new("prune.toml"))?;
    let work = common::tmpdir(&format!("structured-work-{n}"));
    let mut ctx = r
        .context(Path::new("/no-such-dir"), &work)
        .with_images(splits());
    let out = run_recipe(m, &r, &mut ctx);
    let _ = std::fs::remove_dir_all(work);
    out
}

const FINETUNE: &str = "[finetune]\nepochs = 1\nbatch_size = 32\n\
    [calibration]\nsource = \"fashion-mnist\"\nsamples = 32\nbatch_size = 16\n";

#[test]
fn iterative_rounds_reach_the_target_for_every_criterion() {
    for (criterion, allocation) in [
        ("l1", "uniform"),
        ("l2", "global"),
        ("taylor", "global"),
        ("bn_gamma", "global"),
        ("activation", "uniform"),
    ] {
        let text = format!(
            "{FINETUNE}[[passes]]\ntype = \"channel_prune\"\ncriterion = \"{criterion}\"\n\
             allocation = \"{allocation}\"\ntarget = 0.5\nunit = \"params\"\nsteps = 2\n\
             finetune_epochs = 1\n"
        );
        let m = common::small("vgg");
        let before = static_cost(&m).unwrap().params;
        let (out, log) = apply(m, &text).unwrap();
        let after = static_cost(&out).unwrap().params;
        assert!(
            after * 2 <= before,
            "{criterion}: {after} of {before} params left"
        );
        let rounds = log[0].details["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{criterion}");
        assert_eq!(log[0].details["finetune"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn uniform_allocation_cuts_every_layer_alike_and_global_keeps_the_minimum() {
    let text = "[[passes]]\ntype = \"channel_prune\"\ncriterion = \"l1\"\ntarget = 0.5\n";
    let (out, _) = apply(common::small("vgg"), text).unwrap();
    let widths: HashMap<String, usize> = candidates(&out, None)
        .unwrap()
        .iter()
        .map(|g| (g.sources[0].clone(), g.channels))
        .collect();
    let before: HashMap<String, usize> = candidates(&common::small("vgg"), None)
        .unwrap()
        .iter()
        .map(|g| (g.sources[0].clone(), g.channels))
        .collect();
    for (k, w) in &before {
        assert_eq!(widths[k], w / 2, "{k}");
    }
    let text = "[[passes]]\ntype = \"channel_prune\"\ncriterion = \"l1\"\n\
                allocation = \"global\"\ntarget = 0.6\nmin_channels = 2\n";
    let (out, _) = apply(common::small("vgg"), text).unwrap();
    assert!(candidates(&out, None)
        .unwrap()
        .iter()
        .all(|g| g.channels >= 2));
}

fn refusal(text: &str, model: Model) -> String {
    match apply(model, text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_structured_recipes_name_the_file_and_field() {
    let pass = |extra: &str| {
        format!("[[passes]]\ntype = \"channel_prune\"\ncriterion = \"l1\"\n{extra}\n")
    };
    let vgg = || common::small("vgg");
    for (extra, field) in [
        ("target = 1.0", "target"),
        ("target = 0.0", "target"),
        ("target = nan", "target"),
        ("target = 0.5\nallocation = \"everywhere\"", "everywhere"),
        ("target = 0.5\nunit = \"bytes\"", "bytes"),
        ("target = 0.5\nsteps = 0", "steps"),
        ("target = 0.5\nmin_chanels = 2", "min_chanels"),
    ] {
        let e = refusal(&pass(extra), vgg());
        assert!(
            e.contains("prune.toml") && e.contains(field),
            "{extra}: {e}"
        );
    }
    let e = refusal(
        "[[passes]]\ntype = \"channel_prune\"\ncriterion = \"entropy\"\ntarget = 0.5\n",
        vgg(),
    );
    assert!(e.contains("prune.toml") && e.contains("entropy"), "{e}");
    for lambda in ["-0.1", "nan", "0"] {
        let e = refusal(
            &format!("[[passes]]\ntype = \"slimming_train\"\nlambda = {lambda}\n"),
            vgg(),
        );
        assert!(
            e.contains("prune.toml") && e.contains("lambda"),
            "{lambda}: {e}"
        );
    }
    // widths known only with the model: the error names the field and the layer
    let e = refusal(&pass("target = 0.5\nmin_channels = 64"), vgg());
    assert!(e.contains("min_channels") && e.contains("features"), "{e}");
    let e = refusal(&pass("target = 0.5\nlayers = [\"features.99\"]"), vgg());
    assert!(e.contains("layers") && e.contains("features.99"), "{e}");
    let e = refusal(&pass("target = 0.5\nlayers = [\"classifier\"]"), vgg());
    assert!(e.contains("layers") && e.contains("not prunable"), "{e}");
    let bare = squeeze::zoo::build(
        "vgg",
        &squeeze::zoo::ZooOpts {
            widths: Some(vec![0]),
            depth: None,
        },
        1,
    )
    .unwrap();
    let e = refusal(&pass("target = 0.5"), bare);
    assert!(e.contains("no channel group"), "{e}");
    let e = refusal(
        "[[passes]]\ntype = \"channel_prune\"\ncriterion = \"bn_gamma\"\ntarget = 0.5\n",
        common::small("mlp"),
    );
    assert!(e.contains("BatchNorm"), "{e}");
}
