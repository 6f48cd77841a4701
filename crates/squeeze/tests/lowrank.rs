//! Low-rank factorization and the budget search: a full-rank factorization reproduces the
//! layer (Linear, unfolded and spatial convolutions, with stride and padding); a rank-r
//! factor pair's Frobenius error is the discarded singular-value energy; the whitened SVD
//! has a smaller output error than plain SVD on correlated inputs; the search's choice
//! meets its budget by the analytic count; a scan cut short resumes from its cache; bad
//! recipes and budgets are refused naming the field.

use std::path::Path;

use candle_core::{Device, Tensor};
use squeeze::eval::static_cost;
use squeeze::graph::Op;
use squeeze::kinds::conv2d::Conv2d;
use squeeze::kinds::linear::Linear;
use squeeze::lowrank::{self, decompose, shape_of, ColumnScale, Form};
use squeeze::passes::{run_recipe, Recipe};
use squeeze::search::scan::{self, HeldOut, ScanSpec};
use squeeze::search::select::{amount, choose, closest, predicted};
use squeeze::search::{Budget, Method};
use squeeze::{predict, Graph, Model, ParamStore};

mod common;

/// Max abs output change of a full-rank factorization (f32 rounding of the factors).
const FULL_RANK_TOL: f32 = 1e-4;
/// Relative gap between ‖W − W_r‖²_F and the discarded energy (f32 storage of the factors).
const ENERGY_REL_TOL: f64 = 1e-4;

fn tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// One convolution `c` over a [c_in, 9, 8] input, with random weights and bias.
fn conv_model(c: Conv2d) -> Model {
    let mut g = Graph::new("conv", &[c.in_channels, 9, 8]);
    let kw = c.width_axis().kernel;
    let mut p = ParamStore::new();
    let n = c.out_channels * c.in_channels * c.kernel * kw;
    p.insert(
        "conv.weight",
        tensor(
            common::uniform(n, 3),
            &[c.out_channels, c.in_channels, c.kernel, kw],
        ),
    );
    p.insert(
        "conv.bias",
        tensor(common::uniform(c.out_channels, 4), &[c.out_channels]),
    );
    g.push("conv", Op::Conv2d(c), &["input"]);
    Model::new(g, p)
}

fn conv(stride: usize, padding: usize, kernel: usize) -> Conv2d {
    Conv2d {
        in_channels: 3,
        out_channels: 5,
        kernel,
        stride,
        padding,
        groups: 1,
        bias: true,
        width: None,
        quant: None,
    }
}

/// Factorizes node `node` of `m` at full rank in `form` and returns the new model.
fn full_rank(m: &Model, node: &str, form: Form) -> Model {
    let s = shape_of(m, node, form).unwrap();
    let d = decompose(&s.matrix(m).unwrap(), s.rows, s.cols, ColumnScale::Identity).unwrap();
    let mut out = m.clone();
    lowrank::apply(&mut out, &s, &d, s.max_rank()).unwrap();
    out.check().unwrap();
    out
}

fn input(m: &Model, n: usize, seed: u64) -> Tensor {
    let mut shape = vec![n];
    shape.extend(&m.graph.input_shape);
    let len = shape.iter().product();
    tensor(common::uniform(len, seed), &shape)
}

#[test]
fn full_rank_factorization_reproduces_linear_and_both_conv_forms() {
    let mlp = common::small("mlp");
    let x = input(&mlp, 3, 1);
    let y = predict(&mlp.graph, &mlp.params, &x).unwrap();
    let f = full_rank(&mlp, "fc1", Form::Unfold);
    assert!(matches!(
        f.graph.node("fc1_lr").unwrap().op,
        Op::Linear(Linear { bias: false, .. })
    ));
    let d = common::max_abs(&y, &predict(&f.graph, &f.params, &x).unwrap());
    assert!(d < FULL_RANK_TOL, "mlp fc1: {d}");
    for (s, p, k) in [(1, 1, 3), (2, 1, 3), (1, 0, 3), (2, 2, 5)] {
        let m = conv_model(conv(s, p, k));
        let x = input(&m, 2, 7);
        let y = predict(&m.graph, &m.params, &x).unwrap();
        for form in [Form::Unfold, Form::Spatial] {
            let f = full_rank(&m, "conv", form);
            let d = common::max_abs(&y, &predict(&f.graph, &f.params, &x).unwrap());
            assert!(d < FULL_RANK_TOL, "conv s{s} p{p} k{k} {form:?}: {d}");
        }
        // the spatial form is a k×1 then a 1×k convolution
        let f = full_rank(&m, "conv", Form::Spatial);
        let Op::Conv2d(a) = &f.graph.node("conv_lr").unwrap().op else {
            panic!()
        };
        let Op::Conv2d(b) = &f.graph.node("conv").unwrap().op else {
            panic!()
        };
        assert_eq!(
            (
                a.kernel,
                a.width_axis().kernel,
                b.kernel,
                b.width_axis().kernel
            ),
            (k, 1, 1, k)
        );
    }
}

/// ‖W − second·first‖²_F of the applied factors, against the discarded energy.
#[test]
fn rank_r_error_is_the_discarded_energy() {
    let m = conv_model(conv(1, 1, 3));
    for form in [Form::Unfold, Form::Spatial] {
        let s = shape_of(&m, "conv", form).unwrap();
        let w = s.matrix(&m).unwrap();
        let d = decompose(&w, s.rows, s.cols, ColumnScale::Identity).unwrap();
        for r in [1, 2, 4] {
            let (first, second) = d.factors(r);
            let mut err = 0.0;
            for i in 0..s.rows {
                for j in 0..s.cols {
                    let approx: f64 = (0..r)
                        .map(|k| second[i * r + k] * first[k * s.cols + j])
                        .sum();
                    err += (w[i * s.cols + j] - approx).powi(2);
                }
            }
            let want = d.svd.discarded(r);
            assert!(
                (err - want).abs() <= ENERGY_REL_TOL * want.max(1e-12),
                "{form:?} r{r}: {err} vs {want}"
            );
            assert!(want > 0.0);
        }
    }
}

/// Inputs with strongly correlated, unevenly scaled features.
fn correlated(rows: usize, cols: usize) -> Vec<f64> {
    let base = common::uniform(rows * 3, 11);
    let noise = common::uniform(rows * cols, 12);
    let mut x = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let mix = base[r * 3 + c % 3] as f64 * (1.0 + c as f64);
            x[r * cols + c] = mix + 0.05 * noise[r * cols + c] as f64;
        }
    }
    x
}

#[test]
fn whitened_svd_has_the_smaller_output_error_on_correlated_inputs() {
    let (out, cols, rows, r) = (6, 8, 200, 2);
    let w: Vec<f64> = common::uniform(out * cols, 5)
        .into_iter()
        .map(f64::from)
        .collect();
    let x = correlated(rows, cols);
    let mut h = vec![0.0; cols * cols];
    for row in x.chunks(cols) {
        for i in 0..cols {
            for j in 0..cols {
                h[i * cols + j] += row[i] * row[j] / rows as f64;
            }
        }
    }
    let output_error = |scale: ColumnScale| {
        let (first, second) = decompose(&w, out, cols, scale).unwrap().factors(r);
        let mut e = 0.0;
        for xr in x.chunks(cols) {
            for o in 0..out {
                let exact: f64 = (0..cols).map(|c| w[o * cols + c] * xr[c]).sum();
                let z: Vec<f64> = (0..r)
                    .map(|k| (0..cols).map(|c| first[k * cols + c] * xr[c]).sum())
                    .collect();
                let approx: f64 = (0..r).map(|k| second[o * r + k] * z[k]).sum();
                e += (exact - approx).powi(2);
            }
        }
        e
    };
    let plain = output_error(ColumnScale::Identity);
    let white = output_error(ColumnScale::whitening(&h, cols, 1e-6).unwrap());
    assert!(white < 0.5 * plain, "whitened {white} vs plain {plain}");
}

fn recipe(text: &str) -> squeeze::Result<Recipe> {
    Recipe::parse(text, Path::new("lr.toml"))
}

#[test]
fn bad_ranks_energies_and_layers_are_refused_naming_the_field() {
    for (body, want) in [
        ("rank = 0", "`rank`"),
        ("energy = 1.5", "`energy`"),
        ("energy = 0.0", "`energy`"),
        ("keep = 1.0", "`keep`"),
        ("ranks = { fc1 = 0 }", "`ranks.fc1`"),
        ("rank = 4, energy = 0.9", "exactly one"),
        (
            "keep = 0.5, form = \"spatial\", scaling = \"whiten\"",
            "`scaling`",
        ),
        ("keep = 0.5, form = \"diagonal\"", "diagonal"),
    ] {
        let e = recipe(&format!(
            "[[passes]]\ntype = \"low_rank\"\n{}\n",
            body.replace(", ", "\n")
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("lr.toml") && e.contains(want), "{body}: {e}");
    }
    let m = common::small("mlp");
    for (body, want) in [
        ("rank = 1000\nlayers = [\"fc1\"]", "above min(rows, cols)"),
        ("keep = 0.5\nlayers = [\"nope\"]", "`nope` is not a node"),
        (
            "keep = 0.5\nlayers = [\"relu1\"]",
            "not a linear or convolution layer",
        ),
    ] {
        let r = recipe(&format!("[[passes]]\ntype = \"low_rank\"\n{body}\n")).unwrap();
        let mut ctx = r.context(Path::new("/nonexistent"), &common::tmpdir("lowrank-bad"));
        let e = run_recipe(m.clone(), &r, &mut ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("low_rank") && e.contains(want), "{body}: {e}");
    }
}

#[test]
fn budgets_parse_and_bad_ones_are_refused() {
    assert_eq!(Budget::parse("flops=0.33").unwrap(), Budget::Flops(0.33));
    assert_eq!(Budget::parse("latency=0.6").unwrap(), Budget::Latency(0.6));
    for (b, want) in [
        ("params=0", "(0, 1)"),
        ("flops=1", "(0, 1)"),
        ("size=0.5", "unknown budget kind"),
        ("flops", "KIND=FRACTION"),
        ("params=x", "not a number"),
    ] {
        let e = Budget::parse(b).unwrap_err();
        assert!(e.contains(want), "{b}: {e}");
    }
}

/// A low_rank method over the small vgg's convolutions, and a held-out slice of synthetic
/// images.
fn search_setup() -> (Model, Method, HeldOut) {
    let m = common::small("vgg");
    let r = recipe("[[passes]]\ntype = \"low_rank\"\nkeep = 0.5\n").unwrap();
    let method = Method::from_pass(&r.passes[0]).unwrap();
    (
        m,
        method,
        HeldOut::Images {
            valid: common::synthetic(64, 9),
            adapt: Vec::new(),
        },
    )
}

/// A pass context with no data (the scans below score synthetic images), working in `dir`.
fn context(dir: &Path) -> squeeze::passes::PassCtx {
    recipe("[[passes]]\ntype = \"finetune\"\n")
        .unwrap()
        .context(Path::new("/nonexistent"), dir)
}

#[test]
fn the_searched_choice_meets_the_budget_by_the_analytic_count() {
    let (m, method, held) = search_setup();
    let dir = common::tmpdir("lowrank-search");
    let cache = dir.join("scan.json");
    let mut ctx = context(&dir);
    let layers = method.layers(&m).unwrap();
    assert!(layers.len() >= 2, "{layers:?}");
    let spec = ScanSpec {
        method: &method,
        layers,
        ratios: vec![0.2, 0.5, 0.8],
        held_out: &held,
        latency: false,
        cache: &cache,
    };
    let s = scan::run(&m, &spec, &mut ctx, |_, _| {}).unwrap();
    let base = static_cost(&m).unwrap();
    for kind in ["params", "flops"] {
        // budgets at a quarter and at half of the most the scan can save
        let b0 = Budget::parse(&format!("{kind}=0.5")).unwrap();
        let most = predicted(&s, &b0, &closest(&s, &b0)).unwrap().1 / amount(&b0, &s.baseline);
        assert!(most > 0.0, "{kind}: the scan saves nothing");
        for part in [0.25, 0.5] {
            let frac = 1.0 - part * most;
            let b = Budget::parse(&format!("{kind}={frac}")).unwrap();
            let choice = choose(&s, &b, amount(&b, &s.baseline) * (1.0 - frac)).expect("a choice");
            let applied =
                static_cost(&scan::apply(&m, &method, &choice, &mut ctx).unwrap()).unwrap();
            let kept = match kind {
                "params" => applied.nonzero_params as f64 / base.nonzero_params as f64,
                _ => applied.flops as f64 / base.flops as f64,
            };
            assert!(kept <= frac + 1e-9, "{kind} budget {frac}: kept {kept}");
        }
    }
    // a budget no choice reaches
    assert!(choose(
        &s,
        &Budget::Params(0.01),
        amount(&Budget::Params(0.01), &s.baseline) * 0.99
    )
    .is_none());
}

#[test]
fn a_scan_cut_short_resumes_from_its_cache() {
    let (m, method, held) = search_setup();
    let dir = common::tmpdir("lowrank-resume");
    let cache = dir.join("scan.json");
    let mut ctx = context(&dir);
    let layers = method.layers(&m).unwrap();
    let spec = ScanSpec {
        method: &method,
        layers,
        ratios: vec![0.3, 0.6],
        held_out: &held,
        latency: false,
        cache: &cache,
    };
    let full = scan::run(&m, &spec, &mut ctx, |_, _| {}).unwrap();
    // what a kill after two points leaves: the cache with two points, one of them marked
    let mut cut = full.clone();
    cut.points.truncate(2);
    cut.points[0].cost.as_mut().unwrap().score = -1.0;
    std::fs::write(&cache, serde_json::to_vec(&cut).unwrap()).unwrap();
    let mut first_tick = None;
    let resumed = scan::run(&m, &spec, &mut ctx, |done, _| {
        first_tick.get_or_insert(done);
    })
    .unwrap();
    assert_eq!(
        first_tick,
        Some(2),
        "the rerun starts from the two cached points"
    );
    assert_eq!(resumed.points.len(), full.points.len());
    assert_eq!(
        resumed.points[0].cost.unwrap().score,
        -1.0,
        "a cached point is reused, not recomputed"
    );
    assert_eq!(resumed.points[2..], full.points[2..]);
    // another model is another key: the cache is not reused for it
    let other = common::small("resnet");
    let k1 = scan::scan_key(&m, &method, &spec.ratios, &held.describe(), false).unwrap();
    let k2 = scan::scan_key(&other, &method, &spec.ratios, &held.describe(), false).unwrap();
    assert_ne!(k1, k2);
}

/// The same scan and choice serve channel pruning and magnitude pruning: their ratios are
/// the fraction of a layer's channels or weights kept.
#[test]
fn channel_and_magnitude_pruning_are_searched_through_the_same_interface() {
    let m = common::small("vgg");
    let held = HeldOut::Images {
        valid: common::synthetic(64, 9),
        adapt: Vec::new(),
    };
    for template in [
        "type = \"channel_prune\"\ncriterion = \"l1\"\ntarget = 0.5",
        "type = \"magnitude\"\nsparsity = 0.5",
    ] {
        let r = recipe(&format!("[[passes]]\n{template}\n")).unwrap();
        let method = Method::from_pass(&r.passes[0]).unwrap();
        let dir = common::tmpdir(&format!("search-{}", method.name()));
        let mut ctx = r.context(Path::new("/nonexistent"), &dir);
        let layers = method.layers(&m).unwrap();
        assert!(!layers.is_empty(), "{}", method.name());
        let spec = ScanSpec {
            method: &method,
            layers,
            ratios: vec![0.25, 0.5],
            held_out: &held,
            latency: false,
            cache: &dir.join("scan.json"),
        };
        let s = scan::run(&m, &spec, &mut ctx, |_, _| {}).unwrap();
        assert!(
            s.points.iter().all(|p| p.cost.is_some()),
            "{}: {:?}",
            method.name(),
            s.points
        );
        let b0 = Budget::Params(0.5);
        let most = predicted(&s, &b0, &closest(&s, &b0)).unwrap().1 / amount(&b0, &s.baseline);
        let frac = 1.0 - 0.5 * most;
        let b = Budget::Params(frac);
        let mut required = amount(&b, &s.baseline) * (1.0 - frac);
        // channel cuts are not additive (a cut also narrows the next layer): re-solve as the
        // search does until the applied model meets the budget
        let kept = loop {
            let choice = choose(&s, &b, required).expect("a choice");
            let applied =
                static_cost(&scan::apply(&m, &method, &choice, &mut ctx).unwrap()).unwrap();
            let kept = applied.nonzero_params as f64 / s.baseline.params as f64;
            if kept <= frac + 1e-9 || required > amount(&b, &s.baseline) {
                break kept;
            }
            required *= 1.05;
        };
        assert!(
            kept <= frac + 1e-9,
            "{}: budget {frac}, kept {kept}",
            method.name()
        );
    }
}

/// Refinement keeps the budget and spends it: afterwards no compressed layer can rise by a
/// thousandth without breaking the budget.
#[test]
fn refinement_keeps_the_budget_and_leaves_no_layer_room_to_rise() {
    let (m, method, held) = search_setup();
    let dir = common::tmpdir("lowrank-refine");
    let mut ctx = context(&dir);
    let layers = method.layers(&m).unwrap();
    let base = scan::cost(&m, &held, false).unwrap();
    let b = Budget::Flops(0.9);
    let start: Vec<(String, f64)> = layers.iter().map(|l| (l.clone(), 0.6)).collect();
    let applied = scan::apply(&m, &method, &start, &mut ctx).unwrap();
    let start_cost = scan::cost(&applied, &held, false).unwrap();
    let limit = 0.9 * base.flops as f64;
    assert!(
        (start_cost.flops as f64) < limit - 0.01 * base.flops as f64,
        "the start must meet the budget with room to spare"
    );
    let r = squeeze::search::refine::Refine {
        model: &m,
        method: &method,
        held_out: &held,
        budget: &b,
        baseline: &base,
        step: 0.2,
        max_evals: 6,
    };
    let out = r
        .run(&layers, &start, start_cost, &mut ctx, |_, _| {})
        .unwrap();
    assert!(out.evals >= 1);
    let flops = |choice: &[(String, f64)], ctx: &mut squeeze::passes::PassCtx| {
        scan::apply(&m, &method, choice, ctx)
            .map(|a| static_cost(&a).unwrap().flops as f64)
            .unwrap_or(f64::INFINITY)
    };
    let check = flops(&out.choice, &mut ctx);
    assert!(check <= limit, "refined choice breaks the budget");
    assert_eq!(check, out.cost.flops as f64);
    assert!(
        check > start_cost.flops as f64,
        "the budget left unused was not spent"
    );
    for (i, (layer, keep)) in out.choice.iter().enumerate() {
        let mut raised = out.choice.clone();
        raised[i].1 = keep + 0.001;
        assert!(
            flops(&raised, &mut ctx) > limit,
            "{layer} could still rise from {keep} within the budget"
        );
    }
}

/// With adaptation batches, a held-out image score is the accuracy of the model after its
/// BatchNorm statistics are re-estimated on them (AdaBN), and the scan's key tells the two
/// scorings apart.
#[test]
fn an_adapted_held_out_score_re_estimates_batch_norm_first() {
    use squeeze::train::DataSource;
    let mut m = common::small("vgg");
    for (k, t) in m.params.clone().iter() {
        if k.ends_with("running_mean") {
            m.params
                .insert(k.clone(), (t.ones_like().unwrap() * 3.0).unwrap());
        }
    }
    let valid = common::synthetic(64, 9);
    let train = common::synthetic(96, 4);
    let adapt: Vec<_> = [0..48, 48..96]
        .into_iter()
        .map(|r| DataSource::batch(&train, &r.collect::<Vec<_>>(), None).unwrap())
        .collect();
    let mut fixed = m.clone();
    let (bns, values) = squeeze::passes::recalibrate_batch_norm(&mut fixed, &adapt, || {}).unwrap();
    assert!(!bns.is_empty() && values > 0);
    let want = squeeze::eval::accuracy(&fixed.graph, &fixed.params, &valid, 256).unwrap();
    let stale = HeldOut::Images {
        valid: valid.clone(),
        adapt: Vec::new(),
    };
    let adapted = HeldOut::Images { valid, adapt };
    assert_eq!(adapted.score(&m).unwrap(), want);
    // the stale statistics give another score: the adaptation is what made the difference
    assert_ne!(stale.score(&m).unwrap(), want);
    assert_ne!(stale.describe(), adapted.describe());
    assert!(adapted.describe().contains("96 training images"));
}
