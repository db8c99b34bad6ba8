//! Lane-parallel k-means kernels: nearest-centre assignment fused with the Lloyd
//! accumulation, and the k-means++ potential sums.
//!
//! Conventions (they define the results; `kmeans.rs` documents them for users):
//! - rows are processed in tiles of [`LANES`] rows; a tile is transposed to feature-major
//!   order so that the distances of all its rows to one centre come out of lane-wise
//!   operations. Each lane computes exactly the scalar sum `s = e_0*e_0`, then
//!   `s = s + e_t*e_t` for t = 1..d, with `e_t = x_t - c_t` in the input precision (the
//!   scalar definition starts from `0 + e_0*e_0`, which equals `e_0*e_0` exactly because a
//!   square is never -0). Nearest centre: strict `<` from `T::MAX`, ties to the lowest index.
//! - the inertia goes to [`LANES`] f64 accumulators: row `i` of a chunk (counted from the
//!   chunk start) adds its distance to accumulator `i % LANES`, in row order; the caller
//!   combines the accumulators in lane order.
//! - Lloyd's per-centre sums are blocked: the chunk is cut into blocks of [`BLOCK_ROWS`]
//!   rows; within a block, row `i` adds its values, in the input precision, to the partial
//!   sum of lane `i % LANES` and of its centre (in row order, from 0); at the end of every
//!   block each partial is widened to f64, added to that lane's f64 accumulator and reset.
//!   The lanes are then combined in lane order, like the inertia. (f32 partials over 16
//!   rows halve the floating-point work of the accumulation; they carry about 1e-7 relative
//!   error into a centre, against 1e-5 for scikit-learn's all-f32 sums.)
//! - the k-means++ potentials are plain sequential f64 sums over the rows of a chunk.
//!
//! Every instruction-set path runs the same generic code, only compiled with different
//! target features, and Rust never contracts `a * b + c` into an FMA: the per-lane
//! operations, and so the results, are identical on every CPU.

use crate::real::{all_finite, Real};

/// Rows per tile, and number of per-lane f64 accumulators.
pub const LANES: usize = 16;

/// Rows per block of the Lloyd accumulation (16 rows per lane).
pub const BLOCK_ROWS: usize = 256;

/// The instruction set the kernels are compiled for (detected once per pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// The build's baseline target features (SSE2 on x86-64).
    Portable,
    /// x86-64 with AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512 (F, VL, BW, DQ) and FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The widest path this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every path this CPU can run (for tests and benchmarks).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if Isa::detect() == Isa::Avx512 {
                v.push(Isa::Avx512);
            }
        }
        v
    }
}

/// One chunk of a Lloyd pass: labels every row and, per centre, counts its rows and (if
/// `sums` is not empty) sums them; the f64 sums and the inertia go through the per-lane
/// accumulators, combined in lane order before they are added to the outputs.
pub struct Assign<'a, T> {
    /// The chunk's rows, `labels.len() * d` values.
    pub x: &'a [T],
    pub d: usize,
    /// Centres in the input precision, `k * d` values.
    pub centres: &'a [T],
    /// Labels of the chunk's rows: read (to count changes) and overwritten.
    pub labels: &'a mut [u32],
    /// Per-centre sums, `k * d` values (added to), or empty to skip the accumulation.
    pub sums: &'a mut [f64],
    /// Rows per centre, `k` values (added to).
    pub counts: &'a mut [u64],
    /// Sum of the distances of the rows to their nearest centre (added to).
    pub inertia: f64,
    /// How many labels changed (added to).
    pub changed: u64,
    /// Also look for NaN and infinities among the rows (the AVX-512 f32 kernel does it on
    /// the transposed tiles, every other path with a scan of the chunk first)...
    pub check_finite: bool,
    /// ... and set this when there is one.
    pub non_finite: bool,
}

/// How a k-means++ pass updates `closest` before summing the candidates' potentials.
#[derive(Debug, Clone, Copy)]
pub enum Fold<'a, T> {
    /// Leave `closest` as it is.
    Keep,
    /// `closest = dist(row, c)`.
    Set(&'a [T]),
    /// `closest = min(closest, dist(row, c))`.
    Min(&'a [T]),
}

/// One chunk of a k-means++ pass.
pub struct Potential<'a, T> {
    /// The chunk's rows, `closest.len() * d` values.
    pub x: &'a [T],
    pub d: usize,
    /// Squared distance (f64) of every row of the chunk to its nearest chosen centre.
    pub closest: &'a mut [f64],
    pub fold: Fold<'a, T>,
    /// Also add the (updated) `closest` into `sums[0]`, sequentially.
    pub sum_closest: bool,
    /// Candidate centres, `m * d` values: `sums[sum_closest as usize + t]` gets the
    /// sequential sum of `min(closest, dist(row, cand_t))`.
    pub cands: &'a [T],
    pub sums: &'a mut [f64],
}

/// Labels one chunk (see [`Assign`]).
pub fn assign_chunk<T: Real>(isa: Isa, a: &mut Assign<'_, T>) {
    match isa {
        // SAFETY: `Isa::Avx512` / `Isa::Avx2` come from `Isa::detect`/`Isa::available`,
        // which checked that the CPU supports the features these functions enable.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { assign_avx512(a) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { assign_avx2(a) },
        Isa::Portable => assign_any::<T, false>(a),
    }
}

/// Runs one chunk of a k-means++ pass (see [`Potential`]).
pub fn potential_chunk<T: Real>(isa: Isa, p: &mut Potential<'_, T>) {
    match isa {
        // SAFETY: `Isa::Avx512` / `Isa::Avx2` come from `Isa::detect`/`Isa::available`,
        // which checked that the CPU supports the features these functions enable.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { potential_avx512(p) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { potential_avx2(p) },
        Isa::Portable => potential_any::<T, false>(p),
    }
}

/// The inertia of one chunk whose rows already carry their nearest-centre labels: bitwise
/// what [`assign_chunk`] adds to `inertia` for these rows (a nearest centre's distance is
/// the same computation whichever tied centre the label names), for a fraction of its
/// work: one distance per row instead of `k`, no labels written, nothing counted. `None`
/// where there is no such path (the caller then runs the assignment): it needs AVX-512,
/// f32 rows of `1 <= d <= 16` values and at most 16 centres.
pub fn labelled_inertia_chunk<T: Real>(
    isa: Isa,
    x: &[T],
    d: usize,
    centres: &[T],
    labels: &[u32],
) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && (1..=16).contains(&d) && centres.len() <= LANES * d {
        if let (Some(x), Some(c)) = (T::as_f32(x), T::as_f32(centres)) {
            // SAFETY: `Isa::Avx512` comes from `Isa::detect`/`Isa::available`, which checked
            // the features; d and the number of centres are checked just above.
            return Some(unsafe { avx512::labelled_inertia_f32(x, d, c, labels) });
        }
    }
    let _ = (isa, x, d, centres, labels);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,popcnt")]
unsafe fn assign_avx512<T: Real>(a: &mut Assign<'_, T>) {
    assign_any::<T, true>(a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx,fma,popcnt")]
unsafe fn assign_avx2<T: Real>(a: &mut Assign<'_, T>) {
    assign_any::<T, false>(a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,popcnt")]
unsafe fn potential_avx512<T: Real>(p: &mut Potential<'_, T>) {
    potential_any::<T, true>(p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx,fma,popcnt")]
unsafe fn potential_avx2<T: Real>(p: &mut Potential<'_, T>) {
    potential_any::<T, false>(p)
}

/// Dispatches on the row length: a fully unrolled kernel for d = 1..=16, the row-wise
/// kernel (same results) above.
macro_rules! by_dim {
    ($d:expr, $tiled:ident, $rows:ident, $arg:expr) => {
        match $d {
            1 => $tiled::<T, 1, X512>($arg),
            2 => $tiled::<T, 2, X512>($arg),
            3 => $tiled::<T, 3, X512>($arg),
            4 => $tiled::<T, 4, X512>($arg),
            5 => $tiled::<T, 5, X512>($arg),
            6 => $tiled::<T, 6, X512>($arg),
            7 => $tiled::<T, 7, X512>($arg),
            8 => $tiled::<T, 8, X512>($arg),
            9 => $tiled::<T, 9, X512>($arg),
            10 => $tiled::<T, 10, X512>($arg),
            11 => $tiled::<T, 11, X512>($arg),
            12 => $tiled::<T, 12, X512>($arg),
            13 => $tiled::<T, 13, X512>($arg),
            14 => $tiled::<T, 14, X512>($arg),
            15 => $tiled::<T, 15, X512>($arg),
            16 => $tiled::<T, 16, X512>($arg),
            _ => $rows($arg),
        }
    };
}

/// `X512`: compiled with AVX-512 enabled (only data movement depends on it).
#[inline(always)]
fn assign_any<T: Real, const X512: bool>(a: &mut Assign<'_, T>) {
    by_dim!(a.d, assign_tiled, assign_rows, a)
}

#[inline(always)]
fn potential_any<T: Real, const X512: bool>(p: &mut Potential<'_, T>) {
    by_dim!(p.d, potential_tiled, potential_rows, p)
}

/// Squared distance of one row to one centre (the scalar definition): `e = x - c` per
/// feature, `s = e0 * e0`, then `s = fma(e, e, s)` in feature order (one rounding per
/// feature; every path computes exactly this, with the CPU's fused multiply-add).
#[inline(always)]
pub fn dist2<T: Real>(x: &[T], c: &[T]) -> T {
    let mut it = x.iter().zip(c);
    let Some((a, b)) = it.next() else {
        return T::ZERO;
    };
    let e = a.sub(*b);
    let mut s = e.mul(e);
    for (a, b) in it {
        let e = a.sub(*b);
        s = e.mul_add(e, s);
    }
    s
}

/// Loads rows `[0, m)` of a tile into feature-major order (`xt`) and into rows padded with
/// zeros to 16 values (`rowsp`, only with `ROWS`); other lanes are zero.
#[inline(always)]
fn load_tile<T: Real, const D: usize, const ROWS: bool>(
    rows: &[T],
    m: usize,
    xt: &mut [[T; LANES]; D],
    rowsp: &mut [[T; LANES]; LANES],
) {
    if m == LANES {
        let rows = &rows[..LANES * D];
        for l in 0..LANES {
            for t in 0..D {
                xt[t][l] = rows[l * D + t];
            }
        }
    } else {
        for col in xt.iter_mut() {
            *col = [T::ZERO; LANES];
        }
        for (l, row) in rows[..m * D].chunks_exact(D).enumerate() {
            for t in 0..D {
                xt[t][l] = row[t];
            }
        }
    }
    if ROWS {
        for (l, rp) in rowsp.iter_mut().enumerate() {
            *rp = [T::ZERO; LANES];
            if l < m {
                rp[..D].copy_from_slice(&rows[l * D..(l + 1) * D]);
            }
        }
    }
}

/// Squared distances of the tile's lanes to one centre.
#[inline(always)]
fn tile_dist<T: Real, const D: usize>(xt: &[[T; LANES]; D], c: &[T; D]) -> [T; LANES] {
    let mut s = [T::ZERO; LANES];
    let c0 = c[0];
    for l in 0..LANES {
        let e = xt[0][l].sub(c0);
        s[l] = e.mul(e);
    }
    for t in 1..D {
        let ct = c[t];
        for l in 0..LANES {
            let e = xt[t][l].sub(ct);
            s[l] = e.mul_add(e, s[l]);
        }
    }
    s
}

#[inline(always)]
fn assign_tiled<T: Real, const D: usize, const X512: bool>(a: &mut Assign<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    if X512 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked just above), so this only renames the type; X512 means
        // this code is inlined into a function compiled with AVX-512 enabled, which
        // `Isa::detect` checked before calling it.
        unsafe { avx512::assign_f32::<D>(&mut *(a as *mut Assign<'_, T>).cast::<Assign<'_, f32>>()) };
        return;
    }
    scan_if_asked(a);
    let n = a.labels.len();
    let k = a.centres.len() / D;
    let accumulate = !a.sums.is_empty();
    // per-lane sums and block partials, rows padded to P values: lane-major [lane][centre][P]
    let pw = if D <= 8 { 8 } else { LANES };
    let mut lane_sums = vec![0.0f64; if accumulate { LANES * k * pw } else { 0 }];
    let mut part = vec![T::ZERO; lane_sums.len()];
    let mut counts = vec![0u64; k];
    let mut lane_inertia = [0.0f64; LANES];
    let x = &a.x[..n * D];
    let n_tiles = n.div_ceil(LANES);
    let mut xt = [[T::ZERO; LANES]; D];
    let mut rowsp = [[T::ZERO; LANES]; LANES];
    let mut changed = 0u64;
    for (ti, rows) in x.chunks(LANES * D).enumerate() {
        let m = rows.len() / D;
        if accumulate {
            load_tile::<T, D, true>(rows, m, &mut xt, &mut rowsp);
        } else {
            load_tile::<T, D, false>(rows, m, &mut xt, &mut rowsp);
        }
        let mut best = [T::MAX; LANES];
        let mut arg = [0u32; LANES];
        for (j, c) in a.centres.chunks_exact(D).enumerate() {
            let s = tile_dist(&xt, c.try_into().unwrap());
            for l in 0..LANES {
                let lt = s[l] < best[l];
                best[l] = if lt { s[l] } else { best[l] };
                arg[l] = if lt { j as u32 } else { arg[l] };
            }
        }
        let lab = &mut a.labels[ti * LANES..ti * LANES + m];
        if m == LANES {
            let lab: &mut [u32; LANES] = lab.try_into().unwrap();
            let mut ch = 0u32;
            for l in 0..LANES {
                ch += (lab[l] != arg[l]) as u32;
                lab[l] = arg[l];
                lane_inertia[l] += best[l].to_f64();
            }
            changed += ch as u64;
        } else {
            for l in 0..m {
                changed += (lab[l] != arg[l]) as u64;
                lab[l] = arg[l];
                lane_inertia[l] += best[l].to_f64();
            }
        }
        for l in 0..m {
            let j = arg[l] as usize;
            counts[j] += 1;
            if accumulate {
                let o = (l * k + j) * pw;
                if D <= 8 {
                    let s: &mut [T; 8] = (&mut part[o..o + 8]).try_into().unwrap();
                    for t in 0..8 {
                        s[t] = s[t].add(rowsp[l][t]);
                    }
                } else {
                    let s: &mut [T; LANES] = (&mut part[o..o + LANES]).try_into().unwrap();
                    for t in 0..LANES {
                        s[t] = s[t].add(rowsp[l][t]);
                    }
                }
            }
        }
        if accumulate && ((ti + 1) % TILES_PER_BLOCK == 0 || ti + 1 == n_tiles) {
            flush(&mut part, &mut lane_sums);
        }
    }
    finish_assign(a, &lane_sums, pw, &counts, &lane_inertia, changed);
}

/// Tiles per block of the Lloyd accumulation.
const TILES_PER_BLOCK: usize = BLOCK_ROWS / LANES;

/// End of a block: every partial sum widened and added to its f64 accumulator, then reset.
#[inline(always)]
fn flush<T: Real>(part: &mut [T], lane_sums: &mut [f64]) {
    for (p, s) in part.iter_mut().zip(lane_sums.iter_mut()) {
        *s += p.to_f64();
        *p = T::ZERO;
    }
}

/// Combines the per-lane accumulators in lane order and adds them, and the per-centre row
/// counts, to the outputs.
#[inline(always)]
fn finish_assign<T: Real>(
    a: &mut Assign<'_, T>,
    lane_sums: &[f64],
    pw: usize,
    counts: &[u64],
    lane_inertia: &[f64; LANES],
    changed: u64,
) {
    let d = a.d;
    let k = a.counts.len();
    if !a.sums.is_empty() {
        let mut tot = vec![0.0f64; k * d];
        for lane in lane_sums.chunks_exact(k * pw) {
            for (t, s) in tot.chunks_exact_mut(d).zip(lane.chunks_exact(pw)) {
                for (a, b) in t.iter_mut().zip(s) {
                    *a += b;
                }
            }
        }
        for (a, b) in a.sums.iter_mut().zip(&tot) {
            *a += b;
        }
    }
    finish_counts(a, counts, lane_inertia, changed);
}

/// The rest of [`finish_assign`]: the counts, the inertia's lanes in lane order, the changes.
#[inline(always)]
fn finish_counts<T>(a: &mut Assign<'_, T>, counts: &[u64], lane_inertia: &[f64; LANES], changed: u64) {
    for (a, b) in a.counts.iter_mut().zip(counts) {
        *a += b;
    }
    let mut inertia = 0.0;
    for v in lane_inertia {
        inertia += v;
    }
    a.inertia += inertia;
    a.changed += changed;
}

/// [`Assign::check_finite`] for the kernels that do not check their tiles as they load
/// them: one scan of the chunk first.
#[inline(always)]
fn scan_if_asked<T: Real>(a: &mut Assign<'_, T>) {
    if a.check_finite {
        a.non_finite |= !all_finite(a.x);
    }
}

/// The row-wise kernel for any d, with the same conventions as [`assign_tiled`].
#[inline(always)]
fn assign_rows<T: Real>(a: &mut Assign<'_, T>) {
    scan_if_asked(a);
    let d = a.d;
    let k = a.centres.len() / d;
    let accumulate = !a.sums.is_empty();
    let mut lane_sums = vec![0.0f64; if accumulate { LANES * k * d } else { 0 }];
    let mut part = vec![T::ZERO; lane_sums.len()];
    let mut counts = vec![0u64; k];
    let mut lane_inertia = [0.0f64; LANES];
    let mut changed = 0u64;
    let n = a.labels.len();
    for (i, (row, lab)) in a.x.chunks_exact(d).zip(a.labels.iter_mut()).enumerate() {
        let l = i % LANES;
        let mut best = T::MAX;
        let mut j = 0usize;
        for (jj, c) in a.centres.chunks_exact(d).enumerate() {
            let v = dist2(row, c);
            if v < best {
                best = v;
                j = jj;
            }
        }
        changed += (*lab != j as u32) as u64;
        *lab = j as u32;
        lane_inertia[l] += best.to_f64();
        counts[j] += 1;
        if accumulate {
            let s = &mut part[(l * k + j) * d..(l * k + j + 1) * d];
            for (acc, v) in s.iter_mut().zip(row) {
                *acc = acc.add(*v);
            }
            if (i + 1) % BLOCK_ROWS == 0 || i + 1 == n {
                flush(&mut part, &mut lane_sums);
            }
        }
    }
    finish_assign(a, &lane_sums, d, &counts, &lane_inertia, changed);
}

#[inline(always)]
fn potential_tiled<T: Real, const D: usize, const X512: bool>(p: &mut Potential<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    if X512 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: as in `assign_tiled`.
        unsafe {
            avx512::potential_f32::<D>(&mut *(p as *mut Potential<'_, T>).cast::<Potential<'_, f32>>())
        };
        return;
    }
    let n = p.closest.len();
    let x = &p.x[..n * D];
    let off = p.sum_closest as usize;
    let mut xt = [[T::ZERO; LANES]; D];
    let mut rowsp = [[T::ZERO; LANES]; LANES];
    for (ti, rows) in x.chunks(LANES * D).enumerate() {
        let m = rows.len() / D;
        load_tile::<T, D, false>(rows, m, &mut xt, &mut rowsp);
        let cl = &mut p.closest[ti * LANES..ti * LANES + m];
        let mut lanes = [0.0f64; LANES];
        lanes[..m].copy_from_slice(cl);
        match p.fold {
            Fold::Keep => {}
            Fold::Set(c) => {
                let s = tile_dist(&xt, c.try_into().unwrap());
                for l in 0..LANES {
                    lanes[l] = s[l].to_f64();
                }
                cl.copy_from_slice(&lanes[..m]);
            }
            Fold::Min(c) => {
                let s = tile_dist(&xt, c.try_into().unwrap());
                for l in 0..LANES {
                    let v = s[l].to_f64();
                    lanes[l] = if v < lanes[l] { v } else { lanes[l] };
                }
                cl.copy_from_slice(&lanes[..m]);
            }
        }
        if p.sum_closest {
            let mut acc = p.sums[0];
            for &v in &lanes[..m] {
                acc += v;
            }
            p.sums[0] = acc;
        }
        for (t, c) in p.cands.chunks_exact(D).enumerate() {
            let s = tile_dist(&xt, c.try_into().unwrap());
            let mut v = [0.0f64; LANES];
            for l in 0..LANES {
                let e = s[l].to_f64();
                v[l] = if e < lanes[l] { e } else { lanes[l] };
            }
            let mut acc = p.sums[off + t];
            for &e in &v[..m] {
                acc += e;
            }
            p.sums[off + t] = acc;
        }
    }
}

/// The row-wise k-means++ kernel for any d, with the same results as [`potential_tiled`].
#[inline(always)]
fn potential_rows<T: Real>(p: &mut Potential<'_, T>) {
    let d = p.d;
    let off = p.sum_closest as usize;
    for (row, cl) in p.x.chunks_exact(d).zip(p.closest.iter_mut()) {
        match p.fold {
            Fold::Keep => {}
            Fold::Set(c) => *cl = dist2(row, c).to_f64(),
            Fold::Min(c) => {
                let v = dist2(row, c).to_f64();
                if v < *cl {
                    *cl = v;
                }
            }
        }
        if p.sum_closest {
            p.sums[0] += *cl;
        }
        for (t, c) in p.cands.chunks_exact(d).enumerate() {
            let v = dist2(row, c).to_f64();
            p.sums[off + t] += if v < *cl { v } else { *cl };
        }
    }
}

/// AVX-512 versions of the tiled kernels for f32 (the same per-lane operations, in the
/// same order, as the generic code; only the data movement differs).
///
/// The AVX-512 intrinsics are stable since Rust 1.89 (the crate's `rust-version`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::{finish_counts, Assign, Fold, Potential, LANES};
    use std::arch::x86_64::*;

    /// Tiles ahead of the one being read whose rows the full passes prefetch into L2: with
    /// the hardware prefetcher alone the sequential reads still wait on DRAM (a Lloyd pass
    /// over 10^6 x 10 rows on 2 threads: 2.52 -> 2.27 ms; 16 or 32 tiles ahead into L1, or
    /// every other line, were slower).
    pub(crate) const AHEAD_TILES: usize = 64;

    /// Prefetches the lines of the `bytes` bytes at `p` with the locality hint `HINT`; a
    /// prefetch never faults, so `p` may lie past the data.
    #[inline(always)]
    pub(crate) unsafe fn prefetch<const HINT: i32>(p: *const impl Sized, bytes: usize) {
        let p = p as *const i8;
        let mut o = 0;
        while o < bytes {
            _mm_prefetch::<HINT>(p.wrapping_add(o));
            o += 64;
        }
        // the last byte's line, when the range does not start on a line
        _mm_prefetch::<HINT>(p.wrapping_add(bytes - 1));
    }

    /// Transposes 16 rows of `D <= 16` f32 values (row-major at `x`) into `D` columns
    /// (`xt`); `r` is scratch. Rows of 5 to 10 values go through 256-bit registers, 8 rows
    /// at a time ([`rows8`]): in 512-bit registers each row would carry 6 or more padding
    /// lanes through every shuffle, and Zen 4 runs a 512-bit shuffle as two 256-bit ones.
    ///
    /// # Safety
    /// AVX-512F must be available and `x` valid for `16 * D` reads.
    #[inline(always)]
    pub(crate) unsafe fn transpose<const D: usize>(
        x: *const f32,
        r: &mut [__m512; 16],
        xt: &mut [__m512; D],
    ) {
        if (5..=10).contains(&D) {
            let (mut lo, mut hi) = ([_mm256_setzero_ps(); 10], [_mm256_setzero_ps(); 10]);
            rows8::<D>(x, &mut lo);
            rows8::<D>(x.add(8 * D), &mut hi);
            for ((c, l), h) in xt.iter_mut().zip(lo).zip(hi) {
                let v =
                    _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(l)), _mm256_castps_pd(h));
                *c = _mm512_castpd_ps(v);
            }
            return;
        }
        transpose_512::<D>(x, r, xt);
    }

    /// [`transpose`] in 512-bit registers for every `D <= 16`: `r` gets the rows,
    /// zero-padded to 16 values. (The FairAdvantage tiles use it for every group size:
    /// compiled for AVX-512F alone, they ran no faster through [`rows8`].)
    ///
    /// # Safety
    /// AVX-512F must be available and `x` valid for `16 * D` reads.
    #[inline(always)]
    pub(crate) unsafe fn transpose_512<const D: usize>(
        x: *const f32,
        r: &mut [__m512; 16],
        xt: &mut [__m512; D],
    ) {
        let mask = ((1u32 << D) - 1) as __mmask16;
        for (l, v) in r.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, x.add(l * D));
        }
        // 4x4 blocks inside 128-bit lanes, then 128-bit lanes across registers
        let mut a = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut b = [_mm512_setzero_ps(); 16];
        for i in 0..4 {
            for h in 0..2 {
                let x0 = _mm512_castps_pd(a[4 * i + h]);
                let x1 = _mm512_castps_pd(a[4 * i + 2 + h]);
                b[4 * i + h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x1));
                b[4 * i + 2 + h] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x1));
            }
        }
        let mut c = [_mm512_setzero_ps(); 16];
        for i in 0..2 {
            for h in 0..4 {
                c[8 * i + h] = _mm512_shuffle_f32x4::<0x88>(b[8 * i + h], b[8 * i + 4 + h]);
                c[8 * i + 4 + h] = _mm512_shuffle_f32x4::<0xDD>(b[8 * i + h], b[8 * i + 4 + h]);
            }
        }
        // b[4i + m] holds column 4q + [0, 2, 1, 3][m] in 128-bit lane q
        const CM: [usize; 4] = [0, 2, 1, 3];
        for h in 0..8 {
            let col = 4 * (h / 4) + CM[h % 4];
            if col < D {
                xt[col] = _mm512_shuffle_f32x4::<0x88>(c[h], c[8 + h]);
            }
            if col + 8 < D {
                xt[col + 8] = _mm512_shuffle_f32x4::<0xDD>(c[h], c[8 + h]);
            }
        }
    }

    /// The 8 rows of `5 <= D <= 10` f32 values at `x` as columns of 8 lanes: features 0..8
    /// by the usual 8 x 8 transpose (unpack, shuffle, 128-bit lane swap), features 8 and 9
    /// from one 64-bit (or 32-bit) load per row, paired and shuffled.
    ///
    /// # Safety
    /// AVX-512F must be available and `x` valid for `8 * D` reads.
    #[inline(always)]
    unsafe fn rows8<const D: usize>(x: *const f32, out: &mut [__m256; 10]) {
        let r: [__m256; 8] = std::array::from_fn(|i| {
            if D >= 8 {
                _mm256_loadu_ps(x.add(i * D))
            } else {
                _mm512_castps512_ps256(_mm512_maskz_loadu_ps(((1u32 << D) - 1) as __mmask16, x.add(i * D)))
            }
        });
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4h + m]: rows 4h..4h+4, feature m in the low 128-bit lane, m + 4 in the high one
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (h, m) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + m / 2], t[4 * h + 2 + m / 2]);
            if m % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        for j in 0..4 {
            if j < D {
                out[j] = _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4]);
            }
            if j + 4 < D {
                out[j + 4] = _mm256_permute2f128_ps::<0x31>(u[j], u[j + 4]);
            }
        }
        if D > 8 {
            let tail = |i: usize| {
                let p = x.add(i * D + 8);
                if D == 9 {
                    _mm_load_ss(p)
                } else {
                    _mm_castsi128_ps(_mm_cvtsi64_si128(std::ptr::read_unaligned(p as *const i64)))
                }
            };
            let pair = |a: usize, b: usize| _mm_movelh_ps(tail(a), tail(b));
            let p = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(pair(0, 1)), pair(4, 5));
            let q = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(pair(2, 3)), pair(6, 7));
            out[8] = _mm256_shuffle_ps::<0x88>(p, q);
            if D > 9 {
                out[9] = _mm256_shuffle_ps::<0xDD>(p, q);
            }
        }
    }

    /// Squared distances of the 16 lanes to the centre at `c` (`s = e0*e0`, then
    /// `s = fma(e, e, s)` in feature order, as [`super::dist2`]).
    ///
    /// # Safety
    /// AVX-512F must be available and `c` valid for `D` reads.
    #[inline(always)]
    unsafe fn dist<const D: usize>(xt: &[__m512; D], c: *const f32) -> __m512 {
        let e = _mm512_sub_ps(xt[0], _mm512_set1_ps(*c));
        let mut s = _mm512_mul_ps(e, e);
        for (t, x) in xt.iter().enumerate().skip(1) {
            let e = _mm512_sub_ps(*x, _mm512_set1_ps(*c.add(t)));
            s = _mm512_fmadd_ps(e, e, s);
        }
        s
    }

    /// [`super::labelled_inertia_chunk`] for f32 rows.
    ///
    /// # Safety
    /// AVX-512F/VL/BW/DQ must be available, `1 <= d <= 16`, and `c` holds at most 16
    /// centres of `d` values.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma,popcnt")]
    pub(super) unsafe fn labelled_inertia_f32(x: &[f32], d: usize, c: &[f32], labels: &[u32]) -> f64 {
        macro_rules! go {
            ($($d:literal)*) => {
                match d {
                    $($d => labelled_inertia::<$d>(x, c, labels),)*
                    _ => unreachable!("d is checked by the caller"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// Per tile: the labelled centre's coordinates gathered per lane by one permutation
    /// per feature, then exactly [`dist`]'s operations, and the inertia's per-lane f64
    /// accumulation of [`assign_f32`] (padded lanes add +0.0).
    #[inline(always)]
    unsafe fn labelled_inertia<const D: usize>(x: &[f32], c: &[f32], labels: &[u32]) -> f64 {
        let n = labels.len();
        let x = &x[..n * D];
        let k = c.len() / D;
        // cols[t]: coordinate t of centre j in lane j
        let mut cols = [_mm512_setzero_ps(); D];
        for (t, col) in cols.iter_mut().enumerate() {
            let mut v = [0.0f32; LANES];
            for (j, vj) in v.iter_mut().enumerate().take(k) {
                *vj = c[j * D + t];
            }
            *col = _mm512_loadu_ps(v.as_ptr());
        }
        let mut inert = [_mm512_setzero_pd(); 2];
        let mut r = [_mm512_setzero_ps(); 16];
        let mut xt = [_mm512_setzero_ps(); D];
        let mut pad = [0.0f32; 16 * 16];
        for ti in 0..n.div_ceil(LANES) {
            let m = LANES.min(n - ti * LANES);
            let valid: __mmask16 = if m == LANES { 0xFFFF } else { ((1u32 << m) - 1) as __mmask16 };
            let src = if m == LANES {
                x[ti * LANES * D..(ti + 1) * LANES * D].as_ptr()
            } else {
                // only the last tile is partial: the rest of `pad` stays zero
                pad[..m * D].copy_from_slice(&x[ti * LANES * D..]);
                pad.as_ptr()
            };
            prefetch::<_MM_HINT_T1>(x.as_ptr().wrapping_add((ti + AHEAD_TILES) * LANES * D), LANES * D * 4);
            transpose::<D>(src, &mut r, &mut xt);
            let lab = _mm512_maskz_loadu_epi32(valid, labels[ti * LANES..].as_ptr() as *const i32);
            let e = _mm512_sub_ps(xt[0], _mm512_permutexvar_ps(lab, cols[0]));
            let mut s = _mm512_mul_ps(e, e);
            for (xv, col) in xt.iter().zip(&cols).skip(1) {
                let e = _mm512_sub_ps(*xv, _mm512_permutexvar_ps(lab, *col));
                s = _mm512_fmadd_ps(e, e, s);
            }
            let s = _mm512_maskz_mov_ps(valid, s);
            inert[0] = _mm512_add_pd(inert[0], _mm512_cvtps_pd(_mm512_castps512_ps256(s)));
            inert[1] = _mm512_add_pd(inert[1], _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(s)));
        }
        let mut lanes = [0.0f64; LANES];
        _mm512_storeu_pd(lanes.as_mut_ptr(), inert[0]);
        _mm512_storeu_pd(lanes.as_mut_ptr().add(8), inert[1]);
        // combined in lane order from 0.0, as `finish_assign` does
        let mut inertia = 0.0;
        for v in lanes {
            inertia += v;
        }
        inertia
    }

    /// Centres whose distances [`each_distance`] computes together.
    const NG: usize = 4;

    /// Calls `f(j, s)` for every centre `j` in order, `s` the squared distances of the
    /// tile's 16 lanes to centre `j` (exactly [`dist`]'s sums). The distances are computed
    /// for groups of up to [`NG`] centres at a time, feature by feature, interleaved
    /// ([`distances`]), so that their dependency chains overlap: one centre after the
    /// other waited on the add latency (in the Lloyd pass ~7 % slower per tile).
    ///
    /// # Safety
    /// AVX-512F must be available and `c` valid for `k * D` reads.
    #[inline(always)]
    pub(crate) unsafe fn each_distance<const D: usize>(
        xt: &[__m512; D],
        c: *const f32,
        k: usize,
        mut f: impl FnMut(usize, __m512),
    ) {
        // plain loops: an iterator adaptor left un-inlined passes the vectors through memory
        macro_rules! group {
            ($g:expr, $j0:expr) => {{
                let s = distances::<D, { $g }>(xt, c.add($j0 * D));
                #[allow(clippy::needless_range_loop)]
                for g in 0..$g {
                    f($j0 + g, s[g]);
                }
            }};
        }
        let mut j0 = 0;
        while j0 < k {
            match k - j0 {
                1 => group!(1, j0),
                2 => group!(2, j0),
                3 => group!(3, j0),
                _ => group!(NG, j0),
            }
            j0 += NG;
        }
    }

    /// The squared distances of the tile's lanes to the `G` centres at `c`, each exactly
    /// [`dist`]'s sum, the `G` sums advanced one feature at a time together.
    ///
    /// # Safety
    /// AVX-512F must be available and `c` valid for `G * D` reads.
    #[inline(always)]
    unsafe fn distances<const D: usize, const G: usize>(xt: &[__m512; D], c: *const f32) -> [__m512; G] {
        let mut s = [_mm512_setzero_ps(); G];
        for (t, x) in xt.iter().enumerate() {
            for (g, sg) in s.iter_mut().enumerate() {
                let e = _mm512_sub_ps(*x, _mm512_set1_ps(*c.add(g * D + t)));
                *sg = if t == 0 { _mm512_mul_ps(e, e) } else { _mm512_fmadd_ps(e, e, *sg) };
            }
        }
        s
    }

    /// Nearest centre (strict `<` from `f32::MAX`, lowest index on ties) and its distance
    /// for the lanes of one tile.
    ///
    /// # Safety
    /// AVX-512F must be available and `c` valid for `k * D` reads.
    #[inline(always)]
    unsafe fn nearest<const D: usize>(xt: &[__m512; D], c: *const f32, k: usize) -> (__m512, __m512i) {
        let mut best = _mm512_set1_ps(f32::MAX);
        let mut arg = _mm512_setzero_si512();
        each_distance::<D>(xt, c, k, |j, s| {
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s, best);
            best = _mm512_mask_mov_ps(best, lt, s);
            arg = _mm512_mask_mov_epi32(arg, lt, _mm512_set1_epi32(j as i32));
        });
        (best, arg)
    }

    /// Centres whose block partials are held in registers at once.
    const CG: usize = 4;

    /// Features whose block partials [`accumulate_block`] advances together.
    const FG: usize = 4;

    /// The accumulation of one block of `nb` tiles for centres `jg .. jg + G`: per feature,
    /// the f32 partial of every lane starts at 0 in a register and takes, tile after tile,
    /// the lanes labelled with its centre (`masks[b * k + j]`); at the end it is widened and
    /// added to the lane's f64 sum `sums[(j * D + t) * LANES + l]`. Up to [`FG`] features go
    /// through the tiles together: their `FG * G` partials are independent dependency
    /// chains (one feature at a time waited on the add latency: 8 % slower per pass).
    ///
    /// # Safety
    /// AVX-512F/DQ must be available; `sums` holds `k * D * LANES` values, `masks` `nb * k`.
    #[inline(always)]
    unsafe fn accumulate_block<const D: usize, const G: usize>(
        tiles: &[[__m512; D]; super::TILES_PER_BLOCK],
        masks: &[__mmask16],
        nb: usize,
        k: usize,
        jg: usize,
        sums: &mut [f64],
    ) {
        for t0 in (0..D).step_by(FG) {
            let nf = FG.min(D - t0);
            let mut acc = [[_mm512_setzero_ps(); G]; FG];
            for (b, tile) in tiles.iter().enumerate().take(nb) {
                let m = &masks[b * k + jg..b * k + jg + G];
                for (q, accq) in acc.iter_mut().enumerate().take(nf) {
                    let v = tile[t0 + q];
                    for (a, mk) in accq.iter_mut().zip(m) {
                        *a = _mm512_mask_add_ps(*a, *mk, *a, v);
                    }
                }
            }
            for (q, accq) in acc.iter().enumerate().take(nf) {
                let t = t0 + q;
                for (jj, a) in accq.iter().enumerate() {
                    let p = sums[((jg + jj) * D + t) * LANES..((jg + jj) * D + t + 1) * LANES].as_mut_ptr();
                    let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(*a));
                    let hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(*a));
                    _mm512_storeu_pd(p, _mm512_add_pd(_mm512_loadu_pd(p), lo));
                    _mm512_storeu_pd(p.add(8), _mm512_add_pd(_mm512_loadu_pd(p.add(8)), hi));
                }
            }
        }
    }

    /// [`super::assign_tiled`] for f32.
    ///
    /// A block of tiles is assigned first (distances, labels, inertia; the last, partial
    /// tile is zero-padded and its extra lanes masked off), keeping the transposed tiles
    /// and one lane mask per tile and centre; then the block is accumulated feature by
    /// feature with masked adds into register partials ([`accumulate_block`]). Lane `l`
    /// of centre `j` takes the rows `i = l (mod 16)` labelled `j` in row order: the
    /// blocked per-lane sums of the generic kernel, without its per-row scatter.
    ///
    /// # Safety
    /// AVX-512F/VL/BW/DQ must be available.
    #[inline(always)]
    pub(super) unsafe fn assign_f32<const D: usize>(a: &mut Assign<'_, f32>) {
        const TPB: usize = super::TILES_PER_BLOCK;
        let n = a.labels.len();
        let k = a.centres.len() / D;
        let accumulate = !a.sums.is_empty();
        // per-lane f64 sums, feature-major: sums[(j * D + t) * LANES + l]; on the stack for
        // up to 8 centres (a chunk is a few hundred tiles: allocating per chunk showed)
        const K_STACK: usize = 8;
        let (mut sums_s, mut counts_s, mut masks_s);
        let (mut sums_h, mut counts_h, mut masks_h);
        let n_sums = if accumulate { k * D * LANES } else { 0 };
        let (sums, counts, masks): (&mut [f64], &mut [u64], &mut [__mmask16]) = if k <= K_STACK {
            sums_s = [[[0.0f64; LANES]; D]; K_STACK];
            counts_s = [0u64; K_STACK];
            masks_s = [0 as __mmask16; K_STACK * TPB];
            (
                &mut sums_s.as_flattened_mut().as_flattened_mut()[..n_sums],
                &mut counts_s[..k],
                &mut masks_s[..TPB * k],
            )
        } else {
            sums_h = vec![0.0f64; n_sums];
            counts_h = vec![0u64; k];
            masks_h = vec![0 as __mmask16; TPB * k];
            (&mut sums_h[..], &mut counts_h[..], &mut masks_h[..])
        };
        let mut inert = [_mm512_setzero_pd(); 2];
        let mut changed = 0u64;
        let mut non_finite: __mmask16 = 0;
        let x = &a.x[..n * D];
        let cp = a.centres.as_ptr();
        let mut r = [_mm512_setzero_ps(); 16];
        let mut tiles = [[_mm512_setzero_ps(); D]; TPB];
        let mut pad = [0.0f32; 16 * 16];
        let n_tiles = n.div_ceil(LANES);
        for t0 in (0..n_tiles).step_by(TPB) {
            let nb = TPB.min(n_tiles - t0);
            for (b, xt) in tiles.iter_mut().enumerate().take(nb) {
                let ti = t0 + b;
                let m = LANES.min(n - ti * LANES);
                let src = if m == LANES {
                    x[ti * LANES * D..(ti + 1) * LANES * D].as_ptr()
                } else {
                    pad[..LANES * D].fill(0.0);
                    pad[..m * D].copy_from_slice(&x[ti * LANES * D..]);
                    pad.as_ptr()
                };
                transpose::<D>(src, &mut r, xt);
                if a.check_finite {
                    // NaN (quiet, signalling) or an infinity; padded lanes are zeros
                    for v in xt.iter() {
                        non_finite |= _mm512_fpclass_ps_mask::<0x99>(*v);
                    }
                }
            }
            // nearest centres, labels, changes, inertia, lane masks and counts, tile by tile
            for (b, xt) in tiles.iter().enumerate().take(nb) {
                let ti = t0 + b;
                // prefetched here, spread over the block's arithmetic, rather than in the burst
                // of transposes (5 % faster from DRAM)
                prefetch::<_MM_HINT_T1>(
                    x.as_ptr().wrapping_add((ti + AHEAD_TILES) * LANES * D),
                    LANES * D * 4,
                );
                // and the labels' line, into L1 (perf: the labels' load was the kernel's hottest
                // stall; one pass from DRAM, 1 thread, 2.83 -> 2.71 ms; into L2: no change)
                _mm_prefetch::<_MM_HINT_T0>(
                    a.labels.as_ptr().wrapping_add((ti + AHEAD_TILES) * LANES) as *const i8
                );
                let (best, arg) = nearest::<D>(xt, cp, k);
                let m = LANES.min(n - ti * LANES);
                let valid: __mmask16 = if m == LANES { 0xFFFF } else { ((1u32 << m) - 1) as __mmask16 };
                let lab = a.labels[ti * LANES..ti * LANES + m].as_mut_ptr() as *mut i32;
                let best = if m == LANES {
                    let old = _mm512_loadu_si512(lab as *const _);
                    changed += _mm512_cmpneq_epi32_mask(old, arg).count_ones() as u64;
                    _mm512_storeu_si512(lab as *mut _, arg);
                    best
                } else {
                    let old = _mm512_maskz_loadu_epi32(valid, lab);
                    changed += _mm512_mask_cmpneq_epi32_mask(valid, old, arg).count_ones() as u64;
                    _mm512_mask_storeu_epi32(lab, valid, arg);
                    // padded lanes add +0.0, which leaves a (never negative-zero) sum unchanged
                    _mm512_maskz_mov_ps(valid, best)
                };
                inert[0] = _mm512_add_pd(inert[0], _mm512_cvtps_pd(_mm512_castps512_ps256(best)));
                inert[1] = _mm512_add_pd(inert[1], _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(best)));
                let bm = &mut masks[b * k..(b + 1) * k];
                for (j, (mk, c)) in bm.iter_mut().zip(counts.iter_mut()).enumerate() {
                    *mk = _mm512_mask_cmpeq_epi32_mask(valid, arg, _mm512_set1_epi32(j as i32));
                    *c += mk.count_ones() as u64;
                }
            }
            if accumulate {
                for jg in (0..k).step_by(CG) {
                    let (ts, ms, s) = (&tiles, &masks[..nb * k], &mut sums[..]);
                    match k - jg {
                        1 => accumulate_block::<D, 1>(ts, ms, nb, k, jg, s),
                        2 => accumulate_block::<D, 2>(ts, ms, nb, k, jg, s),
                        3 => accumulate_block::<D, 3>(ts, ms, nb, k, jg, s),
                        _ => accumulate_block::<D, CG>(ts, ms, nb, k, jg, s),
                    }
                }
            }
        }
        let mut lane_inertia = [0.0f64; LANES];
        _mm512_storeu_pd(lane_inertia.as_mut_ptr(), inert[0]);
        _mm512_storeu_pd(lane_inertia.as_mut_ptr().add(8), inert[1]);
        if accumulate {
            // each centre's feature over the lanes in lane order from 0.0, as `finish_assign`
            // combines the generic kernel's lane-major sums
            for (out, lanes) in a.sums.iter_mut().zip(sums.chunks_exact(LANES)) {
                let mut tot = 0.0;
                for v in lanes {
                    tot += v;
                }
                *out += tot;
            }
        }
        a.non_finite |= non_finite != 0;
        finish_counts(a, counts, &lane_inertia, changed);
    }

    /// [`super::potential_tiled`] for f32.
    ///
    /// # Safety
    /// AVX-512F/VL/BW/DQ must be available.
    #[inline(always)]
    pub(super) unsafe fn potential_f32<const D: usize>(p: &mut Potential<'_, f32>) {
        let n = p.closest.len();
        let full = n / LANES;
        let off = p.sum_closest as usize;
        let mut xt = [_mm512_setzero_ps(); D];
        let mut r = [_mm512_setzero_ps(); 16];
        let mut lanes = [0.0f64; LANES];
        let mut v = [0.0f64; LANES];
        let to_f64 = |s: __m512| {
            [_mm512_cvtps_pd(_mm512_castps512_ps256(s)), _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(s))]
        };
        for ti in 0..full {
            prefetch::<_MM_HINT_T1>(p.x.as_ptr().wrapping_add((ti + AHEAD_TILES) * LANES * D), LANES * D * 4);
            transpose::<D>(p.x[ti * LANES * D..(ti + 1) * LANES * D].as_ptr(), &mut r, &mut xt);
            let cl = p.closest[ti * LANES..(ti + 1) * LANES].as_mut_ptr();
            let mut c = [_mm512_loadu_pd(cl), _mm512_loadu_pd(cl.add(8))];
            match p.fold {
                Fold::Keep => {}
                Fold::Set(cen) => {
                    c = to_f64(dist::<D>(&xt, cen[..D].as_ptr()));
                    _mm512_storeu_pd(cl, c[0]);
                    _mm512_storeu_pd(cl.add(8), c[1]);
                }
                Fold::Min(cen) => {
                    let e = to_f64(dist::<D>(&xt, cen[..D].as_ptr()));
                    for h in 0..2 {
                        let lt = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(e[h], c[h]);
                        c[h] = _mm512_mask_mov_pd(c[h], lt, e[h]);
                    }
                    _mm512_storeu_pd(cl, c[0]);
                    _mm512_storeu_pd(cl.add(8), c[1]);
                }
            }
            if p.sum_closest {
                _mm512_storeu_pd(lanes.as_mut_ptr(), c[0]);
                _mm512_storeu_pd(lanes.as_mut_ptr().add(8), c[1]);
                let mut acc = p.sums[0];
                for &e in &lanes {
                    acc += e;
                }
                p.sums[0] = acc;
            }
            for (t, cen) in p.cands.chunks_exact(D).enumerate() {
                let e = to_f64(dist::<D>(&xt, cen.as_ptr()));
                for h in 0..2 {
                    let lt = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(e[h], c[h]);
                    _mm512_storeu_pd(v.as_mut_ptr().add(8 * h), _mm512_mask_mov_pd(c[h], lt, e[h]));
                }
                let mut acc = p.sums[off + t];
                for &e in &v {
                    acc += e;
                }
                p.sums[off + t] = acc;
            }
        }
        // the last rows (fewer than a tile), continuing the same sequential sums
        let lo = full * LANES;
        super::potential_rows(&mut Potential {
            x: &p.x[lo * D..n * D],
            d: D,
            closest: &mut p.closest[lo..],
            fold: p.fold,
            sum_closest: p.sum_closest,
            cands: p.cands,
            sums: p.sums,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn data<T: Real>(n: usize, d: usize, discrete: bool, seed: u64) -> Vec<T> {
        let mut r = SplitMix64::new(seed);
        (0..n * d)
            .map(|_| {
                let v = if discrete {
                    r.below(3) as f64 * 0.5
                } else {
                    (r.uniform() - 0.5) * 7.0 + r.below(3) as f64 * 3.0
                };
                T::from_f64(v)
            })
            .collect()
    }

    /// The conventions spelled out row by row.
    fn naive_assign<T: Real>(
        x: &[T],
        d: usize,
        c: &[T],
        labels: &mut [u32],
    ) -> (Vec<f64>, Vec<u64>, f64, u64) {
        let k = c.len() / d;
        let mut lane_sums = vec![0.0f64; LANES * k * d];
        let mut part = vec![T::ZERO; LANES * k * d];
        let mut counts = vec![0u64; k];
        let mut lane_inertia = [0.0f64; LANES];
        let mut changed = 0;
        for (i, row) in x.chunks_exact(d).enumerate() {
            let mut best = T::MAX;
            let mut j = 0;
            for (jj, cj) in c.chunks_exact(d).enumerate() {
                let v = dist2(row, cj);
                if v < best {
                    best = v;
                    j = jj;
                }
            }
            changed += (labels[i] != j as u32) as u64;
            labels[i] = j as u32;
            counts[j] += 1;
            let l = i % LANES;
            lane_inertia[l] += best.to_f64();
            for t in 0..d {
                part[(l * k + j) * d + t] = part[(l * k + j) * d + t].add(row[t]);
            }
            if (i + 1) % BLOCK_ROWS == 0 || i + 1 == labels.len() {
                for (s, p) in lane_sums.iter_mut().zip(part.iter_mut()) {
                    *s += p.to_f64();
                    *p = T::ZERO;
                }
            }
        }
        let mut sums = vec![0.0f64; k * d];
        for lane in lane_sums.chunks_exact(k * d) {
            for (a, b) in sums.iter_mut().zip(lane) {
                *a += b;
            }
        }
        let mut inertia = 0.0;
        for v in lane_inertia {
            inertia += v;
        }
        (sums, counts, inertia, changed)
    }

    fn check_assign<T: Real>(n: usize, d: usize, k: usize, discrete: bool) {
        let x: Vec<T> = data(n, d, discrete, (n * 131 + d * 17 + k) as u64);
        let c: Vec<T> = data(k, d, discrete, (d * 7 + k) as u64);
        let init: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        let mut want_lab = init.clone();
        let want = naive_assign(&x, d, &c, &mut want_lab);
        for isa in Isa::available() {
            for (accumulate, check_finite) in [(true, false), (false, false), (true, true)] {
                let mut lab = init.clone();
                let mut sums = vec![0.0f64; if accumulate { k * d } else { 0 }];
                let mut counts = vec![0u64; k];
                let mut a = Assign {
                    x: &x,
                    d,
                    centres: &c,
                    labels: &mut lab,
                    sums: &mut sums,
                    counts: &mut counts,
                    inertia: 0.0,
                    changed: 0,
                    check_finite,
                    non_finite: false,
                };
                assign_chunk(isa, &mut a);
                let (inertia, changed) = (a.inertia, a.changed);
                let what = format!("{isa:?} n={n} d={d} k={k} acc={accumulate} check={check_finite}");
                assert!(!a.non_finite, "{what}");
                assert_eq!(lab, want_lab, "{what}");
                assert_eq!(counts, want.1, "{what}");
                assert_eq!(inertia.to_bits(), want.2.to_bits(), "{what}");
                assert_eq!(changed, want.3, "{what}");
                if accumulate {
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&sums), bits(&want.0), "{what}");
                }
            }
        }
    }

    fn finds_non_finite<T: Real>(bad: T) {
        for d in 1..=17 {
            for &n in &[1usize, 16, 37, 600] {
                // the first value, one in the middle, the last (in a partial tile for n = 37)
                for pos in [0, n * d / 2, n * d - 1] {
                    let mut x: Vec<T> = data(n, d, false, (n + d) as u64);
                    x[pos] = bad;
                    let c: Vec<T> = data(3, d, false, 9);
                    for isa in Isa::available() {
                        let (mut lab, mut counts) = (vec![0u32; n], vec![0u64; 3]);
                        let mut a = Assign {
                            x: &x,
                            d,
                            centres: &c,
                            labels: &mut lab,
                            sums: &mut [],
                            counts: &mut counts,
                            inertia: 0.0,
                            changed: 0,
                            check_finite: true,
                            non_finite: false,
                        };
                        assign_chunk(isa, &mut a);
                        assert!(a.non_finite, "{isa:?} n={n} d={d} at {pos}");
                        assert!(lab.iter().all(|&l| l < 3), "{isa:?}: labels stay centres");
                    }
                }
            }
        }
    }

    #[test]
    fn assign_finds_nan_and_infinities_on_every_path() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            finds_non_finite::<f32>(bad);
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            finds_non_finite::<f64>(bad);
        }
    }

    #[test]
    fn labelled_inertia_is_the_assignment_inertia() {
        // labels from the row-by-row definition (ties included: discrete data), then the
        // inertia from those labels, bit for bit, wherever a path exists
        for d in 1..=17 {
            for k in [1usize, 2, 3, 5, 16, 17] {
                for &(n, discrete) in &[(1usize, false), (16, true), (53, false), (600, true), (4099, false)]
                {
                    let x: Vec<f32> = data(n, d, discrete, (n * 31 + d * 7 + k) as u64);
                    let c: Vec<f32> = data(k, d, discrete, (d * 5 + k) as u64);
                    let mut lab = vec![0u32; n];
                    let want = naive_assign(&x, d, &c, &mut lab).2;
                    for isa in Isa::available() {
                        let got = labelled_inertia_chunk(isa, &x, d, &c, &lab);
                        let what = format!("{isa:?} n={n} d={d} k={k}");
                        if isa == Isa::Avx512 && d <= 16 && k <= 16 {
                            assert_eq!(got.map(f64::to_bits), Some(want.to_bits()), "{what}");
                        } else {
                            assert_eq!(got, None, "{what}");
                        }
                    }
                    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let c64: Vec<f64> = c.iter().map(|&v| v as f64).collect();
                    assert_eq!(labelled_inertia_chunk(Isa::detect(), &x64, d, &c64, &lab), None);
                }
            }
        }
    }

    #[test]
    fn assign_paths_match_the_row_by_row_definition() {
        for d in 1..=17 {
            for k in 1..=17 {
                // one tile, a partial tile, several accumulation blocks with a partial one
                for &n in &[1usize, 16, 53, 256, 600] {
                    check_assign::<f32>(n, d, k, false);
                    check_assign::<f64>(n, d, k, false);
                }
                check_assign::<f32>(40, d, k, true);
                check_assign::<f64>(40, d, k, true);
            }
        }
        // a whole chunk of rows
        for (d, k) in [(10, 3), (4, 8), (17, 2)] {
            check_assign::<f32>(4096, d, k, false);
        }
    }

    fn naive_potential<T: Real>(
        x: &[T],
        d: usize,
        closest: &mut [f64],
        fold: Fold<'_, T>,
        sum_closest: bool,
        cands: &[T],
    ) -> Vec<f64> {
        let m = cands.len() / d;
        let off = sum_closest as usize;
        let mut sums = vec![0.0f64; off + m];
        for (row, cl) in x.chunks_exact(d).zip(closest.iter_mut()) {
            match fold {
                Fold::Keep => {}
                Fold::Set(c) => *cl = dist2(row, c).to_f64(),
                Fold::Min(c) => *cl = cl.min(dist2(row, c).to_f64()),
            }
            if sum_closest {
                sums[0] += *cl;
            }
            for (t, c) in cands.chunks_exact(d).enumerate() {
                sums[off + t] += cl.min(dist2(row, c).to_f64());
            }
        }
        sums
    }

    fn check_potential<T: Real>(n: usize, d: usize, m: usize, discrete: bool) {
        let x: Vec<T> = data(n, d, discrete, (n * 31 + d * 7 + m) as u64);
        let cands: Vec<T> = data(m, d, discrete, (d * 5 + m) as u64);
        let c0: Vec<T> = data(1, d, discrete, d as u64 + 99);
        let start: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 0.75).collect();
        for (mode, fold) in [Fold::Keep, Fold::Set(&c0[..]), Fold::Min(&c0[..])].into_iter().enumerate() {
            for sum_closest in [false, true] {
                let mut want_cl = start.clone();
                let want = naive_potential(&x, d, &mut want_cl, fold, sum_closest, &cands);
                for isa in Isa::available() {
                    let mut cl = start.clone();
                    let mut sums = vec![0.0f64; want.len()];
                    potential_chunk(
                        isa,
                        &mut Potential {
                            x: &x,
                            d,
                            closest: &mut cl,
                            fold,
                            sum_closest,
                            cands: &cands,
                            sums: &mut sums,
                        },
                    );
                    let what = format!("{isa:?} n={n} d={d} m={m} fold={mode} sum={sum_closest}");
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&cl), bits(&want_cl), "{what}");
                    assert_eq!(bits(&sums), bits(&want), "{what}");
                }
            }
        }
    }

    #[test]
    fn potential_paths_match_the_row_by_row_definition() {
        for d in 1..=17 {
            for m in 0..=5 {
                for &n in &[1usize, 16, 53] {
                    check_potential::<f32>(n, d, m, false);
                    check_potential::<f64>(n, d, m, false);
                }
                check_potential::<f32>(40, d, m, true);
            }
        }
    }

    #[test]
    fn transposed_tile_is_exact() {
        // the portable tile loader against the row-major rows, padded lanes zero
        let x: Vec<f32> = (0..16 * 10).map(|v| v as f32).collect();
        let mut xt = [[0.0f32; LANES]; 10];
        let mut rowsp = [[0.0f32; LANES]; LANES];
        load_tile::<f32, 10, true>(&x[..5 * 10], 5, &mut xt, &mut rowsp);
        assert_eq!(xt[3][4], 43.0);
        assert_eq!(xt[3][5], 0.0);
        assert_eq!(rowsp[4][..10], x[40..50]);
        assert_eq!(rowsp[4][10], 0.0);
    }
}
