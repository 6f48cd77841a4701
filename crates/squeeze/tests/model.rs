//! Model view, checkpoints, passes and recipes: round trips, clear errors on bad files,
//! gradients reaching every parameter, BatchNorm folding preserving logits.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use squeeze::checkpoint::{self, Model};
use squeeze::graph::trainable_names;
use squeeze::interp::{forward, predict, ForwardOpts};
use squeeze::passes::{run_recipe, Recipe};
use squeeze::zoo::{self, ZooOpts, ARCHS};

mod common;
use common::{batch, max_abs, small, tmpdir};

/// Max abs logit change allowed by BatchNorm folding (f32 reassociation).
const FOLD_TOL: f32 = 1e-4;

#[test]
fn every_zoo_model_runs_and_default_sizes_are_as_documented() {
    for arch in ARCHS {
        let m = small(arch);
        let y = predict(&m.graph, &m.params, &batch(2, 1)).unwrap();
        assert_eq!(y.dims(), &[2, 10], "{arch}");
    }
    let vgg = zoo::build("vgg", &ZooOpts::default(), 0).unwrap();
    let p = squeeze::eval::static_cost(&vgg).unwrap().params;
    // the count the README's baseline table gives for zoo/vgg
    assert_eq!(p, 298_410, "vgg default size");
}

#[test]
fn checkpoint_round_trip_is_bit_exact() {
    let m = small("resnet");
    let dir = tmpdir("roundtrip");
    checkpoint::save(&m, &dir).unwrap();
    let back = checkpoint::load(&dir).unwrap();
    assert_eq!(back.graph, m.graph);
    for (k, t) in m.params.iter() {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back
            .params
            .get(k)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k}"
        );
    }
    let x = batch(3, 2);
    let (y1, y2) = (
        predict(&m.graph, &m.params, &x).unwrap(),
        predict(&back.graph, &back.params, &x).unwrap(),
    );
    assert_eq!(max_abs(&y1, &y2), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn saved(name: &str) -> std::path::PathBuf {
    let dir = tmpdir(name);
    checkpoint::save(&small("lenet5"), &dir).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    checkpoint::load(dir)
        .expect_err("load must fail")
        .to_string()
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = saved("trunc");
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_model_json_errors_name_the_file_and_field() {
    let dir = saved("badjson");
    let g = dir.join("model.json");
    let text = std::fs::read_to_string(&g).unwrap();
    std::fs::write(&g, &text[..text.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.json") && e.contains("invalid model description"),
        "{e}"
    );
    std::fs::write(&g, text.replacen("\"arch\"", "\"colour\": 1, \"arch\"", 1)).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("unknown field `colour`"), "{e}");
    std::fs::write(
        &g,
        text.replacen("\"out_channels\": 20", "\"out_channels\": 21", 1),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.json") && e.contains("conv2") && e.contains("expected [20, H, W]"),
        "{e}"
    );
    std::fs::write(
        &g,
        text.replacen("\"out_features\": 10", "\"out_features\": 11", 1),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.json") && e.contains("tensor table: `fc2.bias`"),
        "{e}"
    );
    // without the (optional) tensor table, the weights file is checked against the graph
    let mut v: serde_json::Value =
        serde_json::from_str(&text.replacen("\"out_features\": 10", "\"out_features\": 11", 1))
            .unwrap();
    v.as_object_mut().unwrap().remove("tensors");
    std::fs::write(&g, serde_json::to_string(&v).unwrap()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("fc2.bias")
            && e.contains("expected shape [11]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_weights_are_rejected_with_the_tensor_name() {
    let mut m = small("mlp");
    let w = m.params.get("fc2.bias").unwrap().clone();
    let mut v: Vec<f32> = w.to_vec1().unwrap();
    v[3] = f32::NAN;
    m.params.insert(
        "fc2.bias",
        Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap(),
    );
    let e = m.check().unwrap_err().to_string();
    assert!(e.contains("fc2.bias") && e.contains("non-finite"), "{e}");
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for arch in ARCHS {
        let m = small(arch);
        let (store, vars) = m.params.with_vars(&trainable_names(&m.graph)).unwrap();
        let y = Tensor::new(&[0u32, 3, 5, 9], &Device::Cpu).unwrap();
        let out = forward(&m.graph, &store, &batch(4, 3), &ForwardOpts::train(1)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.output, &y).unwrap();
        let grads = loss.backward().unwrap();
        for (name, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{arch}: {name} has no gradient"));
            let s = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s > 0.0, "{arch}: {name} gradient is zero");
        }
    }
}

/// Gives BatchNorms non-trivial running statistics and affine parameters.
fn perturb_bn(m: &mut Model) {
    let names: Vec<String> = m
        .params
        .names()
        .into_iter()
        .filter(|n| n.contains("bn") || n.contains(".bn"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        let t = m.params.get(n).unwrap();
        let c = t.dim(0).unwrap();
        let v: Vec<f32> = (0..c)
            .map(|j| 0.5 + ((i * 7 + j * 3) % 11) as f32 / 10.0)
            .collect();
        let v = if n.ends_with("bias") || n.ends_with("mean") {
            v.iter().map(|x| x - 1.0).collect()
        } else {
            v
        };
        m.params
            .insert(n.clone(), Tensor::from_vec(v, c, &Device::Cpu).unwrap());
    }
}

#[test]
fn batchnorm_folding_preserves_logits() {
    let recipe = Recipe::parse(
        "[[passes]]\ntype = \"fold_batch_norm\"\n",
        Path::new("inline.toml"),
    )
    .unwrap();
    for arch in ["cnn", "vgg", "resnet", "densenet", "densenet-bc"] {
        let mut m = small(arch);
        perturb_bn(&mut m);
        let x = batch(3, 4);
        let before = predict(&m.graph, &m.params, &x).unwrap();
        let n_before = m.graph.nodes.len();
        let mut ctx = recipe.context(Path::new("/no-data-needed"), Path::new("/no-work-dir"));
        let (folded, log) = run_recipe(m, &recipe, &mut ctx).unwrap();
        let after = predict(&folded.graph, &folded.params, &x).unwrap();
        let d = max_abs(&before, &after);
        assert!(d < FOLD_TOL, "{arch}: logits moved by {d}");
        let kept = log[0].details["kept"].as_u64().unwrap() as usize;
        let nfold = log[0].details["folded"].as_array().unwrap().len();
        assert_eq!(folded.graph.nodes.len(), n_before - nfold, "{arch}");
        if arch.starts_with("densenet") {
            assert!(kept > 0, "pre-activation BNs cannot fold");
        } else {
            assert!(
                nfold > 0 && kept == 0,
                "{arch}: folded {nfold}, kept {kept}"
            );
        }
    }
}

#[test]
fn recipe_with_unknown_pass_or_field_is_rejected_naming_the_file() {
    let p = Path::new("recipes/typo.toml");
    let e = Recipe::parse("[[passes]]\ntype = \"fold_batchnorm\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("typo.toml") && e.contains("fold_batchnorm"),
        "{e}"
    );
    let e = Recipe::parse("[[passes]]\ntype = \"fold_batch_norm\"\nstrength = 2\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("strength"), "{e}");
    let e = Recipe::parse("[[pass]]\ntype = \"fold_batch_norm\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("pass"), "{e}");
}

#[test]
fn wrong_input_shape_is_an_error_not_a_panic() {
    let m = small("mlp");
    let x = Tensor::zeros((2, 1, 27, 28), DType::F32, &Device::Cpu).unwrap();
    let e = predict(&m.graph, &m.params, &x).unwrap_err().to_string();
    assert!(e.contains("[2, 1, 27, 28]"), "{e}");
}

#[test]
fn taps_capture_a_nodes_inputs_and_output() {
    let m = small("cnn");
    let x = batch(2, 9);
    let mut opts = ForwardOpts::eval();
    opts.taps.insert("block2.conv".into());
    let out = forward(&m.graph, &m.params, &x, &opts).unwrap();
    let tap = &out.taps["block2.conv"];
    assert_eq!(tap.inputs[0].dims(), &[2, 32, 14, 14]);
    assert_eq!(tap.output.dims(), &[2, 64, 14, 14]);
    let w = m.params.get("block2.conv.weight").unwrap();
    let again = tap.inputs[0].conv2d(w, 1, 1, 1, 1).unwrap();
    assert!(max_abs(&again, &tap.output) < 1e-4);
    assert_eq!(
        max_abs(&out.output, &predict(&m.graph, &m.params, &x).unwrap()),
        0.0
    );
}

#[test]
fn dropout_is_seeded_scaled_in_training_and_identity_in_eval() {
    use squeeze::graph::{Graph, Op, INPUT};
    let mut g = Graph::new("drop", &[1, 28, 28]);
    g.push(
        "drop",
        Op::Dropout(squeeze::kinds::dropout::Dropout { p: 0.25 }),
        &[INPUT],
    );
    let p = squeeze::params::ParamStore::new();
    let x = Tensor::ones((4, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let run = |seed| {
        forward(&g, &p, &x, &ForwardOpts::train(seed))
            .unwrap()
            .output
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(max_abs(&a, &b), 0.0, "same seed, same mask");
    assert!(max_abs(&a, &c) > 0.0, "another seed, another mask");
    let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / v.len() as f64;
    assert!((kept - 0.75).abs() < 0.03, "kept fraction {kept}");
    assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
    assert_eq!(max_abs(&predict(&g, &p, &x).unwrap(), &x), 0.0);
}

/// The run plan is compiled once per graph and mode and kept with the graph, but an edited
/// graph never runs a stale plan: a node appended after a forward runs in the next one.
#[test]
fn an_edited_graph_runs_a_new_plan() {
    use squeeze::graph::{Node, Op};
    let mut m = small("mlp");
    let x = batch(2, 1);
    let before = predict(&m.graph, &m.params, &x).unwrap();
    let kept = m.graph.cache.len();
    predict(&m.graph, &m.params, &x).unwrap();
    assert_eq!(
        m.graph.cache.len(),
        kept,
        "the second forward compiles nothing"
    );
    let last = m.graph.output.clone();
    m.graph.nodes.push(Node {
        name: "extra_relu".into(),
        inputs: vec![last],
        op: Op::Relu,
    });
    m.graph.output = "extra_relu".into();
    let after = predict(&m.graph, &m.params, &x).unwrap();
    assert_eq!(max_abs(&after, &before.relu().unwrap()), 0.0);
}

/// A graph's cache slot drops the least recently used entry when full: what every forward
/// reads (the eval plan, the packed weights) outlives a stream of one-off entries.
#[test]
fn the_cache_slot_keeps_what_is_used_and_drops_the_least_recent() {
    let slot = squeeze::graph::CacheSlot::default();
    let make = |v: u64| move || Ok::<u64, ()>(v);
    assert_eq!(*slot.get_or(0, make(100)).unwrap(), 100);
    for k in 1..40u64 {
        slot.get_or(k, make(k)).unwrap();
        // key 0 is used between the others: found, not rebuilt
        let again = slot.get_or(0, || Err::<u64, ()>(())).expect("key 0 kept");
        assert_eq!(*again, 100);
    }
    assert!(slot.len() <= 16, "{}", slot.len());
    // an entry not used since is gone and is built anew
    assert_eq!(*slot.get_or(1, make(7)).unwrap(), 7);
}

#[test]
fn a_misspelled_recipe_field_is_reported_at_its_line() {
    let text = "[finetune]\nepochs = 1\n\n[[passes]]\ntype = \"magnitude\"\nsparsity = 0.5\n\n\
                [[passes]]\ntype = \"materialize\"\nmin_sparsty = 0.8\n";
    let e = Recipe::parse(text, Path::new("r.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("r.toml")
            && e.contains("line 10")
            && e.contains("`min_sparsty` (passes[1])")
            && e.contains("expected `min_sparsity`"),
        "{e}"
    );
}

#[test]
fn saved_weights_get_the_usual_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("perms");
    let m = zoo::build("mlp", &ZooOpts::default(), 0).unwrap();
    checkpoint::save(&m, &dir).unwrap();
    // a file created the ordinary way shows what the umask allows
    std::fs::write(dir.join("plain"), b"x").unwrap();
    let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(checkpoint::WEIGHTS_FILE),
        mode("plain"),
        "model.safetensors has mode {:o}, an ordinary file {:o}",
        mode(checkpoint::WEIGHTS_FILE),
        mode("plain")
    );
}
