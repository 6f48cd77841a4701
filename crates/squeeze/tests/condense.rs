//! CondenseNet's learned group convolution: the condensation criterion and schedule, the
//! group-lasso term, the materialized index node + group convolution against the masked
//! dense convolution it replaces, the pass end to end on a small DenseNet-BC, and its
//! option errors.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use squeeze::graph::{Graph, Op, INPUT};
use squeeze::interp::predict;
use squeeze::kinds::conv2d::Conv2d;
use squeeze::params::ParamStore;
use squeeze::passes::condense::materialize;
use squeeze::passes::{run_recipe, Recipe};
use squeeze::prune::condense::{Condense, LearnedGroups};
use squeeze::Model;

mod common;
use common::{max_abs, small, synthetic, tmpdir, uniform, values_of};

/// Materialized vs masked dense outputs (f32 sums of at most 36 products).
const EQUAL_TOL: f32 = 1e-5;

/// input [6, 5, 5] → 3×3 conv (8 filters, bias) → output.
fn one_conv() -> Model {
    let mut g = Graph::new("t", &[6, 5, 5]);
    g.push(
        "conv",
        Op::Conv2d(Conv2d {
            in_channels: 6,
            out_channels: 8,
            kernel: 3,
            stride: 1,
            padding: 1,
            groups: 1,
            bias: true,
            width: None,
            quant: None,
        }),
        &[INPUT],
    );
    let mut p = ParamStore::new();
    let dev = &Device::Cpu;
    p.insert(
        "conv.weight",
        Tensor::from_vec(uniform(8 * 6 * 9, 1), (8, 6, 3, 3), dev).unwrap(),
    );
    p.insert(
        "conv.bias",
        Tensor::from_vec(uniform(8, 2), 8, dev).unwrap(),
    );
    let m = Model::new(g, p);
    m.check().unwrap();
    m
}

#[test]
fn index_node_and_group_conv_equal_the_masked_dense_conv() {
    let mut m = one_conv();
    let mut l = LearnedGroups::new("conv", &[8, 6, 3, 3], 2).unwrap();
    // group 0 reads inputs 1, 4 (out of order in the index below: sorted); group 1 reads 0, 5
    l.alive = vec![
        vec![false, true, false, false, true, false],
        vec![true, false, false, false, false, true],
    ];
    let w = m.params.get("conv.weight").unwrap().clone();
    let masked = (&w * l.mask(w.dims()).unwrap()).unwrap();
    m.params.insert("conv.weight", masked);
    let x = Tensor::from_vec(uniform(3 * 150, 3), (3, 6, 5, 5), &Device::Cpu).unwrap();
    let dense = predict(&m.graph, &m.params, &x).unwrap();
    materialize(&mut m, &l).unwrap();
    m.check().unwrap();
    let Some(Op::Conv2d(c)) = m.graph.node("conv").map(|n| &n.op) else {
        panic!("conv is gone")
    };
    assert_eq!((c.groups, c.in_channels), (2, 4));
    let index: Vec<u32> = values_of(m.params.get("conv_index.index").unwrap());
    assert_eq!(index, [1, 4, 0, 5]);
    let grouped = predict(&m.graph, &m.params, &x).unwrap();
    let d = max_abs(&dense, &grouped);
    assert!(d < EQUAL_TOL, "materialized output moved by {d}");
    // a model whose groups keep different counts cannot become a group convolution
    let mut m2 = one_conv();
    l.alive[1][2] = true;
    let err = materialize(&mut m2, &l).unwrap_err().to_string();
    assert!(err.contains("[2, 3]"), "{err}");
}

#[test]
fn condensation_drops_the_smallest_l1_columns_of_each_group() {
    // 2 filters in 2 groups of 1, 4 inputs, 1×1: column L1 = |w|
    let w = [
        0.5f32, -0.1, 0.3, 0.2, /* group 1 */ 0.0, 0.9, -0.9, 0.4,
    ];
    let mut l = LearnedGroups::new("c", &[2, 4, 1, 1], 2).unwrap();
    l.condense(&w, 2);
    assert_eq!(l.kept(0), [0, 2]);
    assert_eq!(l.kept(1), [1, 2]);
    // a later stage only considers what is alive; a tie (0.9 and 0.9) keeps the lower index
    l.condense(&w, 1);
    assert_eq!((l.kept(0), l.kept(1)), (vec![0], vec![1]));
    assert_eq!(l.final_keep(4), 1);
    // outputs that do not split into the groups are refused, naming the layer
    let err = LearnedGroups::new("c", &[6, 4, 1, 1], 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`c`") && err.contains("6 output channels"),
        "{err}"
    );
}

#[test]
fn the_schedule_reaches_one_over_c_in_c_minus_one_stages() {
    let keeps: Vec<usize> = (0..=3).map(|k| Condense::keep_after(12, 3, k, 3)).collect();
    assert_eq!(keeps, [12, 9, 6, 3]);
    assert_eq!(Condense::keep_after(10, 3, 1, 3), 7);
    assert_eq!(Condense::keep_after(10, 3, 3, 3), 3);
}

#[test]
fn group_lasso_is_the_sum_of_column_norms_and_has_a_gradient() {
    // 2 groups of 1 filter, 2 inputs, 1×1 kernels: every column is a single weight
    let w = Var::from_vec(vec![3f32, 4.0, 0.0, 1.0], (2, 2, 1, 1), &Device::Cpu).unwrap();
    let l = LearnedGroups::new("c", &[2, 2, 1, 1], 2).unwrap();
    let v = l.group_lasso(w.as_tensor()).unwrap();
    let got = v.to_scalar::<f32>().unwrap();
    assert!((got - 8.0).abs() < 1e-4, "{got} ≠ 3 + 4 + 0 + 1");
    // one group of both filters: columns (3, 0) and (4, 1)
    let l1 = LearnedGroups::new("c", &[2, 2, 1, 1], 1).unwrap();
    let got = l1
        .group_lasso(w.as_tensor())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = 3.0 + 17f32.sqrt();
    assert!((got - want).abs() < 1e-4, "{got} ≠ {want}");
    let g = v.backward().unwrap();
    let dw: Vec<f32> = values_of(g.get(w.as_tensor()).unwrap());
    // d|w|/dw = sign(w) per single-entry column; 0 at an exact zero
    assert_eq!(
        dw.iter().map(|d| d.round()).collect::<Vec<_>>(),
        [1.0, 1.0, 0.0, 1.0]
    );
}

fn recipe(text: &str) -> Recipe {
    Recipe::parse(text, Path::new("condense.toml")).unwrap()
}

#[test]
fn the_pass_condenses_a_densenet_bc_into_gathers_and_group_convolutions() {
    let m = small("densenet-bc");
    let r = recipe(
        "[finetune]\nepochs = 2\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"condense\"\ngroups = 2\ncondensation = 2\nlasso = 1e-4\n",
    );
    let work = tmpdir("condense-work");
    let splits = squeeze::data::FashionMnist {
        train: synthetic(96, 1),
        valid: synthetic(32, 2),
        test: synthetic(32, 3),
    };
    let mut ctx = r
        .context(Path::new("/no-such-dir"), &work)
        .with_images(splits);
    let (out, log) = run_recipe(m.clone(), &r, &mut ctx).unwrap();
    let d = &log[0].details;
    let before = d["macs_before"].as_u64().unwrap();
    let after = d["macs_after"].as_u64().unwrap();
    assert!(after < before, "{after} ≥ {before}");
    // every condensed conv reads ⌈in/2⌉ channels per group through its index node
    let layers = d["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for name in layers {
        let name = name.as_str().unwrap();
        let Some(Op::Conv2d(before)) = m.graph.node(name).map(|n| n.op.clone()) else {
            panic!("{name}")
        };
        let Some(Op::Conv2d(c)) = out.graph.node(name).map(|n| n.op.clone()) else {
            panic!("{name} is gone")
        };
        assert_eq!(c.groups, 2, "{name}");
        assert_eq!(c.in_channels, 2 * before.in_channels.div_ceil(2), "{name}");
        let gather = out.graph.node(&format!("{name}_index")).unwrap();
        assert_eq!(gather.op.kind(), "channel_gather");
    }
    // the stem (one input channel) is left dense
    assert!(!layers.iter().any(|l| l == "stem"));
    // the materialized model saves, loads and predicts the same
    let dir = tmpdir("condense-model");
    squeeze::checkpoint::save(&out, &dir).unwrap();
    let back = squeeze::checkpoint::load(&dir).unwrap();
    let x = common::batch(2, 5);
    let a = predict(&out.graph, &out.params, &x).unwrap();
    let b = predict(&back.graph, &back.params, &x).unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(work);
}

#[test]
fn bad_condense_options_name_the_field() {
    for (opts, field) in [
        ("condensation = 1", "`condensation`"),
        ("groups = 0", "`groups`"),
        ("lasso = -1.0", "`lasso`"),
        ("epochs = 0", "`epochs`"),
        ("grups = 2", "grups"),
    ] {
        let text = format!("[[passes]]\ntype = \"condense\"\n{opts}\n");
        let err = Recipe::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{opts}: {err}");
    }
    // a layer that is not a convolution, or whose outputs do not split into the groups
    let m = small("densenet-bc");
    for (layer, want) in [
        ("pool", "not a convolution"),
        ("stem", "single input channel"),
    ] {
        let r = recipe(&format!(
            "[[passes]]\ntype = \"condense\"\nlayers = [\"{layer}\"]\n"
        ));
        let mut ctx = r.context(Path::new("/x"), Path::new("/y"));
        let err = run_recipe(m.clone(), &r, &mut ctx).unwrap_err().to_string();
        assert!(err.contains(layer) && err.contains(want), "{err}");
    }
    let r = recipe("[[passes]]\ntype = \"condense\"\ngroups = 3\nlayers = [\"block1.0.b.conv\"]\n");
    let mut ctx = r.context(Path::new("/x"), Path::new("/y"));
    let err = run_recipe(m, &r, &mut ctx).unwrap_err().to_string();
    assert!(err.contains("not a multiple of `groups` = 3"), "{err}");
}
