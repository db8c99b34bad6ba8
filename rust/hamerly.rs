//! Lloyd iterations that skip the rows whose nearest centre cannot have changed (Hamerly's
//! bounds, in the one-margin form).
//!
//! Every row keeps one number, a lower bound on `(distance to the second-nearest centre) -
//! (distance to its own centre)` at the time it was last measured, offset by the cumulative
//! centre drift `G` of that time. Each iteration adds to `G` the sum of the two largest
//! centre moves, which bounds how much any row's gap can shrink. A row whose stored margin
//! still exceeds the current `G` keeps its label without being read; the other rows get all
//! their distances recomputed (the same arithmetic as the full pass, so the same label).
//!
//! The bounds are conservative for the *computed* distances, not just the exact ones: the
//! relative error of a squared distance summed over `d` features in precision `u` is below
//! `(d + 3) u` (plus an absolute underflow term), and every margin is widened by twice that
//! and rounded down, every drift rounded up. So a skipped row's label is exactly the one a
//! full pass would give, ties included (a tie never passes the strict test).
//!
//! What differs from the full pass is only how the per-centre sums are formed: after the
//! first (full, blocked) iteration they are updated with the rows that changed centre
//! (`kmeans.rs` documents the rule; `tests/reference.py` emulates it).

use crate::kernels::{dist2, Isa};
use crate::pool::{map_chunks_mut2, CHUNK};
use crate::real::Real;

/// Safety factors of the bound test for rows of `d` values of type `T`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slack {
    /// Absolute (underflow) error bound of a computed squared distance (doubled).
    tau: f64,
    /// `1 / (1 - eps)` and `1 / (1 + eps)`.
    inv_lo: f64,
    inv_hi: f64,
    /// `sqrt(1 - eps)` and `sqrt(1 + eps)`.
    lo_f: f64,
    hi_f: f64,
    /// `sqrt(2 tau)`.
    gap: f64,
    /// Relative slack of a drift computed in f64.
    drift_rel: f64,
}

impl Slack {
    pub(crate) fn new<T: Real>(d: usize) -> Slack {
        let f32_input = T::as_f32(&[]).is_some();
        // unit roundoff and smallest subnormal of T
        let (u, tiny) =
            if f32_input { (2f64.powi(-24), 2f64.powi(-149)) } else { (2f64.powi(-53), f64::from_bits(1)) };
        let eps = 2.0 * (d as f64 + 3.0) * u;
        let tau = 2.0 * (d as f64 + 1.0) * tiny;
        Slack {
            tau,
            inv_lo: 1.0 / (1.0 - eps),
            inv_hi: 1.0 / (1.0 + eps),
            lo_f: (1.0 - eps).sqrt() * (1.0 - 4.0 * f64::EPSILON),
            hi_f: (1.0 + eps).sqrt() * (1.0 + 4.0 * f64::EPSILON),
            gap: (2.0 * tau).sqrt() * (1.0 + 4.0 * f64::EPSILON),
            drift_rel: 1.0 + (d as f64 + 8.0) * f64::EPSILON,
        }
    }

    /// The stored margin of a row whose nearest and second-nearest computed squared
    /// distances are `b1` and `b2` (`b2` infinite when there is one centre), measured when
    /// the cumulative drift was `g`; rounded down to f32.
    #[inline(always)]
    fn margin(&self, b1: f64, b2: f64, g: f64) -> f32 {
        if b2.is_infinite() {
            return f32::INFINITY;
        }
        // exact distances lie in [lo, hi] of the computed ones
        let hi = ((b1 + self.tau) * self.inv_lo).sqrt();
        let lo = ((b2 - self.tau).max(0.0) * self.inv_hi).sqrt();
        let m = lo * self.lo_f - hi * self.hi_f - self.gap + g;
        // the f64 rounding of the lines above, with room to spare
        down_f32(m - 8.0 * f64::EPSILON * (lo + hi + self.gap + g.abs()))
    }

    /// What one centre update adds to the cumulative drift: the sum of the two largest
    /// centre moves from `before` to `after` (`k * d` values each, in the input precision
    /// the distances use), widened like the margins.
    pub(crate) fn drift<T: Real>(&self, before: &[T], after: &[T], d: usize) -> f64 {
        let (mut a, mut b) = (0.0f64, 0.0f64);
        for (c0, c1) in before.chunks_exact(d).zip(after.chunks_exact(d)) {
            let sq: f64 = c0.iter().zip(c1).map(|(u, v)| (u.to_f64() - v.to_f64()).powi(2)).sum();
            let v = (sq.sqrt() + 1e-300) * self.drift_rel;
            if v > a {
                b = a;
                a = v;
            } else if v > b {
                b = v;
            }
        }
        (a + b) * self.hi_f * (1.0 + 4.0 * f64::EPSILON)
    }
}

/// `v` rounded to an f32 that is not above it.
#[inline(always)]
fn down_f32(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) > v {
        f.next_down()
    } else {
        f
    }
}

/// `v` rounded to an f32 that is not below it.
#[inline(always)]
pub(crate) fn up_f32(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f.next_up()
    } else {
        f
    }
}

/// The rows' margins before any was measured: every row is recomputed.
pub(crate) const UNMEASURED: f32 = f32::NEG_INFINITY;

/// One chunk's share of a bounded pass (and, summed in chunk order, the whole pass's).
#[derive(Debug, Clone)]
pub(crate) struct Delta {
    /// Per-centre f64 sums of the rows that joined (+) and left (-) the centre, `k * d`.
    pub sums: Vec<f64>,
    /// Rows that joined minus rows that left, per centre.
    pub counts: Vec<i64>,
    /// Labels changed.
    pub changed: u64,
}

impl Delta {
    fn new(k: usize, d: usize) -> Delta {
        Delta { sums: vec![0.0; k * d], counts: vec![0; k], changed: 0 }
    }

    /// Adds `o` (the next chunk's share) to `self`.
    pub(crate) fn add(&mut self, o: &Delta) {
        for (a, b) in self.sums.iter_mut().zip(&o.sums) {
            *a += b;
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.changed += o.changed;
    }
}

/// One bounded Lloyd pass over `x` with centres `centres` (already in the input precision):
/// relabels the rows whose margin does not exceed `g`, stores their new margins, and
/// returns the change of the per-centre sums and counts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bounded_pass<T: Real>(
    x: &[T],
    d: usize,
    centres: &[T],
    labels: &mut [u32],
    margin: &mut [f32],
    g: f64,
    slack: &Slack,
    threads: usize,
) -> Delta {
    let k = centres.len() / d;
    let isa = Isa::detect();
    let gt = up_f32(g);
    let near = Near { centres, d, g, slack, f32c: F32Slack::new(slack, g) };
    let parts = map_chunks_mut2(labels, margin, CHUNK, 1, threads, |ci, lab, mar| {
        let lo = ci * CHUNK;
        let xs = &x[lo * d..(lo + lab.len()) * d];
        let mut delta = Delta::new(k, d);
        let mut moved = Moved::default();
        near.run(isa, xs, gt, lab, mar, &mut moved);
        let (rows, old) = moved.in_row_order();
        delta.changed = rows.len() as u64;
        if !rows.is_empty() {
            add_moved(isa, xs, d, lab, &rows, &old, &mut delta);
        }
        delta
    });
    let mut total = Delta::new(k, d);
    for p in &parts {
        total.add(p);
    }
    total
}

/// Adds every moved row (`rows`, ascending, with their `old` labels) to its new centre's
/// sums and subtracts it from its old one's, in row order, and counts the moves.
fn add_moved<T: Real>(
    isa: Isa,
    xs: &[T],
    d: usize,
    lab: &[u32],
    rows: &[u32],
    old: &[u32],
    delta: &mut Delta,
) {
    for (&i, &o) in rows.iter().zip(old) {
        delta.counts[lab[i as usize] as usize] += 1;
        delta.counts[o as usize] -= 1;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && (1..=16).contains(&d) {
        if let Some(x32) = T::as_f32(xs) {
            // SAFETY: Isa::Avx512 comes from Isa::detect, which checked the features.
            unsafe { avx512::add_moved_f32(x32, d, lab, rows, old, &mut delta.sums) };
            return;
        }
    }
    let _ = isa;
    for (&i, &old) in rows.iter().zip(old) {
        let (i, old, new) = (i as usize, old as usize, lab[i as usize] as usize);
        let row = &xs[i * d..(i + 1) * d];
        for (s, v) in delta.sums[new * d..(new + 1) * d].iter_mut().zip(row) {
            *s += v.to_f64();
        }
        for (s, v) in delta.sums[old * d..(old + 1) * d].iter_mut().zip(row) {
            *s -= v.to_f64();
        }
    }
}

/// The rows of a chunk that changed centre (row in the chunk, old label), listed as two
/// ascending runs: `rows[..split]` and `rows[split..]` (rows measured in whole windows,
/// then rows measured one by one).
#[derive(Debug, Default)]
struct Moved {
    rows: Vec<u32>,
    old: Vec<u32>,
    split: usize,
}

impl Moved {
    fn push(&mut self, row: u32, old: u32) {
        self.rows.push(row);
        self.old.push(old);
    }

    /// The moves in row order: the two runs merged (without branches on the data).
    fn in_row_order(self) -> (Vec<u32>, Vec<u32>) {
        let (a, b) = self.rows.split_at(self.split.min(self.rows.len()));
        if a.is_empty() || b.is_empty() {
            return (self.rows, self.old);
        }
        let (ao, bo) = self.old.split_at(a.len());
        let n = self.rows.len();
        let (mut rows, mut old) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            // the runs never share a row
            let take_a = a[i] < b[j];
            rows.push(if take_a { a[i] } else { b[j] });
            old.push(if take_a { ao[i] } else { bo[j] });
            i += take_a as usize;
            j += !take_a as usize;
        }
        rows.extend_from_slice(&a[i..]);
        rows.extend_from_slice(&b[j..]);
        old.extend_from_slice(&ao[i..]);
        old.extend_from_slice(&bo[j..]);
        (rows, old)
    }
}

/// Measures rows against every centre: the nearest (strict `<`, lowest index on ties) and
/// the row's new margin.
struct Near<'a, T> {
    centres: &'a [T],
    d: usize,
    /// Cumulative drift of the centres.
    g: f64,
    slack: &'a Slack,
    /// The constants of `slack.margin` rounded for the f32 kernel.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    f32c: F32Slack,
}

/// [`Slack`]'s factors as f32, each rounded in the direction that widens the margin, and
/// the drift rounded down.
#[derive(Debug, Clone, Copy)]
struct F32Slack {
    tau: f32,
    inv_lo: f32,
    inv_hi: f32,
    lo_f: f32,
    hi_f: f32,
    gap: f32,
    g: f32,
}

impl F32Slack {
    fn new(s: &Slack, g: f64) -> F32Slack {
        let wide = 1.0 + 4.0 * f64::EPSILON;
        F32Slack {
            tau: up_f32(s.tau),
            inv_lo: up_f32(s.inv_lo * wide),
            inv_hi: down_f32(s.inv_hi / wide),
            lo_f: down_f32(s.lo_f / wide),
            hi_f: up_f32(s.hi_f * wide),
            gap: up_f32(s.gap),
            g: down_f32(g),
        }
    }
}

impl<T: Real> Near<'_, T> {
    /// Measures at least every row of the chunk `xs` whose margin does not exceed `gt`
    /// (measuring more changes nothing but the margins): nearest centre into `label[row]`,
    /// new margin into `margin[row]`; the rows whose label changed go to `moved` with
    /// their old label (in any order). Returns how many rows were measured.
    fn run(
        &self,
        isa: Isa,
        xs: &[T],
        gt: f32,
        label: &mut [u32],
        margin: &mut [f32],
        moved: &mut Moved,
    ) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && (1..=16).contains(&self.d) {
            if let (Some(x32), Some(c32)) = (T::as_f32(xs), T::as_f32(self.centres)) {
                let near = Near { centres: c32, d: self.d, g: self.g, slack: self.slack, f32c: self.f32c };
                // SAFETY: Isa::Avx512 comes from Isa::detect, which checked the features.
                return unsafe { avx512::run_f32(&near, x32, gt, label, margin, moved) };
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: the AVX2 and AVX-512 paths come from Isa::detect, which checked FMA
            return unsafe { self.rows_fma(xs, gt, label, margin, moved) };
        }
        let _ = isa;
        self.rows(xs, gt, label, margin, moved)
    }

    /// [`Near::rows`] compiled with FMA, so that `dist2`'s fused multiply-adds are single
    /// instructions rather than calls into the maths library.
    ///
    /// # Safety
    /// The CPU must support FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn rows_fma(
        &self,
        xs: &[T],
        gt: f32,
        label: &mut [u32],
        margin: &mut [f32],
        moved: &mut Moved,
    ) -> u64 {
        self.rows(xs, gt, label, margin, moved)
    }

    /// [`Near::run`] row by row (the scalar definition).
    #[inline(always)]
    fn rows(&self, xs: &[T], gt: f32, label: &mut [u32], margin: &mut [f32], moved: &mut Moved) -> u64 {
        let d = self.d;
        let one = self.centres.len() == d;
        let mut measured = 0;
        for (i, (l, m)) in label.iter_mut().zip(margin.iter_mut()).enumerate() {
            if *m > gt {
                continue;
            }
            let (j, best, second) = nearest_row(&xs[i * d..(i + 1) * d], self.centres, d);
            if *l != j {
                moved.push(i as u32, *l);
                *l = j;
            }
            let second = if one { f64::INFINITY } else { second.to_f64() };
            *m = self.slack.margin(best.to_f64(), second, self.g);
            measured += 1;
        }
        measured
    }
}

/// Nearest centre of one row, its computed squared distance and the smallest computed
/// squared distance to any other centre (`T::MAX` when there is one centre); the scalar
/// definition.
#[inline(always)]
fn nearest_row<T: Real>(row: &[T], centres: &[T], d: usize) -> (u32, T, T) {
    let (mut arg, mut best, mut second) = (0u32, T::MAX, T::MAX);
    for (j, c) in centres.chunks_exact(d).enumerate() {
        let v = dist2(row, c);
        if v < best {
            second = best;
            best = v;
            arg = j as u32;
        } else if v < second {
            second = v;
        }
    }
    (arg, best, second)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Moved, Near};
    use crate::kernels::avx512::{each_distance, prefetch, transpose};
    use std::arch::x86_64::*;

    /// [`super::add_moved`]'s sums for f32 rows of `1 <= d <= 16` values: the row is
    /// widened to f64 in two registers and added to / subtracted from its centres' sums,
    /// each sum taking the same operations in the same order as the scalar loop, from the
    /// same zeros. Up to 4 centres' sums live in registers (every move updates each of them
    /// under a mask: + the row for its new centre, + (-row), the same as - row, for its old
    /// one); more live 16 wide in a local array.
    ///
    /// # Safety
    /// AVX-512F must be available; `sums` holds `k * d` zeros and every label is `< k`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma")]
    pub(super) unsafe fn add_moved_f32(
        xs: &[f32],
        d: usize,
        lab: &[u32],
        rows: &[u32],
        old: &[u32],
        sums: &mut [f64],
    ) {
        let k = sums.len() / d;
        let acc = match k {
            2 => in_registers::<2>(xs, d, lab, rows, old),
            3 => in_registers::<3>(xs, d, lab, rows, old),
            4 => in_registers::<4>(xs, d, lab, rows, old),
            _ => in_memory(xs, d, lab, rows, old, k),
        };
        let mut v = [0.0f64; 16];
        for (a, s) in acc.iter().zip(sums.chunks_exact_mut(d)) {
            _mm512_storeu_pd(v.as_mut_ptr(), a[0]);
            _mm512_storeu_pd(v.as_mut_ptr().add(8), a[1]);
            s.copy_from_slice(&v[..d]);
        }
    }

    /// Row `i` of `xs` (`d <= 16` values) widened to f64, in two registers.
    #[inline(always)]
    unsafe fn widen_row(xs: &[f32], d: usize, i: usize) -> [__m512d; 2] {
        assert!((i + 1) * d <= xs.len());
        let row = _mm512_maskz_loadu_ps(((1u32 << d) - 1) as __mmask16, xs.as_ptr().add(i * d));
        [_mm512_cvtps_pd(_mm512_castps512_ps256(row)), _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(row))]
    }

    #[inline(always)]
    unsafe fn in_registers<const K: usize>(
        xs: &[f32],
        d: usize,
        lab: &[u32],
        rows: &[u32],
        old: &[u32],
    ) -> Vec<[__m512d; 2]> {
        let mut acc = [[_mm512_setzero_pd(); 2]; K];
        let sign = _mm512_set1_pd(-0.0);
        for (&i, &o) in rows.iter().zip(old) {
            let (i, o) = (i as usize, o as usize);
            let n = lab[i] as usize;
            let r = widen_row(xs, d, i);
            let neg = [_mm512_xor_pd(r[0], sign), _mm512_xor_pd(r[1], sign)];
            for (j, a) in acc.iter_mut().enumerate() {
                let is_new = (n == j) as u8;
                let touched = 0u8.wrapping_sub(is_new | (o == j) as u8);
                let pick = 0u8.wrapping_sub(is_new);
                for h in 0..2 {
                    let v = _mm512_mask_blend_pd(pick, neg[h], r[h]);
                    a[h] = _mm512_mask_add_pd(a[h], touched, a[h], v);
                }
            }
        }
        acc.to_vec()
    }

    #[inline(always)]
    unsafe fn in_memory(
        xs: &[f32],
        d: usize,
        lab: &[u32],
        rows: &[u32],
        old: &[u32],
        k: usize,
    ) -> Vec<[__m512d; 2]> {
        let mut acc = vec![[_mm512_setzero_pd(); 2]; k];
        for (&i, &o) in rows.iter().zip(old) {
            let (i, o) = (i as usize, o as usize);
            let r = widen_row(xs, d, i);
            let an = &mut acc[lab[i] as usize];
            an[0] = _mm512_add_pd(an[0], r[0]);
            an[1] = _mm512_add_pd(an[1], r[1]);
            let ao = &mut acc[o];
            ao[0] = _mm512_sub_pd(ao[0], r[0]);
            ao[1] = _mm512_sub_pd(ao[1], r[1]);
        }
        acc
    }

    /// A window of 16 consecutive rows with at least this many to measure is measured
    /// whole, straight from `x` (sequential reads); sparser rows are gathered 16 at a time.
    const DENSE: u32 = 4;

    /// [`Near::run`] for f32 rows of `1 <= d <= 16` values.
    ///
    /// # Safety
    /// AVX-512F/VL/BW/DQ must be available.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,popcnt,bmi1")]
    pub(super) unsafe fn run_f32(
        n: &Near<'_, f32>,
        xs: &[f32],
        gt: f32,
        label: &mut [u32],
        margin: &mut [f32],
        moved: &mut Moved,
    ) -> u64 {
        macro_rules! go {
            ($($d:literal)*) => {
                match n.d {
                    $($d => run::<$d>(n, xs, gt, label, margin, moved),)*
                    _ => unreachable!("d is checked by the caller"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// Windows (dense) or rows (sparse) ahead of the one being measured whose rows are
    /// prefetched, into L2: once the iterations skip rows, the reads stop being one
    /// sequential stream and the hardware prefetcher no longer runs ahead of them. (4
    /// windows and 16 rows ahead into L1 were 10 % slower per iteration: lloyd_probe,
    /// n = 10^6, d = 10, k = 3, 2 threads, 0.995 -> 0.880 ms.)
    const AHEAD_WINDOWS: usize = 8;
    const AHEAD_ROWS: usize = 32;

    #[inline(always)]
    unsafe fn run<const D: usize>(
        n: &Near<'_, f32>,
        xs: &[f32],
        gt: f32,
        label: &mut [u32],
        margin: &mut [f32],
        moved: &mut Moved,
    ) -> u64 {
        let rows = label.len();
        let g = _mm512_set1_ps(gt);
        // which windows to measure whole and which rows one by one, before any is read;
        // without branches: every window is written to the end of both lists, and each
        // list's end moves past it only when it belongs there (in bounds: before window w,
        // `nd <= w` and `ns + 16 <= 16 * (w + 1) <= rows + 16`, the capacities)
        let full = rows / 16;
        let mut dense: Vec<u32> = Vec::with_capacity(full + 1);
        let mut sparse: Vec<u32> = Vec::with_capacity(rows + 16);
        let (dp, sp) = (dense.as_mut_ptr(), sparse.as_mut_ptr());
        let (mut nd, mut ns) = (0usize, 0usize);
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for w in 0..full {
            let o = w * 16;
            // the next chunk's margins and labels (the same thread's, usually): this scan
            // reads them in a burst that otherwise waits on DRAM (perf: 12 % of an iteration's
            // samples on its first load, 6 % after)
            _mm_prefetch::<_MM_HINT_T0>(margin.as_ptr().wrapping_add(rows + o) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(label.as_ptr().wrapping_add(rows + o) as *const i8);
            let bits = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(_mm512_loadu_ps(margin.as_ptr().add(o)), g);
            let cnt = bits.count_ones();
            let is_dense = cnt >= DENSE;
            *dp.add(nd) = o as u32;
            nd += is_dense as usize;
            let idx = _mm512_add_epi32(lane, _mm512_set1_epi32(o as i32));
            _mm512_storeu_si512(sp.add(ns) as *mut _, _mm512_maskz_compress_epi32(bits, idx));
            ns += if is_dense { 0 } else { cnt as usize };
        }
        dense.set_len(nd);
        sparse.set_len(ns);
        let tail = rows / 16 * 16;
        // margins are never NaN: not above `gt` is `<= gt`
        sparse.extend((tail..rows).filter(|&i| margin[i] <= gt).map(|i| i as u32));
        // the moved rows are listed the same way: at most one per measured row
        let measured = dense.len() * 16 + sparse.len();
        if measured == 0 {
            return 0;
        }
        moved.rows.clear();
        moved.old.clear();
        moved.rows.reserve(measured + 16);
        moved.old.reserve(measured + 16);
        let (mr, mo) = (moved.rows.as_mut_ptr(), moved.old.as_mut_ptr());
        let mut nm = 0usize;
        let mut r = [_mm512_setzero_ps(); 16];
        let mut xt = [_mm512_setzero_ps(); D];
        for (q, &o) in dense.iter().enumerate() {
            if let Some(&a) = dense.get(q + AHEAD_WINDOWS) {
                prefetch::<_MM_HINT_T1>(xs.as_ptr().add(a as usize * D), 16 * D * 4);
            }
            let o = o as usize;
            transpose::<D>(xs.as_ptr().add(o * D), &mut r, &mut xt);
            let (lab, mg) = measure::<D>(n, &xt);
            let at = label.as_mut_ptr().add(o) as *mut __m512i;
            let old = _mm512_loadu_si512(at as *const _);
            let ch = _mm512_cmpneq_epi32_mask(old, lab);
            let idx = _mm512_add_epi32(lane, _mm512_set1_epi32(o as i32));
            nm = record(mr, mo, nm, ch, idx, old);
            _mm512_storeu_si512(at as *mut _, lab);
            _mm512_storeu_ps(margin.as_mut_ptr().add(o), mg);
        }
        moved.split = nm;
        let mut buf = [0.0f32; 16 * 16];
        let (mut lb, mut mb, mut ob) = ([0u32; 16], [0.0f32; 16], [0u32; 16]);
        for (q, group) in sparse.chunks(16).enumerate() {
            for &a in sparse.iter().skip(q * 16 + AHEAD_ROWS).take(16) {
                prefetch::<_MM_HINT_T1>(xs.as_ptr().add(a as usize * D), D * 4);
            }
            for (l, &i) in group.iter().enumerate() {
                buf[l * D..(l + 1) * D].copy_from_slice(&xs[i as usize * D..(i as usize + 1) * D]);
            }
            buf[group.len() * D..16 * D].fill(0.0);
            transpose::<D>(buf.as_ptr(), &mut r, &mut xt);
            let (lab, mg) = measure::<D>(n, &xt);
            _mm512_storeu_si512(lb.as_mut_ptr() as *mut _, lab);
            _mm512_storeu_ps(mb.as_mut_ptr(), mg);
            for (l, &i) in group.iter().enumerate() {
                let i = i as usize;
                ob[l] = label[i];
                label[i] = lb[l];
                margin[i] = mb[l];
            }
            let valid = ((1u32 << group.len()) - 1) as __mmask16;
            let old = _mm512_loadu_si512(ob.as_ptr() as *const _);
            let ch = _mm512_mask_cmpneq_epi32_mask(valid, old, lab);
            let idx = _mm512_maskz_loadu_epi32(valid, group.as_ptr() as *const _);
            nm = record(mr, mo, nm, ch, idx, old);
        }
        moved.rows.set_len(nm);
        moved.old.set_len(nm);
        measured as u64
    }

    /// Appends the lanes of `idx` (rows) and `old` (their old labels) selected by `ch` at
    /// `nm` of the two lists, in lane order; returns the new length. 16 values are written
    /// past `nm`, so the lists need 16 more places than they will hold.
    #[inline(always)]
    unsafe fn record(
        mr: *mut u32,
        mo: *mut u32,
        nm: usize,
        ch: __mmask16,
        idx: __m512i,
        old: __m512i,
    ) -> usize {
        _mm512_storeu_si512(mr.add(nm) as *mut _, _mm512_maskz_compress_epi32(ch, idx));
        _mm512_storeu_si512(mo.add(nm) as *mut _, _mm512_maskz_compress_epi32(ch, old));
        nm + ch.count_ones() as usize
    }

    /// Nearest centre (strict `<` from `f32::MAX`, lowest index on ties; each lane's
    /// arithmetic is that of `dist2`) and margin of the 16 transposed rows `xt`.
    #[inline(always)]
    unsafe fn measure<const D: usize>(n: &Near<'_, f32>, xt: &[__m512; D]) -> (__m512i, __m512) {
        let c = n.centres;
        let k = c.len() / D;
        let mut b = _mm512_set1_ps(f32::MAX);
        let mut s2 = _mm512_set1_ps(f32::MAX);
        let mut a = _mm512_setzero_si512();
        each_distance::<D>(xt, c.as_ptr(), k, |j, s| {
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s, b);
            // a new best demotes the old one to second; otherwise s may be the second
            s2 = _mm512_mask_mov_ps(_mm512_min_ps(s2, s), lt, b);
            b = _mm512_mask_mov_ps(b, lt, s);
            a = _mm512_mask_mov_epi32(a, lt, _mm512_set1_epi32(j as i32));
        });
        if k == 1 {
            return (a, _mm512_set1_ps(f32::INFINITY));
        }
        (a, margins(n, b, s2))
    }

    /// [`super::Slack::margin`] of 16 lanes (k >= 2) in f32, every operation rounded
    /// in the direction that keeps the margin a lower bound (embedded rounding), so no
    /// room for rounding needs adding.
    #[inline(always)]
    unsafe fn margins(n: &Near<'_, f32>, b1: __m512, b2: __m512) -> __m512 {
        const UP: i32 = _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC;
        const DN: i32 = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
        let c = &n.f32c;
        let hi = _mm512_add_round_ps::<UP>(b1, _mm512_set1_ps(c.tau));
        let hi = _mm512_sqrt_round_ps::<UP>(_mm512_mul_round_ps::<UP>(hi, _mm512_set1_ps(c.inv_lo)));
        let hi = _mm512_mul_round_ps::<UP>(hi, _mm512_set1_ps(c.hi_f));
        let lo = _mm512_max_ps(_mm512_sub_round_ps::<DN>(b2, _mm512_set1_ps(c.tau)), _mm512_setzero_ps());
        let lo = _mm512_sqrt_round_ps::<DN>(_mm512_mul_round_ps::<DN>(lo, _mm512_set1_ps(c.inv_hi)));
        let lo = _mm512_mul_round_ps::<DN>(lo, _mm512_set1_ps(c.lo_f));
        let m = _mm512_sub_round_ps::<DN>(_mm512_sub_round_ps::<DN>(lo, hi), _mm512_set1_ps(c.gap));
        _mm512_add_round_ps::<DN>(m, _mm512_set1_ps(c.g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Every path's margins are lower bounds of the exact gap between the second-nearest
    /// and the nearest centre (plus the drift they were measured at), and every path labels
    /// like the scalar definition.
    fn check<T: Real>(d: usize, k: usize) {
        let mut r = SplitMix64::new((d * 31 + k) as u64);
        let n = 1000;
        let x: Vec<T> = (0..n * d).map(|_| T::from_f64(r.uniform() * 4.0 - 2.0)).collect();
        let c: Vec<T> = (0..k * d).map(|_| T::from_f64(r.uniform() - 0.5)).collect();
        let g = 0.75;
        let slack = Slack::new::<T>(d);
        let near = Near { centres: &c[..], d, g, slack: &slack, f32c: F32Slack::new(&slack, g) };
        for isa in Isa::available() {
            let mut label = vec![u32::MAX; n];
            let mut margin = vec![UNMEASURED; n];
            let mut moved = Moved::default();
            assert_eq!(near.run(isa, &x, up_f32(g), &mut label, &mut margin, &mut moved), n as u64);
            let (rows, old) = moved.in_row_order();
            assert_eq!(rows, (0..n as u32).collect::<Vec<_>>(), "{isa:?}");
            assert_eq!(old, vec![u32::MAX; n], "{isa:?}");
            for i in 0..n {
                let row = &x[i * d..(i + 1) * d];
                let (j, _, _) = nearest_row(row, &c, d);
                assert_eq!(label[i], j, "{isa:?} row {i}");
                let exact: Vec<f64> = c
                    .chunks_exact(d)
                    .map(|cc| {
                        row.iter().zip(cc).map(|(a, b)| (a.to_f64() - b.to_f64()).powi(2)).sum::<f64>().sqrt()
                    })
                    .collect();
                let own = exact[j as usize];
                let other = exact
                    .iter()
                    .enumerate()
                    .filter(|&(jj, _)| jj != j as usize)
                    .map(|(_, v)| *v)
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (margin[i] as f64) <= other - own + g,
                    "{isa:?} row {i}: {} > {}",
                    margin[i],
                    other - own + g
                );
                if k > 1 {
                    // and not loose beyond the rounding room
                    assert!((margin[i] as f64) >= other - own + g - 1e-3, "{isa:?} row {i}");
                }
            }
        }
    }

    #[test]
    fn margins_are_lower_bounds_on_every_path() {
        for d in [1, 3, 10, 16, 17] {
            for k in [1, 2, 3, 5, 8] {
                check::<f32>(d, k);
                check::<f64>(d, k);
            }
        }
    }

    #[test]
    fn drift_takes_the_two_largest_moves() {
        let s = Slack::new::<f64>(1);
        // moves of 1, 3 and 2
        let g = s.drift(&[0.0f64, 0.0, 0.0], &[1.0, -3.0, 2.0], 1);
        assert!((5.0..5.0 * (1.0 + 1e-9)).contains(&g));
    }
}
