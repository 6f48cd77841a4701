//! Every vector path of the encoder kernels (Linear, packed Linear, LayerNorm, GELU,
//! attention) against the plain reference, on each instruction set this CPU supports, and
//! a path the CPU lacks refused by name.

use candle_core::{Device, Tensor};

use super::common::{max_abs, uniform};
use squeeze::isa::{self, Isa};
use squeeze::ops::{attention, fast, gelu, layer_norm, packed::PackedLinear};

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
        let x = (rand_t(&[3, 5, 24], 4) * 3.0).unwrap();
        let (g, b) = (rand_t(&[24], 5), rand_t(&[24], 6));
        let ln = layer_norm::layer_norm_reference(&x, &g, &b, 1e-12).unwrap();
        let d = max_abs(
            &layer_norm::layer_norm_with(isa, &x, &g, &b, 1e-12).unwrap(),
            &ln,
        );
        assert!(d < PATH_TOL, "{isa:?} layer_norm {d}");
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

#[test]
fn unsupported_or_unknown_isa_is_refused_with_a_clear_error() {
    let e = Isa::parse("avx9").unwrap_err().to_string();
    assert!(
        e.contains("avx9") && e.contains("amx, avx512vnni, avx512, avx2 or scalar"),
        "{e}"
    );
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        let x = rand_t(&[1, 4], 1);
        let e = fast::linear_with(isa, &x, &x, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(isa.name()) && e.contains("lacks"), "{e}");
    }
    assert!(Isa::Scalar.is_supported());
}
