//! Fast 2-D convolution for training and inference: im2col + one GEMM per image and group
//! (a group's im2col rows and weight rows are contiguous), images in parallel, with a
//! hand-written backward (dW = Σₙ dYₙ·colsₙᵀ, dX = col2im(Wᵀ·dYₙ), per group) in place of
//! candle 0.11's CPU backward (a transposed convolution and a convolution with the whole
//! image as kernel, the measured hot spot of CNN training) and of its grouped forward
//! (a convolution per group and a concatenation). The weight gradient's per-image terms
//! are summed in a fixed order whatever the thread count, so a seeded training repeats to
//! the bit. Candle's own `conv2d` is the plain reference it is tested against; depthwise
//! convolutions take [`super::depthwise`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

pub use super::conv_geo::Elem;
use super::conv_geo::{for_each_run, grads, Geo};
use super::slice_of;
use crate::error::Result;

/// im2col of one image [C, H, W] → [C·k·k, Ho·Wo]. Positions that fall in the padding are
/// not written: `cols` must hold zeros there.
fn im2col<T: Elem>(g: &Geo, x: &[T], cols: &mut [T]) {
    let s = g.sw;
    for_each_run(g, |dst, src, len| {
        if s == 1 {
            cols[dst..dst + len].copy_from_slice(&x[src..src + len]);
        } else {
            for j in 0..len {
                cols[dst + j] = x[src + j * s];
            }
        }
    });
}

/// col2im of one image: scatter-add [C·k·k, Ho·Wo] into [C, H, W].
fn col2im<T: Elem>(g: &Geo, cols: &[T], dx: &mut [T]) {
    let s = g.sw;
    for_each_run(g, |src, dst, len| {
        for j in 0..len {
            dx[dst + j * s] += cols[src + j];
        }
    });
}

/// dst[m×n] (=|+=) lhs[m×k]·rhs[k×n], all given by (row stride, column stride), on the
/// calling thread.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Elem>(
    mnk: (usize, usize, usize),
    dst: &mut [T],
    dst_s: (usize, usize),
    acc: bool,
    lhs: &[T],
    lhs_s: (usize, usize),
    rhs: &[T],
    rhs_s: (usize, usize),
) {
    gemm_on(1, mnk, dst, dst_s, acc, lhs, lhs_s, rhs, rhs_s)
}

/// [`gemm`] on `threads` rayon threads (1: the calling thread only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_on<T: Elem>(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_s: (usize, usize),
    acc: bool,
    lhs: &[T],
    lhs_s: (usize, usize),
    rhs: &[T],
    rhs_s: (usize, usize),
) {
    let last =
        |(rs, cs): (usize, usize), r: usize, c: usize| (r.max(1) - 1) * rs + (c.max(1) - 1) * cs;
    assert!(
        last(dst_s, m, n) < dst.len().max(1)
            && last(lhs_s, m, k) < lhs.len().max(1)
            && last(rhs_s, k, n) < rhs.len().max(1)
    );
    let one = T::from_f64(1.0);
    // SAFETY: the asserts above keep every strided access inside the three slices, and
    // `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_s.1 as isize,
            dst_s.0 as isize,
            acc,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            one,
            one,
            false,
            false,
            false,
            match threads {
                0 | 1 => gemm::Parallelism::None,
                t => gemm::Parallelism::Rayon(t),
            },
        )
    }
}

// Column buffers are reused across the images a worker handles: im2col writes the same
// positions for every image, so the padding positions zeroed at allocation stay zero.

fn forward<T: Elem>(g: &Geo, x: &[T], w: &[T]) -> Vec<T> {
    let (kk, p, img) = (g.kk(), g.p(), g.c * g.h * g.w);
    let (kg, cg) = g.per_group();
    let mut y = vec![T::default(); g.n * g.co * p];
    let buf = if g.pointwise() { 0 } else { kk * p };
    y.par_chunks_mut(g.co * p).enumerate().for_each_init(
        || vec![T::default(); buf],
        |buf, (i, yi)| {
            let cols = columns(g, &x[i * img..(i + 1) * img], buf);
            for j in 0..g.groups {
                gemm(
                    (cg, p, kg),
                    &mut yi[j * cg * p..],
                    (p, 1),
                    false,
                    &w[j * cg * kg..],
                    (kg, 1),
                    &cols[j * kg * p..],
                    (p, 1),
                );
            }
        },
    );
    y
}

/// The im2col of image `xi`: the image itself for a pointwise convolution, else written
/// into `buf`.
fn columns<'a, T: Elem>(g: &Geo, xi: &'a [T], buf: &'a mut [T]) -> &'a [T] {
    if g.pointwise() {
        return xi;
    }
    im2col(g, xi, buf);
    buf
}

/// The images of a backward are split into at most this many runs of consecutive images,
/// whatever the thread count: each run sums its dW partial in image order and the partials
/// are added in run order, so a seeded training gives the same bits on 1 thread or 16 and
/// from one run to the next (a work-stealing fold would add them in the order the threads
/// happened to finish).
const BWD_RUNS: usize = 16;

/// Per-worker buffers of the backward: im2col and dcols, reused across the runs it takes.
type BwdBufs<T> = (Vec<T>, Vec<T>);

fn backward<T: Elem>(g: &Geo, x: &[T], w: &[T], dy: &[T], need_dx: bool) -> (Vec<T>, Vec<T>) {
    let (kk, p, img) = (g.kk(), g.p(), g.c * g.h * g.w);
    let kg = g.per_group().0;
    let mut dx = vec![T::default(); if need_dx { g.n * img } else { g.n }];
    let per_dx = dx.len() / g.n;
    let run = g.n.div_ceil(BWD_RUNS).max(1);
    let fresh = || -> BwdBufs<T> {
        let cols = vec![T::default(); if g.pointwise() { 0 } else { kk * p }];
        (cols, Vec::new())
    };
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(per_dx * run)
        .enumerate()
        .map_init(fresh, |(cols, dcols), (r, dxr)| {
            let mut dw = vec![T::default(); g.co * kg];
            for (j, dxi) in dxr.chunks_mut(per_dx).enumerate() {
                let i = r * run + j;
                image_grads(g, (x, w, dy), i, need_dx, (&mut dw, dxi), (cols, dcols));
            }
            dw
        })
        .collect();
    let mut dw = vec![T::default(); g.co * kg];
    for b in partials {
        dw.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    (dx, dw)
}

/// Image `i`'s share of the backward: dW += dYᵢ·colsᵢᵀ per group, and (if `need_dx`) its
/// dXᵢ, through `cols` / `dcols` as scratch.
fn image_grads<T: Elem>(
    g: &Geo,
    (x, w, dy): (&[T], &[T], &[T]),
    i: usize,
    need_dx: bool,
    (dw, dxi): (&mut [T], &mut [T]),
    (cols, dcols): (&mut Vec<T>, &mut Vec<T>),
) {
    let (kk, p, img) = (g.kk(), g.p(), g.c * g.h * g.w);
    let (kg, cg) = g.per_group();
    let dyi = &dy[i * g.co * p..(i + 1) * g.co * p];
    let cols_i = columns(g, &x[i * img..(i + 1) * img], cols);
    // a pointwise convolution's dX is its dcols: written in place, no col2im
    let direct = need_dx && g.pointwise();
    if need_dx && !direct {
        dcols.resize(kk * p, T::default());
    }
    for j in 0..g.groups {
        let (wj, yj, cj) = (j * cg * kg, j * cg * p, j * kg * p);
        // dW_j += dYᵢ_j[cg×p] · colsᵢ_jᵀ[p×kg]
        gemm(
            (cg, kg, p),
            &mut dw[wj..],
            (kg, 1),
            true,
            &dyi[yj..],
            (p, 1),
            &cols_i[cj..],
            (1, p),
        );
        if need_dx {
            let dst = if direct { &mut dxi[..] } else { &mut dcols[..] };
            // dcolsᵢ_j[kg×p] = W_jᵀ[kg×cg] · dYᵢ_j[cg×p]
            gemm(
                (kg, p, cg),
                &mut dst[cj..],
                (p, 1),
                false,
                &w[wj..],
                (1, kg),
                &dyi[yj..],
                (p, 1),
            );
        }
    }
    if need_dx && !direct {
        col2im(g, dcols, dxi);
    }
}

struct Conv2d {
    stride: (usize, usize),
    pad: (usize, usize),
    groups: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "squeeze-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geo::new(l1.dims(), l2.dims(), self.stride, self.pad, self.groups)?;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward::<f32>(&g, slice_of(s1, l1)?, slice_of(s2, l2)?)),
            DType::F64 => CpuStorage::F64(forward::<f64>(&g, slice_of(s1, l1)?, slice_of(s2, l2)?)),
            dt => candle_core::bail!("conv2d: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((g.n, g.co, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geo::new(x.dims(), w.dims(), self.stride, self.pad, self.groups)?;
        grads(&g, (x, w, dy), backward::<f32>, backward::<f64>)
    }
}

/// Convolution of x [N, C, H, W] with w [Co, C/groups, kh, kw] (no bias) under
/// (vertical, horizontal) `stride` and `pad`: a square depthwise one (groups = C = Co) by
/// [`super::depthwise`], every other one by the im2col kernel.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let square = w.dim(2)? == w.dim(3)? && stride.0 == stride.1 && pad.0 == pad.1;
    if square && groups > 1 && groups == x.dim(1)? && groups == w.dim(0)? {
        return super::depthwise::depthwise(x, w, stride.0, pad.0);
    }
    Ok(x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Conv2d {
            stride,
            pad,
            groups,
        },
    )?)
}
