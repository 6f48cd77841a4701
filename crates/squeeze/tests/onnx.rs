//! ONNX export, checked by running the written file in tract (a pure-Rust ONNX runtime)
//! against squeeze's own outputs: every zoo architecture and every committed zoo model,
//! a tiny random BERT, and the quantized forms (static int8 convolutions, dynamic int8
//! and int4 Linears, binary convolutions); plus the refusals (a layer still under
//! simulated quantization, an unsupported opset).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use squeeze::formats::onnx::{export, Exported};
use squeeze::interp::{forward_tokens, ForwardOpts};
use squeeze::onnx::OPSET;
use squeeze::text::bert;
use squeeze::text::tokenize::pad_batch;
use squeeze::{checkpoint, predict, run_recipe, Model, Recipe};
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, Tensor as TractTensor};

/// f32 image logits: tract and squeeze may sum in different orders (the target).
const LOGIT_TOL: f32 = 1e-4;
/// f32 sentence embeddings (unit vectors).
const EMBED_TOL: f32 = 1e-5;
/// Quantized layers: an input landing exactly halfway between two codes rounds to even in
/// ONNX and away from zero in squeeze (one code apart), and tract may compute the
/// dequantized product in f32 rather than in integers; logits stay within this share of
/// their largest magnitude.
const QUANT_REL_TOL: f32 = 2e-3;

/// Runs an exported file in tract on `inputs`; the first output's values.
fn tract_run(e: &Exported, inputs: Vec<TractTensor>) -> Vec<f32> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &e.bytes[..])
        .expect("tract reads the file");
    for (i, t) in inputs.iter().enumerate() {
        let fact = tract_onnx::prelude::InferenceFact::dt_shape(t.datum_type(), t.shape());
        model = model.with_input_fact(i, fact).unwrap();
    }
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let out = plan
        .run(inputs.into_iter().map(|t| t.into()).collect())
        .unwrap();
    out[0]
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

fn image_input(x: &Tensor) -> TractTensor {
    let v: Vec<f32> = common::values_of(x);
    TractTensor::from_shape(x.dims(), &v).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Exports an image model and compares tract's logits on a batch with ours: the largest
/// difference and the largest logit magnitude.
fn image_round_trip(m: &Model, what: &str) -> (f32, f32) {
    let e = export(m, OPSET).unwrap_or_else(|err| panic!("{what}: {err}"));
    let x = common::batch(3, 11);
    let ours: Vec<f32> = common::values_of(&predict(&m.graph, &m.params, &x).unwrap());
    let theirs = tract_run(&e, vec![image_input(&x)]);
    let scale = ours.iter().fold(0f32, |a, v| a.max(v.abs()));
    (max_diff(&ours, &theirs), scale)
}

#[test]
fn every_zoo_architecture_exports_and_tract_reproduces_its_logits() {
    for arch in squeeze::zoo::ARCHS {
        let (d, _) = image_round_trip(&common::small(arch), arch);
        assert!(d <= LOGIT_TOL, "{arch}: tract's logits differ by {d}");
    }
}

#[test]
fn a_pruned_layer_is_written_dense_with_its_zeros() {
    let mut m = common::masked_mlp(|i| i % 3 == 0);
    let w = m.params.get("fc1.weight").unwrap();
    let mask = m
        .params
        .get("fc1.weight.mask")
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    m.params.insert("fc1.weight", (w * mask).unwrap());
    let (d, _) = image_round_trip(&m, "masked mlp");
    assert!(d <= LOGIT_TOL, "masked mlp: {d}");
}

#[test]
fn a_csr_layer_is_written_dense() {
    let mut m = common::masked_mlp(|i| i % 4 == 0);
    squeeze::prune::materialize::materialize(&mut m, 0.5).unwrap();
    assert!(m.graph.nodes.iter().any(|n| n.op.kind() == "sparse_linear"));
    let e = export(&m, OPSET).unwrap();
    assert!(e.notes.iter().any(|n| n.contains("CSR")), "{:?}", e.notes);
    let (d, _) = image_round_trip(&m, "CSR mlp");
    assert!(d <= LOGIT_TOL, "CSR mlp: {d}");
}

fn zoo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../zoo")
}

#[test]
fn every_committed_zoo_model_exports_and_tract_reproduces_it() {
    let mut seen = 0;
    for entry in std::fs::read_dir(zoo_dir()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("model.json").is_file() {
            continue;
        }
        let m = checkpoint::load(&dir).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let quantized = m.graph.nodes.iter().any(|n| {
            n.op.def()
                .tensors()
                .iter()
                .any(|s| s.dtype != squeeze::tensor::Dtype::F32)
        });
        let (d, scale) = image_round_trip(&m, &name);
        match quantized {
            false => assert!(
                d <= LOGIT_TOL * scale.max(1.0),
                "{name}: {d} (logits up to {scale})"
            ),
            true => assert!(
                d <= QUANT_REL_TOL * scale,
                "{name}: {d} (logits up to {scale})"
            ),
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} committed models found");
}

fn apply(m: Model, text: &str) -> Model {
    let r = Recipe::parse(text, Path::new("q.toml")).unwrap();
    let work = common::tmpdir("onnx-quant");
    let mut ctx =
        r.context(Path::new("/no-such-dir"), &work)
            .with_images(squeeze::data::FashionMnist {
                train: common::synthetic(96, 1),
                valid: common::synthetic(32, 2),
                test: common::synthetic(32, 3),
            });
    let (out, _) = run_recipe(m, &r, &mut ctx).unwrap();
    let _ = std::fs::remove_dir_all(work);
    out
}

#[test]
fn static_int8_convolutions_export_as_qdq_pairs_that_tract_runs() {
    let q = apply(
        common::small("vgg"),
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"fold_batch_norm\"\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\n",
    );
    assert!(q.graph.nodes.iter().any(|n| n.op.kind() == "qconv2d"));
    let (d, scale) = image_round_trip(&q, "vgg static int8");
    assert!(d <= QUANT_REL_TOL * scale, "{d} (logits up to {scale})");
}

/// A BERT of hidden width `hidden` (heads of 16 where int4 needs rows of 32).
fn text_model(hidden: usize, head_dim: usize) -> Model {
    let mut s = common::bert_shape(hidden, &[2, 2]);
    for l in &mut s.layers {
        l.head_dim = head_dim;
        l.intermediate = 2 * hidden;
    }
    bert::random(&s, 3).unwrap()
}

/// Our embeddings and tract's for two padded sentences (token ids below 30).
fn text_round_trip(m: &Model) -> (Vec<f32>, Vec<f32>) {
    let (a, b): (&[u32], &[u32]) = (&[2, 5, 9, 3, 4], &[2, 7, 3]);
    let (ids, mask) = pad_batch(&[a, b]).unwrap();
    text_round_trip_on(m, &ids, &mask)
}

/// Our embeddings and tract's for token ids `ids` and `mask` `[N, L]`.
fn text_round_trip_on(m: &Model, ids: &Tensor, mask: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let e = export(m, OPSET).unwrap();
    let ours = forward_tokens(&m.graph, &m.params, ids, mask, &ForwardOpts::default())
        .unwrap()
        .output;
    let dims = ids.dims().to_vec();
    let i64s = |t: &Tensor| -> TractTensor {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        TractTensor::from_shape(&dims, &v).unwrap()
    };
    let zeros = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
    let inputs = e
        .inputs
        .iter()
        .map(|name| match name.as_str() {
            "input_ids" => i64s(ids),
            "attention_mask" => i64s(mask),
            "token_type_ids" => i64s(&zeros),
            other => panic!("unexpected input {other}"),
        })
        .collect();
    let theirs = tract_run(&e, inputs);
    (common::values_of(&ours), theirs)
}

#[test]
fn the_bert_family_fixtures_export_and_tract_reproduces_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/family");
    for name in ["bert", "roberta", "xlm-roberta", "distilbert"] {
        let m = squeeze::formats::load_any(&root.join(name)).unwrap();
        let tok =
            squeeze::text::TextTokenizer::from_assets(&m.assets, squeeze::text::max_positions(&m))
                .unwrap();
        let seqs = tok
            .encode(&["A man is playing a guitar.", "Kids play."])
            .unwrap();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let (ids, mask) = pad_batch(&refs).unwrap();
        let (ours, theirs) = text_round_trip_on(&m, &ids, &mask);
        let d = max_diff(&ours, &theirs);
        assert!(
            d <= EMBED_TOL * ours.iter().fold(1f32, |a, v| a.max(v.abs())),
            "{name}: {d}"
        );
    }
}

#[test]
fn a_tiny_bert_exports_with_dynamic_axes_and_tract_reproduces_its_embeddings() {
    let m = text_model(8, 4);
    let e = export(&m, OPSET).unwrap();
    assert_eq!(e.inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    let (ours, theirs) = text_round_trip(&m);
    let d = max_diff(&ours, &theirs);
    assert!(d <= EMBED_TOL, "embeddings differ by {d}");
}

/// A BERT whose Linear weights are scaled up (N(0, 0.3²)) so that each layer, not the
/// residual path, dominates its output and quantization errors show.
fn loud_text_model() -> Model {
    let mut m = text_model(32, 16);
    for n in m.params.names() {
        if n.contains(".dense.weight") || n.contains(".self.") && n.ends_with(".weight") {
            let w = (m.params.get(&n).unwrap() * 15.0).unwrap();
            m.params.insert(n, w);
        }
    }
    m
}

#[test]
fn quantized_encoders_export_as_integer_onnx_ops_close_to_ours() {
    let base = loud_text_model();
    let (f32_ours, _) = text_round_trip(&base);
    for (what, recipe, share) in [
        // ONNX Runtime's dynamic form quantizes inputs per tensor to uint8 where ours
        // quantizes each 32 inputs of a row to ±64: a different rounding, of the same size
        ("int8 dynamic", "bits = 8\nactivations = \"dynamic\"", 1.0),
        // tract runs MatMulNBits on f32 inputs where ours quantizes them per 32 to ±127
        (
            "int4 g32 x int8",
            "bits = 4\ngroup = 32\nactivations = \"dynamic\"",
            0.1,
        ),
        // the same codes on f32 inputs; tract keeps the block scales in f16 (its Q4_0)
        (
            "int4 weight-only",
            "bits = 4\ngroup = 32\nactivations = \"none\"",
            0.01,
        ),
    ] {
        let q = apply(
            base.clone(),
            &format!("[[passes]]\ntype = \"quantize\"\n{recipe}\n"),
        );
        let (ours, theirs) = text_round_trip(&q);
        // the file's distance from our quantized model, against quantization's own effect
        let (d, effect) = (max_diff(&ours, &theirs), max_diff(&ours, &f32_ours));
        eprintln!("{what}: file vs ours {d:.2e}, quantization's effect {effect:.2e}");
        assert!(
            effect > 1e-3,
            "{what}: quantization changed nothing ({effect})"
        );
        assert!(
            d <= share * effect,
            "{what}: the file differs from ours by {d}, quantization by {effect}"
        );
    }
}

#[test]
fn a_layer_under_simulated_quantization_is_refused_by_name() {
    use squeeze::kinds::fake_quant::{FakeQuant, WeightQuant};
    let mut m = common::small("mlp");
    let q = FakeQuant {
        weights: WeightQuant::Ste,
        bits: 4,
        act_bits: None,
        act_max: 0,
        act_signed: false,
        step_lr: 1.0,
    };
    squeeze::quant::qat::attach(&mut m, "fc1", q, None).unwrap();
    let err = export(&m, OPSET).unwrap_err().to_string();
    assert!(
        err.contains("fc1") && err.contains("simulated quantization"),
        "{err}"
    );
}

#[test]
fn an_unsupported_opset_is_refused() {
    let err = export(&common::small("mlp"), 18).unwrap_err().to_string();
    assert!(err.contains("opset 18") && err.contains("17"), "{err}");
}
