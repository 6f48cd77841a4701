//! The encoder's training kernels (one autograd node each, hand-written backward) against
//! the compositions of candle ops they replace: outputs and the gradients of every input
//! agree within f32 rounding, on shapes with padding in the attention mask.

use super::common;

use candle_core::{Device, Tensor, Var};
use squeeze::ops::{attention, embedding, gelu, layer_norm};

/// Largest |fused − reference| allowed, relative to max(1, max |reference|) of the tensor.
const GRAD_TOL: f32 = 2e-5;

fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
    let n = shape.iter().product();
    let v: Vec<f32> = common::uniform(n, seed).iter().map(|x| x * scale).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let (g, w): (Vec<f32>, Vec<f32>) = (common::values_of(got), common::values_of(want));
    let top = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= GRAD_TOL * top,
            "{what}[{i}]: fused {a} vs reference {b}"
        );
    }
}

/// Output and input gradients of `f` under the loss Σ y·r (r fixed, uneven).
fn run(f: impl Fn(&[Tensor]) -> Tensor, ins: &[Var]) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = ins.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let r = Tensor::from_vec(common::uniform(y.elem_count(), 99), y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = ins
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (y, gs)
}

fn compare(
    name: &str,
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    ins: &[Var],
) {
    let (y1, g1) = run(fused, ins);
    let (y2, g2) = run(reference, ins);
    close(&y1, &y2, &format!("{name} output"));
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        close(a, b, &format!("{name} d(input {i})"));
    }
}

#[test]
fn fused_layer_norm_matches_the_composition() {
    let ins = [
        var(&[2, 5, 40], 1, 3.0),
        var(&[40], 2, 1.0),
        var(&[40], 3, 1.0),
    ];
    // more rows than one parallel task of the backward
    let wide = [
        var(&[70, 16], 4, 2.0),
        var(&[16], 5, 1.0),
        var(&[16], 6, 1.0),
    ];
    for (name, ins) in [("layer_norm", &ins), ("layer_norm (70 rows)", &wide)] {
        compare(
            name,
            |t| layer_norm::layer_norm_train(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            |t| layer_norm::layer_norm_reference(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            ins,
        );
    }
}

#[test]
fn fused_gelu_matches_the_composition() {
    // values out to ±5, past the erf approximation's clamp
    let ins = [var(&[3, 7, 33], 7, 5.0)];
    compare(
        "gelu",
        |t| gelu::gelu_train(&t[0]).unwrap(),
        |t| gelu::gelu_reference(&t[0]).unwrap(),
        &ins,
    );
}

#[test]
fn fused_attention_matches_the_composition_with_padding() {
    let (n, l, heads, hd) = (3, 6, 2, 4);
    let ins = [
        var(&[n, l, heads * hd], 11, 1.5),
        var(&[n, l, heads * hd], 12, 1.5),
        var(&[n, l, heads * hd], 13, 1.0),
    ];
    // sample 0 full, sample 1 padded after 4 tokens, sample 2 after 1
    let lens = [6, 4, 1];
    let m: Vec<f32> = lens
        .iter()
        .flat_map(|&k| (0..l).map(move |j| if j < k { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(m, (n, l), &Device::Cpu).unwrap();
    compare(
        "attention",
        |t| attention::attention_train(&t[0], &t[1], &t[2], &mask, heads, hd).unwrap(),
        |t| attention::attention_reference(&t[0], &t[1], &t[2], &mask, heads, hd).unwrap(),
        &ins,
    );
}

#[test]
fn fused_linear_matches_the_composition() {
    use squeeze::ops::linear;
    // one shape under the parallel threshold, one over it
    for (m, k, n) in [(5, 7, 3), (96, 64, 48)] {
        let ins = [
            var(&[m, k], 21, 1.0),
            var(&[n, k], 22, 0.5),
            var(&[n], 23, 1.0),
        ];
        compare(
            &format!("linear {m}x{k}x{n}"),
            |t| linear::linear(&t[0], &t[1], Some(&t[2])).unwrap(),
            |t| linear::reference(&t[0], &t[1], Some(&t[2])).unwrap(),
            &ins,
        );
        compare(
            &format!("linear {m}x{k}x{n}, no bias"),
            |t| linear::linear(&t[0], &t[1], None).unwrap(),
            |t| linear::reference(&t[0], &t[1], None).unwrap(),
            &ins[..2],
        );
    }
}

#[test]
fn fused_lookup_matches_index_select_and_names_a_bad_id() {
    let table = [var(&[9, 4], 31, 1.0)];
    // repeated ids: their gradients add up in one row
    let ids = Tensor::from_vec(vec![3u32, 0, 3, 8, 1, 3], (2, 3), &Device::Cpu).unwrap();
    compare(
        "lookup",
        |t| embedding::lookup_train(&t[0], &ids).unwrap(),
        |t| embedding::lookup_reference(&t[0], &ids).unwrap(),
        &table,
    );
    let bad = Tensor::from_vec(vec![2u32, 9], (1, 2), &Device::Cpu).unwrap();
    let err = embedding::lookup_train(table[0].as_tensor(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 9") && err.contains("9 rows"),
        "{err}"
    );
}
