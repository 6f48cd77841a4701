//! Helpers shared by the integration tests: narrow zoo variants (same structure as the
//! defaults, fast in debug builds), deterministic input batches, tensor comparison and
//! per-test temporary directories.
#![allow(dead_code)] // each test file uses a subset

pub mod skip;
pub mod tokenizer;

#[allow(unused_imports)] // each test file uses a subset
pub use skip::skip;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use squeeze::zoo::{self, ZooOpts};
use squeeze::Model;

/// A narrow variant of a zoo architecture: two residual blocks per stage and two dense
/// layers per block, so residual unions and concat offsets are exercised.
pub fn small(arch: &str) -> Model {
    let opts = match arch {
        "vgg" => ZooOpts {
            widths: Some(vec![4, 4, 0, 8, 0]),
            depth: None,
        },
        "resnet" => ZooOpts {
            widths: Some(vec![4, 8]),
            depth: Some(2),
        },
        "densenet" | "densenet-bc" => ZooOpts {
            widths: Some(vec![4]),
            depth: Some(2),
        },
        _ => ZooOpts::default(),
    };
    zoo::build(arch, &opts, 7).unwrap()
}

/// A small BERT: vocabulary 30, 16 positions, hidden width `hidden`, `heads` per layer
/// (heads of 4, FFN 16), dropout 0.1, L2-normalized embeddings.
pub fn bert_shape(hidden: usize, heads: &[usize]) -> squeeze::text::bert::BertShape {
    let layer = |h| squeeze::text::bert::LayerShape {
        heads: h,
        head_dim: 4,
        intermediate: 16,
    };
    squeeze::text::bert::BertShape {
        family: Default::default(),
        position_offset: 0,
        pooling: Default::default(),
        vocab: 30,
        max_positions: 16,
        segments: 2,
        hidden,
        eps: 1e-12,
        dropout: 0.1,
        layers: heads.iter().map(|&h| layer(h)).collect(),
        normalize: true,
    }
}

/// Successive states of a 64-bit linear congruential generator (Knuth's MMIX constants)
/// started at `seed`: the deterministic source of every test's pseudo-random values.
pub fn lcg(seed: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(seed), |s| {
        Some(
            s.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    })
    .skip(1)
}

/// `n` deterministic values in [-1, 1) from the generator started at `seed`.
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    lcg(seed)
        .take(n)
        .map(|s| ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

/// `n` Fashion-MNIST-shaped images with deterministic values in [-1, 1).
pub fn batch(n: usize, seed: u64) -> Tensor {
    Tensor::from_vec(uniform(n * 784, seed), (n, 1, 28, 28), &Device::Cpu).unwrap()
}

/// All values of a tensor, flattened.
pub fn values_of<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `n` labelled 28×28 images with class-dependent brightness (a learnable task).
pub fn synthetic(n: usize, seed: u64) -> squeeze::data::ImageSet {
    let mut bytes = lcg(seed).map(|s| (s >> 56) as u8);
    let mut next = || bytes.next().expect("endless generator");
    let labels: Vec<u8> = (0..n).map(|_| next() % 10).collect();
    let pixels: Vec<u8> = (0..n * 784)
        .map(|i| labels[i / 784] * 20 + next() % 40)
        .collect();
    squeeze::data::ImageSet {
        pixels,
        labels,
        rows: 28,
        cols: 28,
    }
}

/// The small mlp with a u8 mask over `fc1.weight` keeping the flat positions `keep` says.
pub fn masked_mlp(keep: impl Fn(usize) -> bool) -> Model {
    let mut m = small("mlp");
    let dims = m.params.get("fc1.weight").unwrap().dims().to_vec();
    let n: usize = dims.iter().product();
    let mask: Vec<u8> = (0..n).map(|i| u8::from(keep(i))).collect();
    m.params.insert(
        "fc1.weight.mask",
        Tensor::from_vec(mask, dims.as_slice(), &Device::Cpu).unwrap(),
    );
    m.graph.masks.push("fc1.weight".into());
    m
}

/// Largest absolute element-wise difference of two f32 tensors.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A fresh (removed if present) temporary path unique to this test process.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("squeeze-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Weights with a few large outliers, as trained layers have.
pub fn weights(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 97 == 5 { 6.0 * v } else { 0.1 * v })
        .collect()
}

pub fn layouts() -> Vec<squeeze::quant::layout::Layout> {
    use squeeze::quant::layout::{Layout, Scales};
    let l = |bits, scales, zero_point| Layout {
        bits,
        scales,
        zero_point,
    };
    vec![
        Layout::INT8_CHANNEL,
        l(8, Scales::Tensor, false),
        l(8, Scales::Group(16), false),
        l(4, Scales::Channel, false),
        l(4, Scales::Group(32), false),
        l(4, Scales::Group(64), true),
        l(4, Scales::Tensor, true),
    ]
}

/// The instruction-set paths this CPU runs, saying which it cannot (the AVX-512 ones and
/// avxvnni are checked on emulated CPUs by `scripts/emulated-avx512.sh`; none is skipped
/// silently).
pub fn isa_paths(test: &str) -> Vec<squeeze::isa::Isa> {
    use std::io::Write;
    let (run, lack): (Vec<_>, Vec<_>) = squeeze::isa::Isa::ALL
        .into_iter()
        .partition(|i| i.is_supported());
    if !lack.is_empty() {
        let _ = writeln!(
            std::io::stderr(),
            "NOT RUN on this CPU ({test}): paths {lack:?} (scripts/emulated-avx512.sh runs the \
             AVX-512 ones, with EMU_CPU=arrow_lake avxvnni; amx needs a CPU with AMX-INT8)"
        );
    }
    run
}

/// A copy of directory `from` at `to`, subdirectories included.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// The kind of the node that absorbs node `name` in `g`'s run plan for `opts` (a fused
/// ReLU, max-pool or GELU), or `None` when it runs as its own step.
pub fn absorbed_by(
    g: &squeeze::graph::Graph,
    opts: &squeeze::interp::ForwardOpts,
    name: &str,
) -> Option<&'static str> {
    use squeeze::interp::{plan_for, Step};
    let plan = plan_for(g, opts).unwrap();
    let i = g.nodes.iter().position(|n| n.name == name).unwrap();
    match plan.steps[i] {
        Step::Absorbed { by } => Some(g.nodes[by].op.kind()),
        _ => None,
    }
}
