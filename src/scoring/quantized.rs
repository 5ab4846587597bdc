//! Scoring, retrieval's first pass: an int8 copy of the item matrix, scanned with a proven error
//! bound per row, so that only the few rows that can still be in the top k are scored in float32.
//!
//! Row `i` is stored as `scale[i] × q[i]` with `q` in −127..=127, off from the float row by at most
//! `error[i]` in any component; the user vector as `user_scale × p` with `p` 16-bit. The integer dot
//! product `p · q[i]` is exact, so the float score `u · x[i]` lies within
//!
//! ```text
//! |u · x[i] − user_scale · scale[i] · (p · q[i])| ≤ ‖u‖₁ · error[i] + user_error · scale[i] · 127 · dim
//! ```
//!
//! (plus a float-rounding allowance). The scan keeps the k best lower bounds; a row whose upper bound
//! falls below the k-th of them has k rows certainly better than it, so it cannot be in the top k.
//! The survivors are scored exactly, which makes the result the one a full float32 scan gives.
//! The scan reads a quarter of the bytes of the float matrix, and memory bandwidth is what bounds it.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::ops::Range;

/// The int8 copy of an `n × dim` float matrix.
#[derive(Debug)]
pub struct QuantizedMatrix {
    values: Vec<i8>,
    scales: Vec<f32>,
    errors: Vec<f32>,
    dim: usize,
}

/// One user vector, quantized for a scan, with the terms of its error bound.
#[derive(Debug)]
pub struct QuantizedUser {
    values: Vec<i16>,
    scale: f32,
    /// Multiplies a row's `error` in the bound: `‖u‖₁` with rounding allowance.
    per_error: f32,
    /// Multiplies a row's `scale` in the bound: the user's own rounding and float rounding.
    per_scale: f32,
}

/// What a scan of some rows leaves for the exact pass.
#[derive(Debug, Default)]
pub struct Bounds {
    /// The best `k` lower bounds among the rows kept.
    pub lowers: Vec<f32>,
    /// `(row, upper bound)` of every row that was not ruled out during the scan.
    pub candidates: Vec<(usize, f32)>,
}

/// Rows per block of the scan.
const BLOCK: usize = 256;

/// Largest quantized component.
const Q_MAX: f32 = 127.0;

impl QuantizedMatrix {
    /// `None` when the matrix holds a value that is not finite (such matrices are scanned in float).
    pub fn new(matrix: &[f32], dim: usize) -> Option<Self> {
        if dim == 0 || matrix.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let rows = matrix.len() / dim;
        let mut values = Vec::with_capacity(matrix.len());
        let mut scales = Vec::with_capacity(rows);
        let mut errors = Vec::with_capacity(rows);
        for row in matrix.chunks_exact(dim) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / Q_MAX;
            let start = values.len();
            values.extend(row.iter().map(|v| quantize(*v, scale, Q_MAX) as i8));
            scales.push(scale);
            errors.push(max_error(row, &values[start..], scale));
        }
        Some(Self {
            values,
            scales,
            errors,
            dim,
        })
    }

    /// The user vector quantized for [`Self::bounds`]; `None` for a zero or non-finite vector.
    pub fn user(&self, user: &[f32]) -> Option<QuantizedUser> {
        let max = user.iter().fold(0f32, |m, v| m.max(v.abs()));
        if user.len() != self.dim || max == 0.0 || !max.is_finite() {
            return None;
        }
        // The integer dot product must not overflow: dim × 127 × p_max ≤ i32::MAX.
        let p_max = (i32::MAX as f32 / (Q_MAX * self.dim as f32))
            .min(32_767.0)
            .floor();
        let scale = max / p_max;
        let values: Vec<i16> = user
            .iter()
            .map(|v| quantize(*v, scale, p_max) as i16)
            .collect();
        let user_error = max_error(user, &values, scale);
        let l1: f32 = user.iter().map(|v| v.abs()).sum();
        // Float rounding in the exact score, in the bound itself and in i32 -> f32: a few units in
        // the last place of the largest possible |score| (l1 × 127 × scale), with room to spare.
        let rounding = 4.0 * (self.dim as f32 + 8.0) * f32::EPSILON;
        Some(QuantizedUser {
            values,
            scale,
            per_error: l1 * (1.0 + rounding),
            per_scale: user_error * Q_MAX * self.dim as f32 * (1.0 + rounding)
                + l1 * Q_MAX * rounding,
        })
    }

    /// Scans `range` for the top `k` of the rows `keep` accepts (checked only for rows that could
    /// still be in the top k, so the common row costs no call).
    pub fn bounds(
        &self,
        user: &QuantizedUser,
        k: usize,
        range: Range<usize>,
        keep: impl Fn(usize) -> bool,
    ) -> Bounds {
        let mut lowers: BinaryHeap<Reverse<Bound>> = BinaryHeap::with_capacity(k + 1);
        let mut candidates = Vec::new();
        let mut threshold = f32::NEG_INFINITY;
        // Blocks of rows: integer dot products first (one vectorized kernel per row), then the
        // bounds of the whole block (vectorized across rows), then the rare rows that pass.
        let mut dots = [0i32; BLOCK];
        let mut uppers = [0f32; BLOCK];
        let mut start = range.start;
        while start < range.end {
            let end = (start + BLOCK).min(range.end);
            let n = end - start;
            let scales = &self.scales[start..end];
            let errors = &self.errors[start..end];
            block_uppers(
                &self.values[start * self.dim..end * self.dim],
                scales,
                errors,
                user,
                &mut dots[..n],
                &mut uppers[..n],
            );
            for (offset, upper) in uppers[..n].iter().enumerate() {
                if *upper < threshold {
                    continue;
                }
                let index = start + offset;
                if !keep(index) {
                    continue;
                }
                candidates.push((index, *upper));
                let scale = scales[offset];
                let lower = dots[offset] as f32 * (scale * user.scale)
                    - (errors[offset] * user.per_error + scale * user.per_scale);
                if lowers.len() < k {
                    lowers.push(Reverse(Bound(lower)));
                } else if lower > threshold {
                    lowers.pop();
                    lowers.push(Reverse(Bound(lower)));
                } else {
                    continue;
                }
                if lowers.len() == k {
                    threshold = lowers.peek().map_or(f32::NEG_INFINITY, |b| b.0.0);
                    if candidates.len() > 4 * k + 1024 {
                        candidates.retain(|(_, upper)| *upper >= threshold);
                    }
                }
            }
            start = end;
        }
        Bounds {
            lowers: lowers.into_iter().map(|b| b.0.0).collect(),
            candidates,
        }
    }
}

/// The rows of `parts` that can be in the top `k` of all of them.
pub fn survivors(parts: Vec<Bounds>, k: usize) -> Vec<usize> {
    let mut lowers: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.lowers.iter().copied())
        .collect();
    let threshold = if lowers.len() < k || k == 0 {
        f32::NEG_INFINITY
    } else {
        let (_, kth, _) = lowers.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        *kth
    };
    parts
        .into_iter()
        .flat_map(|p| p.candidates)
        .filter(|(_, upper)| *upper >= threshold)
        .map(|(index, _)| index)
        .collect()
}

/// `v / scale` rounded to the nearest integer in `−max..=max` (0 for a zero scale).
fn quantize(v: f32, scale: f32, max: f32) -> f32 {
    if scale == 0.0 {
        0.0
    } else {
        (v / scale).round().clamp(-max, max)
    }
}

/// The largest `|v − scale · q|` over a row, rounded up to an f32.
fn max_error<Q: Copy + Into<f64>>(row: &[f32], quantized: &[Q], scale: f32) -> f32 {
    let error = row
        .iter()
        .zip(quantized)
        .map(|(v, q)| (f64::from(*v) - f64::from(scale) * (*q).into()).abs())
        .fold(0f64, f64::max);
    // f64 -> f32 rounds to nearest; one more step up keeps it a bound.
    let rounded = error as f32;
    if f64::from(rounded) < error {
        rounded.next_up()
    } else {
        rounded
    }
}

/// The integer dot products of a block of rows with the user's vector, and each row's upper bound.
///
/// Compiled for AVX-512 and AVX2 as well as the baseline and picked at run time: on AVX-512 the
/// 16-bit multiply-adds take 32 lanes instead of SSE2's 8 (1.9x faster for 64 dims). Integer dot
/// products and the f32 bound (no fused multiply-add: Rust never contracts) are the same on every path.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx512cd+avx2+fma",
    "x86_64+avx2+fma",
))]
fn block_uppers(
    rows: &[i8],
    scales: &[f32],
    errors: &[f32],
    user: &QuantizedUser,
    dots: &mut [i32],
    uppers: &mut [f32],
) {
    block_dots(rows, &user.values, dots);
    for (((upper, dot), scale), error) in uppers.iter_mut().zip(&*dots).zip(scales).zip(errors) {
        *upper =
            *dot as f32 * (scale * user.scale) + (error * user.per_error + scale * user.per_scale);
    }
}

/// The integer dot products of consecutive rows of `p.len()` values with `p`. Common widths get a
/// kernel of their own: with the width known at compile time the loop is unrolled into 16-bit
/// multiply-adds (2.3x faster than the same code over a width known only at run time).
#[inline(always)]
fn block_dots(rows: &[i8], p: &[i16], dots: &mut [i32]) {
    match p.len() {
        16 => fixed_dots::<16>(rows, p, dots),
        32 => fixed_dots::<32>(rows, p, dots),
        64 => fixed_dots::<64>(rows, p, dots),
        128 => fixed_dots::<128>(rows, p, dots),
        256 => fixed_dots::<256>(rows, p, dots),
        width => {
            for (dot, row) in dots.iter_mut().zip(rows.chunks_exact(width)) {
                *dot = dot_i8(row, p);
            }
        }
    }
}

#[inline(always)]
fn fixed_dots<const D: usize>(rows: &[i8], p: &[i16], dots: &mut [i32]) {
    let (rows, _) = rows.as_chunks::<D>();
    let (p, _) = p.as_chunks::<D>();
    let Some(p) = p.first() else { return };
    for (dot, row) in dots.iter_mut().zip(rows) {
        *dot = dot_i8(row, p);
    }
}

/// The exact integer dot product (no overflow: see [`QuantizedMatrix::user`]).
#[inline(always)]
fn dot_i8(q: &[i8], p: &[i16]) -> i32 {
    let (q8, q_tail) = q.as_chunks::<8>();
    let (p8, p_tail) = p.as_chunks::<8>();
    let mut acc = [0i32; 8];
    for (x, y) in q8.iter().zip(p8) {
        for i in 0..8 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = q_tail
        .iter()
        .zip(p_tail)
        .map(|(a, b)| i32::from(*a) * i32::from(*b))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// An f32 ordered by `total_cmp`, for the heap of lower bounds.
#[derive(Debug, Clone, Copy)]
struct Bound(f32);

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bound {}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    #[test]
    fn the_bound_holds_for_every_row() {
        let (rows, dim) = (2000, 48);
        let mut seed = 7;
        let matrix: Vec<f32> = (0..rows * dim)
            .map(|i| lcg(&mut seed) * if i % 97 == 0 { 40.0 } else { 1.0 })
            .collect();
        let q = QuantizedMatrix::new(&matrix, dim).expect("finite");
        for _ in 0..20 {
            let user: Vec<f32> = (0..dim).map(|_| lcg(&mut seed) * 3.0).collect();
            let u = q.user(&user).expect("non-zero");
            for (i, row) in matrix.chunks_exact(dim).enumerate() {
                let exact: f64 = user
                    .iter()
                    .zip(row)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let qrow = &q.values[i * dim..(i + 1) * dim];
                let approx = f64::from(dot_i8(qrow, &u.values))
                    * f64::from(q.scales[i])
                    * f64::from(u.scale);
                let margin = f64::from(q.errors[i] * u.per_error + q.scales[i] * u.per_scale);
                assert!(
                    (exact - approx).abs() <= margin,
                    "row {i}: |{exact} - {approx}| > {margin}"
                );
            }
        }
    }

    #[test]
    fn the_dispatched_kernel_gives_exact_integer_dots_at_every_width() {
        // Whichever of the AVX-512, AVX2 or baseline versions this machine runs, the dots are the
        // exact integer ones: the fixed widths and the run-time width (48, 100) alike.
        let mut seed = 5;
        for dim in [16, 32, 48, 64, 100, 128, 256] {
            let rows = 37;
            let matrix: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
            let q = QuantizedMatrix::new(&matrix, dim).expect("finite");
            let user: Vec<f32> = (0..dim).map(|_| lcg(&mut seed)).collect();
            let u = q.user(&user).expect("non-zero");
            let (mut dots, mut uppers) = (vec![0; rows], vec![0.0; rows]);
            block_uppers(&q.values, &q.scales, &q.errors, &u, &mut dots, &mut uppers);
            for (i, row) in q.values.chunks_exact(dim).enumerate() {
                let exact: i64 = row
                    .iter()
                    .zip(&u.values)
                    .map(|(a, b)| i64::from(*a) * i64::from(*b))
                    .sum();
                assert_eq!(i64::from(dots[i]), exact, "dim {dim}, row {i}");
                let upper = dots[i] as f32 * (q.scales[i] * u.scale)
                    + (q.errors[i] * u.per_error + q.scales[i] * u.per_scale);
                assert_eq!(uppers[i], upper, "dim {dim}, row {i}");
            }
        }
    }

    #[test]
    fn few_rows_survive_on_spread_scores() {
        let (rows, dim) = (20_000, 64);
        let mut seed = 11;
        let matrix: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
        let q = QuantizedMatrix::new(&matrix, dim).expect("finite");
        let user: Vec<f32> = (0..dim).map(|_| lcg(&mut seed)).collect();
        let u = q.user(&user).expect("non-zero");
        let left = survivors(vec![q.bounds(&u, 10, 0..rows, |_| true)], 10);
        assert!(left.len() >= 10);
        assert!(left.len() < 200, "{} of {rows} rows survived", left.len());
    }

    #[test]
    fn zero_and_non_finite_inputs_are_refused() {
        assert!(QuantizedMatrix::new(&[1.0, f32::NAN], 2).is_none());
        let q = QuantizedMatrix::new(&[0.0, 0.0, 1.0, -2.0], 2).expect("finite");
        assert_eq!(q.scales[0], 0.0);
        assert!(q.user(&[0.0, 0.0]).is_none());
        assert!(q.user(&[f32::INFINITY, 1.0]).is_none());
        assert!(q.user(&[1.0]).is_none());
        assert!(q.user(&[1.0, 0.5]).is_some());
    }
}
