//! The fused in-place optimizer updates equal the composed candle reference over several
//! steps, for SGD (plain, momentum, Nesterov, weight decay) and AdamW, on a variable larger
//! than one parallel chunk and on a small one.

use std::collections::HashSet;

use candle_core::{Device, Tensor, Var};
use squeeze::train::{Optimizer, OptimizerConfig};

/// Largest allowed |fused − reference| relative to max(1, |reference|): the two differ only
/// in f32 rounding order.
const FUSED_TOL: f32 = 2e-5;

fn vars(seed: u64) -> Vec<(String, Var)> {
    let dev = &Device::Cpu;
    let mk = |n: usize, s: u64| {
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2654435761 + s) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, n, dev).unwrap()).unwrap()
    };
    vec![
        ("big.weight".into(), mk(70_001, seed)),
        ("small.bias".into(), mk(12, seed + 1)),
    ]
}

/// loss = Σ w²·c (c fixed): a gradient 2·w·c that changes with every step.
fn grads(vs: &[(String, Var)]) -> candle_core::backprop::GradStore {
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (_, v) in vs {
        let n = v.dim(0).unwrap();
        let c = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .affine(1.0 / n as f64, 0.5)
            .unwrap();
        loss = (loss
            + (v.as_tensor().sqr().unwrap() * c)
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
    }
    loss.backward().unwrap()
}

fn values(vs: &[(String, Var)]) -> Vec<Vec<f32>> {
    vs.iter()
        .map(|(_, v)| v.as_tensor().to_vec1().unwrap())
        .collect()
}

fn close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    for (x, y) in a.iter().zip(b) {
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            let err = (p - q).abs() / q.abs().max(1.0);
            assert!(
                err <= FUSED_TOL,
                "{what}: element {i}: fused {p} vs reference {q}"
            );
        }
    }
}

fn check(cfg: OptimizerConfig) {
    let decay: HashSet<String> = ["big.weight".to_string()].into();
    let (va, vb) = (vars(7), vars(7));
    let mut fused = Optimizer::new(cfg.clone(), va.clone(), decay.clone());
    let mut reference = Optimizer::new(cfg.clone(), vb.clone(), decay);
    for step in 0..4 {
        let lr = 0.05 / (1 + step) as f64;
        fused.step(&grads(&va), lr).unwrap();
        reference.step_reference(&grads(&vb), lr).unwrap();
        close(&values(&va), &values(&vb), &format!("{cfg:?} step {step}"));
    }
    let (sa, sb) = (fused.state(), reference.state());
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    for (k, t) in &sa {
        let flat = |t: &Tensor| vec![t.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
        close(&flat(t), &flat(&sb[k]), &format!("{cfg:?} state {k}"));
    }
}

#[test]
fn fused_sgd_equals_the_reference() {
    for (momentum, nesterov) in [(0.0, false), (0.9, false), (0.9, true)] {
        check(OptimizerConfig::Sgd {
            lr: 0.05,
            momentum,
            weight_decay: 5e-4,
            nesterov,
        });
    }
}

#[test]
fn fused_adamw_equals_the_reference() {
    check(OptimizerConfig::Adamw {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
}
