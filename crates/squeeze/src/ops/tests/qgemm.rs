//! The int8 and int4 kernels against their plain references on every path this CPU has:
//! the packed int8 panels (exact i32 sums), the channels-last reorder, the offset-code
//! panels of the quantized Linear, block-scaled layers, the int4 kernels and the implicit
//! convolution (the epilogues after them: `epilogue.rs`).

use super::common::{layouts, uniform, weights};
use squeeze::isa;
use squeeze::ops::qgemm;
use squeeze::ops::qgemm::quantize::quantize_rows;
use squeeze::quant::QWeight;

/// Slack over the half-scale bound for f32 rounding of `v / s` and `s·q`.
const ROUND_SLACK: f32 = 1e-6;
/// Relative tolerance of the int4 kernel paths (float sums in another order).
const Q4_TOL: f32 = 1e-4;

#[test]
fn packed_int8_panels_equal_the_reference_exactly() {
    use qgemm::panel::PackedI8;
    // tokens beyond whole tiles, channels beyond whole panels, inputs beyond whole groups
    for &(m, n, k) in &[
        (1, 5, 9),
        (7, 16, 288),
        (13, 33, 100),
        (6, 40, 1152),
        (17, 24, 64),
        // the VNNI kernel's wide tiles: 4 panels + 1, tokens beyond 6
        (15, 70, 96),
        (8, 48, 40),
        // AMX blocks: 32 tokens + a part of one, 2 panels + 1, inputs past whole
        // 64-byte chunks; one tile of tokens and a few over
        (45, 40, 200),
        (16, 32, 64),
        (19, 17, 9),
    ] {
        for relu in [false, true] {
            let mut x = uniform(m * k, 7 + k as u64);
            if relu {
                x.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let q = quantize_rows(&x, k, None, k, 127);
            let w: Vec<u8> = uniform(n * k, 11 + n as u64)
                .into_iter()
                .map(|v| (v * 127.0).round() as i8 as u8)
                .collect();
            let want = qgemm::gemm_i8_reference(&q.codes, &w, m, n, k); // [n, m]
            let p = PackedI8::pack("w", n, k, |j, c| w[j * k + c]).unwrap();
            // rows padded past the kernel's row length, as im2col rows are
            let lda = PackedI8::row_len(k) + 4;
            let (mut a, mut abs) = (vec![0i8; m * lda], vec![0u8; m * lda]);
            for i in 0..m {
                a[i * lda..i * lda + k].copy_from_slice(&q.codes[i * k..(i + 1) * k]);
                abs[i * lda..i * lda + k].copy_from_slice(&q.abs[i * k..(i + 1) * k]);
            }
            let ldo = p.padded_n() + 16;
            for path in super::common::isa_paths(module_path!()) {
                let product = |panels: std::ops::Range<usize>| {
                    let mut out = vec![-1i32; m * ldo];
                    p.product(path, (&a, &abs), (m, lda), !relu, panels, &mut out, ldo)
                        .unwrap();
                    out
                };
                let out = product(0..p.panels());
                // the panels from the second on, alone: the same columns
                if p.panels() > 1 {
                    let part = product(1..p.panels());
                    let w16 = p.padded_n() - 16;
                    for i in 0..m {
                        assert_eq!(
                            part[i * ldo..i * ldo + w16],
                            out[i * ldo + 16..i * ldo + 16 + w16]
                        );
                    }
                }
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(
                            out[i * ldo + j],
                            want[j * m + i],
                            "{} [{m}, {n}, {k}] relu={relu} at ({i}, {j})",
                            path.name()
                        );
                    }
                    // the padding channels of the last panel are zero
                    assert!(out[i * ldo + n..i * ldo + p.padded_n()]
                        .iter()
                        .all(|&v| v == 0));
                }
                // rescaled to channels-first f32 (8×8 blocks and the edges): the same
                // rounding on every path
                let scale: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-3).collect();
                let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 7.0).collect();
                let mut t = vec![0f32; n * m];
                qgemm::epilogue::rescale_transposed(
                    path,
                    &out,
                    (m, ldo),
                    &scale,
                    &bias,
                    relu,
                    &mut t,
                )
                .unwrap();
                for (j, row) in t.chunks_exact(m).enumerate() {
                    for (i, v) in row.iter().enumerate() {
                        let y = want[j * m + i] as f32 * scale[j] + bias[j];
                        let y = if relu { y.max(0.0) } else { y };
                        assert_eq!(*v, y, "{} rescaled ({j}, {i})", path.name());
                    }
                }
            }
        }
    }
    // −128 is outside the format (the sign transfer would overflow)
    let e = PackedI8::pack("conv.weight_q", 2, 3, |j, c| {
        if j == 1 && c == 2 {
            0x80
        } else {
            1
        }
    });
    assert!(e.unwrap_err().to_string().contains("conv.weight_q"));
    // an output too short for the padded panels, or a panel past the weight's last, is an
    // error, not a write past the end
    let p = PackedI8::pack("w", 5, 8, |_, _| 1).unwrap();
    let product = |panels: std::ops::Range<usize>, out: &mut [i32]| {
        let ldo = out.len();
        p.product(
            isa::Isa::Scalar,
            (&[0; 8], &[0; 8]),
            (1, 8),
            false,
            panels,
            out,
            ldo,
        )
    };
    assert!(product(0..1, &mut [0; 5]).is_err());
    assert!(product(0..2, &mut [0; 32]).is_err());
    assert!(product(0..1, &mut [0; 16]).is_ok());
}

#[test]
fn channels_last_reorder_is_the_same_permutation_on_every_path() {
    // whole 8×8 blocks, and channel / pixel edges
    for &(c, hw) in &[(8, 64), (32, 784), (3, 10), (13, 49), (64, 196)] {
        let src: Vec<i8> = (0..c * hw).map(|i| (i * 31 % 255) as u8 as i8).collect();
        for path in super::common::isa_paths(module_path!()) {
            let mut dst = vec![0i8; c * hw];
            qgemm::panel::to_channels_last(path, &src, (c, hw), &mut dst).unwrap();
            for ci in 0..c {
                for px in 0..hw {
                    assert_eq!(
                        dst[px * c + ci],
                        src[ci * hw + px],
                        "{} [{c}, {hw}]",
                        path.name()
                    );
                }
            }
        }
    }
    let e = qgemm::panel::to_channels_last(isa::Isa::Scalar, &[0; 6], (2, 4), &mut [0; 8]);
    assert!(e.is_err());
}

/// Int8 codes in [−127, 127] (and a few −128, which the paired kernel accepts).
fn codes(len: usize, seed: u64) -> Vec<i8> {
    uniform(len, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 53 == 7 {
                -128
            } else {
                (v * 127.0).round() as i8
            }
        })
        .collect()
}

/// Activation codes of the Linear kernel: in [−64, 64], both ends included.
fn act_codes(len: usize, seed: u64) -> Vec<i8> {
    uniform(len, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match i % 29 {
            3 => 64,
            11 => -64,
            _ => (v * 64.0).round() as i8,
        })
        .collect()
}

#[test]
fn offset_int8_panels_equal_the_integer_reference_exactly() {
    use qgemm::panel_blocked::{OffsetRows, PackedBlocked, OFFSET};
    // tokens beyond whole tiles, channels beyond whole panels, inputs beyond whole groups
    // of 4, blocks that do not divide the row, and one block per row; weights of −128
    // and activations of ±64 give the largest pair sums the kernel's i16 step holds
    for &(m, n, k, block) in &[
        (1, 5, 9, 9),
        (7, 16, 64, 32),
        (13, 33, 100, 32),
        (6, 40, 1152, 32),
        (17, 24, 31, 4),
        (3, 8, 384, 384),
        (11, 16, 64, 64),
    ] {
        let a = act_codes(m * k, 7 + k as u64);
        let w = codes(n * k, 11 + n as u64);
        let wu: Vec<u8> = w.iter().map(|&v| v as u8).collect();
        let want = qgemm::gemm_i8_reference(&a, &wu, m, n, k); // [n, m]
        let p = PackedBlocked::pack(n, k, block, |j, c| w[j * k + c]).unwrap();
        let kp = p.stride();
        // the row padding is not read as data (its weights are zero)
        let mut u = vec![200u8; m * kp];
        for i in 0..m {
            for c in 0..k {
                u[i * kp + c] = (a[i * k + c] as i16 + OFFSET as i16) as u8;
            }
        }
        // unit scales: every output is an exact integer sum (well below 2²⁴)
        let scales = vec![1f32; m * k.div_ceil(block)];
        let rows = OffsetRows {
            codes: &u,
            scales: &scales,
            block,
        };
        let (one, zero) = (vec![1f32; n], vec![0f32; n]);
        for path in super::common::isa_paths(module_path!()) {
            // every panel sub-range and a token sub-range, into a wider output
            for (panels, tokens) in [
                (0..p.panels(), 0..m),
                (p.panels() / 2..p.panels(), m / 2..m),
            ] {
                let ldo = 16 * panels.len() + 3;
                let mut out = vec![-7f32; tokens.len() * ldo];
                p.product(
                    path,
                    rows,
                    tokens.clone(),
                    panels.clone(),
                    (&one, &zero),
                    &mut out,
                    ldo,
                )
                .unwrap();
                for (r, i) in tokens.clone().enumerate() {
                    for c in 0..ldo {
                        let j = 16 * panels.start + c;
                        let expect = match c < 16 * panels.len() && j < n {
                            true => want[j * m + i] as f32,
                            false => -7.0, // columns past the weight's channels untouched
                        };
                        let got = out[r * ldo + c];
                        assert_eq!(
                            got,
                            expect,
                            "{} [{m},{n},{k}] token {i} col {c}",
                            path.name()
                        );
                    }
                }
            }
        }
        // an output too small, panels past the weight's last, or rows quantized in
        // other blocks are errors
        let mut small = vec![0f32; 1];
        let bad = p.product(
            isa::Isa::Scalar,
            rows,
            0..m,
            0..p.panels(),
            (&one, &zero),
            &mut small,
            16,
        );
        assert!(bad.is_err());
        let mut out = vec![0f32; m * 16 * p.panels()];
        let ldo = 16 * p.panels();
        let past = p.panels()..p.panels() + 1;
        let sb = (&one[..], &zero[..]);
        assert!(p
            .product(isa::Isa::Scalar, rows, 0..m, past, sb, &mut out, ldo)
            .is_err());
        if block < k {
            let other = OffsetRows { block: k, ..rows };
            let all = 0..p.panels();
            let e = p.product(isa::Isa::Scalar, other, 0..m, all, sb, &mut out, ldo);
            assert!(e.unwrap_err().to_string().contains("blocks of"));
        }
    }
    // blocks that split groups of 4 inputs cannot be packed
    assert!(PackedBlocked::pack(4, 64, 6, |_, _| 1).is_err());
}

/// Relative tolerance of the block-scaled int8 paths (exact block sums, f32 scaling).
const BLOCKED_TOL: f32 = 1e-5;

#[test]
fn block_scaled_int8_layers_match_the_dequantized_product_on_every_path() {
    use qgemm::panel_blocked::{linear_packed, linear_packed_then, quantize_offset};
    use qgemm::panel_blocked::{PackedBlocked, PackedPart, OFFSET};
    use squeeze::ops::qgemm::quantize::LINEAR_ACT_MAX;
    // AMX: 40 tokens (two whole tiles and a part) and an odd number of blocks
    for &(m, n, k) in &[
        (1, 5, 7),
        (3, 17, 64),
        (6, 33, 100),
        (70, 40, 384),
        (40, 20, 96),
    ] {
        let mut x = uniform(m * k, 17 + k as u64);
        x[k / 2] = 40.0; // an outlier feature: only its own block's scale grows
        let q = quantize_rows(&x, k, None, 32, LINEAR_ACT_MAX);
        assert_eq!(q.scales.len(), m * k.div_ceil(32));
        assert!(q.codes.iter().all(|c| c.abs() <= LINEAR_ACT_MAX));
        let w = codes(n * k, 19 + n as u64);
        let sw: Vec<f32> = (0..n).map(|j| 0.01 + 0.001 * j as f32).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 - 3.0).collect();
        let p = PackedBlocked::pack(n, k, 32, |j, c| w[j * k + c]).unwrap();
        // the dequantized product, and the sum of |terms| its tolerance is relative to
        let term = |i: usize, j: usize, c: usize| q.value(i, c, k) * w[j * k + c] as f32 * sw[j];
        let kp = p.stride();
        for path in super::common::isa_paths(module_path!()) {
            // the kernel's quantizer gives quantize_rows' codes and scales exactly
            let wq = quantize_offset(path, &x, (k, kp), None, 32).unwrap();
            assert_eq!(wq.scales, q.scales, "{}", path.name());
            for i in 0..m {
                for c in 0..kp {
                    let code = if c < k { q.codes[i * k + c] } else { 0 };
                    let want = (code as i16 + OFFSET as i16) as u8;
                    assert_eq!(
                        wq.codes[i * kp + c],
                        want,
                        "{} code ({i}, {c})",
                        path.name()
                    );
                }
            }
            // two parts of one call with different scales and biases: each must be its own
            // product (a kernel mixing up parts fails here)
            let (sw2, bias2): (Vec<f32>, Vec<f32>) = (
                sw.iter().map(|s| 2.0 * s).collect(),
                bias.iter().map(|b| -b).collect(),
            );
            let part = PackedPart {
                w: &p,
                scales: &sw,
                bias: Some(&bias),
            };
            let other = PackedPart {
                w: &p,
                scales: &sw2,
                bias: Some(&bias2),
            };
            let got = linear_packed(path, wq.rows(), &[part, other], m).unwrap();
            // GELU applied per task inside the product equals GELU after it, exactly
            let then = linear_packed_then(path, wq.rows(), &[part, other], m, true).unwrap();
            for (t, g) in then.iter().zip(&got) {
                let g =
                    candle_core::Tensor::from_vec(g.clone(), g.len(), &candle_core::Device::Cpu);
                let g = g.unwrap();
                let after = squeeze::ops::gelu::gelu_with(path, &g).unwrap();
                assert_eq!(t, &after.to_vec1::<f32>().unwrap(), "{} GELU", path.name());
            }
            for (g, (f, b)) in got.iter().zip([(1.0f32, &bias), (2.0, &bias2)]) {
                for i in 0..m {
                    for j in 0..n {
                        let want = f * (0..k).map(|c| term(i, j, c)).sum::<f32>() + b[j];
                        let mag: f32 = f * (0..k).map(|c| term(i, j, c).abs()).sum::<f32>();
                        let y = g[i * n + j];
                        assert!(
                            (y - want).abs() <= BLOCKED_TOL * (1.0 + mag + b[j].abs()),
                            "{} [{m},{n},{k}] ({i},{j}) scale ×{f}: {y} vs {want}",
                            path.name()
                        );
                    }
                }
            }
        }
        // each block's values round-trip within half its scale
        for i in 0..m {
            for c in 0..k {
                let s = q.scales[i * k.div_ceil(32) + c / 32];
                assert!(
                    (q.value(i, c, k) - x[i * k + c]).abs() <= s / 2.0 + ROUND_SLACK * (1.0 + s)
                );
            }
        }
        // activations of another width are an error
        let part = PackedPart {
            w: &p,
            scales: &sw,
            bias: None,
        };
        let wq = quantize_offset(isa::Isa::Scalar, &x, (k, kp), None, 32).unwrap();
        assert!(linear_packed(isa::Isa::Scalar, wq.rows(), &[part], m + 1).is_err());
    }
}

#[test]
fn int4_kernel_paths_match_the_reference() {
    let (n, k) = (19, 256);
    for layout in layouts().into_iter().filter(|l| l.bits == 4) {
        let q = QWeight::quantize(&weights(n * k, 7), n, k, layout).unwrap();
        for m in [1, 3, 4, 6] {
            let x = uniform(m * k, 9 + m as u64);
            let want = qgemm::gemm_q4_reference(&x, &q.view(), m);
            // and the reference is the product with the dequantized weight
            let dq = q.dequantize();
            for j in 0..n {
                for i in 0..m {
                    let d: f32 = (0..k).map(|c| x[i * k + c] * dq[j * k + c]).sum();
                    assert!((d - want[j * m + i]).abs() <= Q4_TOL * (1.0 + d.abs()));
                }
            }
            let bias = uniform(n, 13);
            for path in super::common::isa_paths(module_path!()) {
                let got = qgemm::gemm_q4(path, &x, &q.view(), Some(&bias), m).unwrap(); // [m, n]
                for j in 0..n {
                    for i in 0..m {
                        let (a, b) = (got[i * n + j], want[j * m + i] + bias[j]);
                        assert!(
                            (a - b).abs() <= Q4_TOL * (1.0 + b.abs()),
                            "{} {} m={m}: {a} vs {b}",
                            path.name(),
                            layout.label()
                        );
                    }
                }
            }
        }
    }
}

/// Values that probe the rounding: exact halves on both sides of zero, the clamp edges,
/// signed zeros, infinities, NaN, and random magnitudes beyond the code range.
fn rounding_probes(lim: i8) -> Vec<f32> {
    let l = f32::from(lim);
    let mut v: Vec<f32> = (-300..=300).map(|i| i as f32 * 0.5).collect();
    for e in [l - 0.5, l + 0.5, l - 0.499_99, l + 0.499_99, l, l + 1.0] {
        v.extend([e, -e]);
    }
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-30,
        -1e-30,
    ]);
    v.extend(uniform(997, 5).iter().map(|x| x * 3.0 * l)); // odd length: a vector tail
    v
}

#[test]
fn every_row_quantizer_path_equals_the_scalar_rounding_exactly() {
    use qgemm::panel_blocked::{quantize_offset, OFFSET};
    use squeeze::ops::qgemm::quantize::{round_code_to, LINEAR_ACT_MAX};
    for path in super::common::isa_paths("row quantizers") {
        for lim in [LINEAR_ACT_MAX, 127] {
            let x = rounding_probes(lim);
            for inv in [1.0f32, 0.37, 3.0] {
                let (mut codes, mut abs) = (vec![0i8; x.len()], vec![0u8; x.len()]);
                qgemm::quantize_row(path, &x, (inv, lim), &mut codes, Some(&mut abs));
                for (j, v) in x.iter().enumerate() {
                    let want = round_code_to(v * inv, lim);
                    assert_eq!(codes[j], want, "{path:?} lim {lim} inv {inv}: x = {v}");
                    assert_eq!(abs[j], want.unsigned_abs(), "{path:?} |code| of {v}");
                }
            }
        }
        // the quantized Linear's offset codes and block scales (NaN left out: a NaN block
        // has no scale either quantizer could agree on)
        let x: Vec<f32> = rounding_probes(LINEAR_ACT_MAX)
            .into_iter()
            .filter(|v| v.is_finite())
            .collect();
        let k = x.len();
        let q = quantize_rows(&x, k, None, 32, LINEAR_ACT_MAX);
        let got = quantize_offset(path, &x, (k, k), None, 32).unwrap();
        assert_eq!(got.scales, q.scales, "{path:?} block scales");
        for (j, c) in q.codes.iter().enumerate() {
            let want = (*c as i16 + OFFSET as i16) as u8;
            assert_eq!(got.codes[j], want, "{path:?} offset code of {}", x[j]);
        }
        // several rows of whole blocks in rows of a longer stride, the padding left at the
        // offset (zero): the wide path quantizes a row per call
        let (m, k, kp) = (3, 96, 100);
        let x: Vec<f32> = uniform(m * k, 11).iter().map(|v| v * 5.0).collect();
        let q = quantize_rows(&x, k, None, 32, LINEAR_ACT_MAX);
        let got = quantize_offset(path, &x, (k, kp), None, 32).unwrap();
        assert_eq!(got.scales, q.scales, "{path:?} block scales of {m} rows");
        for (i, c) in (0..m).flat_map(|i| (0..kp).map(move |c| (i, c))) {
            let want = if c < k {
                (q.codes[i * k + c] as i16 + OFFSET as i16) as u8
            } else {
                OFFSET
            };
            assert_eq!(got.codes[i * kp + c], want, "{path:?} row {i} input {c}");
        }
    }
}

#[test]
fn int4_int8_panels_match_their_reference_on_every_path() {
    use qgemm::panel_q4::{quantize_q8, PackedQ4, Q8_MAX};
    // channels beyond whole panels and half panels, tokens beyond whole tiles, every
    // int4 layout (rows and blocks are whole chunks of 32 inputs)
    for &(m, n, k) in &[(1, 5, 64), (3, 16, 128), (9, 37, 256), (17, 24, 384)] {
        for layout in layouts().into_iter().filter(|l| l.bits == 4) {
            let q = QWeight::quantize(&weights(n * k, 5 + n as u64), n, k, layout).unwrap();
            let p = PackedQ4::pack(&q.view()).unwrap();
            let x = uniform(m * k, 3 + m as u64);
            // the activation codes are the reference quantizer's, block by block
            let r = quantize_rows(&x, k, None, 32, Q8_MAX);
            let a = quantize_q8(isa::Isa::Scalar, &x, k).unwrap();
            assert_eq!((&a.codes, &a.scales), (&r.codes, &r.scales));
            let bias = uniform(n, 17);
            let want = p.product_reference(&a, 0..m, Some(&bias)).unwrap();
            // the reference is the dequantized weight times the dequantized codes
            let dq = q.dequantize();
            for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                let d: f32 = (0..k).map(|c| r.value(i, c, k) * dq[j * k + c]).sum();
                let (d, g) = (d + bias[j], want[i * n + j]);
                assert!(
                    (d - g).abs() <= Q4_TOL * (1.0 + d.abs()),
                    "{}: {d} vs {g}",
                    layout.label()
                );
            }
            for path in super::common::isa_paths(module_path!()) {
                // codes, scales and code sums of every path equal the scalar quantizer's
                let b = quantize_q8(path, &x, k).unwrap();
                assert_eq!(
                    (&b.codes, &b.scales, &b.sums),
                    (&a.codes, &a.scales, &a.sums),
                    "{}",
                    path.name()
                );
                let a = b;
                let got = p.product(path, &a, Some(&bias)).unwrap();
                // GELU applied per task inside the product equals GELU after it, exactly
                let then = p.product_then(path, &a, Some(&bias), true).unwrap();
                let t =
                    candle_core::Tensor::from_vec(got.clone(), (m, n), &candle_core::Device::Cpu)
                        .unwrap();
                let after = squeeze::ops::gelu::gelu_with(path, &t).unwrap();
                let after = after.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(then, after, "{} int4 product then GELU", path.name());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= Q4_TOL * (1.0 + w.abs()),
                        "{} {} m={m} n={n}: {g} vs {w}",
                        path.name(),
                        layout.label()
                    );
                }
            }
        }
    }
}

#[test]
fn joined_int4_products_equal_each_weight_alone() {
    use qgemm::panel_q4::{products, quantize_q8, PackedQ4, Q4Part};
    // three weights of different widths (whole panels, a partial one, several tasks) and
    // enough tokens × channels × inputs that the job is split over the team
    let (m, k) = (70, 256);
    let layout = layouts().into_iter().find(|l| l.bits == 4).unwrap();
    let packed: Vec<(PackedQ4, Vec<f32>)> = [48, 37, 130]
        .iter()
        .map(|&n| {
            let q = QWeight::quantize(&weights(n * k, 11 + n as u64), n, k, layout).unwrap();
            (
                PackedQ4::pack(&q.view()).unwrap(),
                uniform(n, 19 + n as u64),
            )
        })
        .collect();
    let x = uniform(m * k, 23);
    for path in super::common::isa_paths(module_path!()) {
        let a = quantize_q8(path, &x, k).unwrap();
        let parts: Vec<Q4Part> = packed
            .iter()
            .map(|(w, b)| Q4Part {
                w,
                bias: Some(b.as_slice()),
            })
            .collect();
        for gelu in [false, true] {
            let joined = products(path, &a, &parts, gelu).unwrap();
            for ((w, b), y) in packed.iter().zip(&joined) {
                let alone = w.product_then(path, &a, Some(b), gelu).unwrap();
                assert_eq!(y, &alone, "{} n={} gelu={gelu}", path.name(), w.n);
            }
        }
    }
}

#[test]
fn int4_int8_panels_refuse_what_they_cannot_hold() {
    use qgemm::panel_q4::{quantize_q8, PackedQ4};
    use squeeze::quant::layout::{Layout, Scales};
    // an int8 weight, and rows that are not whole blocks of 32 inputs
    let q = QWeight::quantize(&weights(4 * 64, 1), 4, 64, Layout::INT8_CHANNEL).unwrap();
    assert!(PackedQ4::pack(&q.view()).is_err());
    assert!(quantize_q8(isa::Isa::Scalar, &uniform(48, 1), 48).is_err());
    // activations of another width
    let l = Layout {
        bits: 4,
        scales: Scales::Group(32),
        zero_point: false,
    };
    let q = QWeight::quantize(&weights(4 * 64, 1), 4, 64, l).unwrap();
    let p = PackedQ4::pack(&q.view()).unwrap();
    let a = quantize_q8(isa::Isa::Scalar, &uniform(96, 1), 96).unwrap();
    assert!(p.product(isa::Isa::Scalar, &a, None).is_err());
}

#[test]
fn the_implicit_convolution_product_equals_the_im2col_product_exactly() {
    use qgemm::panel::PackedI8;
    use qgemm::ConvWindow;
    let all = super::common::isa_paths(module_path!());
    if !all.iter().any(|&i| PackedI8::implicit(i, 4, false)) {
        eprintln!("NOT RUN on this CPU: the implicit product needs AVX2");
        return;
    }
    // (channels, height, width, kernel, stride, padding, output channels): kernel rows of
    // 3 and 5, a stride of 2, wide tiles past 4 panels, rows past whole tiles, a last panel
    // of at most 8 channels (AVX2 multiplies its first half only); then signed codes (AMX
    // only) of one and of 3 channels, a first layer's input
    for (&(c, h, w, k, s, pad, n), signed) in [
        (4, 7, 9, 3, 1, 1, 16),
        (8, 12, 13, 3, 1, 1, 70),
        (20, 12, 12, 5, 1, 0, 50),
        (12, 11, 10, 3, 2, 1, 33),
        // AMX blocks of 32 tokens over several output rows, chunks past a kernel row
        (32, 9, 9, 3, 1, 1, 40),
        // kernel rows of whole 64-byte chunks: AMX reads the image unstaged
        (64, 9, 10, 3, 1, 1, 40),
        (16, 6, 7, 4, 1, 0, 20),
    ]
    .iter()
    .map(|g| (g, false))
    .chain(
        [
            (1, 28, 28, 3, 1, 1, 32),
            (3, 9, 11, 3, 1, 1, 20),
            (1, 9, 9, 3, 2, 1, 20),
        ]
        .iter()
        .map(|g| (g, true)),
    ) {
        let paths: Vec<_> = all
            .iter()
            .copied()
            .filter(|&i| PackedI8::implicit(i, c, signed))
            .collect();
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
        // non-negative codes in a zero-padded channels-last image
        let img: Vec<u8> = (0..hp * wp * c)
            .map(|i| {
                let (y, x) = (i / c / wp, i / c % wp);
                let inside = y >= pad && y < pad + h && x >= pad && x < pad + w;
                if inside && signed {
                    ((i * 37 + 11) % 255) as u8 ^ 0x80 // [−127, 127], −128 excluded
                } else if inside {
                    ((i * 37 + 11) % 128) as u8
                } else {
                    0
                }
            })
            .collect();
        let cols = k * k * c;
        let wq: Vec<u8> = uniform(n * cols, 3 + n as u64)
            .into_iter()
            .map(|v| (v * 127.0).round() as i8 as u8)
            .collect();
        let p = PackedI8::pack("w", n, cols, |j, q| wq[j * cols + q]).unwrap();
        // the im2col rows the implicit product must equal: (ki, kj, ch) order
        let lda = PackedI8::row_len(cols);
        let mut rows = vec![0i8; ho * wo * lda];
        for (oh, ow) in (0..ho).flat_map(|y| (0..wo).map(move |x| (y, x))) {
            for (ki, kj, ch) in
                (0..k).flat_map(|a| (0..k).flat_map(move |b| (0..c).map(move |d| (a, b, d))))
            {
                let at = ((oh * s + ki) * wp + ow * s + kj) * c + ch;
                rows[(oh * wo + ow) * lda + (ki * k + kj) * c + ch] = img[at] as i8;
            }
        }
        let np = p.panels();
        let ldo = np * 16;
        let mut want = vec![0i32; ho * wo * ldo];
        let mags: Vec<u8> = rows.iter().map(|v| v.unsigned_abs()).collect();
        p.product(
            isa::Isa::Scalar,
            (&rows, &mags),
            (ho * wo, lda),
            signed,
            0..np,
            &mut want,
            ldo,
        )
        .unwrap();
        let win = ConvWindow {
            c,
            k,
            stride: s,
            wp,
            ho,
            wo,
        };
        // the same image followed by the slack the fastest form reads (junk, unused)
        let mut slacked = img.clone();
        slacked.resize(img.len() + win.slack(), 0x5a);
        // outputs of ho·wo rows, and of the rows the fastest form writes (pitched rows)
        let cases = paths.iter().flat_map(|i| {
            [(i, &img), (i, &slacked)]
                .into_iter()
                .flat_map(|(i, m)| [(i, m, ho * wo), (i, m, win.out_rows())])
        });
        for (&isa, img, out_rows) in cases {
            let mut got = vec![7i32; out_rows * ldo];
            let pitch = p
                .product_implicit(isa, (img, signed), win, 0..np, &mut got, ldo)
                .unwrap();
            let row = |r: usize| (r / wo) * pitch + r % wo;
            for r in 0..ho * wo {
                assert_eq!(
                    got[row(r) * ldo..][..ldo],
                    want[r * ldo..][..ldo],
                    "{} c={c} k={k} s={s} n={n} signed={signed} pitch {pitch} pixel {r}",
                    isa.name()
                );
            }
            // the panels from the second on, alone (a thread's share at batch 1)
            if np > 1 {
                let mut part = vec![7i32; out_rows * ldo];
                let pitch = p
                    .product_implicit(isa, (img, signed), win, 1..np, &mut part, ldo)
                    .unwrap();
                let cols = (np - 1) * 16;
                for r in 0..ho * wo {
                    let at = ((r / wo) * pitch + r % wo) * ldo;
                    assert_eq!(part[at..][..cols], want[r * ldo + 16..][..cols]);
                }
            }
            // a window that does not fit the image is an error, not a read past it
            let wide = ConvWindow { wo: wo + 1, ..win };
            assert!(p
                .product_implicit(isa, (img, signed), wide, 0..np, &mut got, ldo)
                .is_err());
        }
    }
}
