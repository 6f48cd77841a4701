//! Presets: `squeeze compress MODEL --preset NAME` for the common cases, in the manner of
//! llama.cpp's `llama-quantize in out Q4_K_M`. A preset names one recipe file of
//! `recipes/` per kind of model (image classifier, text encoder), compiled into the binary,
//! and the results key that measured it; `squeeze recipes` lists them with that measured
//! result, read from `results/` when run in the repository (never written here).

use std::path::Path;

use anyhow::Result;

/// One recipe of a preset: the file it is (shown and recorded), its text, and where its
/// measured result is kept.
pub struct Variant {
    pub file: &'static str,
    pub text: &'static str,
    /// `results/<file>.json` and the key of the experiment that measured this recipe.
    pub result: (&'static str, &'static str),
    /// The model it was measured on.
    pub on: &'static str,
}

pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    pub image: Option<Variant>,
    pub text: Option<Variant>,
}

macro_rules! variant {
    ($file:literal, $results:literal, $key:literal, $on:literal) => {
        Some(Variant {
            file: concat!("recipes/", $file),
            text: include_str!(concat!("../../../recipes/", $file)),
            result: ($results, $key),
            on: $on,
        })
    };
}

/// Every preset, in the order `squeeze recipes` lists them.
pub fn all() -> Vec<Preset> {
    vec![
        Preset {
            name: "int8",
            summary: "int8 weights, one scale per output channel: image models with \
                      calibrated (static) int8 inputs, BatchNorm folded; text encoders with \
                      inputs quantized at run time (dynamic). No training.",
            image: variant!("vgg-int8-static.toml", "quant", "vgg-int8-static", "vgg"),
            text: variant!(
                "minilm-int8-dynamic.toml",
                "minilm",
                "int8-dynamic",
                "all-MiniLM-L6-v2"
            ),
        },
        Preset {
            name: "int8-static",
            summary: "static int8 for image models: weights and calibrated inputs int8 \
                      (1,024 training images), exact int8 kernels. No training.",
            image: variant!("vgg-int8-static.toml", "quant", "vgg-int8-static", "vgg"),
            text: None,
        },
        Preset {
            name: "int4",
            summary: "4-bit weights: image models with 4-bit inputs too (post-training, \
                      first and last layers kept); text encoders with GPTQ, groups of 128, \
                      and int8 activations (an integer product). No training (see qat-int4 for the trained form).",
            image: variant!("vgg-ptq-int4.toml", "quant", "vgg-ptq-int4", "vgg"),
            text: variant!(
                "minilm-int4-gptq-g128.toml",
                "minilm",
                "int4-gptq-g128",
                "all-MiniLM-L6-v2"
            ),
        },
        Preset {
            name: "qat-int4",
            summary: "4-bit weights and inputs learned by quantization-aware training \
                      (LSQ): fine-tunes for several epochs on Fashion-MNIST.",
            image: variant!("vgg-qat-int4.toml", "quant", "vgg-qat-int4", "vgg"),
            text: None,
        },
        Preset {
            name: "sparse-50",
            summary: "half of every encoder Linear's weights pruned by SparseGPT (with \
                      weight updates from 512 calibration sentences), stored sparse. No \
                      fine-tuning.",
            image: None,
            text: variant!(
                "minilm-sparsegpt-50.toml",
                "prune",
                "minilm-sparsegpt-50",
                "all-MiniLM-L6-v2"
            ),
        },
        Preset {
            name: "2of4",
            summary: "2:4 semi-structured sparsity (two of every four weights kept) by \
                      SparseGPT on the encoder's Linear layers. No fine-tuning.",
            image: None,
            text: variant!(
                "minilm-sparsegpt-2of4.toml",
                "prune",
                "minilm-sparsegpt-2of4",
                "all-MiniLM-L6-v2"
            ),
        },
        Preset {
            name: "deep-compression",
            summary: "Deep Compression: gradual magnitude pruning to 94%, 5-bit weight \
                      sharing, Huffman-coded storage; fine-tunes 40 epochs (minutes for an \
                      MLP).",
            image: variant!(
                "mlp-deep-compression.toml",
                "prune",
                "mlp-deep-compression",
                "mlp"
            ),
            text: None,
        },
        Preset {
            name: "slim",
            summary: "structured pruning to a smaller dense model: Network Slimming for CNNs \
                      with BatchNorm (sparsity training, 60% of channels cut, 24 epochs of \
                      fine-tuning); 30% of heads and FFN units for text encoders, with one \
                      epoch of recovery distillation.",
            image: variant!("vgg-slimming.toml", "structured", "vgg-slimming", "vgg"),
            text: variant!(
                "minilm-heads-ffn-30-recovered.toml",
                "structured",
                "minilm-heads-ffn-30-recovered",
                "all-MiniLM-L6-v2"
            ),
        },
        Preset {
            name: "lowrank",
            summary: "low-rank factorization by truncated SVD: image models' hidden layers \
                      at half their parameters, then 4 epochs of fine-tuning; text encoders' \
                      Linear layers at 70% by whitened SVD (calibration sentences), no \
                      fine-tuning.",
            image: variant!("mlp-svd-50.toml", "lowrank", "mlp-svd-50", "mlp"),
            text: variant!(
                "minilm-whiten-30.toml",
                "lowrank",
                "minilm-whiten-30",
                "all-MiniLM-L6-v2"
            ),
        },
    ]
}

/// The preset's recipe for a model of this kind, or an error naming the presets that fit.
pub fn find(name: &str, text_model: bool) -> Result<Variant> {
    let all = all();
    let Some(p) = all.iter().position(|p| p.name == name) else {
        let names: Vec<&str> = all.iter().map(|p| p.name).collect();
        anyhow::bail!(
            "--preset: unknown preset `{name}`; the presets are {} (`squeeze recipes` \
             describes them)",
            names.join(", ")
        );
    };
    let kind = if text_model {
        "text encoders"
    } else {
        "image models"
    };
    let fits: Vec<&str> = all
        .iter()
        .filter(|p| {
            if text_model {
                p.text.is_some()
            } else {
                p.image.is_some()
            }
        })
        .map(|p| p.name)
        .collect();
    let mut all = all;
    let p = all.swap_remove(p);
    let v = if text_model { p.text } else { p.image };
    v.ok_or_else(|| {
        anyhow::anyhow!(
            "--preset {name} has no recipe for {kind}; those for {kind} are {}",
            fits.join(", ")
        )
    })
}

/// The measured result of `v`, one line, from `results/` under `root` (None when the file
/// or key is absent, e.g. outside the repository).
pub fn measured(root: &Path, v: &Variant) -> Option<String> {
    let path = root.join(format!("results/{}.json", v.result.0));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let e = doc.get(v.result.1)?;
    let f = |k: &str| e.get(k).and_then(serde_json::Value::as_f64);
    // text results of minilm.json are measured beside its `f32` entry
    let base = |k: &str| f(&format!("baseline_{k}")).or_else(|| doc.get("f32")?.get(k)?.as_f64());
    let (quality, baseline, unit) = match (f("accuracy"), f("spearman")) {
        // accuracy is a fraction in most results files, a percentage in quant.json
        (Some(a), _) => {
            let pct = |x: f64| if x <= 1.0 { 100.0 * x } else { x };
            (pct(a), pct(f("baseline")?), "% accuracy")
        }
        (None, Some(s)) => (
            s,
            f("baseline").or_else(|| base("spearman"))?,
            " STS-B Spearman",
        ),
        _ => return None,
    };
    let mut parts = vec![format!(
        "{}: {baseline:.2} → {quality:.2}{unit} ({:+.2} pt)",
        v.on,
        quality - baseline
    )];
    if let (Some(s), Some(b)) = (f("size_bytes"), base("size_bytes")) {
        parts.push(format!("file {:.2}× the original's", s / b));
    }
    let latency =
        f("latency_ratio_vs_f32").or_else(|| Some(f("latency_ms_b1")? / base("latency_ms_b1")?));
    if let Some(r) = latency {
        parts.push(format!("batch-1 time {r:.2}×"));
    }
    let cpu = e
        .get("cpu")
        .and_then(|c| c.as_str())
        .map_or(String::new(), |c| format!(", {c}"));
    Some(format!(
        "{} [results/{}.json `{}`{cpu}]",
        parts.join(", "),
        v.result.0,
        v.result.1
    ))
}

/// `squeeze recipes`: every preset, what it does and what it measured.
pub fn list() -> Result<()> {
    println!(
        "Presets for `squeeze compress MODEL --preset NAME --out DIR` (each is a recipe \
         file of recipes/, built into this binary; the measured results are read from \
         results/ when run in the repository):\n"
    );
    for p in all() {
        println!("{}\n  {}", p.name, p.summary);
        for (kind, v) in [("image", &p.image), ("text", &p.text)] {
            let Some(v) = v else { continue };
            let m = measured(Path::new("."), v).unwrap_or_else(|| {
                format!(
                    "measured result in results/{}.json `{}`",
                    v.result.0, v.result.1
                )
            });
            println!("  {kind:<5} {}: {m}", v.file);
        }
        println!();
    }
    Ok(())
}
