//! Post-training quantization (issue 11): the stored format's round trip, the kernels
//! against their references on every path the CPU has, GPTQ against round-to-nearest,
//! quantized layers against their simulated (fake-quant) form, the pass, and corrupt files.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use squeeze::checkpoint::{self, Model};
use squeeze::data::FashionMnist;
use squeeze::graph::{Graph, Op};
use squeeze::interp::{predict, store_to_dtype};
use squeeze::isa;
use squeeze::kinds::qlinear::{ActQuant, QLinear};
use squeeze::math::hessian::InputStats;
use squeeze::ops::qgemm;
use squeeze::ops::qgemm::quantize::quantize_rows;
use squeeze::params::ParamStore;
use squeeze::passes::{run_recipe, Recipe};
use squeeze::quant::gptq::{gptq, output_error, GptqOpts};
use squeeze::quant::layout::{Layout, Scales};
use squeeze::quant::QWeight;

mod common;
use common::{max_abs, small, uniform};

/// Slack over the half-scale bound for f32 rounding of `v / s` and `s·q`.
const ROUND_SLACK: f32 = 1e-6;
/// Relative tolerance of the int4 kernel paths (float sums in another order).
const Q4_TOL: f32 = 1e-4;
/// Max abs difference between a quantized layer's kernel and its simulated f64 form.
const SIM_TOL: f32 = 1e-4;

/// Weights with a few large outliers, as trained layers have.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, v)| if i % 97 == 5 { 6.0 * v } else { 0.1 * v })
        .collect()
}

fn layouts() -> Vec<Layout> {
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

#[test]
fn round_trip_error_is_at_most_half_a_scale_per_element() {
    let (rows, cols) = (6, 128);
    let w = weights(rows * cols, 1);
    for layout in layouts() {
        let q = QWeight::quantize(&w, rows, cols, layout).unwrap();
        assert_eq!(q.stored_bytes(), layout.stored_bytes(rows, cols));
        let back = q.dequantize();
        let bl = layout.block_len(cols);
        for (i, (a, b)) in w.iter().zip(&back).enumerate() {
            let s = q.scales[layout.scale_index(i / cols, (i % cols) / bl, cols)];
            assert!(
                (a - b).abs() <= s / 2.0 + ROUND_SLACK,
                "{}: element {i}: {a} → {b}, scale {s}",
                layout.label()
            );
        }
    }
    // bad layouts say why
    let e = QWeight::quantize(
        &w,
        rows,
        cols,
        Layout {
            bits: 4,
            scales: Scales::Group(48),
            zero_point: false,
        },
    );
    assert!(e.unwrap_err().to_string().contains("group 48"));
    let e = QWeight::quantize(
        &w[..rows * 100],
        rows,
        100,
        Layout {
            bits: 4,
            scales: Scales::Channel,
            zero_point: false,
        },
    );
    assert!(e.unwrap_err().to_string().contains("chunks of 32"));
    let mut nan = w.clone();
    nan[3] = f32::NAN;
    let e = QWeight::quantize(&nan, rows, cols, Layout::INT8_CHANNEL).unwrap_err();
    assert!(e.to_string().contains("element 3"), "{e}");
}

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
            for path in isa::supported() {
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
                qgemm::panel::rescale_transposed(path, &out, (m, ldo), &scale, &bias, relu, &mut t)
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
        for path in isa::supported() {
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
        for path in isa::supported() {
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
    use qgemm::panel_blocked::{linear_packed, quantize_offset, PackedBlocked, PackedPart, OFFSET};
    use squeeze::ops::qgemm::quantize::LINEAR_ACT_MAX;
    for &(m, n, k) in &[(1, 5, 7), (3, 17, 64), (6, 33, 100), (70, 40, 384)] {
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
        for path in isa::supported() {
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
            let part = PackedPart {
                w: &p,
                scales: &sw,
                bias: Some(&bias),
            };
            let got = linear_packed(path, wq.rows(), &[part, part], m).unwrap();
            assert_eq!(got[0], got[1], "the parts of one call are independent");
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|c| term(i, j, c)).sum::<f32>() + bias[j];
                    let mag: f32 = (0..k).map(|c| term(i, j, c).abs()).sum();
                    let y = got[0][i * n + j];
                    assert!(
                        (y - want).abs() <= BLOCKED_TOL * (1.0 + mag + bias[j].abs()),
                        "{} [{m},{n},{k}] ({i},{j}): {y} vs {want}",
                        path.name()
                    );
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
            for path in isa::supported() {
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

/// Calibration inputs with correlated columns (what makes error feedback pay).
fn correlated(rows: usize, cols: usize, seed: u64) -> Tensor {
    let base = uniform(rows * 8, seed);
    let mix = uniform(8 * cols, seed + 1);
    let noise = uniform(rows * cols, seed + 2);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            (0..8)
                .map(|j| base[r * 8 + j] * mix[j * cols + c])
                .sum::<f32>()
                + 0.05 * noise[i]
        })
        .collect();
    Tensor::from_vec(x, (rows, cols), &Device::Cpu).unwrap()
}

#[test]
fn gptq_output_error_on_its_calibration_data_is_below_round_to_nearest() {
    let (rows, cols) = (24, 128);
    let mut stats = InputStats::new(cols, true);
    stats.add(&correlated(512, cols, 21)).unwrap();
    let w = weights(rows * cols, 23);
    for layout in layouts()
        .into_iter()
        .filter(|l| l.bits == 4 || l.scales == Scales::Channel)
    {
        let rtn = QWeight::quantize(&w, rows, cols, layout).unwrap();
        for act_order in [false, true] {
            let o = GptqOpts {
                block: 32,
                damp: 0.01,
                act_order,
            };
            let g = gptq(&w, rows, &stats, layout, o).unwrap();
            let (eg, er) = (
                output_error(&w, &g, &stats).unwrap(),
                output_error(&w, &rtn, &stats).unwrap(),
            );
            assert!(
                eg < 0.8 * er,
                "{} act_order={act_order}: GPTQ {eg} vs RTN {er}",
                layout.label()
            );
            // codes stay in the format: the stored values decode within the block scale range
            assert_eq!(g.codes.len(), rtn.codes.len());
        }
    }
}

/// A one-node graph `y = qlinear(x)` with a [n, k] weight.
fn qlinear_model(layout: Layout, act: ActQuant, n: usize, k: usize) -> Model {
    let q = QWeight::quantize(&weights(n * k, 31), n, k, layout).unwrap();
    let mut g = Graph::new("q", &[k]);
    g.push(
        "fc",
        Op::QLinear(QLinear {
            in_features: k,
            out_features: n,
            bias: true,
            layout,
            act,
        }),
        &["input"],
    );
    let mut p = ParamStore::new();
    let (codes, scales, zeros) = q.tensors().unwrap();
    p.insert("fc.weight_q", codes);
    p.insert("fc.weight_scale", scales);
    if let Some(z) = zeros {
        p.insert("fc.weight_zero", z);
    }
    if act == ActQuant::Static {
        p.insert(
            "fc.input_scale",
            Tensor::from_vec(vec![0.9f32 / 127.0], 1, &Device::Cpu).unwrap(),
        );
    }
    p.insert(
        "fc.bias",
        Tensor::from_vec(uniform(n, 33), n, &Device::Cpu).unwrap(),
    );
    let m = Model::new(g, p);
    m.graph.validate().unwrap();
    m.graph.check_params(&m.params).unwrap();
    m
}

#[test]
fn quantized_layers_equal_their_simulated_fake_quant_form() {
    let cases = [
        (Layout::INT8_CHANNEL, ActQuant::Dynamic),
        (
            Layout {
                bits: 8,
                scales: Scales::Tensor,
                zero_point: false,
            },
            ActQuant::Static,
        ),
        (
            Layout {
                bits: 4,
                scales: Scales::Group(64),
                zero_point: false,
            },
            ActQuant::None,
        ),
    ];
    for (layout, act) in cases {
        let m = qlinear_model(layout, act, 40, 128);
        let p64 = store_to_dtype(&m.params, DType::F64).unwrap();
        for batch in [1, 5, 80] {
            let x = Tensor::from_vec(uniform(batch * 128, 41), (batch, 128), &Device::Cpu).unwrap();
            let got = predict(&m.graph, &m.params, &x).unwrap();
            let sim = predict(&m.graph, &p64, &x.to_dtype(DType::F64).unwrap()).unwrap();
            let d = max_abs(&got, &sim.to_dtype(DType::F32).unwrap());
            assert!(d < SIM_TOL, "{} {act:?} batch {batch}: {d}", layout.label());
        }
    }
}

fn apply(m: Model, text: &str) -> squeeze::Result<Model> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let r = Recipe::parse(text, Path::new("q.toml"))?;
    let work = common::tmpdir(&format!("quant-work-{n}"));
    let mut ctx = r
        .context(Path::new("/no-such-dir"), &work)
        .with_images(FashionMnist {
            train: common::synthetic(96, 1),
            valid: common::synthetic(32, 2),
            test: common::synthetic(32, 3),
        });
    let out = run_recipe(m, &r, &mut ctx).map(|(m, _)| m);
    let _ = std::fs::remove_dir_all(work);
    out
}

#[test]
fn the_quantize_pass_keeps_the_classifier_in_f32_and_survives_a_save_and_load() {
    let m = small("mlp");
    let x = common::batch(4, 3);
    let want = predict(&m.graph, &m.params, &x).unwrap();
    let recipes = [
        "[[passes]]\ntype = \"quantize\"\nbits = 8\n",
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\nclip = \"mse\"\n",
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\nclip = { percentile = 99.9 }\nlayers = [\"fc1\", \"fc2\", \"fc3\"]\n",
    ];
    for (i, text) in recipes.iter().enumerate() {
        let q = apply(m.clone(), text).unwrap();
        let kinds: Vec<&str> = q.graph.nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "qlinear").count(),
            if i == 2 { 3 } else { 2 },
            "{kinds:?}"
        );
        let got = predict(&q.graph, &q.params, &x).unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .max_keepdim(0)
            .unwrap();
        let rel = max_abs(&got, &want) / scale.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(
            rel < 0.05,
            "recipe {i}: logits moved by {rel} of their range"
        );
        let dir = common::tmpdir(&format!("quant-mlp-{i}"));
        checkpoint::save(&q, &dir).unwrap();
        let back = checkpoint::load(&dir).unwrap();
        assert_eq!(
            max_abs(&predict(&back.graph, &back.params, &x).unwrap(), &got),
            0.0
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Largest difference between the int8 convolution kernels and the simulated f64 network,
/// relative to the logits' range (a code that rounds the other way between f32 and f64
/// at an inner layer moves the logits by about one activation step).
const CONV_SIM_TOL: f32 = 1e-3;

#[test]
fn static_int8_convolutions_equal_their_simulated_form_with_and_without_the_fused_relu_and_pool() {
    let q = apply(
        small("vgg"),
        "[calibration]\nsource = \"fashion-mnist\"\nsamples = 64\nbatch_size = 16\n\n\
         [[passes]]\ntype = \"fold_batch_norm\"\n\n\
         [[passes]]\ntype = \"quantize\"\nbits = 8\nactivations = \"static\"\n",
    )
    .unwrap();
    let relus: Vec<String> = q
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Relu))
        .map(|n| n.name.clone())
        .collect();
    let convs = q
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "qconv2d")
        .count();
    assert!(convs >= 3 && relus.len() >= 3, "{convs} qconv2d, {relus:?}");
    // max-pools after a convolution's ReLU: fused into it unless tapped
    let pools: Vec<String> = q
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::MaxPool2d(_)) && relus.contains(&n.inputs[0]))
        .map(|n| n.name.clone())
        .collect();
    assert!(!pools.is_empty());
    // the run plan: each such pool and its ReLU are absorbed by the convolution at
    // inference; in training, and when the pools are tapped, only the ReLU is
    use squeeze::interp::{plan_for, ForwardOpts, Step};
    let absorbed_by = |opts: &ForwardOpts, name: &str| {
        let plan = plan_for(&q.graph, opts).unwrap();
        let i = q.graph.nodes.iter().position(|n| n.name == name).unwrap();
        match plan.steps[i] {
            Step::Absorbed { by } => Some(q.graph.nodes[by].op.kind()),
            _ => None,
        }
    };
    let tapped = ForwardOpts {
        taps: pools.iter().cloned().collect(),
        ..Default::default()
    };
    for pool in &pools {
        let relu = &q.graph.node(pool).unwrap().inputs[0];
        assert_eq!(
            absorbed_by(&ForwardOpts::eval(), pool),
            Some("qconv2d"),
            "{pool}"
        );
        assert_eq!(
            absorbed_by(&ForwardOpts::eval(), relu),
            Some("qconv2d"),
            "{relu}"
        );
        assert_eq!(absorbed_by(&ForwardOpts::train(0), pool), None, "{pool}");
        assert_eq!(absorbed_by(&ForwardOpts::train(0), relu), Some("qconv2d"));
        assert_eq!(absorbed_by(&tapped, pool), None, "{pool}");
        assert_eq!(absorbed_by(&tapped, relu), Some("qconv2d"));
    }
    // compiled once per mode and kept with the graph: asking again adds no entry and
    // returns the same plan; a clone starts empty
    let kept = q.graph.cache.len();
    assert!(kept >= 3, "{kept}");
    let a = plan_for(&q.graph, &tapped).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &a,
        &plan_for(&q.graph, &tapped).unwrap()
    ));
    assert_eq!(q.graph.cache.len(), kept);
    assert!(q.graph.clone().cache.is_empty());
    let p64 = store_to_dtype(&q.params, DType::F64).unwrap();
    // one image (its pixel blocks in parallel) and a batch (images in parallel)
    for batch in [1, 3] {
        let x = common::batch(batch, 5);
        let got = predict(&q.graph, &q.params, &x).unwrap();
        let sim = predict(&q.graph, &p64, &x.to_dtype(DType::F64).unwrap()).unwrap();
        let range = got.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let d =
            max_abs(&got, &sim.to_dtype(DType::F32).unwrap()) / range.to_scalar::<f32>().unwrap();
        assert!(d < CONV_SIM_TOL, "batch {batch}: {d} of the logits' range");
        // tapping the ReLUs turns the fusion off: the same values, computed in two nodes
        let opts = squeeze::interp::ForwardOpts {
            taps: relus.iter().cloned().collect(),
            ..Default::default()
        };
        let unfused = squeeze::interp::forward(&q.graph, &q.params, &x, &opts).unwrap();
        assert_eq!(max_abs(&unfused.output, &got), 0.0, "batch {batch}");
        // tapping the max-pools turns only the pool fusion off: the pool of the rescaled
        // outputs equals the rescale of the pooled products exactly
        let opts = squeeze::interp::ForwardOpts {
            taps: pools.iter().cloned().collect(),
            ..Default::default()
        };
        let unpooled = squeeze::interp::forward(&q.graph, &q.params, &x, &opts).unwrap();
        assert_eq!(max_abs(&unpooled.output, &got), 0.0, "batch {batch}");
    }
}

#[test]
fn corrupt_quantized_files_are_errors_that_name_the_tensor() {
    let q = apply(small("mlp"), "[[passes]]\ntype = \"quantize\"\nbits = 8\n").unwrap();
    let dir = common::tmpdir("quant-corrupt");
    checkpoint::save(&q, &dir).unwrap();
    let wpath = dir.join("model.safetensors");
    let good = checkpoint::load_tensors(&wpath).unwrap();
    let cases: Vec<(&str, Tensor)> = vec![
        // one scale too few
        (
            "fc1.weight_scale",
            good["fc1.weight_scale"].narrow(0, 0, 299).unwrap(),
        ),
        // truncated codes
        (
            "fc2.weight_q",
            good["fc2.weight_q"].narrow(0, 0, 50).unwrap(),
        ),
        // codes of the wrong type
        (
            "fc1.weight_q",
            good["fc1.weight_q"].to_dtype(DType::F32).unwrap(),
        ),
    ];
    for (name, bad) in cases {
        let mut map = good.clone();
        map.insert(name.into(), bad);
        checkpoint::save_tensors(&wpath, &map).unwrap();
        let e = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
    checkpoint::save_tensors(&wpath, &good).unwrap();
    // an unknown layout in model.json
    let jpath = dir.join("model.json");
    let json = std::fs::read_to_string(&jpath).unwrap();
    for (from, to, want) in [
        ("\"bits\": 8", "\"bits\": 5", "bits"),
        ("\"scales\": \"channel\"", "\"scales\": \"rows\"", "rows"),
    ] {
        assert!(json.contains(from), "{from} not in model.json");
        std::fs::write(&jpath, json.replacen(from, to, 1)).unwrap();
        let e = checkpoint::load(&dir).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_quantize_options_are_recipe_errors_that_name_the_field() {
    let p = "[[passes]]\ntype = \"quantize\"\n";
    for (text, want) in [
        ("bits = 3\n", "bits"),
        ("bits = 8\ngroup = 64\n", "group"),
        ("bits = 4\nactivations = \"dynamic\"\n", "activations"),
        ("bits = 8\nactivations = \"none\"\n", "activations"),
        ("bits = 4\ngroup = 48\n", "group"),
        ("bits = 4\ngroup = 64\nper_tensor = true\n", "per_tensor"),
        ("bits = 8\nclip = { percentile = 0.0 }\n", "clip"),
        ("bits = 8\nrounding = \"gtpq\"\n", "gtpq"),
        ("bits = 8\ngroupsize = 64\n", "groupsize"),
    ] {
        let e = Recipe::parse(&format!("{p}{text}"), Path::new("q.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("q.toml"), "{text}: {e}");
    }
    let e = apply(small("mlp"), &format!("{p}bits = 8\nlayers = [\"fc9\"]\n")).unwrap_err();
    assert!(e.to_string().contains("fc9"), "{e}");
    let e = apply(
        small("vgg"),
        &format!("{p}bits = 8\nlayers = [\"features.0.conv\"]\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("activations = \"static\""), "{e}");
    let e = apply(small("mlp"), &format!("{p}bits = 4\nlayers = [\"fc1\"]\n")).unwrap_err();
    assert!(
        e.to_string().contains("fc1.weight") && e.to_string().contains("chunks of 32"),
        "{e}"
    );
}

/// Max abs difference between the grouped q/k/v int8 call and the per-node calls.
const GROUP_TOL: f32 = 1e-6;

#[test]
fn an_int8_encoder_runs_q_k_v_as_one_call_equal_to_the_per_node_calls() {
    use squeeze::interp::{forward_tokens, ForwardOpts};
    let m = squeeze::text::bert::random(&common::bert_shape(16, &[4, 2]), 5).unwrap();
    let q = apply(m.clone(), "[[passes]]\ntype = \"quantize\"\nbits = 8\n").unwrap();
    let kinds: Vec<&str> = q.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert!(
        !kinds.contains(&"linear") && !kinds.contains(&"embedding"),
        "{kinds:?}"
    );
    assert_eq!(
        q.graph.sibling_groups().len(),
        2,
        "one q/k/v group per layer"
    );
    let ids = Tensor::from_vec(vec![2u32, 5, 9, 3, 2, 7, 3, 0], (2, 4), &Device::Cpu).unwrap();
    let mask =
        Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 1., 1., 0.], (2, 4), &Device::Cpu).unwrap();
    let grouped = forward_tokens(&q.graph, &q.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
    // tapping a member disables the group: every node runs alone
    let taps = q
        .graph
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "qlinear")
        .map(|n| n.name.clone());
    let alone = ForwardOpts {
        taps: taps.collect(),
        ..ForwardOpts::eval()
    };
    let single = forward_tokens(&q.graph, &q.params, &ids, &mask, &alone).unwrap();
    let d = max_abs(&grouped.output, &single.output);
    assert!(d <= GROUP_TOL, "grouped vs per-node: {d}");
    // and the int8 encoder stays close to the f32 one
    let f = forward_tokens(&m.graph, &m.params, &ids, &mask, &ForwardOpts::eval()).unwrap();
    let (a, b): (Vec<f32>, Vec<f32>) = (
        f.output.flatten_all().unwrap().to_vec1().unwrap(),
        grouped.output.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let cos = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
            * b.iter().map(|y| y * y).sum::<f32>().sqrt());
    assert!(cos > 0.99, "cosine to f32 {cos}");
}

#[test]
fn pooled_products_keep_the_window_max_or_min_per_channel() {
    use qgemm::panel::pool_rows;
    // 5×7 pixels of 3 channels (stride 4: a padding column), windows 2/2 and 3/2
    let (ho, wo, ldo) = (5, 7, 4);
    let acc: Vec<i32> = (0..ho * wo * ldo)
        .map(|i| ((i * 37) % 101) as i32 - 50)
        .collect();
    let neg = [false, true, false];
    for (k, s) in [(2, 2), (3, 2)] {
        let mut pooled = vec![9; 3];
        let (ph, pw) = pool_rows(&acc, (ho, wo, ldo), (k, s), &neg, &mut pooled).unwrap();
        assert_eq!((ph, pw), ((ho - k) / s + 1, (wo - k) / s + 1));
        assert_eq!(pooled.len(), ph * pw * 3);
        for (py, px, j) in
            (0..ph).flat_map(|y| (0..pw).flat_map(move |x| (0..3).map(move |j| (y, x, j))))
        {
            let window = (0..k).flat_map(|dy| (0..k).map(move |dx| (dy, dx)));
            let vals = window.map(|(dy, dx)| acc[((py * s + dy) * wo + px * s + dx) * ldo + j]);
            let want = if neg[j] { vals.min() } else { vals.max() }.unwrap();
            assert_eq!(
                pooled[(py * pw + px) * 3 + j],
                want,
                "k {k} ({py}, {px}) channel {j}"
            );
        }
    }
    // a window larger than the image, or too few products, is an error
    let mut pooled = Vec::new();
    assert!(pool_rows(&acc, (ho, wo, ldo), (6, 1), &neg, &mut pooled).is_err());
    assert!(pool_rows(&acc[..10], (ho, wo, ldo), (2, 2), &neg, &mut pooled).is_err());
}
