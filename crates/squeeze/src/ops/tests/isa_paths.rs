//! Every vector path of the encoder kernels (Linear, packed Linear, LayerNorm, GELU,
//! attention) against the plain reference, on each instruction set this CPU supports, and
//! a path the CPU lacks refused by name.

use candle_core::{Device, Tensor};

use super::common::{max_abs, uniform};
use squeeze::isa::{self, Isa};
use squeeze::ops::packed::{PackedLinear, Then};
use squeeze::ops::{attention, fast, gelu, layer_norm};

/// Max abs difference between a vector path and the reference.
const PATH_TOL: f32 = 2e-4;

fn rand_t(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(uniform(n, seed), shape, &Device::Cpu).unwrap()
}

#[test]
fn every_supported_isa_path_matches_the_reference() {
    let paths = super::common::isa_paths("encoder kernels");
    eprintln!(
        "kernel paths tested on this CPU: {:?} (active: {:?})",
        paths,
        isa::active()
    );
    for isa in paths {
        for m in [1, 2, 5, 12, 13, 40] {
            let (k, n) = (37, 45); // tails in every vector width
            let (x, w, b) = (rand_t(&[m, k], 1), rand_t(&[n, k], 2), rand_t(&[n], 3));
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let got = fast::linear_with(isa, &x, &w, Some(&b)).unwrap();
            assert!(max_abs(&got, &want) < PATH_TOL, "{isa:?} linear m={m}");
            let packed = PackedLinear::pack(&w).unwrap();
            let got = packed.matmul_with(isa, &x, Some(&b)).unwrap();
            assert!(max_abs(&got, &want) < PATH_TOL, "{isa:?} packed m={m}");
        }
        // products large enough to split the panels over the threads, uneven tiles
        // (13 rows = 6 + 7), a last panel of 21 columns, with and without a bias
        for m in [13, 25, 100] {
            let (k, n) = (301, 85);
            let (x, w, b) = (rand_t(&[m, k], 11), rand_t(&[n, k], 12), rand_t(&[n], 13));
            let prod = x.matmul(&w.t().unwrap()).unwrap();
            let packed = PackedLinear::pack(&w).unwrap();
            let got = packed.matmul_with(isa, &x, Some(&b)).unwrap();
            let want = prod.broadcast_add(&b).unwrap();
            assert!(
                max_abs(&got, &want) < PATH_TOL,
                "{isa:?} packed m={m} k={k}"
            );
            let got = packed.matmul_with(isa, &x, None).unwrap();
            assert!(
                max_abs(&got, &prod) < PATH_TOL,
                "{isa:?} packed m={m}, no bias"
            );
        }
        // LayerNorm: rows shorter than a vector step, and rows longer than the AVX-512
        // kernel's 64-value step, with a tail
        for shape in [&[3, 5, 24][..], &[7, 100]] {
            let d = *shape.last().unwrap();
            let x = (rand_t(shape, 27) * 3.0).unwrap();
            let (g, b) = (rand_t(&[d], 28), rand_t(&[d], 29));
            let ln = layer_norm::layer_norm_reference(&x, &g, &b, 1e-12).unwrap();
            let got = layer_norm::layer_norm_with(isa, &x, &g, &b, 1e-12).unwrap();
            let e = max_abs(&got, &ln);
            assert!(e < PATH_TOL, "{isa:?} layer_norm, rows of {d}: {e}");
        }
        let x = (rand_t(&[3, 5, 24], 4) * 3.0).unwrap();
        let d = max_abs(
            &gelu::gelu_with(isa, &x).unwrap(),
            &gelu::gelu_reference(&x).unwrap(),
        );
        assert!(d < PATH_TOL, "{isa:?} gelu {d}");
        let (q, kk, v) = (
            rand_t(&[2, 5, 12], 7),
            rand_t(&[2, 5, 12], 8),
            rand_t(&[2, 5, 12], 9),
        );
        let mask = Tensor::from_vec(
            vec![1f32, 1., 1., 0., 0., 1., 1., 1., 1., 1.],
            (2, 5),
            &Device::Cpu,
        )
        .unwrap();
        // padding at the end, then a sample without real keys and one with holes: the
        // fast kernel skips masked keys, the reference weighs them by exp(−10⁹)
        let holes = Tensor::from_vec(
            vec![0f32, 0., 0., 0., 0., 1., 0., 1., 1., 0.],
            (2, 5),
            &Device::Cpu,
        )
        .unwrap();
        for m in [&mask, &holes] {
            let want = attention::attention_reference(&q, &kk, &v, m, 3, 4).unwrap();
            let got = attention::attention_with(isa, &q, &kk, &v, m, 3, 4).unwrap();
            assert!(max_abs(&got, &want) < PATH_TOL, "{isa:?} attention");
        }
        // enough work (4 samples · 4 heads · 40² · 32) that the heads split over the team,
        // each writing its own columns of the output
        let (q, kk, v) = (
            rand_t(&[4, 40, 128], 11),
            rand_t(&[4, 40, 128], 12),
            rand_t(&[4, 40, 128], 13),
        );
        let real: Vec<f32> = (0..160)
            .map(|i| f32::from(u8::from(i % 40 < 40 - i / 40 * 7)))
            .collect();
        let m = Tensor::from_vec(real, (4, 40), &Device::Cpu).unwrap();
        let want = attention::attention_reference(&q, &kk, &v, &m, 4, 32).unwrap();
        let got = attention::attention_with(isa, &q, &kk, &v, &m, 4, 32).unwrap();
        assert!(
            max_abs(&got, &want) < PATH_TOL,
            "{isa:?} attention, 4 x 40 tokens"
        );
        attention_head_widths_and_views(isa);
        // the GELU a packed product applies tile by tile equals GELU after it, bit for bit
        let (x, w, b) = (
            rand_t(&[13, 70], 21),
            rand_t(&[75, 70], 22),
            rand_t(&[75], 23),
        );
        let packed = PackedLinear::pack(&w).unwrap();
        let then = packed.matmul_then(isa, &x, Some(&b), Then::Gelu).unwrap();
        let after = gelu::gelu_with(isa, &packed.matmul_with(isa, &x, Some(&b)).unwrap()).unwrap();
        assert_eq!(
            max_abs(&then, &after),
            0.0,
            "{isa:?} packed product then GELU"
        );
        // … and a residual added in the tiles equals the sum after it, bit for bit
        let r = rand_t(&[13, 75], 24);
        let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let then = packed
            .matmul_then(isa, &x, Some(&b), Then::Add(&rs))
            .unwrap();
        let after = (packed.matmul_with(isa, &x, Some(&b)).unwrap() + &r).unwrap();
        assert_eq!(
            max_abs(&then, &after),
            0.0,
            "{isa:?} packed product then + residual"
        );
        assert!(packed
            .matmul_then(isa, &x, Some(&b), Then::Add(&rs[1..]))
            .is_err());
        // siblings' panels interleaved (q₀ k₀ v₀ q₁ …): the same output, bit for bit
        let w3 = rand_t(&[192, 70], 25);
        let (plain, mixed) = (
            PackedLinear::pack(&w3).unwrap(),
            PackedLinear::pack(&w3).unwrap().interleaved(3),
        );
        let x3 = rand_t(&[40, 70], 26);
        let d = max_abs(
            &plain.matmul_with(isa, &x3, None).unwrap(),
            &mixed.matmul_with(isa, &x3, None).unwrap(),
        );
        assert_eq!(d, 0.0, "{isa:?} interleaved panels");
        chained_products(isa);
    }
    let ts = [
        rand_t(&[3, 7], 10),
        rand_t(&[3, 7], 11),
        rand_t(&[3, 7], 12),
    ];
    let want = ((&ts[0] + &ts[1]).unwrap() + &ts[2]).unwrap();
    let got = fast::sum(&[&ts[0], &ts[1], &ts[2]]).unwrap();
    assert!(max_abs(&got, &want) < PATH_TOL, "sum");
    assert!(fast::sum(&[&ts[0], &rand_t(&[7, 3], 1)]).is_err());
}

/// Relative tolerance of a chained pair against the two products one after the other:
/// the second product's sums are added in two partial halves.
const CHAIN_TOL: f32 = 1e-5;

/// Two packed Linears as one column-then-row job (`packed::chain`) equal the first
/// product, GELU, then the second product plus a residual, one after the other: hidden
/// widths of a partial panel and of several per team member, a single token and tiles
/// beyond one, jobs small enough to run inline and large enough to split; and it refuses
/// a second weight that does not read the first's outputs.
fn chained_products(isa: Isa) {
    use squeeze::ops::packed::chain::{chain, Link};
    for (i, &(m, k, n1, n2)) in [(1, 24, 37, 17), (13, 64, 200, 48), (40, 96, 300, 70)]
        .iter()
        .enumerate()
    {
        let s = 40 + 10 * i as u64;
        let (x, w1, b1) = (
            rand_t(&[m, k], s),
            rand_t(&[n1, k], s + 1),
            rand_t(&[n1], s + 2),
        );
        let (w2, b2, r) = (
            rand_t(&[n2, n1], s + 3),
            rand_t(&[n2], s + 4),
            rand_t(&[m, n2], s + 5),
        );
        let (p1, p2) = (
            PackedLinear::pack(&w1).unwrap(),
            PackedLinear::pack(&w2).unwrap(),
        );
        let hidden = p1.matmul_then(isa, &x, Some(&b1), Then::Gelu).unwrap();
        let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = p2
            .matmul_then(isa, &hidden, Some(&b2), Then::Add(&rs))
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xs, bs1, bs2) = (v(&x), v(&b1), v(&b2));
        let one = Link {
            w: &p1,
            bias: Some(&bs1),
        };
        let two = Link {
            w: &p2,
            bias: Some(&bs2),
        };
        let got = chain(isa, &xs, m, (one, Then::Gelu), (two, Then::Add(&rs))).unwrap();
        let got = Tensor::from_vec(got, (m, n2), &candle_core::Device::Cpu).unwrap();
        let scale = want.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
        let scale = scale.to_vec1::<f32>().unwrap()[0].max(1.0);
        let d = max_abs(&got, &want);
        assert!(d <= CHAIN_TOL * scale, "{isa:?} chain m={m} n1={n1}: {d}");
        // no GELU, no bias, no residual
        let bare = |w| Link { w, bias: None };
        let got = chain(
            isa,
            &xs,
            m,
            (bare(&p1), Then::Nothing),
            (bare(&p2), Then::Nothing),
        );
        let want = p2
            .matmul_with(isa, &p1.matmul_with(isa, &x, None).unwrap(), None)
            .unwrap();
        let got = Tensor::from_vec(got.unwrap(), (m, n2), &candle_core::Device::Cpu).unwrap();
        let d = max_abs(&got, &want);
        assert!(
            d <= CHAIN_TOL * scale,
            "{isa:?} bare chain m={m} n1={n1}: {d}"
        );
        // the first weight twice: its outputs are not the second's inputs
        let bad = chain(
            isa,
            &xs,
            m,
            (bare(&p1), Then::Nothing),
            (bare(&p1), Then::Nothing),
        );
        assert!(bad.is_err(), "{isa:?}: {n1} outputs into {k} inputs");
    }
}

/// The attention core at the head widths the AVX-512 kernel takes (16, 32, 64) and one it
/// leaves to the portable loop (24), over more keys than one 16-lane block (37, with
/// padding and a sample without real keys), on dense q, k, v and on column ranges of one
/// joined [N, L, 3·w] product (read in place at its row pitch), the heads over the team
/// (a single head: its samples claimed one by one instead).
fn attention_head_widths_and_views(isa: Isa) {
    let l = 37;
    let real: Vec<f32> = (0..3 * l)
        .map(|i| match i / l {
            0 => 1.0,
            1 => f32::from(u8::from(i % l < 20)),
            _ => 0.0,
        })
        .collect();
    let m = Tensor::from_vec(real, (3, l), &Device::Cpu).unwrap();
    for (heads, hd) in [(2, 16), (3, 32), (2, 64), (2, 24), (1, 32)] {
        let w = heads * hd;
        let joined = (rand_t(&[3, l, 3 * w], 31) * 2.0).unwrap();
        let part = |i: usize| joined.narrow(2, i * w, w).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        let dense = |t: &Tensor| t.contiguous().unwrap();
        let want =
            attention::attention_reference(&dense(&q), &dense(&k), &dense(&v), &m, heads, hd)
                .unwrap();
        let got = attention::attention_with(isa, &dense(&q), &dense(&k), &dense(&v), &m, heads, hd)
            .unwrap();
        assert!(
            max_abs(&got, &want) < PATH_TOL,
            "{isa:?} attention {heads}x{hd}"
        );
        let viewed = attention::attention_with(isa, &q, &k, &v, &m, heads, hd).unwrap();
        assert_eq!(
            max_abs(&viewed, &got),
            0.0,
            "{isa:?} attention {heads}x{hd} on views"
        );
        // a batch-1 sentence: 12 tokens, every key real
        let one = Tensor::ones((1, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        let s = |t: &Tensor| t.narrow(0, 0, 1).unwrap().narrow(1, 0, 12).unwrap();
        let want = attention::attention_reference(
            &dense(&s(&q)),
            &dense(&s(&k)),
            &dense(&s(&v)),
            &one,
            heads,
            hd,
        )
        .unwrap();
        let got = attention::attention_with(isa, &s(&q), &s(&k), &s(&v), &one, heads, hd).unwrap();
        assert!(
            max_abs(&got, &want) < PATH_TOL,
            "{isa:?} attention 1x12 {heads}x{hd}"
        );
    }
}

/// Relative error of the polynomial exponential against libm.
const EXP_REL_TOL: f32 = 4e-7;

#[test]
fn polynomial_exp_matches_libm() {
    let mut worst = 0f32;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f32 / 200_000.0;
        let (got, want) = (fast::exp(x), x.exp());
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < EXP_REL_TOL, "worst relative error {worst}");
    // far below the range: flushed towards 0 (a masked score minus the row's max)
    assert!(fast::exp(-1e9) < 1.3e-38 && fast::exp(-1e9) >= 0.0);
    assert_eq!(fast::exp(0.0), 1.0);
}

#[test]
fn unsupported_or_unknown_isa_is_refused_with_a_clear_error() {
    let e = Isa::parse("avx9").unwrap_err().to_string();
    assert!(
        e.contains("avx9") && e.contains("amx, avx512vnni, avx512, avxvnni, avx2 or scalar"),
        "{e}"
    );
    for isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
    }
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        let x = rand_t(&[1, 4], 1);
        let e = fast::linear_with(isa, &x, &x, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(isa.name()) && e.contains("lacks"), "{e}");
    }
    assert!(Isa::Scalar.is_supported());
}
