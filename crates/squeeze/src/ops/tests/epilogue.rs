//! The convolution's epilogues against their scalar forms on every path this CPU has:
//! the max-pool over the products (window max, or min under a negative factor), the
//! requantize into the next layer's codes, and the two fused.

use super::common::uniform;
use squeeze::isa;
use squeeze::ops::qgemm;

#[test]
fn pooled_products_keep_the_window_max_or_min_per_channel() {
    use qgemm::epilogue::pool_rows;
    // 5×7 pixels of 37 channels (stride 40: padding columns; two whole vectors of 16 and
    // a tail), windows 2/2 and 3/2; every third channel's order reversed, extremes included
    let (ho, wo, ldo, cols) = (5, 7, 40, 37);
    let acc: Vec<i32> = (0..ho * wo * ldo)
        .map(|i| match i % 29 {
            0 => i32::MIN,
            1 => i32::MAX,
            _ => ((i * 37) % 101) as i32 - 50,
        })
        .collect();
    let neg: Vec<bool> = (0..cols).map(|j| j % 3 == 1).collect();
    let flip: Vec<i32> = neg.iter().map(|&n| if n { !0 } else { 0 }).collect();
    for ((k, s), path) in [(2, 2), (3, 2)].into_iter().flat_map(|w| {
        super::common::isa_paths(module_path!())
            .into_iter()
            .map(move |p| (w, p))
    }) {
        let mut pooled = vec![9; 3];
        let (ph, pw) =
            pool_rows(path, &acc, (ho, wo, wo, ldo), (k, s), &flip, &mut pooled).unwrap();
        assert_eq!((ph, pw), ((ho - k) / s + 1, (wo - k) / s + 1));
        assert_eq!(pooled.len(), ph * pw * cols);
        for (py, px, j) in
            (0..ph).flat_map(|y| (0..pw).flat_map(move |x| (0..cols).map(move |j| (y, x, j))))
        {
            let window = (0..k).flat_map(|dy| (0..k).map(move |dx| (dy, dx)));
            let vals = window.map(|(dy, dx)| acc[((py * s + dy) * wo + px * s + dx) * ldo + j]);
            let want = if neg[j] { vals.min() } else { vals.max() }.unwrap();
            assert_eq!(
                pooled[(py * pw + px) * cols + j],
                want,
                "{} k {k} ({py}, {px}) channel {j}",
                path.name()
            );
        }
    }
    // a window larger than the image, too few products, or a flip other than 0 and !0 is
    // an error
    let mut pooled = Vec::new();
    let isa = isa::Isa::Scalar;
    let mut bad = flip.clone();
    bad[4] = 1;
    assert!(pool_rows(isa, &acc, (ho, wo, wo, ldo), (2, 2), &bad, &mut pooled).is_err());
    assert!(pool_rows(isa, &acc, (ho, wo, wo, ldo), (6, 1), &flip, &mut pooled).is_err());
    assert!(pool_rows(
        isa,
        &acc[..10],
        (ho, wo, wo, ldo),
        (2, 2),
        &flip,
        &mut pooled
    )
    .is_err());
    // rows at a pitch wider than the image: the same pools from the same pixels
    let pitched: Vec<i32> = (0..ho * (wo + 2) * ldo)
        .map(|i| {
            let (row, j) = (i / ldo, i % ldo);
            let (y, x) = (row / (wo + 2), row % (wo + 2));
            if x < wo {
                acc[(y * wo + x) * ldo + j]
            } else {
                1000
            }
        })
        .collect();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    pool_rows(isa, &acc, (ho, wo, wo, ldo), (2, 2), &flip, &mut a).unwrap();
    pool_rows(isa, &pitched, (ho, wo, wo + 2, ldo), (2, 2), &flip, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_pooling_epilogue_equals_pooling_then_requantizing_on_every_path() {
    use qgemm::epilogue::{pool_rows, requantize_pooled, requantize_rows};
    // 6×7 convolution pixels at a pitch of 9 (unused rows between), of `w` channels at a
    // stride of w + 3: a masked tail, and beyond one vector of 64 codes
    for w in [37, 83] {
        let (ho, wo, pitch, ldo) = (6, 7, 9, w + 3);
        let acc: Vec<i32> = (0..ho * pitch * ldo)
            .map(|i| ((i * 7919) % 20_001) as i32 - 10_000)
            .collect();
        let scale: Vec<f32> = uniform(w, 3).iter().map(|v| v * 1e-3).collect();
        let bias = uniform(w, 5);
        let flip: Vec<i32> = scale
            .iter()
            .map(|f| if *f < 0.0 { !0 } else { 0 })
            .collect();
        for ((k, s), relu, codes) in [
            ((2, 2), true, [-127, 127]),
            ((3, 2), false, [-127, 127]),
            ((2, 2), false, [-8, 7]),
        ] {
            let q = (3.7, codes);
            let ldout = w + 5;
            let mut pooled = Vec::new();
            let geo = (ho, wo, pitch, ldo);
            let (ph, pw) =
                pool_rows(isa::Isa::Scalar, &acc, geo, (k, s), &flip, &mut pooled).unwrap();
            let mut want = vec![9u8; (ph * pw - 1) * ldout + w];
            let src = (&pooled[..], ph * pw, (pw, pw, w));
            let sb = (&scale[..], &bias[..]);
            requantize_rows(isa::Isa::Scalar, src, sb, relu, q, (&mut want, ldout)).unwrap();
            for path in super::common::isa_paths(module_path!()) {
                let mut got = vec![9u8; want.len()];
                let mut scratch = Vec::new();
                let pool = (k, s, &flip[..]);
                let o = (&mut got[..], ldout);
                let dims = requantize_pooled(path, (&acc, geo), pool, sb, relu, q, o, &mut scratch);
                assert_eq!(dims.unwrap(), (ph, pw));
                assert_eq!(got, want, "{} w {w} k {k} relu {relu}", path.name());
                // too few products, or too few codes, is an error on every path
                let short = (&acc[..((ho - 1) * pitch + wo) * ldo - 1], geo);
                let o = (&mut got[..], ldout);
                assert!(
                    requantize_pooled(path, short, pool, sb, relu, q, o, &mut scratch).is_err()
                );
                let o = (&mut got[..want.len() - 1], ldout);
                assert!(
                    requantize_pooled(path, (&acc, geo), pool, sb, relu, q, o, &mut scratch)
                        .is_err()
                );
            }
        }
    }
}

#[test]
fn the_requantizing_epilogue_equals_its_scalar_form_on_every_path() {
    use qgemm::epilogue::requantize_row;
    // channels beyond whole groups of 8 (and of 64: one whole group of the AVX-512BW
    // form, then a masked one), negative factors, NaN-free extremes and a narrower code
    // range (low-bit readers)
    let n = 83;
    let acc: Vec<i32> = (0..n)
        .map(|j| (j as i32 * 7919) % 20_001 - 10_000)
        .collect();
    let scale: Vec<f32> = uniform(n, 3).iter().map(|v| v * 1e-3).collect();
    let bias = uniform(n, 5);
    for (relu, codes) in [
        (true, [-127, 127]),
        (false, [-127, 127]),
        (true, [0, 15]),
        (false, [0, 15]),
        (false, [-8, 7]),
    ] {
        for inv in [0.0, 3.7, 250.0] {
            let mut want = vec![0u8; n];
            requantize_row(
                isa::Isa::Scalar,
                &acc,
                (&scale, &bias),
                relu,
                (inv, codes),
                &mut want,
            );
            for path in super::common::isa_paths(module_path!()) {
                let mut got = vec![9u8; n];
                requantize_row(path, &acc, (&scale, &bias), relu, (inv, codes), &mut got);
                assert_eq!(got, want, "{} relu={relu} {codes:?} inv={inv}", path.name());
                // several rows at once: 5 pixels of an image 2 wide at a pitch of 3 (the
                // channels from 2 on, a masked tail on AVX-512), written at a stride
                let w = n - 2;
                let (geo, ldout) = ((2, 3, w + 1), w + 5);
                let src = |r: usize| ((r / 2) * 3 + r % 2) * (w + 1);
                let mut rows = vec![9u8; 4 * ldout + w];
                let acc2: Vec<i32> = (0..7 * (w + 1)).map(|i| acc[i % n] - i as i32).collect();
                let (s2, b2) = (&scale[2..], &bias[2..]);
                let q = (inv, codes);
                qgemm::epilogue::requantize_rows(
                    path,
                    (&acc2, 5, geo),
                    (s2, b2),
                    relu,
                    q,
                    (&mut rows, ldout),
                )
                .unwrap();
                for r in 0..5 {
                    let mut one = vec![0u8; w];
                    requantize_row(
                        isa::Isa::Scalar,
                        &acc2[src(r)..],
                        (s2, b2),
                        relu,
                        q,
                        &mut one,
                    );
                    assert_eq!(rows[r * ldout..][..w], one[..], "{} row {r}", path.name());
                }
                // a row past the products is an error, not a read past them
                assert!(qgemm::epilogue::requantize_rows(
                    path,
                    (&acc2, 6, geo),
                    (s2, b2),
                    relu,
                    q,
                    (&mut rows, ldout)
                )
                .is_err());
            }
            // the scalar form is the rescale, then the reader's quantizer and range
            let lim = codes[1].max(-codes[0]);
            for j in 0..n {
                let v = acc[j] as f32 * scale[j] + bias[j];
                let v = if relu { v.max(0.0) } else { v };
                let c = qgemm::quantize::round_code_to(v * inv, lim).clamp(codes[0], codes[1]);
                assert_eq!(want[j] as i8, c, "channel {j}");
            }
        }
    }
}
