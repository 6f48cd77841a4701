//! The pass context: calibration batches from the recipe's `[calibration]` table, taps
//! over them (BatchNorm re-estimation), fine-tuning under the `[finetune]` budget for
//! image classifiers and text encoders, and the recipe's errors for missing or misspelled
//! tables.

use std::path::Path;

use squeeze::data::FashionMnist;
use squeeze::interp::ForwardOpts;
use squeeze::passes::{run_recipe, Recipe};
use squeeze::text::bert::{self, BertShape};
use squeeze::Model;

mod common;
use common::small;

/// Max abs difference between a re-estimated running mean and the directly computed one.
const STAT_TOL: f32 = 1e-4;

fn splits() -> FashionMnist {
    FashionMnist {
        train: common::synthetic(96, 1),
        valid: common::synthetic(32, 2),
        test: common::synthetic(32, 3),
    }
}

fn recipe(text: &str) -> Recipe {
    Recipe::parse(text, Path::new("test.toml")).unwrap()
}

fn apply(m: Model, r: &Recipe) -> squeeze::Result<(Model, Vec<squeeze::passes::PassRecord>)> {
    // a directory per call: tests run in parallel in one process
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = common::tmpdir(&format!("passes-work-{n}"));
    let mut ctx = r
        .context(Path::new("/no-such-dir"), &work)
        .with_images(splits());
    let out = run_recipe(m, r, &mut ctx);
    let _ = std::fs::remove_dir_all(work);
    out
}

#[test]
fn batch_norm_statistics_are_re_estimated_from_calibration_batches() {
    let mut m = small("vgg");
    for (k, t) in m.params.clone().iter() {
        if k.ends_with("running_mean") || k.ends_with("running_var") {
            m.params
                .insert(k.clone(), (t.ones_like().unwrap() * 7.0).unwrap());
        }
    }
    let r = recipe(
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"recalibrate_batch_norm\"\n",
    );
    let (out, log) = apply(m.clone(), &r).unwrap();
    assert!(log[0].label.starts_with("re-estimated"), "{}", log[0].label);
    // the first BatchNorm's input does not depend on any other BatchNorm: its mean over the
    // 64 calibration images is what the pass must have stored
    let bn = m
        .graph
        .nodes
        .iter()
        .find(|n| n.op.kind() == "batch_norm")
        .unwrap()
        .name
        .clone();
    let idx: Vec<usize> = (0..64).collect();
    let (x, _) = splits().train.batch(&idx, None).unwrap();
    let opts = ForwardOpts {
        taps: [bn.clone()].into_iter().collect(),
        ..ForwardOpts::eval()
    };
    let tap = &squeeze::interp::forward(&m.graph, &m.params, &x, &opts)
        .unwrap()
        .taps[&bn];
    let want = tap.inputs[0]
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap()
        .flatten_all()
        .unwrap();
    let got = out.params.get(&format!("{bn}.running_mean")).unwrap();
    let d = common::max_abs(&want, got);
    assert!(d < STAT_TOL, "running mean off by {d}");
}

#[test]
fn a_pass_that_needs_calibration_says_which_table_is_missing() {
    let r = recipe("[[passes]]\ntype = \"recalibrate_batch_norm\"\n");
    let e = apply(small("vgg"), &r).unwrap_err().to_string();
    assert!(
        e.contains("recalibrate_batch_norm") && e.contains("[calibration]"),
        "{e}"
    );
    let e = Recipe::parse(
        "[calibration]\nsource = \"fashion-mnist\"\nsampels = 3\n[[passes]]\ntype = \"finetune\"\n",
        Path::new("typo.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("typo.toml") && e.contains("sampels"), "{e}");
}

#[test]
fn finetune_trains_a_masked_classifier_within_its_budget_and_keeps_masks() {
    let m = common::masked_mlp(|i| i % 3 != 0);
    let r = recipe(
        "[finetune]\nepochs = 2\nbatch_size = 32\n\n[[passes]]\ntype = \"finetune\"\nepochs = 1\n",
    );
    let (out, log) = apply(m, &r).unwrap();
    assert!(
        log[0].label.contains("fine-tuned 1 epoch"),
        "{}",
        log[0].label
    );
    let w: Vec<f32> = common::values_of(out.params.get("fc1.weight").unwrap());
    assert!(
        w.iter().step_by(3).all(|v| *v == 0.0),
        "masked weights moved"
    );
}

#[test]
fn a_text_encoder_is_fine_tuned_toward_its_own_input_embeddings() {
    let shape = BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        dropout: 0.0,
        ..common::bert_shape(8, &[2, 2])
    };
    let mut m = bert::random(&shape, 4).unwrap();
    m.assets.insert(
        "tokenizer.json".into(),
        common::tokenizer::tokenizer_json(&["the", "cat", "a", "dog", "runs"]),
    );
    let dir = common::tmpdir("passes-text");
    std::fs::create_dir_all(&dir).unwrap();
    let sents = dir.join("s.txt");
    std::fs::write(&sents, "the cat\na dog runs\n\nthe dog\ncat runs a\n").unwrap();
    let r = recipe(&format!(
        "[finetune]\nsentences = \"{}\"\nbatch_size = 2\n\n[[passes]]\ntype = \"finetune\"\n",
        sents.display()
    ));
    let (_, log) = apply(m.clone(), &r).unwrap();
    // the teacher is the input model itself: the cosine distance starts and stays ~0
    let loss = log[0].details[0]["valid_loss"].as_f64().unwrap();
    assert!(loss < 1e-3, "{}", log[0].label);
    // the control: narrowed first, the student starts off its target (the input model's
    // embeddings), and fine-tuning must close much of the gap
    let r = recipe(&format!(
        "[finetune]\nsentences = \"{}\"\nbatch_size = 2\nepochs = 8\n\
         optimizer = {{ type = \"adamw\", lr = 0.01, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0 }}\n\n\
         [[passes]]\ntype = \"narrow\"\nheads = 1\nintermediate = 4\n\n[[passes]]\ntype = \"finetune\"\n",
        sents.display()
    ));
    let (_, log) = apply(m, &r).unwrap();
    let losses: Vec<f64> = log[1]
        .details
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["valid_loss"].as_f64().unwrap())
        .collect();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        first > 1e-3,
        "the narrowed student already matches: {losses:?}"
    );
    assert!(
        last < 0.5 * first,
        "fine-tuning did not approach the target: {losses:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_committed_recipe_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Recipe::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 30, "only {n} recipes under {}", dir.display());
}

/// The recipe reference: every pass's example entry parses and builds a pass of that
/// name, an unknown field in any entry is refused, and the README's table is the one the
/// declarations generate.
#[test]
fn the_recipe_reference_comes_from_the_declarations_and_matches_the_readme() {
    use squeeze::passes::{reference, reference_markdown};
    let refs = reference();
    assert_eq!(refs.len(), 18, "a pass was added or lost: {refs:?}");
    for r in &refs {
        let fields = match r.example {
            "" => String::new(),
            e => format!(", {e}"),
        };
        let entry = format!("passes = [{{ type = \"{}\"{fields} }}]\n", r.name);
        let recipe = Recipe::parse(&entry, Path::new("example.toml"))
            .unwrap_or_else(|e| panic!("{}: {e}\n{entry}", r.name));
        let toml = toml::to_string(&recipe).unwrap();
        assert!(toml.contains(&format!("type = \"{}\"", r.name)), "{toml}");
        let typo = entry.replace(" }]", ", no_such_option = 1 }]");
        let e = Recipe::parse(&typo, Path::new("typo.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("typo.toml") && e.contains("no_such_option"),
            "{}: {e}",
            r.name
        );
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let (start, end) = ("<!-- passes:reference -->\n", "<!-- /passes:reference -->");
    let at = readme
        .find(start)
        .expect("README has the passes:reference block")
        + start.len();
    let block = &readme[at..at + readme[at..].find(end).unwrap()];
    let want = reference_markdown();
    assert!(
        block == want,
        "README.md's recipe reference differs from the declarations; paste this between the \
         passes:reference markers:\n{want}"
    );
}

#[test]
fn the_readme_lists_every_documented_range() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let (start, end) = ("<!-- limits:reference -->\n", "<!-- /limits:reference -->");
    let at = readme
        .find(start)
        .expect("README has the limits:reference block")
        + start.len();
    let block = &readme[at..at + readme[at..].find(end).unwrap()];
    let want = squeeze::limits::markdown();
    assert!(
        block == want,
        "README.md's table of ranges differs from squeeze::limits; paste this between the \
         limits:reference markers:\n{want}"
    );
}

#[test]
fn out_of_range_recipe_fields_name_the_field_and_the_range() {
    for (entry, want) in [
        ("[finetune]\nepochs = 0\n", "`epochs` = 0 is out of range: expected an integer from 1"),
        ("[finetune]\noptimizer = { type = \"sgd\", lr = 0.0, momentum = 0.9, weight_decay = 0.0, nesterov = true }\n", "`lr` = 0.0 is out of range"),
        ("[finetune]\noptimizer = { type = \"sgd\", lr = 0.1, momentum = 2.0, weight_decay = 0.0, nesterov = true }\n", "`momentum` = 2.0"),
        ("[finetune]\nschedule = { type = \"cosine\", warmup_epochs = 1e9 }\n", "`warmup_epochs`"),
        ("[finetune]\nschedule = { type = \"cosine\", warmup_epochs = nan }\n", "`warmup_epochs`"),
    ] {
        let text = format!("{entry}[[passes]]\ntype = \"finetune\"\n");
        let err = Recipe::parse(&text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("r.toml") && err.contains(want), "{entry}: {err}");
    }
    let text = "[[passes]]\ntype = \"obd\"\nsparsity = 0.5\nrounds = 2147483648\n";
    let err = Recipe::parse(text, Path::new("r.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("passes[0]: `rounds`"), "{err}");
}

#[test]
fn every_recipe_in_the_readme_parses() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(
        blocks.len() >= 2,
        "the README shows its recipes in ```toml blocks"
    );
    for b in blocks {
        Recipe::parse(b, Path::new("README.md")).unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
}

#[test]
fn bad_pruning_options_are_recipe_errors_that_name_the_field() {
    let cases = [
        (
            "type = \"magnitude\"\nsparsity = 1.0",
            "`sparsity` must be in [0, 1)",
        ),
        ("type = \"magnitude\"\nsparsity = -0.1", "`sparsity`"),
        (
            "type = \"wanda\"\nn = 5\nm = 4",
            "`n` (5) must not exceed `m` (4)",
        ),
        ("type = \"sparsegpt\"\nn = 2", "needs both `n` and `m`"),
        ("type = \"share\"\nbits = 0", "`bits` must be 1 to 8"),
        ("type = \"share\"\nbits = 9", "`bits` must be 1 to 8"),
        (
            "type = \"obd\"\nsparsity = 0.5\nestimator = \"exact\"",
            "unknown variant `exact`",
        ),
        (
            "type = \"magnitude\"\nsparsity = 0.5\nsparsty = 0.9",
            "unknown field `sparsty`",
        ),
        (
            "type = \"materialize\"\nmin_sparsity = 2.0",
            "`min_sparsity`",
        ),
    ];
    for (pass, want) in cases {
        let text = format!("[[passes]]\n{pass}\n");
        let e = Recipe::parse(&text, Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains(want), "{pass:?}: {e}");
    }
    // a layer the model does not have is named when the pass meets the model
    let r = recipe("[[passes]]\ntype = \"magnitude\"\nsparsity = 0.5\nlayers = [\"fc9\"]\n");
    let e = apply(small("mlp"), &r).unwrap_err().to_string();
    assert!(
        e.contains("magnitude") && e.contains("no node `fc9`"),
        "{e}"
    );
    let r = recipe("[[passes]]\ntype = \"wanda\"\nsparsity = 0.5\nlayers = [\"relu1\"]\n");
    let e = apply(small("mlp"), &r).unwrap_err().to_string();
    assert!(e.contains("`relu1` is a relu"), "{e}");
}

#[test]
fn pruning_recipes_run_end_to_end_and_fine_tuning_keeps_the_sparsity() {
    let r = recipe(
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 32\nbatch_size = 16\n\
         [finetune]\nepochs = 1\nbatch_size = 32\n\
         [[passes]]\ntype = \"sparsegpt\"\nsparsity = 0.5\nlayers = [\"fc2\"]\nfinetune_epochs = 1\n\
         [[passes]]\ntype = \"magnitude\"\nsparsity = 0.8\nlayers = [\"fc1\"]\nschedule = \"agp\"\nfinetune_epochs = 1\n\
         [[passes]]\ntype = \"obd\"\nsparsity = 0.5\nlayers = [\"fc3\"]\nestimator = \"hutchinson\"\nprobes = 1\nfinetune_epochs = 1\n\
         [[passes]]\ntype = \"share\"\nbits = 4\nfinetune_epochs = 1\n\
         [[passes]]\ntype = \"materialize\"\n",
    );
    let (m, log) = apply(small("mlp"), &r).unwrap();
    assert_eq!(log.len(), 5);
    let zeros = |name: &str| {
        let v: Vec<f32> = common::values_of(m.params.get(name).unwrap());
        v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
    };
    assert!(
        (zeros("fc1.weight") - 0.8).abs() < 1e-3,
        "{}",
        zeros("fc1.weight")
    );
    assert!(zeros("fc2.weight") >= 0.5 && zeros("fc3.weight") >= 0.5);
    assert!(m.graph.masks.is_empty(), "materialize folds the masks");
    for name in ["fc1.weight", "fc2.weight", "fc3.weight"] {
        let mut v: Vec<f32> = common::values_of(m.params.get(name).unwrap());
        v.retain(|x| *x != 0.0);
        v.sort_by(f32::total_cmp);
        v.dedup();
        assert!(
            v.len() <= 16,
            "{name}: {} distinct values after 4-bit sharing",
            v.len()
        );
    }
}

/// Max abs difference of logits between a convolution whose filters are rank-1 per input
/// channel and its depthwise-separable replacement.
const SEPARABLE_TOL: f32 = 1e-4;

#[test]
fn depthwise_separable_reproduces_rank1_filters_and_cuts_macs() {
    let mut m = small("vgg");
    let convs: Vec<String> = m
        .graph
        .nodes
        .iter()
        .filter(
            |n| matches!(&n.op, squeeze::graph::Op::Conv2d(c) if c.kernel > 1 && c.in_channels > 1),
        )
        .map(|n| n.name.clone())
        .collect();
    assert!(!convs.is_empty());
    // make every split filter rank 1 per input channel: W[o, c] = a[o, c]·b[c]
    for name in &convs {
        let key = format!("{name}.weight");
        let w = m.params.get(&key).unwrap();
        let (co, ci, k, _) = w.dims4().unwrap();
        let mut v = vec![0f32; co * ci * k * k];
        for (i, x) in v.iter_mut().enumerate() {
            let (o, c, t) = (i / (ci * k * k), (i / (k * k)) % ci, i % (k * k));
            let a = ((o * 7 + c * 3) % 11) as f32 / 11.0 - 0.4;
            let b = ((c * 5 + t * 2) % 7) as f32 / 7.0 - 0.3;
            *x = a * b;
        }
        m.params.insert(
            key,
            candle_core::Tensor::from_vec(v, w.dims(), w.device()).unwrap(),
        );
    }
    let r = recipe("[[passes]]\ntype = \"depthwise_separable\"\n");
    let (out, log) = apply(m.clone(), &r).unwrap();
    let cost = |m: &Model| squeeze::eval::static_cost(m).unwrap().macs;
    assert!(cost(&out) < cost(&m), "{}", log[0].label);
    let kept = &log[0].details["energy_kept"];
    for name in &convs {
        assert!(
            (kept[name].as_f64().unwrap() - 1.0).abs() < 1e-6,
            "{name}: {kept}"
        );
        assert!(out.graph.node(&format!("{name}_dw")).is_some());
    }
    let x =
        candle_core::Tensor::randn(0f32, 1.0, (3, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
    let y0 = squeeze::interp::forward(&m.graph, &m.params, &x, &ForwardOpts::eval()).unwrap();
    let y1 = squeeze::interp::forward(&out.graph, &out.params, &x, &ForwardOpts::eval()).unwrap();
    let d = common::max_abs(&y0.output, &y1.output);
    assert!(d < SEPARABLE_TOL, "logits moved by {d}");
    // a layer that cannot be split is named
    for (layer, want) in [
        ("nope", "not a convolution"),
        ("classifier", "not a convolution"),
    ] {
        let r = recipe(&format!(
            "[[passes]]\ntype = \"depthwise_separable\"\nlayers = [\"{layer}\"]\n"
        ));
        let e = apply(m.clone(), &r).unwrap_err().to_string();
        assert!(e.contains(layer) && e.contains(want), "{e}");
    }
}

/// Max abs difference of embeddings when only all-zero heads and FFN units are cut.
const NARROW_TOL: f32 = 1e-5;

#[test]
fn narrowing_cuts_zero_heads_and_ffn_units_without_changing_the_embeddings() {
    let shape = BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        dropout: 0.0,
        ..common::bert_shape(8, &[2, 2])
    };
    let mut m = bert::random(&shape, 5).unwrap();
    // zero head 1 (q/k/v rows 4..8, output columns 4..8) and FFN units 8..16 of each layer
    let zero = |m: &mut Model, name: &str, axis: usize, from: usize| {
        let t = m.params.get(name).unwrap().clone();
        let n = t.dim(axis).unwrap();
        let keep = t.narrow(axis, 0, from).unwrap();
        let zeros = t
            .narrow(axis, from, n - from)
            .unwrap()
            .zeros_like()
            .unwrap();
        m.params.insert(
            name,
            candle_core::Tensor::cat(&[&keep, &zeros], axis).unwrap(),
        );
    };
    for l in 0..2 {
        let p = format!("encoder.layer.{l}");
        for q in ["query", "key", "value"] {
            zero(&mut m, &format!("{p}.attention.self.{q}.weight"), 0, 4);
            zero(&mut m, &format!("{p}.attention.self.{q}.bias"), 0, 4);
        }
        zero(&mut m, &format!("{p}.attention.output.dense.weight"), 1, 4);
        zero(&mut m, &format!("{p}.intermediate.dense.weight"), 0, 8);
        zero(&mut m, &format!("{p}.intermediate.dense.bias"), 0, 8);
        zero(&mut m, &format!("{p}.output.dense.weight"), 1, 8);
    }
    let r = recipe("[[passes]]\ntype = \"narrow\"\nheads = 1\nintermediate = 8\n");
    let (out, log) = apply(m.clone(), &r).unwrap();
    assert_eq!(
        log[0].details["cuts"].as_array().unwrap().len(),
        4,
        "{}",
        log[0].label
    );
    let q = out
        .params
        .get("encoder.layer.1.attention.self.query.weight")
        .unwrap();
    assert_eq!(q.dims(), [4, 8]);
    let up = out
        .params
        .get("encoder.layer.0.intermediate.dense.weight")
        .unwrap();
    assert_eq!(up.dims(), [8, 8]);
    let ids = candle_core::Tensor::new(&[[2u32, 5, 7, 9], [3, 4, 0, 0]], &candle_core::Device::Cpu)
        .unwrap();
    let mask = candle_core::Tensor::new(
        &[[1f32, 1., 1., 1.], [1., 1., 0., 0.]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let run = |m: &Model| {
        squeeze::interp::forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval())
            .unwrap()
            .output
    };
    let d = common::max_abs(&run(&m), &run(&out));
    assert!(d < NARROW_TOL, "embeddings moved by {d}");
    // options are checked before any pass runs
    let e = Recipe::parse("[[passes]]\ntype = \"narrow\"\n", Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("heads") && e.contains("intermediate"), "{e}");
}

/// Weights of a model distilled from itself (α = 1) move at most this much: its soft
/// targets are its own outputs, so only the float differences between the training and the
/// inference forward produce a gradient.
const SELF_KD_DRIFT: f32 = 1e-4;

#[test]
fn soft_target_fine_tuning_distils_from_the_input_model() {
    let ft = |alpha: f64| {
        recipe(&format!(
            "[finetune]\nepochs = 1\nbatch_size = 32\n\
             optimizer = {{ type = \"sgd\", lr = 0.1, momentum = 0.0, weight_decay = 0.0, nesterov = false }}\n\
             soft_targets = {{ temperature = 2.0, alpha = {alpha} }}\n\
             [[passes]]\ntype = \"finetune\"\n"
        ))
    };
    let m = common::masked_mlp(|_| true);
    let before: Vec<f32> = common::values_of(m.params.get("fc1.weight").unwrap());
    let drift = |out: &Model| {
        let w: Vec<f32> = common::values_of(out.params.get("fc1.weight").unwrap());
        w.iter()
            .zip(&before)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    let (own, _) = apply(m.clone(), &ft(1.0)).unwrap();
    assert!(
        drift(&own) <= SELF_KD_DRIFT,
        "self-distillation moved weights by {}",
        drift(&own)
    );
    let (labels, _) = apply(m, &ft(0.0)).unwrap();
    assert!(
        drift(&labels) > 10.0 * SELF_KD_DRIFT,
        "label training did not move the weights"
    );
    let err = Recipe::parse(
        "[finetune]\nsoft_targets = { temperature = 2.0, alpha = 1.5 }\n[[passes]]\ntype = \"finetune\"\n",
        Path::new("kd.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("kd.toml") && err.contains("soft_targets") && err.contains("alpha"),
        "{err}"
    );
}

/// `[finetune]` is the trainer's options plus the recipe's own: every key of both parses,
/// an unknown one is refused by name (the table flattens the trainer's options, so it
/// checks its keys itself).
#[test]
fn the_finetune_table_takes_the_trainer_options_and_refuses_unknown_keys() {
    let pass = "\n[[passes]]\ntype = \"finetune\"\n";
    let ok = format!(
        "[finetune]\nepochs = 2\nbatch_size = 64\nseed = 3\naugment_pad = 2\nlimit_train = 100\n\
         optimizer = {{ type = \"adamw\", lr = 0.001, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01 }}\n\
         schedule = {{ type = \"constant\", warmup_epochs = 0.5 }}\nsoft_targets = {{ temperature = 4.0, alpha = 0.9 }}\n{pass}"
    );
    let r = Recipe::parse(&ok, Path::new("ok.toml")).unwrap();
    let f = r.finetune.unwrap();
    assert_eq!(
        (f.train.epochs, f.train.batch_size, f.train.seed),
        (2, 64, 3)
    );
    assert_eq!((f.train.augment_pad, f.train.limit_train), (2, Some(100)));
    let typo = format!("[finetune]\nepochs = 2\nbatchsize = 64\n{pass}");
    let e = Recipe::parse(&typo, Path::new("typo.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("typo.toml") && e.contains("`batchsize`"), "{e}");
    let bad = format!("[finetune]\nsoft_targets = {{ temperature = 0.0, alpha = 0.5 }}\n{pass}");
    let e = Recipe::parse(&bad, Path::new("bad.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("soft_targets") && e.contains("temperature"),
        "{e}"
    );
    // the defaults are the trainer's
    let plain = Recipe::parse(&format!("[finetune]\n{pass}"), Path::new("d.toml")).unwrap();
    assert_eq!(
        plain.finetune.unwrap().train,
        squeeze::train::TrainConfig::default()
    );
}
