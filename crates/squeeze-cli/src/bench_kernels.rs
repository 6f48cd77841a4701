//! `squeeze bench kernels`: one Linear layer of each all-MiniLM-L6-v2 shape (384×384, the
//! fused q/k/v 384×1152, the FFN's 384×1536 and 1536×384) at 1, 32 and 128 rows, run as
//! the interpreter runs it — f32 (packed panels up to 64 rows, candle's GEMM above, as the
//! encoder does), dynamic int8 (`qlinear`, per-channel weights, activations quantized per
//! row, exact integer kernel), weight-only int4 with 128-weight groups and int4 with
//! 64-weight groups × dynamic int8 activations (the integer int4 product) — on every
//! kernel path the CPU has. Also `vgg`'s 64→64 3×3 convolution at 14×14 over 1, 32 and 128
//! images: f32 (`conv2d`) against static int8 (`qconv2d`, post-ReLU inputs). Layers and
//! paths are interleaved round by round; medians with their spread. Writes
//! `--out` (by default `runs/bench/kernels.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use serde_json::{json, Value};
use squeeze::graph::{Graph, Op};
use squeeze::interp::PackCache;
use squeeze::interp::{forward, on_pool, ForwardOpts};
use squeeze::isa::{self, Isa};
use squeeze::kinds::conv2d::Conv2d;
use squeeze::kinds::linear::Linear;
use squeeze::kinds::qconv2d::QConv2d;
use squeeze::kinds::qlinear::{ActQuant, QLinear};
use squeeze::params::ParamStore;
use squeeze::quant::layout::{Layout, Scales};
use squeeze::quant::QWeight;

use crate::measure::median;
use crate::write_json;

#[derive(Args)]
pub struct KernelArgs {
    /// Interleaved rounds.
    #[arg(value_parser = crate::count("rounds"), long, default_value_t = 7)]
    pub rounds: usize,
    /// Calls timed per layer, path and round (their median is the round's value).
    #[arg(value_parser = crate::count("reps"), long, default_value_t = 30)]
    pub reps: usize,
    #[arg(long, default_value = "runs/bench/kernels.json")]
    pub out: PathBuf,
}

/// MiniLM's Linear shapes: (name, out, in).
const SHAPES: [(&str, usize, usize); 4] = [
    ("attn_out_384x384", 384, 384),
    ("qkv_384x1152", 1152, 384),
    ("ffn_up_384x1536", 1536, 384),
    ("ffn_down_1536x384", 384, 1536),
];
const ROWS: [usize; 3] = [1, 32, 128];
const FORMATS: [&str; 4] = ["f32", "int8", "int4-g128", "int4-g64-a8"];
/// `vgg`'s features.10: (name, channels in = out, kernel, input side).
const CONV: (&str, usize, usize, usize) = ("vgg_conv_64x64_3x3_14x14", 64, 3, 14);
/// Static int8 input scale of the benchmark convolution (its inputs are ReLU'd N(0, 1)).
const CONV_INPUT_SCALE: f32 = 4.0 / 127.0;

/// `len` deterministic weights in [−0.05, 0.05].
fn weights(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 % 2003) as f32 / 1001.0 - 1.0) * 0.05)
        .collect()
}

/// The benchmark convolution as a one-node model of `format` (f32 or int8).
fn conv_layer(format: &str) -> Result<(Graph, ParamStore, ForwardOpts)> {
    let (_, c, k, side) = CONV;
    let cols = c * k * k;
    let w = weights(c * cols);
    let mut g = Graph::new("bench", &[c, side, side]);
    let mut p = ParamStore::new();
    p.insert(
        "conv.bias",
        Tensor::zeros(c, candle_core::DType::F32, &Device::Cpu)?,
    );
    let op = match format {
        "f32" => {
            p.insert(
                "conv.weight",
                Tensor::from_vec(w, (c, c, k, k), &Device::Cpu)?,
            );
            Op::Conv2d(Conv2d {
                in_channels: c,
                out_channels: c,
                kernel: k,
                stride: 1,
                padding: 1,
                groups: 1,
                bias: true,
                width: None,
                quant: None,
            })
        }
        _ => {
            let (codes, scales, _) =
                QWeight::quantize(&w, c, cols, Layout::INT8_CHANNEL)?.tensors()?;
            p.insert("conv.weight_q", codes);
            p.insert("conv.weight_scale", scales);
            p.insert(
                "conv.input_scale",
                Tensor::from_vec(vec![CONV_INPUT_SCALE], 1, &Device::Cpu)?,
            );
            Op::QConv2d(QConv2d {
                in_channels: c,
                out_channels: c,
                kernel: k,
                stride: 1,
                padding: 1,
                bias: true,
                layout: Layout::INT8_CHANNEL,
                input_codes: None,
            })
        }
    };
    g.push("conv", op, &["input"]);
    Ok((g, p, ForwardOpts::eval()))
}

/// A one-node model of `format` with a [n, k] weight, and its eval options.
fn layer(format: &str, n: usize, k: usize) -> Result<(Graph, ParamStore, ForwardOpts)> {
    let w = weights(n * k);
    let mut g = Graph::new("bench", &[k]);
    let mut p = ParamStore::new();
    p.insert(
        "fc.bias",
        Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?,
    );
    let mut opts = ForwardOpts::eval();
    let op = match format {
        "f32" => {
            p.insert("fc.weight", Tensor::from_vec(w, (n, k), &Device::Cpu)?);
            opts.packed = Some(Arc::new(PackCache::default()));
            Op::Linear(Linear {
                in_features: k,
                out_features: n,
                bias: true,
                quant: None,
            })
        }
        _ => {
            let int4 = |g| Layout {
                bits: 4,
                scales: Scales::Group(g),
                zero_point: false,
            };
            let (layout, act) = match format {
                "int8" => (Layout::INT8_CHANNEL, ActQuant::Dynamic),
                // int4 × dynamic int8 activations: the integer product
                "int4-g64-a8" => (int4(64), ActQuant::Dynamic),
                _ => (int4(128), ActQuant::None),
            };
            let q = QWeight::quantize(&w, n, k, layout)?;
            let (codes, scales, _) = q.tensors()?;
            p.insert("fc.weight_q", codes);
            p.insert("fc.weight_scale", scales);
            Op::QLinear(QLinear {
                in_features: k,
                out_features: n,
                bias: true,
                layout,
                act,
                input_codes: None,
            })
        }
    };
    g.push("fc", op, &["input"]);
    Ok((g, p, opts))
}

pub fn run(a: KernelArgs) -> Result<()> {
    let paths = isa::supported();
    let mut cases = Vec::new();
    for (name, n, k) in SHAPES {
        for f in FORMATS {
            let (g, p, opts) = layer(f, n, k)?;
            for m in ROWS {
                let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
                cases.push((name, f, m, g.clone(), p.clone(), opts.clone(), x));
            }
        }
    }
    let (conv, c, _, side) = CONV;
    for f in &FORMATS[..2] {
        let (g, p, opts) = conv_layer(f)?;
        for m in ROWS {
            let x = Tensor::randn(0f32, 1.0, (m, c, side, side), &Device::Cpu)?.relu()?;
            cases.push((conv, f, m, g.clone(), p.clone(), opts.clone(), x));
        }
    }
    let mut times: BTreeMap<(usize, Isa), Vec<f64>> = BTreeMap::new();
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        for &path in &paths {
            isa::force(Some(path))?;
            for (ci, (_, _, _, g, p, opts, x)) in cases.iter().enumerate() {
                // on a pool worker, as the encoders run their forwards
                let run = || on_pool(|| forward(g, p, x, opts).map(|_| ()));
                run()?; // warm (packs f32 weights once)
                let mut per = Vec::with_capacity(a.reps);
                for _ in 0..a.reps {
                    let s = Instant::now();
                    run()?;
                    per.push(s.elapsed().as_secs_f64() * 1e3);
                }
                times.entry((ci, path)).or_default().push(median(&mut per));
            }
        }
    }
    isa::force(None)?;
    let mut rows = Vec::new();
    for (ci, (name, f, m, ..)) in cases.iter().enumerate() {
        let mut by_path = serde_json::Map::new();
        for &path in &paths {
            let mut v = times[&(ci, path)].clone();
            let (lo, hi) = (
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(0.0, f64::max),
            );
            by_path.insert(
                path.name().into(),
                json!({ "ms": median(&mut v), "min": lo, "max": hi }),
            );
        }
        rows.push(json!({ "layer": name, "format": f, "rows": m, "paths": by_path }));
    }
    let summary = ratios(&rows, paths[0]);
    let out = json!({
        "cpu": isa::cpu_kind(),
        "threads": crate::measure::threads(),
        "method": format!("one-node models through the interpreter, {} rounds interleaved over layers and paths; per round the median of {} calls; ms = median of the rounds [min, max]", a.rounds, a.reps),
        "speedup_vs_f32": summary,
        "layers": rows,
        "command": crate::invocation::invocation(),
    });
    write_json(&a.out, &out)?;
    println!("{}", serde_json::to_string_pretty(&out["speedup_vs_f32"])?);
    Ok(())
}

/// f32 time / quantized time per layer and row count, on the best path.
fn ratios(rows: &[Value], best: Isa) -> Value {
    let ms = |layer: &str, f: &str, m: u64| {
        rows.iter()
            .find(|r| r["layer"] == layer && r["format"] == f && r["rows"] == m)
            .and_then(|r| r["paths"][best.name()]["ms"].as_f64())
    };
    let mut out = serde_json::Map::new();
    for name in SHAPES.iter().map(|s| s.0).chain([CONV.0]) {
        for m in ROWS {
            let f32t = ms(name, "f32", m as u64);
            let mut e = serde_json::Map::new();
            for f in &FORMATS[1..] {
                if let (Some(a), Some(b)) = (f32t, ms(name, f, m as u64)) {
                    e.insert((*f).into(), json!(a / b));
                }
            }
            out.insert(format!("{name}_m{m}"), Value::Object(e));
        }
    }
    Value::Object(out)
}
