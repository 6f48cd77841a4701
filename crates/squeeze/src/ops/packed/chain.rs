//! Two packed Linears in a row as one parallel job — the column-then-row split of
//! Megatron-LM's transformer MLP (Shoeybi et al. 2019). Each team member computes its own
//! contiguous range of the first product's panels (its share of the hidden units, GELU
//! applied in the tiles) into a buffer of its own, then multiplies exactly those hidden
//! units by the matching input rows of every panel of the second weight: a partial
//! output over its units. The first member's partial carries the bias and the residual;
//! the others' are added to it after the job. Against two separate products this saves a
//! job hand-off and, above all, the exchange of the hidden layer between the cores (at
//! batch 1 each core would read the half the other one wrote: 13 × 1,536 values for
//! all-MiniLM's FFN); what crosses instead is one partial output per member, as wide as
//! the second product's output. The result equals the two products up to the order in
//! which the second one's sums are added ([`CHAIN_TOL`] in the tests).

use super::{tiles, unit, PackedLinear, Place, Then, COLS, PAR_MACS, TILE};
use crate::error::{Error, Result};
use crate::isa::{self, Isa};
use crate::ops::team::Ptr;

/// One Linear of a chain: its packed weight and bias.
#[derive(Clone, Copy)]
pub struct Link<'a> {
    pub w: &'a PackedLinear,
    pub bias: Option<&'a [f32]>,
}

/// `second(then₁(first(x)))` for the m rows of `xs`, with `then₁` Nothing or GELU and
/// `then₂` Nothing or a residual sum, as one job: row-major [m, second.n].
pub fn chain(
    isa: Isa,
    xs: &[f32],
    m: usize,
    (first, then1): (Link, Then),
    (second, then2): (Link, Then),
) -> Result<Vec<f32>> {
    let isa = isa::require(isa)?;
    check(xs, m, (&first, then1), (&second, then2))?;
    let (n1, n2) = (first.w.n, second.w.n);
    let macs = m * (n1 * first.w.k + n2 * second.w.k);
    let np1 = n1.div_ceil(COLS);
    let members = match macs >= PAR_MACS {
        true => crate::ops::team::team().size().min(np1).max(1),
        false => 1,
    };
    // member t's hidden units: whole panels of the first weight
    let span = |t: usize| {
        let (p0, p1) = (t * np1 / members, (t + 1) * np1 / members);
        (p0, p1, p0 * COLS, (p1 * COLS).min(n1))
    };
    // each member's hidden units, rows of its own width, one block after another
    let mut hidden = crate::ops::output_buffer(m * n1);
    let mut y = crate::ops::output_buffer(m * n2);
    let mut partials: Vec<Vec<f32>> = (1..members)
        .map(|_| crate::ops::output_buffer(m * n2))
        .collect();
    let (h, out) = (Ptr(hidden.as_mut_ptr()), Ptr(y.as_mut_ptr()));
    let rest: Vec<Ptr<f32>> = partials.iter_mut().map(|p| Ptr(p.as_mut_ptr())).collect();
    let tiles = tiles(isa, m);
    let run = |t: usize| {
        let (p0, p1, c0, c1) = span(t);
        let width = c1 - c0;
        if width == 0 {
            return;
        }
        let mut buf = [0f32; TILE * COLS];
        // SAFETY: member t alone writes hidden[m·c0 .. m·c1] (rows of `width`) and its
        // partial; every tile's rows and columns lie inside them.
        let mine = Ptr(unsafe { h.at(m * c0) });
        for p in p0..p1 {
            let at = Place {
                out: mine,
                n: width,
                c0: (p - p0) * COLS,
                cols: COLS.min(n1 - p * COLS),
                bias: first.bias.map(|b| &b[p * COLS..]),
                then: then1,
            };
            let w = &first.w.panels[p * first.w.k * COLS..(p + 1) * first.w.k * COLS];
            for &tile in &tiles {
                let x = &xs[tile.0 * first.w.k..(tile.0 + tile.1) * first.w.k];
                // SAFETY: the tile's rows × this panel's columns of the member's block
                unsafe { unit(isa, x, w, tile, &at, &mut buf) };
            }
        }
        // SAFETY: written above by this member; read only by it
        let hid = unsafe { std::slice::from_raw_parts(mine.at(0), m * width) };
        let (dst, lead) = match t {
            0 => (out, true),
            _ => (rest[t - 1], false),
        };
        let k2 = second.w.k;
        for q in 0..n2.div_ceil(COLS) {
            let at = Place {
                out: dst,
                n: n2,
                c0: q * COLS,
                cols: COLS.min(n2 - q * COLS),
                bias: second.bias.filter(|_| lead).map(|b| &b[q * COLS..]),
                then: if lead { then2 } else { Then::Nothing },
            };
            let w = &second.w.panels[(q * k2 + c0) * COLS..(q * k2 + c1) * COLS];
            for &tile in &tiles {
                let x = &hid[tile.0 * width..(tile.0 + tile.1) * width];
                // SAFETY: the tile's rows × panel q's columns of this member's output
                unsafe { unit(isa, x, w, tile, &at, &mut buf) };
            }
        }
    };
    match members {
        1 => run(0),
        _ => crate::ops::team::team().run(members, &run),
    }
    // SAFETY: member 0 wrote every row and column of y (and the others of their partials)
    unsafe { crate::ops::written(&mut y, m * n2) };
    for p in &mut partials {
        // SAFETY: its member wrote every row and column
        unsafe { crate::ops::written(p, m * n2) };
        y.iter_mut().zip(p.iter()).for_each(|(a, b)| *a += b);
    }
    Ok(y)
}

/// The chain's shapes: rows of the first's inputs, the second reading the first's
/// outputs, biases and a residual of the outputs' sizes, GELU only after the first.
fn check(xs: &[f32], m: usize, first: (&Link, Then), second: (&Link, Then)) -> Result<()> {
    let ((a, t1), (b, t2)) = (first, second);
    let bad = |what: String| Err(Error::Graph(format!("chained packed linears: {what}")));
    if xs.len() != m * a.w.k {
        return bad(format!("{} inputs in rows of {}", xs.len(), a.w.k));
    }
    if b.w.k != a.w.n {
        return bad(format!("{} outputs into {} inputs", a.w.n, b.w.k));
    }
    if a.bias.is_some_and(|v| v.len() != a.w.n) || b.bias.is_some_and(|v| v.len() != b.w.n) {
        return bad("a bias of another width than its outputs".into());
    }
    if !matches!(t1, Then::Nothing | Then::Gelu) || matches!(t2, Then::Gelu) {
        return bad("only a GELU between the products and a residual after them".into());
    }
    if let Then::Add(r) = t2 {
        if r.len() != m * b.w.n {
            return bad(format!(
                "a residual of {} values for {m}×{}",
                r.len(),
                b.w.n
            ));
        }
    }
    if a.w.order.iter().enumerate().any(|(i, &p)| i != p) {
        return bad("the first weight's panels are interleaved siblings".into());
    }
    Ok(())
}
