//! The scalar rounding of activation codes: the reference every vector row quantizer
//! ([`super::quantize::quantize_row`]) equals exactly.

/// The scalar form of the row quantizer (the vector paths equal it exactly): `v` rounded
/// half away from zero and clamped to [−lim, lim] (`lim` ≤ 127), without a libm call (the
/// baseline x86-64 target has no rounding instruction; a truncating conversion is SSE2).
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp keeps NaN; the kernels' min/max give lim
pub fn round_code_to(v: f32, lim: i8) -> i8 {
    let l = f32::from(lim);
    let c = v.min(l).max(-l); // NaN → lim, as the vector min/max do
    (c + 0.5f32.copysign(c)) as i32 as i8
}
