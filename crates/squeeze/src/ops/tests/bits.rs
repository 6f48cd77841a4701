//! The fake-quantization maths and the bit-plane kernels: LSQ's step gradient against its
//! formula and a finite difference, the straight-through estimator's clipping range, and
//! the binary/ternary products against their reference on every instruction-set path.

use candle_core::{Device, Tensor, Var};

use super::common;
use crate::math::bits::{row_bytes, BitWeight};
use crate::ops::fake_quant::lsq;
use crate::ops::qgemm::bits::PackedBits;
use crate::ops::qgemm::panel::PackedI8;
use crate::ops::qgemm::NR;

/// Finite-difference step and the tolerance of its comparison with autograd.
const FD_STEP: f64 = 1e-4;
const FD_TOL: f64 = 1e-3;

fn sum_lsq(x: &[f32], s: f64, (qn, qp): (f64, f64)) -> f64 {
    let xt = Tensor::from_vec(x.to_vec(), x.len(), &Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let st = Tensor::new(&[s], &Device::Cpu).unwrap();
    lsq(&xt, &st, (qn, qp), 1.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn lsq_step_gradient_matches_a_finite_difference() {
    // values whose x/s stay clear of rounding boundaries within ±FD_STEP, some clipped
    let x = [0.31f32, -0.52, 0.07, 1.9, -2.6, 0.44, -0.18, 0.93];
    let (s, q) = (0.2f64, (7.0, 7.0));
    let xt = Tensor::from_vec(x.to_vec(), x.len(), &Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let sv = Var::new(&[s], &Device::Cpu).unwrap();
    let y = lsq(&xt, sv.as_tensor(), q, 1.0).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    let auto = common::values_of::<f64>(g.get(sv.as_tensor()).unwrap())[0];
    let fd = (sum_lsq(&x, s + FD_STEP, q) - sum_lsq(&x, s - FD_STEP, q)) / (2.0 * FD_STEP);
    // LSQ's gradient, written out: round(v/s) − v/s inside, ±Q outside
    let by_hand = per_value(&x, s, q.1, |r| r.round() - r);
    assert!(
        (auto - by_hand).abs() < 1e-9,
        "autograd {auto} vs LSQ's formula {by_hand}"
    );
    // the finite difference sees the piecewise-constant rounding as flat: it measures
    // the clipped values' ±Q and the slope round(v/s) of the others
    let flat = per_value(&x, s, q.1, f64::round);
    assert!(
        (fd - flat).abs() < FD_TOL,
        "finite difference {fd} vs {flat}"
    );
    // LSQ is exactly the finite difference of the quantizer with each rounding residual
    // frozen at s (the straight-through surrogate): v + s'·(round(v/s) − v/s) inside
    let surrogate = |s2: f64| -> f64 {
        x.iter()
            .map(|&v| {
                let (v, r) = (v as f64, v as f64 / s);
                if r.abs() >= q.1 {
                    s2 * q.1.copysign(r)
                } else {
                    v + s2 * (r.round() - r)
                }
            })
            .sum()
    };
    let fd_ste = (surrogate(s + FD_STEP) - surrogate(s - FD_STEP)) / (2.0 * FD_STEP);
    assert!(
        (fd_ste - auto).abs() < FD_TOL,
        "surrogate finite difference {fd_ste} vs {auto}"
    );
}

/// Σ over `x` of `inside(v/s)` for values within ±`q` steps, `±q` for clipped ones.
fn per_value(x: &[f32], s: f64, q: f64, inside: impl Fn(f64) -> f64) -> f64 {
    x.iter()
        .map(|&v| {
            let r = v as f64 / s;
            if r.abs() >= q {
                q.copysign(r)
            } else {
                inside(r)
            }
        })
        .sum()
}

#[test]
fn ste_passes_gradients_only_inside_the_clipping_range() {
    let x = [0.1f32, -0.3, 2.0, -2.0, 0.69, -0.71];
    let xv = Var::new(&x[..], &Device::Cpu).unwrap();
    let s = Tensor::new(&[0.1f32], &Device::Cpu).unwrap();
    let y = lsq(xv.as_tensor(), &s, (7.0, 7.0), 1.0)
        .unwrap()
        .sum_all()
        .unwrap();
    let g: Vec<f32> = common::values_of(y.backward().unwrap().get(xv.as_tensor()).unwrap());
    let want: Vec<f32> = x
        .iter()
        .map(|v| if (v / 0.1).abs() < 7.0 { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(g, want, "inside ±7 steps the gradient is 1, outside 0");
}

/// Integer-valued activation rows of `k` codes (stride `lda`, zero padding) and their
/// magnitudes; `signed` draws negatives too.
fn codes(m: usize, k: usize, lda: usize, signed: bool, seed: u64) -> (Vec<i8>, Vec<u8>) {
    let mut a = vec![0i8; m * lda];
    for (i, v) in common::lcg(seed).take(m * k).enumerate() {
        let c = (v >> 33) as i32 % 128;
        a[(i / k) * lda + i % k] = if signed && (v >> 20) & 1 == 1 {
            -c as i8
        } else {
            c as i8
        };
    }
    let abs = a.iter().map(|c| c.unsigned_abs()).collect();
    (a, abs)
}

#[test]
fn bit_plane_kernels_equal_the_reference_on_every_path() {
    for ternary in [false, true] {
        for (n, k, m) in [(21, 37, 9), (16, 64, 1), (40, 300, 13)] {
            let w = common::weights(n * k, 7 + k as u64);
            let b = BitWeight::from_rows(&w, n, k, ternary);
            let p = PackedBits::pack("w", n, k, ternary, &b.data).unwrap();
            let lda = PackedI8::row_len(k);
            let ldo = p.panels() * NR;
            for signed in [false, true] {
                let (a, abs) = codes(m, k, lda, signed, 3 + m as u64);
                let mut want = vec![0i32; m * ldo];
                p.product_reference(&a, (m, lda), 0..p.panels(), &mut want, ldo);
                // the reference is the plain dot product with the levels
                for i in 0..m {
                    for j in 0..n {
                        let dot: i32 = (0..k)
                            .map(|c| a[i * lda + c] as i32 * b.level(j, c) as i32)
                            .sum();
                        assert_eq!(want[i * ldo + j], dot);
                    }
                }
                for isa in common::isa_paths("bit-plane kernels") {
                    let mut got = vec![0i32; m * ldo];
                    p.product(
                        isa,
                        (&a, &abs),
                        (m, lda),
                        signed,
                        0..p.panels(),
                        &mut got,
                        ldo,
                    )
                    .unwrap();
                    for i in 0..m {
                        assert_eq!(
                            got[i * ldo..i * ldo + n],
                            want[i * ldo..i * ldo + n],
                            "{isa:?} ternary={ternary} signed={signed} [{n},{k}] row {i}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn packed_rows_round_trip_and_bad_lengths_are_named() {
    let w = common::weights(5 * 23, 2);
    for ternary in [false, true] {
        let b = BitWeight::from_rows(&w, 5, 23, ternary);
        assert_eq!(b.data.len(), 5 * row_bytes(23, ternary));
        let (alpha, t) = squeeze::math::bits::levels(&w[..23], ternary);
        assert!((b.scales[0] - alpha).abs() < 1e-7);
        assert!((0..23).all(|c| b.level(0, c) == t[c]));
        let err = PackedBits::pack("x.weight_bits", 5, 23, ternary, &b.data[1..]).unwrap_err();
        assert!(err.to_string().contains("x.weight_bits"), "{err}");
    }
    let bad = vec![250u8; 5 * row_bytes(23, true)];
    let err = PackedBits::pack("t.weight_bits", 5, 23, true, &bad).unwrap_err();
    assert!(
        err.to_string().contains("t.weight_bits") && err.to_string().contains("243"),
        "{err}"
    );
}
