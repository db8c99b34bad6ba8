//! K-means on reward vectors: seeded greedy k-means++ and Lloyd iterations.
//!
//! Semantics (mirrored by `tests/reference.py`):
//! - distances are squared Euclidean, computed in the input's precision, summed over the
//!   feature axis in order; the nearest centre wins, ties going to the lowest index;
//! - a Lloyd iteration assigns every row and recomputes each centre as the f64 mean of its
//!   rows; a centre that gets no row keeps its previous position (the empty-cluster rule).
//!   The per-centre sums are blocked (`kernels.rs`): partial sums in the input precision
//!   over 16 rows per lane, widened into f64 lane sums every 256 rows;
//! - with [`Algorithm::Hamerly`] every iteration's labels are the same as with
//!   [`Algorithm::Lloyd`] from the same centres (`hamerly.rs` skips only rows whose
//!   computed nearest centre cannot have changed), but after the first (full, blocked)
//!   iteration the per-centre sums are updated rather than re-summed: per chunk, the rows
//!   that changed centre, in row order, add their f64 values to the new centre's delta and
//!   subtract them from the old one's; the chunk deltas are combined in chunk order and
//!   added to the sums, and a centre left with no row has its sum reset to zero. The
//!   inertia is summed as a full pass sums it: when strictly converged, from the labels
//!   already known (one distance per row), otherwise by the last pass below;
//! - iteration stops when no label changed (strict convergence), when the summed squared
//!   centre shift is at most `tol * mean(var(x, axis=0))` (scikit-learn's rule), or after
//!   `max_iter` iterations; unless strictly converged, a last pass relabels every row
//!   against the final centres, and the inertia is that of the returned labels/centres;
//! - k-means++ is the greedy variant (2 + ln k candidates per centre, the one lowering the
//!   potential most is kept). When every row already sits on a centre (k above the number
//!   of distinct rows), the remaining centres are copies of the first and stay empty.
//! - sums are formed per fixed-size chunk and combined in chunk order: results are bitwise
//!   identical for every thread count.

use crate::error::{CoreError, Result};
use crate::hamerly;
use crate::kernels::{assign_chunk, labelled_inertia_chunk, potential_chunk, Assign, Fold, Isa, Potential};
use crate::pool::{map_chunks, map_chunks_mut, CHUNK};
use crate::real::{first_non_finite, Real};
use crate::rng::SplitMix64;

/// How the centres are initialised.
#[derive(Debug, Clone)]
pub enum Init<'a> {
    /// Seeded greedy k-means++.
    PlusPlus { seed: u64 },
    /// Explicit initial centres, `k * d` values, row-major.
    Centres(&'a [f64]),
}

/// The outcome of a k-means fit.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// Cluster index of every row, `n` values.
    pub labels: Vec<u32>,
    /// Final centres, `k * d` values, row-major.
    pub centroids: Vec<f64>,
    /// Rows per cluster, `k` values.
    pub sizes: Vec<u64>,
    /// Sum of squared distances of the rows to their centres.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub n_iter: usize,
}

pub(crate) fn check_data<T: Real>(x: &[T], d: usize) -> Result<usize> {
    check_shape(x, d)?;
    if let Some(i) = first_non_finite(x) {
        return Err(CoreError::NonFinite { arg: "x", index: i });
    }
    Ok(x.len() / d)
}

/// [`check_data`] without the scan for NaN and infinities (a fit from given centres has its
/// first pass look for them instead: one pass over x fewer).
fn check_shape<T: Real>(x: &[T], d: usize) -> Result<usize> {
    if d == 0 {
        return Err(CoreError::shape("x", "must have at least one column"));
    }
    if x.is_empty() || !x.len().is_multiple_of(d) {
        return Err(CoreError::shape("x", "must be a non-empty 2-D array (n_rows, n_features)"));
    }
    Ok(x.len() / d)
}

/// One chunk's share of a Lloyd pass.
struct Partial {
    sums: Vec<f64>,
    counts: Vec<u64>,
    inertia: f64,
    changed: u64,
    /// A NaN or infinity was seen (only looked for when asked).
    non_finite: bool,
}

impl Partial {
    /// Zero sums (`kd` of them, none without accumulation) and counts (`k`).
    fn zero(kd: usize, k: usize) -> Partial {
        Partial { sums: vec![0.0; kd], counts: vec![0; k], inertia: 0.0, changed: 0, non_finite: false }
    }
}

/// Assigns every row of `x` to its nearest centre (writing `labels`), and returns the
/// per-centre sums and counts, the inertia and how many labels changed.
fn assign<T: Real>(
    x: &[T],
    d: usize,
    centres: &[f64],
    labels: &mut [u32],
    threads: usize,
    accumulate: bool,
    check_finite: bool,
) -> Partial {
    let k = centres.len() / d;
    let c: Vec<T> = centres.iter().map(|&v| T::from_f64(v)).collect();
    let isa = Isa::detect();
    let kd = if accumulate { k * d } else { 0 };
    let parts = map_chunks_mut(labels, CHUNK, threads, |ci, lab| {
        let mut p = Partial::zero(kd, k);
        let mut a = Assign {
            x: &x[ci * CHUNK * d..(ci * CHUNK + lab.len()) * d],
            d,
            centres: &c,
            labels: lab,
            sums: &mut p.sums,
            counts: &mut p.counts,
            inertia: 0.0,
            changed: 0,
            check_finite,
            non_finite: false,
        };
        assign_chunk(isa, &mut a);
        p.inertia = a.inertia;
        p.changed = a.changed;
        p.non_finite = a.non_finite;
        p
    });
    let mut total = Partial::zero(kd, k);
    for p in parts {
        for (a, b) in total.sums.iter_mut().zip(&p.sums) {
            *a += b;
        }
        for (a, b) in total.counts.iter_mut().zip(&p.counts) {
            *a += b;
        }
        total.inertia += p.inertia;
        total.changed += p.changed;
        total.non_finite |= p.non_finite;
    }
    total
}

/// The inertia of rows already labelled with their nearest centres, chunk by chunk and
/// summed in chunk order as [`assign`] sums it (so bitwise its inertia), or `None` where
/// the kernels have no such path.
fn labelled_inertia<T: Real>(
    x: &[T],
    d: usize,
    centres: &[f64],
    labels: &[u32],
    threads: usize,
) -> Option<f64> {
    let c: Vec<T> = centres.iter().map(|&v| T::from_f64(v)).collect();
    let isa = Isa::detect();
    let n = labels.len();
    let parts = map_chunks(n.div_ceil(CHUNK), threads, |ci| {
        let lab = &labels[ci * CHUNK..n.min((ci + 1) * CHUNK)];
        labelled_inertia_chunk(isa, &x[ci * CHUNK * d..(ci * CHUNK + lab.len()) * d], d, &c, lab)
    });
    let mut total = 0.0;
    for p in parts {
        total += p?;
    }
    Some(total)
}

/// Mean over columns of the per-column variance (scikit-learn's tolerance scale).
pub fn mean_column_variance<T: Real>(x: &[T], d: usize, threads: usize) -> f64 {
    let n = x.len() / d;
    if n == 0 {
        return 0.0;
    }
    let rows_chunks = n.div_ceil(CHUNK);
    let chunk = |c: usize| &x[c * CHUNK * d..((c + 1) * CHUNK).min(n) * d];
    let sums = map_chunks(rows_chunks, threads, |c| {
        let mut s = vec![0.0f64; d];
        for row in chunk(c).chunks_exact(d) {
            for (a, v) in s.iter_mut().zip(row) {
                *a += v.to_f64();
            }
        }
        s
    });
    let mut mean = vec![0.0f64; d];
    for s in &sums {
        for (a, b) in mean.iter_mut().zip(s) {
            *a += b;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let sq = map_chunks(rows_chunks, threads, |c| {
        let mut s = vec![0.0f64; d];
        for row in chunk(c).chunks_exact(d) {
            for ((a, v), m) in s.iter_mut().zip(row).zip(&mean) {
                let e = v.to_f64() - m;
                *a += e * e;
            }
        }
        s
    });
    let mut var = vec![0.0f64; d];
    for s in &sq {
        for (a, b) in var.iter_mut().zip(s) {
            *a += b;
        }
    }
    var.iter().map(|v| v / n as f64).sum::<f64>() / d as f64
}

/// How the Lloyd iterations find each row's nearest centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Every iteration measures every row against every centre (and re-sums the centres).
    #[default]
    Lloyd,
    /// Hamerly's bounds: after the first iteration, a row is measured again only when the
    /// centres have moved enough that its nearest centre may have changed; the per-centre
    /// sums are updated with the rows that changed centre. The labels of every iteration
    /// are those of [`Algorithm::Lloyd`] from the same centres; the centres differ from
    /// Lloyd's only in how their sums are rounded.
    Hamerly,
}

impl std::str::FromStr for Algorithm {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lloyd" => Ok(Algorithm::Lloyd),
            "hamerly" => Ok(Algorithm::Hamerly),
            _ => Err(CoreError::value("algorithm", format!("must be 'lloyd' or 'hamerly', got {s:?}"))),
        }
    }
}

/// Lloyd iterations from explicit centres (see the module docs for the exact rules).
pub fn lloyd<T: Real>(
    x: &[T],
    d: usize,
    centres: Vec<f64>,
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
    threads: usize,
) -> Result<KMeansResult> {
    check_shape(x, d)?;
    lloyd_trusted(x, d, centres, max_iter, tol, algorithm, threads, false)
}

/// [`lloyd`] on data whose shape is checked; `finite_checked`: and its values (otherwise
/// the first pass looks for NaN and infinities, and the fit stops there with
/// [`check_data`]'s error).
#[allow(clippy::too_many_arguments)]
fn lloyd_trusted<T: Real>(
    x: &[T],
    d: usize,
    mut centres: Vec<f64>,
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
    threads: usize,
    finite_checked: bool,
) -> Result<KMeansResult> {
    let n = x.len() / d;
    check_centres(&centres, d)?;
    check_iter_tol(max_iter, tol)?;
    let k = centres.len() / d;
    let tol_abs = if tol > 0.0 { tol * mean_column_variance(x, d, threads) } else { 0.0 };
    let mut labels = vec![u32::MAX; n];
    let mut n_iter = 0;
    let mut strict = false;
    let mut last = None;
    let hamerly = algorithm == Algorithm::Hamerly;
    // Hamerly's state: running sums and counts, per-row margins, cumulative drift
    let (mut sums, mut counts) = (vec![0.0f64; k * d], vec![0u64; k]);
    let mut margin = if hamerly { vec![hamerly::UNMEASURED; n] } else { Vec::new() };
    let slack = hamerly::Slack::new::<T>(d);
    let mut drift = 0.0f64;
    // the centres in the input precision, as the distances use them (Hamerly only)
    let to_t = |c: &[f64]| c.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let mut ct = if hamerly { to_t(&centres) } else { Vec::new() };
    for it in 0..max_iter {
        n_iter = it + 1;
        let changed = if it == 0 || !hamerly {
            let mut p = assign(x, d, &centres, &mut labels, threads, true, it == 0 && !finite_checked);
            if p.non_finite {
                // the scan names the first bad value (it finds one: the pass saw it)
                check_data(x, d)?;
            }
            sums = std::mem::take(&mut p.sums);
            counts.clone_from(&p.counts);
            let changed = p.changed;
            last = Some(p);
            changed
        } else {
            let delta = hamerly::bounded_pass(x, d, &ct, &mut labels, &mut margin, drift, &slack, threads);
            for j in 0..k {
                counts[j] = (counts[j] as i64 + delta.counts[j]) as u64;
                let s = &mut sums[j * d..(j + 1) * d];
                if counts[j] == 0 {
                    s.fill(0.0);
                } else {
                    for (a, b) in s.iter_mut().zip(&delta.sums[j * d..(j + 1) * d]) {
                        *a += b;
                    }
                }
            }
            delta.changed
        };
        let mut shift = 0.0;
        for j in 0..k {
            if counts[j] > 0 {
                for t in 0..d {
                    let new = sums[j * d + t] / counts[j] as f64;
                    let e = new - centres[j * d + t];
                    shift += e * e;
                    centres[j * d + t] = new;
                }
            }
        }
        if changed == 0 {
            strict = true;
            break;
        }
        if shift <= tol_abs {
            break;
        }
        if hamerly {
            let after = to_t(&centres);
            drift += slack.drift(&ct, &after, d);
            ct = after;
        }
    }
    let p = match (strict, last) {
        (true, Some(p)) if !hamerly => p,
        // Hamerly's labels are already those of the final centres (nothing moved in the last
        // pass, so the centres did not change): only the inertia is left
        (true, _) if hamerly => match labelled_inertia(x, d, &centres, &labels, threads) {
            Some(inertia) => Partial { counts: counts.clone(), inertia, ..Partial::zero(0, 0) },
            None => assign(x, d, &centres, &mut labels, threads, false, false),
        },
        _ => assign(x, d, &centres, &mut labels, threads, false, false),
    };
    Ok(KMeansResult { labels, centroids: centres, sizes: p.counts, inertia: p.inertia, n_iter })
}

fn check_centres(c: &[f64], d: usize) -> Result<()> {
    if c.is_empty() || !c.len().is_multiple_of(d) {
        return Err(CoreError::shape(
            "init",
            format!("initial centres must be a (k, {d}) array with k >= 1"),
        ));
    }
    if let Some(i) = c.iter().position(|v| !v.is_finite()) {
        return Err(CoreError::NonFinite { arg: "init", index: i });
    }
    Ok(())
}

fn check_iter_tol(max_iter: usize, tol: f64) -> Result<()> {
    if max_iter == 0 {
        return Err(CoreError::value("max_iter", "must be >= 1, got 0"));
    }
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(CoreError::value("tol", format!("must be finite and >= 0, got {tol}")));
    }
    Ok(())
}

/// The row whose cumulative potential first exceeds `r`. A pending centre (`fold`) is
/// folded into `closest` of the chunk walked first (an idempotent update).
fn sample_index<T: Real>(
    x: &[T],
    d: usize,
    closest: &mut [f64],
    sums: &[f64],
    r: f64,
    isa: Isa,
    fold: Fold<'_, T>,
) -> usize {
    let mut cum = 0.0;
    for (c, s) in sums.iter().enumerate() {
        if cum + s > r {
            let base = c * CHUNK;
            let hi = (base + CHUNK).min(closest.len());
            let cl = &mut closest[base..hi];
            if !matches!(fold, Fold::Keep) {
                potential_chunk(
                    isa,
                    &mut Potential {
                        x: &x[base * d..hi * d],
                        d,
                        closest: cl,
                        fold,
                        sum_closest: false,
                        cands: &[],
                        sums: &mut [],
                    },
                );
            }
            for (i, v) in cl.iter().enumerate() {
                cum += v;
                if cum > r {
                    return base + i;
                }
            }
            break;
        }
        cum += s;
    }
    // r at the very end through rounding: the last row with positive potential
    if !matches!(fold, Fold::Keep) {
        fold_all(x, d, closest, isa, fold, 1);
    }
    closest.iter().rposition(|&v| v > 0.0).unwrap_or(0)
}

/// Folds a pending centre into every row's `closest`.
fn fold_all<T: Real>(x: &[T], d: usize, closest: &mut [f64], isa: Isa, fold: Fold<'_, T>, threads: usize) {
    map_chunks_mut(closest, CHUNK, threads, |ci, cl| {
        let lo = ci * CHUNK;
        potential_chunk(
            isa,
            &mut Potential {
                x: &x[lo * d..(lo + cl.len()) * d],
                d,
                closest: cl,
                fold,
                sum_closest: false,
                cands: &[],
                sums: &mut [],
            },
        );
    });
}

/// Seeded greedy k-means++: `k * d` initial centres (f64, row-major).
///
/// One pass over `x` per chosen centre: the pass that scores a centre's candidates also
/// folds the previously chosen centre into `closest`, and the per-chunk potentials of the
/// chosen candidate are the per-chunk sums of the new `closest`.
pub fn kmeans_plusplus<T: Real>(x: &[T], d: usize, k: usize, seed: u64, threads: usize) -> Result<Vec<f64>> {
    check_data(x, d)?;
    kmeans_plusplus_trusted(x, d, k, seed, threads)
}

/// [`kmeans_plusplus`] on data already checked by [`check_data`].
fn kmeans_plusplus_trusted<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    seed: u64,
    threads: usize,
) -> Result<Vec<f64>> {
    let n = x.len() / d;
    if k == 0 {
        return Err(CoreError::value("k", "must be >= 1, got 0"));
    }
    let isa = Isa::detect();
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let mut rng = SplitMix64::new(seed);
    let n_trials = 2 + (k as f64).ln().floor() as usize;
    let first = rng.below(n);
    let mut centres: Vec<f64> = row(first).iter().map(|v| v.to_f64()).collect();
    if k == 1 {
        return Ok(centres);
    }
    let mut closest = vec![0.0f64; n];
    let mut sums: Vec<f64> = map_chunks_mut(&mut closest, CHUNK, threads, |ci, cl| {
        let lo = ci * CHUNK;
        let mut s = [0.0f64];
        potential_chunk(
            isa,
            &mut Potential {
                x: &x[lo * d..(lo + cl.len()) * d],
                d,
                closest: cl,
                fold: Fold::Set(row(first)),
                sum_closest: true,
                cands: &[],
                sums: &mut s,
            },
        );
        s[0]
    });
    let mut pot: f64 = sums.iter().sum();
    // the last chosen centre, not yet folded into `closest`
    let mut pending: Option<usize> = None;
    let mut cand_rows: Vec<T> = Vec::with_capacity(n_trials * d);
    for _ in 1..k {
        if pot.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            // every row sits on a centre: the rest are empty copies of the first
            let first_centre = centres[..d].to_vec();
            while centres.len() < k * d {
                centres.extend_from_slice(&first_centre);
            }
            break;
        }
        let fold = match pending {
            Some(i) => Fold::Min(row(i)),
            None => Fold::Keep,
        };
        let mut cands = Vec::with_capacity(n_trials);
        for _ in 0..n_trials {
            let r = rng.uniform() * pot;
            cands.push(sample_index(x, d, &mut closest, &sums, r, isa, fold));
        }
        cand_rows.clear();
        for &i in &cands {
            cand_rows.extend_from_slice(row(i));
        }
        let per_chunk: Vec<Vec<f64>> = map_chunks_mut(&mut closest, CHUNK, threads, |ci, cl| {
            let lo = ci * CHUNK;
            let mut s = vec![0.0f64; n_trials];
            potential_chunk(
                isa,
                &mut Potential {
                    x: &x[lo * d..(lo + cl.len()) * d],
                    d,
                    closest: cl,
                    fold,
                    sum_closest: false,
                    cands: &cand_rows,
                    sums: &mut s,
                },
            );
            s
        });
        let mut pots = vec![0.0f64; n_trials];
        for p in &per_chunk {
            for (a, b) in pots.iter_mut().zip(p) {
                *a += b;
            }
        }
        let mut best = 0;
        for t in 1..n_trials {
            if pots[t] < pots[best] {
                best = t;
            }
        }
        // the new closest's per-chunk sums are the chosen candidate's per-chunk potentials
        for (s, p) in sums.iter_mut().zip(&per_chunk) {
            *s = p[best];
        }
        pot = sums.iter().sum();
        pending = Some(cands[best]);
        centres.extend(row(cands[best]).iter().map(|v| v.to_f64()));
    }
    Ok(centres)
}

/// K-means: initialisation then Lloyd iterations.
#[allow(clippy::too_many_arguments)]
pub fn kmeans<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    init: Init<'_>,
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
    threads: usize,
) -> Result<KMeansResult> {
    // k-means++ scans the values first; from given centres the first Lloyd pass looks for
    // NaN and infinities itself
    check_shape(x, d)?;
    kmeans_trusted(x, d, k, init, max_iter, tol, algorithm, threads, false)
}

/// [`kmeans`] on data whose shape is checked; `finite_checked`: and its values (the elbow
/// search checks once), otherwise k-means++ scans them first and a fit from given centres
/// has its first pass look for them (see [`lloyd_trusted`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn kmeans_trusted<T: Real>(
    x: &[T],
    d: usize,
    k: usize,
    init: Init<'_>,
    max_iter: usize,
    tol: f64,
    algorithm: Algorithm,
    threads: usize,
    finite_checked: bool,
) -> Result<KMeansResult> {
    if k == 0 {
        return Err(CoreError::value("k", "must be >= 1, got 0"));
    }
    check_iter_tol(max_iter, tol)?;
    let centres = match init {
        Init::PlusPlus { seed } => {
            if !finite_checked {
                check_data(x, d)?;
            }
            kmeans_plusplus_trusted(x, d, k, seed, threads)?
        }
        Init::Centres(c) => {
            check_centres(c, d)?;
            if c.len() != k * d {
                return Err(CoreError::shape(
                    "init",
                    format!("initial centres have {} rows but k = {k}", c.len() / d),
                ));
            }
            c.to_vec()
        }
    };
    lloyd_trusted(x, d, centres, max_iter, tol, algorithm, threads, finite_checked)
}

/// The first `limit` distinct rows are enough to cap k: counts distinct rows up to `limit`.
pub fn count_distinct_rows<T: Real>(x: &[T], d: usize, limit: usize) -> usize {
    let mut seen: Vec<&[T]> = Vec::new();
    for row in x.chunks_exact(d) {
        if !seen.iter().any(|s| s.iter().zip(row).all(|(a, b)| a.to_f64() == b.to_f64())) {
            seen.push(row);
            if seen.len() >= limit {
                break;
            }
        }
    }
    seen.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n: usize) -> Vec<f64> {
        let mut r = SplitMix64::new(3);
        let mut x = Vec::with_capacity(n * 2);
        for i in 0..n {
            let c = (i % 3) as f64 * 10.0;
            x.push(c + r.uniform());
            x.push(-c + r.uniform());
        }
        x
    }

    #[test]
    fn finds_three_blobs() {
        let x = blobs(3000);
        let res = kmeans(&x, 2, 3, Init::PlusPlus { seed: 0 }, 300, 1e-4, Algorithm::Lloyd, 2).unwrap();
        let mut sizes = res.sizes.clone();
        sizes.sort();
        assert_eq!(sizes, vec![1000, 1000, 1000]);
        assert!(res.inertia < 3000.0 * 0.2);
    }

    #[test]
    fn non_finite_rows_are_an_error_from_given_centres_too() {
        // given centres: the first pass finds the value (no scan before it); k-means++ scans
        let mut x: Vec<f32> = blobs(5_000).iter().map(|&v| v as f32).collect();
        for (i, bad) in [(7usize, f32::NAN), (9_999, f32::INFINITY), (4_321, f32::NEG_INFINITY)] {
            let keep = x[i];
            x[i] = bad;
            let c: Vec<f64> = vec![0.0, 0.0, 10.0, -10.0, 20.0, -20.0];
            for algorithm in [Algorithm::Lloyd, Algorithm::Hamerly] {
                for threads in [1, 2] {
                    let fits = [
                        lloyd(&x, 2, c.clone(), 50, 0.0, algorithm, threads),
                        kmeans(&x, 2, 3, Init::Centres(&c), 50, 1e-4, algorithm, threads),
                        kmeans(&x, 2, 3, Init::PlusPlus { seed: 1 }, 50, 0.0, algorithm, threads),
                    ];
                    for fit in fits {
                        match fit {
                            Err(CoreError::NonFinite { arg: "x", index }) => assert_eq!(index, i),
                            other => panic!("{bad} at {i}: {other:?}"),
                        }
                    }
                }
            }
            x[i] = keep;
        }
        assert!(lloyd(&x, 2, vec![0.0, 0.0, 10.0, -10.0], 50, 0.0, Algorithm::Lloyd, 2).is_ok());
    }

    #[test]
    fn hamerly_inertia_is_the_full_pass_inertia() {
        // strictly converged Hamerly fits take the inertia from their labels; it must be the
        // bits a full pass gives for the final centres, on any number of chunks and threads
        let mut r = SplitMix64::new(11);
        for (n, d, k) in [(20_000usize, 2usize, 4usize), (9_001, 10, 3), (5_000, 17, 3), (3_000, 16, 16)] {
            let x: Vec<f32> = (0..n * d).map(|i| ((i / d) % k) as f32 + r.uniform() as f32 * 1.5).collect();
            for threads in [1, 2] {
                let res = kmeans(&x, d, k, Init::PlusPlus { seed: 2 }, 300, 0.0, Algorithm::Hamerly, threads)
                    .unwrap();
                let mut labels = vec![u32::MAX; n];
                let full = assign(&x, d, &res.centroids, &mut labels, threads, false, false);
                let what = format!("n={n} d={d} k={k} threads={threads}");
                assert!(res.n_iter < 300, "{what}: did not converge");
                assert_eq!(res.inertia.to_bits(), full.inertia.to_bits(), "{what}");
                assert_eq!(res.labels, labels, "{what}");
                assert_eq!(res.sizes, full.counts, "{what}");
            }
        }
    }

    #[test]
    fn bitwise_identical_across_threads() {
        let x: Vec<f32> = blobs(20_000).iter().map(|&v| v as f32).collect();
        let a = kmeans(&x, 2, 4, Init::PlusPlus { seed: 5 }, 50, 0.0, Algorithm::Lloyd, 1).unwrap();
        let b = kmeans(&x, 2, 4, Init::PlusPlus { seed: 5 }, 50, 0.0, Algorithm::Lloyd, 2).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.inertia.to_bits(), b.inertia.to_bits());
    }

    #[test]
    fn k_above_distinct_rows_is_defined() {
        let x = [0.0f64, 1.0, 0.0, 1.0, 1.0, 1.0];
        let res = kmeans(&x, 2, 5, Init::PlusPlus { seed: 0 }, 100, 1e-4, Algorithm::Lloyd, 1).unwrap();
        assert_eq!(res.centroids.len(), 10);
        assert_eq!(res.inertia, 0.0);
        assert_eq!(res.sizes.iter().filter(|&&s| s > 0).count(), 2);
        assert_eq!(res.sizes.iter().sum::<u64>(), 3);
    }

    #[test]
    fn empty_cluster_keeps_its_centre() {
        let x = [0.0f64, 0.0, 1.0, 1.0];
        let init = [0.0, 0.0, 1.0, 1.0, 50.0, 50.0];
        let res = kmeans(&x, 2, 3, Init::Centres(&init), 10, 0.0, Algorithm::Lloyd, 1).unwrap();
        assert_eq!(&res.centroids[4..], &[50.0, 50.0]);
        assert_eq!(res.sizes, vec![1, 1, 0]);
        assert_eq!(res.n_iter, 1); // no centre moved: the shift rule stops at once
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(kmeans(&[0.0f64; 4], 2, 0, Init::PlusPlus { seed: 0 }, 10, 0.0, Algorithm::Lloyd, 1).is_err());
        assert!(
            kmeans(&[f64::NAN, 0.0], 2, 1, Init::PlusPlus { seed: 0 }, 10, 0.0, Algorithm::Lloyd, 1).is_err()
        );
        assert!(kmeans(&[0.0f64; 3], 2, 1, Init::PlusPlus { seed: 0 }, 10, 0.0, Algorithm::Lloyd, 1).is_err());
        assert!(kmeans(&[0.0f64; 4], 2, 2, Init::Centres(&[0.0; 2]), 10, 0.0, Algorithm::Lloyd, 1).is_err());
        assert!(kmeans(&[0.0f64; 4], 2, 1, Init::PlusPlus { seed: 0 }, 0, 0.0, Algorithm::Lloyd, 1).is_err());
    }

    #[test]
    fn distinct_rows_counted_up_to_limit() {
        let x = [0.0f32, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        assert_eq!(count_distinct_rows(&x, 2, 10), 3);
        assert_eq!(count_distinct_rows(&x, 2, 2), 2);
    }
}
