//! GRPO scores of f32 rewards with AVX-512, 16 prompts at a time (one lane per prompt).
//!
//! A tile of 16 prompts x G rollouts is transposed so that vector i holds rollout i of the
//! 16 prompts, then widened to two vectors of 8 f64 lanes. Every lane performs exactly the
//! f64 operations of [`crate::advantages::moments`], [`crate::advantages::inv_scale`],
//! [`crate::advantages::score`] and [`crate::blocks::write_prompt_scores`], in the same
//! order, with separate multiplies and adds (no FMA), and rounds to f32 where they do, so
//! the results are bitwise those of the scalar code. The f32 results go back to the
//! prompt-major layout through the same transpose and one masked store per prompt.
//!
//! The kernels exist for the group sizes in [`SIZES`] on CPUs with AVX-512F ([`supports`]);
//! callers use the portable code otherwise.
//!
//! 0/1 rewards (a correctness reward, the common case) take a shortcut in the two passes of a
//! FairAdvantage step: a prompt's G rewards are a G-bit pattern, and everything pass 1 and
//! pass 2 compute from them depends only on that pattern. A [`BinaryTable`] holds, per
//! pattern, the sums and the two scores, computed by these same kernels on every pattern;
//! a run of [`BATCH`] tiles whose rewards are all +0.0 or 1.0 then costs a load and two
//! compares per prompt in pass 1 and a blend per prompt in pass 2, with the same bits.

use crate::advantages::{inv_scale, Moments, Scale};

/// Prompts per tile.
pub const TILE: usize = 16;

/// Group sizes with a kernel.
pub const SIZES: [usize; 10] = [2, 3, 4, 5, 6, 7, 8, 10, 12, 16];

/// Whether the kernels run for group size `g` on this CPU.
pub fn supports(g: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SIZES.contains(&g) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// How a prompt's inverse scale is obtained.
#[derive(Debug, Clone, Copy)]
pub struct ScoreParams {
    /// The inverse scale when it is the same for every prompt (`"batch"`, `"none"`, G = 1).
    inv: Option<f64>,
    eps: f64,
}

impl ScoreParams {
    pub fn new(scale: Scale, batch_std: f64, eps: f64, g: usize) -> Self {
        let per_prompt = scale == Scale::Group && g != 1;
        let inv = (!per_prompt).then(|| inv_scale(&Moments::default(), scale, batch_std, eps, g));
        ScoreParams { inv, eps }
    }

    fn key(&self) -> (Option<u64>, u64) {
        (self.inv.map(f64::to_bits), self.eps.to_bits())
    }
}

/// Tiles per batch of the kernels (and per run of 0/1 tiles that take the table). Each phase
/// of a kernel runs over the batch's tiles, whose dependency chains (a sum, a division, a sum
/// of squares, a square root, a division) are independent: the CPU overlaps them instead of
/// waiting on one tile at a time.
pub const BATCH: usize = 8;

/// What pass 1 hands on per prompt: the sum and count of the scorable rewards (as
/// [`Moments`]), the sum of the scores and of their squares (each score rounded to f32, in
/// rollout order).
pub type PromptSums = [f64; 4];

/// The prompt sums of one tile, or of a run of 0/1 tiles, as pass 1 ([`sums`]) hands them on.
#[derive(Clone, Copy)]
pub enum TileIn<'a> {
    /// The sums of the tile's prompts (lanes past its prompt count are meaningless).
    Sums(&'a [PromptSums; TILE]),
    /// Full tiles of 0/1 rewards (a whole number of them): their prompts' patterns, whose
    /// sums the table holds.
    Binary(&'a [u32], &'a BinaryTable),
}

impl TileIn<'_> {
    /// The sums of prompt `l` of the tile.
    #[inline(always)]
    pub fn get(&self, l: usize) -> &PromptSums {
        match self {
            TileIn::Sums(ps) => &ps[l],
            TileIn::Binary(pats, t) => t.sums_of(pats[l]),
        }
    }
}

/// Per-prompt sums of one tile, per quantity; lanes past the tile's prompt count are
/// meaningless.
#[derive(Debug, Clone, Copy, Default)]
struct TileSums {
    sum: [f64; TILE],
    cnt: [f64; TILE],
    ssum: [f64; TILE],
    ssq: [f64; TILE],
}

impl TileSums {
    fn prompts(&self) -> [PromptSums; TILE] {
        std::array::from_fn(|l| [self.sum[l], self.cnt[l], self.ssum[l], self.ssq[l]])
    }
}

/// Pass 1's results for every pattern of G 0/1 rewards (bit i = rollout i is 1.0), for one
/// group size and [`ScoreParams`]: the prompt sums and the f32 scores of a 0 and of a 1.
/// Built by the tile kernels themselves, so a table lookup gives their bits.
#[derive(Debug, Clone)]
pub struct BinaryTable {
    g: usize,
    key: (Option<u64>, u64),
    /// Per pattern: where its prompt sums are in `sums`. Patterns share a handful of
    /// distinct sums (15 to 25 of 1024 or 4096 at G = 10, 12), so the lookups stay in the
    /// core's L1 cache; a table of every pattern's sums (32 KiB at G = 10) does not.
    idx: Vec<u16>,
    /// The distinct prompt sums, in order of the first pattern that has them.
    sums: Vec<PromptSums>,
    /// Per pattern: the score of a 0 reward and of a 1 reward (0 where there is none).
    score: Vec<[f32; 2]>,
    /// The two scores depend on the number of 1 rewards only (not on their order), as they
    /// do for every size and scale tried: pass 2 can then take its results per cell and
    /// count ([`BinaryWeights`]).
    by_count: bool,
}

impl BinaryTable {
    /// Largest group size with a table (2^12 patterns, 192 KiB).
    pub const MAX_G: usize = 12;

    /// The table for group size `g`, or None without a tile kernel or for G > [`Self::MAX_G`].
    pub fn new(g: usize, p: &ScoreParams) -> Option<Self> {
        if !supports(g) || g > Self::MAX_G {
            return None;
        }
        let np = 1usize << g;
        let r: Vec<f32> = (0..np * g).map(|k| ((k / g) >> (k % g) & 1) as f32).collect();
        let mut sc = vec![0.0f32; scores_len(np, g)];
        let mut bin = vec![false; tiles_len(np)];
        let mut pat = vec![0u16; tiles_len(np) * TILE];
        let mut sums_v = vec![[0.0f64; 4]; np];
        let bad = sums(&r, g, p, None, &mut sc, &mut bin, &mut pat, &mut |q, n, ps| {
            for (l, v) in sums_v[q..q + n].iter_mut().enumerate() {
                *v = *ps.get(l);
            }
        });
        debug_assert!(bad.is_none());
        // what the 0/1 path of FairAdvantage's pass 1 relies on: a pattern's sums count its
        // G rewards (none is NaN) and its 1s
        for (pat, v) in sums_v.iter().enumerate() {
            assert!(v[1] == g as f64 && v[0] == f64::from((pat as u32).count_ones()), "0/1 sums {v:?}");
        }
        let score: Vec<[f32; 2]> = (0..np)
            .map(|pat| {
                let base = pat / TILE * TILE * g + pat % TILE;
                let mut s = [0.0f32; 2];
                // rollout i's score sits at row i of the tile; any rollout of each value
                for i in 0..g {
                    s[pat >> i & 1] = sc[base + i * TILE];
                }
                s
            })
            .collect();
        let bits = |s: &[f32; 2]| [s[0].to_bits(), s[1].to_bits()];
        let by_count = score
            .iter()
            .enumerate()
            .all(|(pat, s)| bits(s) == bits(&score[(1usize << (pat as u32).count_ones()) - 1]));
        let (mut idx, mut sums) = (Vec::with_capacity(np), Vec::<PromptSums>::new());
        let mut first = std::collections::HashMap::new();
        for v in &sums_v {
            // the same bits, not equal values (-0.0 is not 0.0 here)
            let key = v.map(f64::to_bits);
            let i = *first.entry(key).or_insert_with(|| {
                sums.push(*v);
                sums.len() - 1
            });
            idx.push(i as u16);
        }
        Some(BinaryTable { g, key: p.key(), idx, sums, score, by_count })
    }

    /// [`BinaryTable::new`] when a batch of `prompts` prompts pays for building it (at least
    /// as many prompts as patterns).
    pub fn for_batch(g: usize, p: &ScoreParams, prompts: usize) -> Option<Self> {
        if g > Self::MAX_G || prompts < 1 << g {
            return None;
        }
        Self::new(g, p)
    }

    /// The sums of a prompt whose rewards are the bits of `pattern`.
    #[inline(always)]
    pub fn sums_of(&self, pattern: u32) -> &PromptSums {
        &self.sums[self.index(pattern)]
    }

    /// Where the sums of `pattern` are in [`BinaryTable::distinct`].
    #[inline(always)]
    pub fn index(&self, pattern: u32) -> usize {
        self.idx[pattern as usize] as usize
    }

    /// The distinct prompt sums of the patterns.
    pub fn distinct(&self) -> &[PromptSums] {
        &self.sums
    }

    /// Whether this is the table for `g` and `p`.
    pub fn fits(&self, g: usize, p: &ScoreParams) -> bool {
        self.g == g && self.key == p.key()
    }
}

/// The weighting of pass 2 of a FairAdvantage step (see [`crate::blocks::write_prompt_scores`]).
#[derive(Debug, Clone, Copy)]
pub struct CellWeights<'a> {
    /// Per prompt of the chunk: its cell.
    pub cells: &'a [u32],
    /// Per cell: what multiplies the score, which each of its prompts also reports as its
    /// weight.
    pub mult: &'a [f64],
    /// Per cell: the cluster (-1 for a labelled group) that each of its prompts reports.
    pub cluster: &'a [i64],
    pub shift: f64,
    pub scale: f64,
    /// Pass 2's results for 0/1 prompts, per cell and count, when the table allows them.
    pub binary: Option<&'a BinaryWeights>,
}

/// Pass 2's two results for a 0/1 prompt (the advantage of a 0 and of a 1 reward), per cell
/// and number of 1 rewards: what [`weighted`] computes per prompt, computed once per step.
#[derive(Debug, Clone)]
pub struct BinaryWeights {
    g: usize,
    /// Entry `16 * cell + count`.
    pairs: Vec<[f32; 2]>,
}

impl BinaryWeights {
    /// The results of the `table` under the per-cell multipliers `mult`, `shift` and `scale`
    /// (as in [`CellWeights`]), or None when the table's scores depend on more than the count.
    pub fn new(table: &BinaryTable, mult: &[f64], shift: f64, scale: f64) -> Option<Self> {
        if !table.by_count || table.g >= TILE {
            return None;
        }
        // `weigh` of the kernels, one value: the product (the score where it overflows), minus
        // the shift, times the scale, rounded to f32
        let weigh = |s: f32, m: f64| {
            let a = s as f64 * m;
            let a = if a.abs() < f64::INFINITY { a } else { s as f64 };
            ((a - shift) * scale) as f32
        };
        let pairs = (0..mult.len() * TILE)
            .map(|i| {
                let (cell, count) = (i / TILE, i % TILE);
                if count > table.g {
                    return [0.0; 2];
                }
                let s = table.score[(1 << count) - 1];
                [weigh(s[0], mult[cell]), weigh(s[1], mult[cell])]
            })
            .collect();
        Some(BinaryWeights { g: table.g, pairs })
    }
}

macro_rules! by_size {
    ($g:expr, $f:ident :: <G> ($($arg:expr),*)) => {
        match $g {
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            10 => $f::<10>($($arg),*),
            12 => $f::<12>($($arg),*),
            16 => $f::<16>($($arg),*),
            g => panic!("no tiled kernel for group size {g}"),
        }
    };
}

/// GRPO scores of the prompts of `r` (G = `g` rewards each) into `out`; returns the index
/// in `r` of the first infinite reward, if any. With the `table` of `g` and `p`, a run of
/// [`BATCH`] full tiles of 0/1 rewards takes its two scores per prompt from it.
///
/// # Panics
/// If `supports(g)` is false, the lengths do not match, or the table is not for `g`.
pub fn scores(
    r: &[f32],
    g: usize,
    p: &ScoreParams,
    table: Option<&BinaryTable>,
    out: &mut [f32],
) -> Option<usize> {
    assert!(supports(g) && r.len() == out.len() && r.len().is_multiple_of(g));
    assert!(table.is_none_or(|t| t.fits(g, p)));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supports` checked AVX-512F; the lengths are checked above.
    unsafe {
        by_size!(g, scores_k::<G>(r, p, table, out))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// Length of the tiled scores of `n` prompts of `g` rollouts (see [`sums`]).
pub fn scores_len(n: usize, g: usize) -> usize {
    n.div_ceil(TILE) * TILE * g
}

/// Tiles of `n` prompts (one flag each for [`sums`] / [`weighted`]).
pub fn tiles_len(n: usize) -> usize {
    n.div_ceil(TILE)
}

/// Pass 1: moments and score sums of the prompts of `r`, handed to `f` one tile at a time
/// as `f(first prompt, prompts in the tile, sums)`; returns the index in `r` of the first
/// infinite reward, if any. The scores, rounded to f32, go to `sc` tile by tile
/// ([`scores_len`] in all): 16 values per rollout i (one per prompt of the tile), NaN where
/// the reward is NaN, for [`weighted`] to reuse. With the `table` of `g` and `p`, a run of
/// [`BATCH`] full tiles of 0/1 rewards is looked up instead: such a tile gets `bin` set and
/// its prompts' patterns in `pat` (16-bit, one per prompt, [`tiles_len`] x 16 in all) instead of
/// scores in `sc`.
///
/// # Panics
/// If `supports(g)` is false, the lengths do not match, or the table is not for `g`.
#[allow(clippy::too_many_arguments)]
pub fn sums(
    r: &[f32],
    g: usize,
    p: &ScoreParams,
    table: Option<&BinaryTable>,
    sc: &mut [f32],
    bin: &mut [bool],
    pat: &mut [u16],
    f: &mut dyn FnMut(usize, usize, TileIn<'_>),
) -> Option<usize> {
    let np = r.len() / g;
    assert!(supports(g) && r.len().is_multiple_of(g) && sc.len() == scores_len(np, g));
    assert!(bin.len() == tiles_len(np) && pat.len() == tiles_len(np) * TILE);
    assert!(table.is_none_or(|t| t.fits(g, p)));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supports` checked AVX-512F; the lengths are checked above.
    unsafe {
        by_size!(g, sums_k::<G>(r, p, table, sc, bin, pat, f))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// What pass 2 writes per prompt of a chunk: its G advantages, its weight and its cluster.
pub struct PromptOut<'a> {
    pub adv: &'a mut [f32],
    pub weights: &'a mut [f64],
    pub clusters: &'a mut [i64],
}

/// Pass 2: the weighted, renormalised advantages of the prompts whose scores (or, for the
/// tiles flagged in `bin`, patterns in `pat` of the `table`) [`sums`] left into `out.adv`
/// (exactly [`crate::blocks::write_prompt_scores`] per prompt), and each prompt's cell's
/// weight and cluster into `out.weights` and `out.clusters`; adds each prompt's |A| to
/// `mass[cell]`, in prompt order. The rewards must be free of infinities (pass 1 checks).
///
/// # Panics
/// If `supports(g)` is false, the lengths do not match, or a cell has no multiplier.
#[allow(clippy::too_many_arguments)]
pub fn weighted(
    sc: &[f32],
    bin: &[bool],
    pat: &[u16],
    table: Option<&BinaryTable>,
    g: usize,
    w: &CellWeights<'_>,
    out: PromptOut<'_>,
    mass: &mut [f64],
) {
    let np = w.cells.len();
    assert!(supports(g) && out.adv.len() == np * g && sc.len() == scores_len(np, g));
    assert!(out.weights.len() == np && out.clusters.len() == np);
    assert!(w.cluster.len() == w.mult.len() && mass.len() == w.mult.len());
    assert!(
        bin.len() == tiles_len(np) && pat.len() == tiles_len(np) * TILE && table.is_none_or(|t| t.g == g)
    );
    assert!(table.is_some() || !bin.contains(&true), "0/1 tiles need their table");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supports` checked AVX-512F; the lengths are checked above.
    unsafe {
        by_size!(g, weighted_k::<G>(sc, bin, pat, table, w, out, mass))
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::put_cells;
#[cfg(target_arch = "x86_64")]
use imp::{scores_k, sums_k, weighted_k};

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::{
        BinaryTable, BinaryWeights, CellWeights, PromptOut, ScoreParams, TileIn, TileSums, BATCH, TILE,
    };
    use crate::kernels::avx512::transpose_512 as transpose;
    use std::arch::x86_64::*;

    /// 16 x 16 f32, cache-line aligned: a tile's rewards (padded) or its results.
    #[repr(C, align(64))]
    struct Buf([f32; TILE * TILE]);

    impl Buf {
        fn new() -> Self {
            Buf([0.0; TILE * TILE])
        }
    }

    /// A batch of tiles. Tile b: `x[b][i][h]` holds rollout i of its prompts 8h..8h+8
    /// (f64), `ok[b][i]` marks the scorable (non-NaN) ones; then per lane the sum and
    /// count of the scorable rewards, their mean and the inverse scale.
    struct Batch<const G: usize> {
        x: [[[__m512d; 2]; G]; BATCH],
        ok: [[__mmask16; G]; BATCH],
        sum: [[__m512d; 2]; BATCH],
        cnt: [[__m512d; 2]; BATCH],
        mean: [[__m512d; 2]; BATCH],
        inv: [[__m512d; 2]; BATCH],
        /// No NaN reward and a finite inverse scale in the tile: no score can be NaN, so
        /// the NaN -> 0 steps may be skipped.
        clean: [bool; BATCH],
        /// `x` holds the rewards minus the mean (as [`Batch::scale`] computed them for the
        /// standard deviation), not the rewards.
        centred: [bool; BATCH],
        pad: Buf,
    }

    #[inline(always)]
    fn half(m: __mmask16, h: usize) -> __mmask8 {
        (m >> (8 * h)) as __mmask8
    }

    impl<const G: usize> Batch<G> {
        #[inline(always)]
        unsafe fn new() -> Self {
            let z = _mm512_setzero_pd();
            Batch {
                x: [[[z; 2]; G]; BATCH],
                ok: [[0; G]; BATCH],
                sum: [[z; 2]; BATCH],
                cnt: [[z; 2]; BATCH],
                mean: [[z; 2]; BATCH],
                inv: [[z; 2]; BATCH],
                clean: [false; BATCH],
                centred: [false; BATCH],
                pad: Buf::new(),
            }
        }

        /// The rollouts of `n <= 16` prompts at `r` (padded with zeros): vector i holds
        /// rollout i of the 16 prompts.
        #[inline(always)]
        unsafe fn columns(&mut self, r: &[f32], n: usize) -> [__m512; G] {
            let src = if n == TILE {
                r.as_ptr()
            } else {
                self.pad.0[..n * G].copy_from_slice(&r[..n * G]);
                self.pad.0[n * G..TILE * G].fill(0.0);
                self.pad.0.as_ptr()
            };
            let mut rows = [_mm512_setzero_ps(); TILE];
            let mut xt = [_mm512_setzero_ps(); G];
            transpose::<G>(src, &mut rows, &mut xt);
            xt
        }

        /// Loads `n <= 16` prompts at `r` into tile b (padded with zeros) and computes
        /// their sum, count and mean as [`crate::advantages::moments`]; returns whether
        /// some reward is infinite (f32 sums cannot overflow in f64, so exactly when some
        /// sum is not finite).
        #[inline(always)]
        unsafe fn load(&mut self, b: usize, r: &[f32], n: usize) -> bool {
            let xt = self.columns(r, n);
            let (zero, one) = (_mm512_setzero_pd(), _mm512_set1_pd(1.0));
            let mut all: __mmask16 = 0xffff;
            let mut sum = [zero; 2];
            for (i, &v) in xt.iter().enumerate() {
                let ok = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
                all &= ok;
                let x = widen(v);
                for h in 0..2 {
                    // `sum += ok ? v : 0` (a sum that starts at +0 never becomes -0, so
                    // skipping the +0 leaves the same bits)
                    sum[h] = _mm512_mask_add_pd(sum[h], half(ok, h), sum[h], x[h]);
                }
                self.x[b][i] = x;
                self.ok[b][i] = ok;
            }
            self.clean[b] = all == 0xffff;
            let cnt = if self.clean[b] {
                [_mm512_set1_pd(G as f64); 2]
            } else {
                let mut cnt = [zero; 2];
                for ok in &self.ok[b] {
                    for (h, c) in cnt.iter_mut().enumerate() {
                        *c = _mm512_mask_add_pd(*c, half(*ok, h), *c, one);
                    }
                }
                cnt
            };
            let nan = _mm512_set1_pd(f64::NAN);
            let inf = _mm512_set1_pd(f64::INFINITY);
            let mut finite = 0u16;
            for h in 0..2 {
                let has = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(cnt[h], zero);
                self.mean[b][h] = _mm512_mask_mov_pd(nan, has, _mm512_div_pd(sum[h], cnt[h]));
                finite |= (_mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(sum[h]), inf) as u16) << (8 * h);
            }
            self.sum[b] = sum;
            self.cnt[b] = cnt;
            self.centred[b] = false;
            finite != 0xffff
        }

        /// The inverse scale of tile b, as [`crate::advantages::inv_scale`].
        #[inline(always)]
        unsafe fn scale(&mut self, b: usize, p: &ScoreParams) {
            let Some(c) = p.inv else {
                let one = _mm512_set1_pd(1.0);
                let nan = _mm512_set1_pd(f64::NAN);
                for h in 0..2 {
                    let mean = self.mean[b][h];
                    let mut ss = _mm512_setzero_pd();
                    for i in 0..G {
                        let e = _mm512_sub_pd(self.x[b][i][h], mean);
                        // `ss += nan ? 0 : e * e`, as the sum above
                        ss = _mm512_mask_add_pd(ss, half(self.ok[b][i], h), ss, _mm512_mul_pd(e, e));
                        // the score's `x - mean` is the same difference
                        self.x[b][i][h] = e;
                    }
                    let cnt = self.cnt[b][h];
                    let two = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(cnt, one);
                    let std = _mm512_mask_mov_pd(
                        nan,
                        two,
                        _mm512_sqrt_pd(_mm512_div_pd(ss, _mm512_sub_pd(cnt, one))),
                    );
                    self.inv[b][h] = _mm512_div_pd(one, _mm512_add_pd(std, _mm512_set1_pd(p.eps)));
                }
                let inf = _mm512_set1_pd(f64::INFINITY);
                for h in 0..2 {
                    let fin = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(self.inv[b][h]), inf);
                    self.clean[b] &= fin == 0xff;
                }
                self.centred[b] = true;
                return;
            };
            self.inv[b] = [_mm512_set1_pd(c); 2];
            self.clean[b] &= c.is_finite();
        }

        /// The score of rollout i of tile b in half h, NaN -> 0, rounded to f32: as f32
        /// and back as f64. `CLEAN`: the tile is clean (no NaN to map).
        #[inline(always)]
        unsafe fn score<const CLEAN: bool>(&self, b: usize, i: usize, h: usize) -> (__m256, __m512d) {
            let e = if self.centred[b] {
                self.x[b][i][h]
            } else {
                _mm512_sub_pd(self.x[b][i][h], self.mean[b][h])
            };
            let a = _mm512_mul_pd(e, self.inv[b][h]);
            let a = if CLEAN { a } else { _mm512_maskz_mov_pd(_mm512_cmp_pd_mask::<_CMP_ORD_Q>(a, a), a) };
            let a32 = _mm512_cvtpd_ps(a);
            (a32, _mm512_cvtps_pd(a32))
        }
    }

    /// Runs the phases over `r` a batch at a time: `each(batch, tile, first prompt,
    /// prompts in the tile)` once per tile, in order, after its statistics. Returns the
    /// index in `r` of the first infinite reward. `bt` is storage the caller reuses from
    /// call to call (a tile's load and scale write every field that tile reads; a new
    /// `Batch` per run of graded tiles meant zeroing ~12 KiB per 128 prompts).
    #[inline(always)]
    unsafe fn run<const G: usize>(
        bt: &mut Batch<G>,
        r: &[f32],
        p: &ScoreParams,
        mut each: impl FnMut(&Batch<G>, usize, usize, usize),
    ) -> Option<usize> {
        let np = r.len() / G;
        let mut bad = None;
        for q0 in (0..np).step_by(TILE * BATCH) {
            let nt = (np - q0).div_ceil(TILE).min(BATCH);
            let tile = |b: usize| {
                let q = q0 + b * TILE;
                (q, TILE.min(np - q))
            };
            let mut inf = false;
            for b in 0..nt {
                let (q, n) = tile(b);
                prefetch_next::<G>(r.as_ptr().wrapping_add(q * G));
                inf |= bt.load(b, &r[q * G..(q + n) * G], n);
            }
            if inf && bad.is_none() {
                let end = (q0 + TILE * BATCH).min(np);
                bad = r[q0 * G..end * G].iter().position(|v| v.is_infinite()).map(|i| q0 * G + i);
            }
            for b in 0..nt {
                bt.scale(b, p);
            }
            for b in 0..nt {
                let (q, n) = tile(b);
                each(bt, b, q, n);
            }
        }
        bad
    }

    /// Row i of `buf` = the two f32 halves.
    #[inline(always)]
    unsafe fn put(buf: &mut Buf, i: usize, lo: __m256, hi: __m256) {
        let v = _mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi));
        _mm512_store_ps(buf.0.as_mut_ptr().add(i * TILE), _mm512_castpd_ps(v));
    }

    /// Writes the first G values of column l of `buf` (rows = rollouts) to prompt l of
    /// `out`, for the first `n` prompts.
    #[inline(always)]
    unsafe fn store<const G: usize>(buf: &Buf, out: &mut [f32], n: usize) {
        assert!(out.len() >= n * G);
        let mut rows = [_mm512_setzero_ps(); TILE];
        let mut cols = [_mm512_setzero_ps(); TILE];
        transpose::<TILE>(buf.0.as_ptr(), &mut rows, &mut cols);
        let mask = ((1u32 << G) - 1) as __mmask16;
        let o = out.as_mut_ptr();
        for (l, c) in cols.iter().enumerate().take(n) {
            _mm512_mask_storeu_ps(o.add(l * G), mask, *c);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_k<const G: usize>(
        r: &[f32],
        p: &ScoreParams,
        table: Option<&BinaryTable>,
        out: &mut [f32],
    ) -> Option<usize> {
        #[inline(always)]
        unsafe fn tile<const G: usize, const CLEAN: bool>(bt: &Batch<G>, b: usize, buf: &mut Buf) {
            for i in 0..G {
                put(buf, i, bt.score::<CLEAN>(b, i, 0).0, bt.score::<CLEAN>(b, i, 1).0);
            }
        }
        let mut buf = Buf::new();
        let mut bt = Batch::<G>::new();
        // both closures write disjoint prompts of `out`, through one pointer
        assert!(out.len() == r.len());
        let o = out.as_mut_ptr();
        runs::<G>(
            r,
            table.is_some(),
            |q0, pats| {
                let t = table.expect("runs only finds 0/1 runs with a table");
                for (b, pt) in pats.chunks_exact(TILE).enumerate() {
                    let pt: &[u32; TILE] = pt.try_into().expect("a tile of patterns");
                    let q = q0 + b * TILE;
                    let patv = _mm512_loadu_si512(pt.as_ptr() as *const _);
                    let (s0, s1) = table_lookup::<G>(patv, t);
                    put_tile::<G>(patv, s0, s1, std::slice::from_raw_parts_mut(o.add(q * G), TILE * G));
                }
            },
            |q0, rb| {
                run::<G>(&mut bt, rb, p, |bt, b, q, n| {
                    if bt.clean[b] {
                        tile::<G, true>(bt, b, &mut buf);
                    } else {
                        tile::<G, false>(bt, b, &mut buf);
                    }
                    let q = q0 + q;
                    store::<G>(&buf, std::slice::from_raw_parts_mut(o.add(q * G), n * G), n);
                })
            },
        )
    }

    /// Per-lane |A| partial sums of pass 2: rollout i goes to partial `i % 4`, and a
    /// prompt's total is `(p0 + p1) + (p2 + p3)` (as [`crate::blocks::write_prompt_scores`] sums it).
    struct Mass([[__m512d; 2]; 4]);

    impl Mass {
        #[inline(always)]
        unsafe fn new() -> Self {
            Mass([[_mm512_setzero_pd(); 2]; 4])
        }

        /// Adds |v| (rollout i of the 16 prompts).
        #[inline(always)]
        unsafe fn add(&mut self, i: usize, v: __m512) {
            for (p, a) in self.0[i & 3].iter_mut().zip(widen(_mm512_abs_ps(v))) {
                *p = _mm512_add_pd(*p, a);
            }
        }

        /// The 16 prompts' totals.
        #[inline(always)]
        unsafe fn store(&self, lane_mass: &mut [f64; TILE]) {
            let p = &self.0;
            for (h, lm) in lane_mass.chunks_exact_mut(8).enumerate() {
                let tot = _mm512_add_pd(_mm512_add_pd(p[0][h], p[1][h]), _mm512_add_pd(p[2][h], p[3][h]));
                _mm512_storeu_pd(lm.as_mut_ptr(), tot);
            }
        }
    }

    /// Splits `r` into runs of [`BATCH`] tiles: a full run of 0/1 rewards goes to
    /// `bin(first prompt, patterns)` when `table`, any other to `general(first prompt, its
    /// rewards)`, which returns the index in them of the first infinite reward. Returns the
    /// index in `r` of the first infinite reward.
    #[inline(always)]
    unsafe fn runs<const G: usize>(
        r: &[f32],
        table: bool,
        mut bin: impl FnMut(usize, &[u32; TILE * BATCH]),
        mut general: impl FnMut(usize, &[f32]) -> Option<usize>,
    ) -> Option<usize> {
        let np = r.len() / G;
        let mut pats = [0u32; TILE * BATCH];
        let mut bad = None;
        for q0 in (0..np).step_by(TILE * BATCH) {
            let end = (q0 + TILE * BATCH).min(np);
            let rb = &r[q0 * G..end * G];
            if table && end - q0 == TILE * BATCH && patterns::<G>(rb, &mut pats) {
                bin(q0, &pats);
                continue;
            }
            bad = bad.or(general(q0, rb).map(|i| q0 * G + i));
        }
        bad
    }

    /// The two f32 halves as one vector.
    #[inline(always)]
    unsafe fn join(lo: __m256, hi: __m256) -> __m512 {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        ))
    }

    /// Batches of tiles ahead of the one being read whose rewards [`prefetch_next`] asks for.
    const AHEAD_BATCHES: usize = 4;

    /// Asks for the rewards of the tile [`AHEAD_BATCHES`] batches after the one at `tile`,
    /// into L2 (the kernels wait on their loads otherwise). One batch ahead into L1 was 12 %
    /// slower per step from DRAM (fair_probe, 10^6 prompts, 2 threads: 5.35 -> 4.73 ms); 2,
    /// 6 or 8 batches ahead, or the T2 hint, measured alike. A prefetch never faults, so the
    /// address may lie past the end of the rewards.
    #[inline(always)]
    unsafe fn prefetch_next<const G: usize>(tile: *const f32) {
        let ahead = tile.wrapping_add(AHEAD_BATCHES * BATCH * TILE * G) as *const i8;
        for j in 0..G {
            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * j));
        }
    }

    /// The 0/1 patterns (bit i = rollout i is 1.0) of the [`BATCH`] full tiles at `r`, or
    /// false if some reward is neither +0.0 nor 1.0 (compared as bits: -0.0 or NaN is not).
    ///
    /// A tile's 16 G rewards are G whole vectors; comparing them gives the tile's bit string
    /// in reward order (bit 16i + e = reward 16i + e is 1.0), in which prompt l's pattern is
    /// the G bits from bit G l on: each lane shifts its bits out of the one or two 32-bit
    /// words they lie in.
    #[inline(always)]
    unsafe fn patterns<const G: usize>(r: &[f32], pats: &mut [u32; TILE * BATCH]) -> bool {
        assert!(r.len() >= BATCH * TILE * G && G <= 16);
        let one = _mm512_set1_epi32(1.0f32.to_bits() as i32);
        let zero = _mm512_setzero_si512();
        // lane l: its pattern starts at bit `at` of word `word` of the bit string
        let first: [i32; TILE] = std::array::from_fn(|l| (G * l) as i32);
        let first = _mm512_loadu_si512(first.as_ptr() as *const _);
        let word = _mm512_srli_epi32::<5>(first);
        let next = _mm512_add_epi32(word, _mm512_set1_epi32(1));
        let at = _mm512_and_si512(first, _mm512_set1_epi32(31));
        // a shift by 32 (`at` = 0) gives 0
        let rest = _mm512_sub_epi32(_mm512_set1_epi32(32), at);
        let low = _mm512_set1_epi32(((1u32 << G) - 1) as i32);
        let mut good: __mmask16 = 0xffff;
        let x = r.as_ptr() as *const i32;
        for (b, pt) in pats.chunks_exact_mut(TILE).enumerate() {
            prefetch_next::<G>((x as *const f32).wrapping_add(b * TILE * G));
            // the bit string in `v`, 16 bits per reward vector (words past the G vectors are
            // 0 and are only ever shifted out or masked off)
            let mut v = _mm512_setzero_si512();
            let mut half: u32 = 0;
            for i in 0..G {
                let row = _mm512_loadu_si512(x.add((b * G + i) * TILE) as *const _);
                let m1 = _mm512_cmpeq_epi32_mask(row, one);
                good &= m1 | _mm512_cmpeq_epi32_mask(row, zero);
                if i % 2 == 0 {
                    half = m1 as u32;
                } else {
                    half |= (m1 as u32) << 16;
                }
                if i % 2 == 1 || i == G - 1 {
                    v = _mm512_mask_set1_epi32(v, 1 << (i / 2), half as i32);
                }
            }
            let (lo, hi) = (_mm512_permutexvar_epi32(word, v), _mm512_permutexvar_epi32(next, v));
            let p = _mm512_or_si512(_mm512_srlv_epi32(lo, at), _mm512_sllv_epi32(hi, rest));
            _mm512_storeu_si512(pt.as_mut_ptr() as *mut _, _mm512_and_si512(p, low));
        }
        good == 0xffff
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sums_k<const G: usize>(
        r: &[f32],
        p: &ScoreParams,
        table: Option<&BinaryTable>,
        sc: &mut [f32],
        bin: &mut [bool],
        pat: &mut [u16],
        f: &mut dyn FnMut(usize, usize, TileIn<'_>),
    ) -> Option<usize> {
        /// The tile's sums into `ts`, its scores (NaN for a NaN reward) to `out` (G x 16).
        #[inline(always)]
        unsafe fn tile<const G: usize, const CLEAN: bool>(
            bt: &Batch<G>,
            b: usize,
            ts: &mut TileSums,
            out: &mut [f32],
        ) {
            assert!(out.len() >= G * TILE);
            let nan = _mm512_set1_ps(f32::NAN);
            let (mut ssum, mut ssq) = ([_mm512_setzero_pd(); 2], [_mm512_setzero_pd(); 2]);
            for i in 0..G {
                let mut s32 = [_mm256_setzero_ps(); 2];
                for h in 0..2 {
                    let (a32, v) = bt.score::<CLEAN>(b, i, h);
                    ssum[h] = _mm512_add_pd(ssum[h], v);
                    ssq[h] = _mm512_add_pd(ssq[h], _mm512_mul_pd(v, v));
                    s32[h] = a32;
                }
                let row = join(s32[0], s32[1]);
                let row = if CLEAN { row } else { _mm512_mask_mov_ps(nan, bt.ok[b][i], row) };
                _mm512_storeu_ps(out.as_mut_ptr().add(i * TILE), row);
            }
            for h in 0..2 {
                _mm512_storeu_pd(ts.sum.as_mut_ptr().add(8 * h), bt.sum[b][h]);
                _mm512_storeu_pd(ts.cnt.as_mut_ptr().add(8 * h), bt.cnt[b][h]);
                _mm512_storeu_pd(ts.ssum.as_mut_ptr().add(8 * h), ssum[h]);
                _mm512_storeu_pd(ts.ssq.as_mut_ptr().add(8 * h), ssq[h]);
            }
        }
        let mut ts = TileSums::default();
        let mut bt = Batch::<G>::new();
        // both closures need `bin` and `f`: through a cell, one at a time
        let shared = std::cell::RefCell::new((bin, f));
        runs::<G>(
            r,
            table.is_some(),
            |q0, pats| {
                let t = table.expect("runs only finds 0/1 runs with a table");
                let (bin, f) = &mut *shared.borrow_mut();
                // the patterns for pass 2 as 16-bit numbers (G <= 16): half the bytes
                for (o, v) in pat[q0..q0 + TILE * BATCH].chunks_exact_mut(TILE).zip(pats.chunks_exact(TILE)) {
                    let v = _mm512_loadu_si512(v.as_ptr() as *const _);
                    _mm256_storeu_si256(o.as_mut_ptr() as *mut _, _mm512_cvtepi32_epi16(v));
                }
                bin[q0 / TILE..q0 / TILE + BATCH].fill(true);
                f(q0, TILE * BATCH, TileIn::Binary(pats, t));
            },
            |q0, rb| {
                let (bin, f) = &mut *shared.borrow_mut();
                run::<G>(&mut bt, rb, p, |bt, b, q, n| {
                    let q = q0 + q;
                    bin[q / TILE] = false;
                    let out = &mut sc[q * G..(q + TILE) * G];
                    if bt.clean[b] {
                        tile::<G, true>(bt, b, &mut ts, out);
                    } else {
                        tile::<G, false>(bt, b, &mut ts, out);
                    }
                    f(q, n, TileIn::Sums(&ts.prompts()));
                })
            },
        )
    }

    /// One rollout row of pass 2 (16 prompts' scores, NaN ones already 0): `score * mult`
    /// (the score itself where the product overflows, unless `SAFE`), minus the shift, times
    /// the scale, 0 where `ok` is unset (unless `CLEAN`), rounded to f32.
    #[inline(always)]
    unsafe fn weigh<const CLEAN: bool, const SAFE: bool>(
        row: __m512,
        ok: __mmask16,
        m: &[__m512d; 2],
        shift: __m512d,
        scale: __m512d,
    ) -> __m512 {
        let inf = _mm512_set1_pd(f64::INFINITY);
        let sc = widen(row);
        let mut a32 = [_mm256_setzero_ps(); 2];
        for h in 0..2 {
            let a = _mm512_mul_pd(sc[h], m[h]);
            let a = if SAFE {
                a
            } else {
                let finite = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(_mm512_abs_pd(a), inf);
                _mm512_mask_mov_pd(sc[h], finite, a)
            };
            let a = _mm512_mul_pd(_mm512_sub_pd(a, shift), scale);
            let a = if CLEAN { a } else { _mm512_maskz_mov_pd(half(ok, h), a) };
            a32[h] = _mm512_cvtpd_ps(a);
        }
        join(a32[0], a32[1])
    }

    /// The two f64 halves of 16 f32 lanes.
    #[inline(always)]
    unsafe fn widen(v: __m512) -> [__m512d; 2] {
        [
            _mm512_cvtps_pd(_mm512_castps512_ps256(v)),
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))),
        ]
    }

    /// The advantages of a 0/1 tile (prompt l's rewards = the bits of `pats[l]`) into `out`
    /// and its prompts' |A| sums into `lane_mass`: the operations of [`weighted_k`]'s clean
    /// tile on the table's two scores per prompt, then each rollout takes its value's result.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn binary<const G: usize, const SAFE: bool>(
        pats: &[u16; TILE],
        t: &BinaryTable,
        m: &[__m512d; 2],
        shift: f64,
        scale: f64,
        out: &mut [f32],
        lane_mass: &mut [f64; TILE],
    ) {
        let patv = widen_pats(pats);
        let (s0, s1) = table_lookup::<G>(patv, t);
        let (shift, scale) = (_mm512_set1_pd(shift), _mm512_set1_pd(scale));
        let a0 = weigh::<true, SAFE>(s0, 0xffff, m, shift, scale);
        let a1 = weigh::<true, SAFE>(s1, 0xffff, m, shift, scale);
        finish::<G>(patv, a0, a1, &halves(popcount(patv)), out, lane_mass);
    }

    /// A 0/1 tile's patterns, counts of 1s and the advantages `a0` / `a1` of its prompts' 0
    /// and 1 rewards, from the per-cell-and-count results `bw` (the prompts' cells in `cv`,
    /// all below the number of cells): what [`by_count`] writes out.
    struct ByCount {
        patv: __m512i,
        count: __m512i,
        a0: __m512,
        a1: __m512,
    }

    /// A tile's 16-bit patterns as 32-bit lanes.
    #[inline(always)]
    unsafe fn widen_pats(pats: &[u16; TILE]) -> __m512i {
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(pats.as_ptr() as *const _))
    }

    /// [`ByCount`] of the tile with patterns `pats` and cells `cv`: two gathers from `bw`.
    #[inline(always)]
    unsafe fn by_count_fetch(pats: &[u16; TILE], cv: __m512i, bw: &BinaryWeights) -> ByCount {
        let patv = widen_pats(pats);
        let count = popcount(patv);
        // entry 16 * cell + count: (a0, a1) as one 64-bit value
        let at = _mm512_add_epi32(_mm512_slli_epi32::<4>(cv), count);
        let base = bw.pairs.as_ptr() as *const i64;
        let lo = _mm512_castsi512_ps(_mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(at), base));
        let hi = _mm512_castsi512_ps(_mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(at), base));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let (a0, a1) = (_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
        ByCount { patv, count, a0, a1 }
    }

    /// A 0/1 tile from its [`ByCount`]: the bits of [`binary`].
    #[inline(always)]
    unsafe fn by_count<const G: usize>(f: &ByCount, out: &mut [f32], lane_mass: &mut [f64; TILE]) {
        finish::<G>(f.patv, f.a0, f.a1, &halves(f.count), out, lane_mass);
    }

    /// The end of a 0/1 tile, given the advantages `a0` / `a1` of a 0 / a 1 reward and the
    /// number of 1 rewards per prompt (f64 halves): the |A| sums into `lane_mass`, counted
    /// where [`exact_mass`] can, else summed in rollout order, and the tile into `out`.
    #[inline(always)]
    unsafe fn finish<const G: usize>(
        patv: __m512i,
        a0: __m512,
        a1: __m512,
        ones: &[__m512d; 2],
        out: &mut [f32],
        lane_mass: &mut [f64; TILE],
    ) {
        if !exact_mass::<G>(a0, a1, ones, lane_mass) {
            let mut mass = Mass::new();
            for i in 0..G {
                let set = _mm512_test_epi32_mask(patv, _mm512_set1_epi32(1 << i));
                mass.add(i, _mm512_mask_blend_ps(set, a0, a1));
            }
            mass.store(lane_mass);
        }
        put_tile::<G>(patv, a0, a1, out);
    }

    /// The number of set bits of each 32-bit lane below 2^16.
    #[inline(always)]
    unsafe fn popcount(v: __m512i) -> __m512i {
        let m1 = _mm512_set1_epi32(0x5555);
        let m2 = _mm512_set1_epi32(0x3333);
        let m4 = _mm512_set1_epi32(0x0f0f);
        let v = _mm512_sub_epi32(v, _mm512_and_si512(_mm512_srli_epi32::<1>(v), m1));
        let v = _mm512_add_epi32(_mm512_and_si512(v, m2), _mm512_and_si512(_mm512_srli_epi32::<2>(v), m2));
        let v = _mm512_and_si512(_mm512_add_epi32(v, _mm512_srli_epi32::<4>(v)), m4);
        _mm512_and_si512(_mm512_add_epi32(v, _mm512_srli_epi32::<8>(v)), _mm512_set1_epi32(0x1f))
    }

    /// The |A| sums of a 0/1 tile's prompts as counts times values, when that gives the bits
    /// of [`Mass`]'s sums in rollout order: a prompt's |A| values are G copies of the two
    /// f32 numbers |a0| and |a1|, and when both are finite and, unless one is 0, within a
    /// factor 2^25 of each other, every partial sum of up to 16 of them is a multiple of
    /// the smaller one's last place below 2^53 of those places, so every f64 addition of
    /// either order is exact and both give the exact total. Returns false (nothing stored)
    /// when some lane falls outside that.
    #[inline(always)]
    unsafe fn exact_mass<const G: usize>(
        a0: __m512,
        a1: __m512,
        ones: &[__m512d; 2],
        lane_mass: &mut [f64; TILE],
    ) -> bool {
        let (b0, b1) = (widen(_mm512_abs_ps(a0)), widen(_mm512_abs_ps(a1)));
        let (inf, span, zero) =
            (_mm512_set1_pd(f64::INFINITY), _mm512_set1_pd(33554432.0), _mm512_setzero_pd());
        let g = _mm512_set1_pd(G as f64);
        let mut tot = [zero; 2];
        for h in 0..2 {
            let finite =
                _mm512_cmp_pd_mask::<_CMP_LT_OQ>(b0[h], inf) & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(b1[h], inf);
            let (lo, hi) = (_mm512_min_pd(b0[h], b1[h]), _mm512_max_pd(b0[h], b1[h]));
            let near = _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(lo, zero)
                | _mm512_cmp_pd_mask::<_CMP_LE_OQ>(hi, _mm512_mul_pd(lo, span));
            if finite & near != 0xff {
                return false;
            }
            let n1 = ones[h];
            let n0 = _mm512_sub_pd(g, n1);
            tot[h] = _mm512_add_pd(_mm512_mul_pd(n0, b0[h]), _mm512_mul_pd(n1, b1[h]));
        }
        _mm512_storeu_pd(lane_mass.as_mut_ptr(), tot[0]);
        _mm512_storeu_pd(lane_mass.as_mut_ptr().add(8), tot[1]);
        true
    }

    /// The table's scores of a 0 and of a 1 reward of the 16 prompts whose patterns are
    /// `patv`, gathered (a vector built from scalar stores would wait for them to reach the
    /// cache).
    #[inline(always)]
    unsafe fn table_lookup<const G: usize>(patv: __m512i, t: &BinaryTable) -> (__m512, __m512) {
        assert!(t.g == G && t.score.len() == 1 << G);
        // patterns are G-bit numbers: every index is inside the table
        let sc = t.score.as_ptr() as *const f32;
        (_mm512_i32gather_ps::<8>(patv, sc), _mm512_i32gather_ps::<8>(patv, sc.add(1)))
    }

    /// The f64 halves of 16 small counts.
    #[inline(always)]
    unsafe fn halves(count: __m512i) -> [__m512d; 2] {
        [
            _mm512_cvtepi32_pd(_mm512_castsi512_si256(count)),
            _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(count)),
        ]
    }

    /// Writes a full 0/1 tile (16 prompts, G x 16 values) as G whole vectors: value e of
    /// vector j is rollout (16j + e) % G of prompt (16j + e) / G, `a1` of that prompt if its
    /// bit is set in `patv`, else `a0`.
    #[inline(always)]
    unsafe fn put_tile<const G: usize>(patv: __m512i, a0: __m512, a1: __m512, out: &mut [f32]) {
        assert!(out.len() >= TILE * G);
        let o = out.as_mut_ptr();
        for j in 0..G {
            let f: [i32; TILE] = std::array::from_fn(|e| (TILE * j + e) as i32);
            let idx = _mm512_loadu_si512(f.map(|f| f / G as i32).as_ptr() as *const _);
            let bit = _mm512_loadu_si512(f.map(|f| 1 << (f % G as i32)).as_ptr() as *const _);
            let set = _mm512_test_epi32_mask(_mm512_permutexvar_epi32(idx, patv), bit);
            let v = _mm512_mask_blend_ps(set, _mm512_permutexvar_ps(idx, a0), _mm512_permutexvar_ps(idx, a1));
            _mm512_storeu_ps(o.add(TILE * j), v);
        }
    }

    /// The per-cell weights and clusters of [`CellWeights`], looked up 16 cells at a time:
    /// up to 32 cells from registers (two permutes and a blend per 8 lanes), more by gathers.
    struct CellTables<'a> {
        weight: &'a [f64],
        cluster: &'a [i64],
        /// Entries 8j..8j+8 of each table, when it has at most 32.
        regs: Option<([__m512d; 4], [__m512i; 4])>,
    }

    impl<'a> CellTables<'a> {
        #[inline(always)]
        unsafe fn new(weight: &'a [f64], cluster: &'a [i64]) -> Self {
            assert!(weight.len() == cluster.len() && weight.len() <= i32::MAX as usize);
            let mut regs = None;
            if weight.len() <= 32 {
                let (mut tw, mut tc) = ([0.0f64; 32], [0i64; 32]);
                tw[..weight.len()].copy_from_slice(weight);
                tc[..cluster.len()].copy_from_slice(cluster);
                let (mut rw, mut rc) = ([_mm512_setzero_pd(); 4], [_mm512_setzero_si512(); 4]);
                for j in 0..4 {
                    rw[j] = _mm512_loadu_pd(tw.as_ptr().add(8 * j));
                    rc[j] = _mm512_loadu_si512(tc.as_ptr().add(8 * j) as *const _);
                }
                regs = Some((rw, rc));
            }
            CellTables { weight, cluster, regs }
        }

        /// Writes the weight and cluster of the cells `cv` (16 lanes, each below the tables'
        /// length) to `w[..16]` and `cl[..16]`.
        #[inline(always)]
        unsafe fn put(&self, cv: __m512i, w: &mut [f64], cl: &mut [i64]) {
            assert!(w.len() >= TILE && cl.len() >= TILE);
            let sixteen = _mm512_set1_epi64(16);
            for h in 0..2 {
                let c32 =
                    if h == 0 { _mm512_castsi512_si256(cv) } else { _mm512_extracti64x4_epi64::<1>(cv) };
                let (wv, clv) = match &self.regs {
                    Some((tw, tc)) => {
                        // entries 0..16 from the first pair of registers, 16..32 from the second
                        let idx = _mm512_cvtepu32_epi64(c32);
                        let hi = _mm512_test_epi64_mask(idx, sixteen);
                        (
                            _mm512_mask_blend_pd(
                                hi,
                                _mm512_permutex2var_pd(tw[0], idx, tw[1]),
                                _mm512_permutex2var_pd(tw[2], idx, tw[3]),
                            ),
                            _mm512_mask_blend_epi64(
                                hi,
                                _mm512_permutex2var_epi64(tc[0], idx, tc[1]),
                                _mm512_permutex2var_epi64(tc[2], idx, tc[3]),
                            ),
                        )
                    }
                    None => (
                        _mm512_i32gather_pd::<8>(c32, self.weight.as_ptr()),
                        _mm512_i32gather_epi64::<8>(c32, self.cluster.as_ptr()),
                    ),
                };
                _mm512_storeu_pd(w.as_mut_ptr().add(8 * h), wv);
                _mm512_storeu_si512(cl.as_mut_ptr().add(8 * h) as *mut _, clv);
            }
        }
    }

    /// The weight and cluster of each prompt's cell (`weight[cells[q]]`, `cluster[cells[q]]`)
    /// into `w` and `cl`, 16 prompts at a time through [`CellTables`], up to the last whole
    /// tile or the first tile with a cell past the tables; returns how many prompts it wrote.
    ///
    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn put_cells(
        cells: &[u32],
        weight: &[f64],
        cluster: &[i64],
        w: &mut [f64],
        cl: &mut [i64],
    ) -> usize {
        assert!(w.len() >= cells.len() && cl.len() >= cells.len());
        let tables = CellTables::new(weight, cluster);
        // `new` checked that the length fits an i32
        let len = _mm512_set1_epi32(weight.len() as i32);
        let mut q = 0;
        while q + TILE <= cells.len() {
            let cv = _mm512_loadu_si512(cells[q..q + TILE].as_ptr() as *const _);
            // unsigned: u32::MAX and every other cell past the tables stop here
            if _mm512_cmpge_epu32_mask(cv, len) != 0 {
                break;
            }
            tables.put(cv, &mut w[q..q + TILE], &mut cl[q..q + TILE]);
            q += TILE;
        }
        q
    }

    /// Tiles ahead of the one being written whose output lines [`weighted_k`] asks for.
    const WRITE_AHEAD: usize = 4;

    /// Whether the CPU has `prefetchw` (CPUID 0x8000_0001, ECX bit 8; every CPU with
    /// AVX-512 seen so far has it, but it is checked).
    fn has_prefetchw() -> bool {
        use std::sync::atomic::{AtomicU8, Ordering};
        static HAS: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
        match HAS.load(Ordering::Relaxed) {
            0 => {
                // leaf 0x8000_0001 is asked only when the highest extended leaf reaches it
                let yes = __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0;
                HAS.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
            v => v == 2,
        }
    }

    /// Asks for the lines of the `bytes` bytes at `p` in the state a write needs
    /// (`prefetchw`). A prefetch never faults, so the range may lie past the data.
    ///
    /// # Safety
    /// The CPU must have `prefetchw` ([`has_prefetchw`]).
    #[inline(always)]
    unsafe fn prefetch_write<T>(p: *const T, bytes: usize) {
        let p = p as *const u8;
        let mut o = 0;
        while o < bytes {
            std::arch::asm!("prefetchw [{}]", in(reg) p.wrapping_add(o), options(nostack, preserves_flags, readonly));
            o += 64;
        }
        // the last byte's line, when the range does not start on a line
        std::arch::asm!("prefetchw [{}]", in(reg) p.wrapping_add(bytes - 1), options(nostack, preserves_flags, readonly));
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_k<const G: usize>(
        sc: &[f32],
        bin: &[bool],
        pat: &[u16],
        table: Option<&BinaryTable>,
        w: &CellWeights<'_>,
        out: PromptOut<'_>,
        mass: &mut [f64],
    ) {
        /// The advantages of the tile whose scores are at `s` into `buf`, its prompts' |A|
        /// sums into `lane_mass`. `CLEAN`: no NaN score (reward); `SAFE`: no product of a
        /// score and a multiplier can overflow.
        #[inline(always)]
        unsafe fn tile<const G: usize, const CLEAN: bool, const SAFE: bool>(
            s: &[f32],
            m: &[__m512d; 2],
            shift: f64,
            scale: f64,
            buf: &mut Buf,
            lane_mass: &mut [f64; TILE],
        ) {
            assert!(s.len() >= G * TILE);
            let (shift, scale) = (_mm512_set1_pd(shift), _mm512_set1_pd(scale));
            let mut mass = Mass::new();
            for i in 0..G {
                let row = _mm512_loadu_ps(s.as_ptr().add(i * TILE));
                // a NaN score marks a NaN reward: its score counts as 0, its advantage is 0
                let ok = if CLEAN { 0xffff } else { _mm512_cmp_ps_mask::<_CMP_ORD_Q>(row, row) };
                let row = if CLEAN { row } else { _mm512_maskz_mov_ps(ok, row) };
                let v = weigh::<CLEAN, SAFE>(row, ok, m, shift, scale);
                _mm512_store_ps(buf.0.as_mut_ptr().add(i * TILE), v);
                mass.add(i, v);
            }
            mass.store(lane_mass);
        }
        /// Multipliers up to this size times any finite f32 stay finite.
        const SAFE_MULT: f64 = 1e250;
        let np = w.cells.len();
        let mut buf = Buf::new();
        let mut lane_mass = [0.0f64; TILE];
        let safe_all = w.mult.iter().all(|m| m.abs() <= SAFE_MULT);
        let n_cells = _mm512_set1_epi32(i32::try_from(w.mult.len()).expect("fewer than 2^31 cells"));
        let bw = w.binary.filter(|b| b.g == G && b.pairs.len() == w.mult.len() * TILE);
        let pats = |q: usize| -> &[u16; TILE] { pat[q..q + TILE].try_into().expect("a full tile") };
        // a full tile's cells in a register (0/1 tiles are full)
        let cells_of = |q: usize| {
            (q + TILE <= np).then(|| {
                let cv = _mm512_loadu_si512(w.cells[q..q + TILE].as_ptr() as *const _);
                assert!(_mm512_cmpge_epu32_mask(cv, n_cells) == 0, "a cell without a multiplier");
                cv
            })
        };
        // a 0/1 tile's results are gathered one tile ahead: the gathers' latency overlaps
        // the work of the tile before
        let fetch = |q: usize| match (table, bw) {
            (Some(_), Some(bw)) if q < np && bin[q / TILE] => {
                cells_of(q).map(|cv| by_count_fetch(pats(q), cv, bw))
            }
            _ => None,
        };
        let tables = CellTables::new(w.mult, w.cluster);
        let prefetch_w = has_prefetchw();
        let PromptOut { adv: out, weights: w_out, clusters: cl_out } = out;
        let mut ahead = fetch(0);
        for q in (0..np).step_by(TILE) {
            let n = TILE.min(np - q);
            let cells = &w.cells[q..q + n];
            if prefetch_w {
                // the lines this loop writes WRITE_AHEAD tiles on, asked for in the state a
                // write needs: the stores find them in the cache instead of each waiting for
                // its line (3-6 % per step from DRAM on two threads, fair_probe)
                let a = q + WRITE_AHEAD * TILE;
                prefetch_write(out.as_ptr().wrapping_add(a * G), TILE * G * 4);
                prefetch_write(w_out.as_ptr().wrapping_add(a), TILE * 8);
                prefetch_write(cl_out.as_ptr().wrapping_add(a), TILE * 8);
            }
            // the tile's weights and clusters, written beside its advantages
            let cv = cells_of(q);
            match cv {
                Some(cv) => tables.put(cv, &mut w_out[q..q + TILE], &mut cl_out[q..q + TILE]),
                None => {
                    for (l, &c) in cells.iter().enumerate() {
                        w_out[q + l] = w.mult[c as usize];
                        cl_out[q + l] = w.cluster[c as usize];
                    }
                }
            }
            let o = &mut out[q * G..(q + n) * G];
            let this = std::mem::replace(&mut ahead, fetch(q + TILE));
            if let Some(f) = this {
                by_count::<G>(&f, o, &mut lane_mass);
            } else {
                // the tile's multipliers, gathered (lanes past a partial tile's end get 1)
                let mult = if let Some(cv) = cv {
                    [
                        _mm512_i32gather_pd::<8>(_mm512_castsi512_si256(cv), w.mult.as_ptr()),
                        _mm512_i32gather_pd::<8>(_mm512_extracti64x4_epi64::<1>(cv), w.mult.as_ptr()),
                    ]
                } else {
                    let mut mult = [1.0f64; TILE];
                    for (m, &c) in mult.iter_mut().zip(cells) {
                        *m = w.mult[c as usize];
                    }
                    [_mm512_loadu_pd(mult.as_ptr()), _mm512_loadu_pd(mult.as_ptr().add(8))]
                };
                let big = _mm512_set1_pd(SAFE_MULT);
                let safe = safe_all
                    || mult.iter().all(|&m| _mm512_cmp_pd_mask::<_CMP_LE_OQ>(_mm512_abs_pd(m), big) == 0xff);
                if let (true, Some(t)) = (bin[q / TILE], table) {
                    if safe {
                        binary::<G, true>(pats(q), t, &mult, w.shift, w.scale, o, &mut lane_mass);
                    } else {
                        binary::<G, false>(pats(q), t, &mult, w.shift, w.scale, o, &mut lane_mass);
                    }
                } else {
                    let s = &sc[q * G..(q + TILE) * G];
                    // the padded lanes of a last partial tile hold zeros or stale scores: their
                    // results are not stored
                    let clean = (0..G).all(|i| {
                        let row = _mm512_loadu_ps(s.as_ptr().add(i * TILE));
                        _mm512_cmp_ps_mask::<_CMP_ORD_Q>(row, row) == 0xffff
                    });
                    let (m, lm) = (&mult, &mut lane_mass);
                    match (clean, safe) {
                        (true, true) => tile::<G, true, true>(s, m, w.shift, w.scale, &mut buf, lm),
                        (true, false) => tile::<G, true, false>(s, m, w.shift, w.scale, &mut buf, lm),
                        (false, true) => tile::<G, false, true>(s, m, w.shift, w.scale, &mut buf, lm),
                        (false, false) => tile::<G, false, false>(s, m, w.shift, w.scale, &mut buf, lm),
                    }
                    store::<G>(&buf, o, n);
                }
            }
            for (&c, &m) in cells.iter().zip(&lane_mass) {
                mass[c as usize] += m;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The vector patterns are each prompt's rollouts as bits, and any reward other than
        /// +0.0 or 1.0 (-0.0, 0.5, 2.0, a NaN, a value with some of 1.0's bits) is refused.
        #[test]
        fn patterns_are_the_rollout_bits() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            #[target_feature(enable = "avx512f")]
            unsafe fn check<const G: usize>(rng: &mut crate::rng::SplitMix64) {
                let odd =
                    [-0.0f32, 0.5, 2.0, f32::NAN, f32::from_bits(0x0080_0000), f32::from_bits(0x3f80_0001)];
                for round in 0..200 {
                    let mut r: Vec<f32> =
                        (0..BATCH * TILE * G).map(|_| (rng.uniform() < 0.5) as u8 as f32).collect();
                    if round % 3 == 0 {
                        let at = rng.below(r.len());
                        r[at] = odd[rng.below(odd.len())];
                    }
                    let want: Vec<u32> = r
                        .chunks_exact(G)
                        .map(|p| {
                            p.iter()
                                .enumerate()
                                .map(|(i, &v)| ((v.to_bits() == 1.0f32.to_bits()) as u32) << i)
                                .sum()
                        })
                        .collect();
                    let ok = r.iter().all(|v| v.to_bits() == 0 || v.to_bits() == 1.0f32.to_bits());
                    let mut pats = [u32::MAX; TILE * BATCH];
                    assert_eq!(patterns::<G>(&r, &mut pats), ok, "G {G}");
                    if ok {
                        assert_eq!(&pats[..], &want[..], "G {G}");
                    }
                }
            }
            let mut rng = crate::rng::SplitMix64::new(12);
            // SAFETY: AVX-512F checked above
            unsafe {
                check::<2>(&mut rng);
                check::<3>(&mut rng);
                check::<5>(&mut rng);
                check::<7>(&mut rng);
                check::<8>(&mut rng);
                check::<10>(&mut rng);
                check::<12>(&mut rng);
                check::<16>(&mut rng);
            }
        }

        /// `exact_mass`, where it answers, gives the bits of the rollout-order sums, and it
        /// declines for values far apart, infinite or NaN; `popcount` counts.
        #[test]
        fn counted_mass_equals_the_ordered_sums_bitwise() {
            if !std::arch::is_x86_feature_detected!("avx512f") {
                return;
            }
            #[target_feature(enable = "avx512f")]
            unsafe fn check<const G: usize>(rng: &mut crate::rng::SplitMix64) -> (usize, usize) {
                // a tile of values 2^-30..2^30 apart with some special ones, or one of values
                // at most 2^26 apart around a random scale (some 0)
                let value = |rng: &mut crate::rng::SplitMix64, wide: bool, base: i32| -> f32 {
                    let u = rng.uniform();
                    let e = if wide {
                        (rng.uniform() * 60.0) as i32 - 30
                    } else {
                        base + (rng.uniform() * 27.0) as i32
                    };
                    if !wide {
                        let m = 1.0 + (rng.uniform() * 8388608.0).floor() / 8388608.0;
                        return if u < 0.1 { 0.0 } else { (m * 2f64.powi(e)) as f32 };
                    }
                    let m = (1.0 + rng.uniform()) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                    match (u * 40.0) as u32 {
                        0 => 0.0,
                        1 => f32::INFINITY,
                        2 => f32::NAN,
                        3 => 1e-42, // subnormal
                        4 => f32::MAX,
                        _ => (m * 2f64.powi(e)) as f32,
                    }
                };
                let (mut yes, mut no) = (0, 0);
                for _ in 0..400 {
                    let wide = rng.uniform() < 0.3;
                    let base = (rng.uniform() * 200.0) as i32 - 140;
                    let a: [[f32; TILE]; 2] =
                        std::array::from_fn(|_| std::array::from_fn(|_| value(rng, wide, base)));
                    let pats: [u32; TILE] = std::array::from_fn(|_| (rng.uniform() * (1 << G) as f64) as u32);
                    let (a0, a1) = (_mm512_loadu_ps(a[0].as_ptr()), _mm512_loadu_ps(a[1].as_ptr()));
                    let patv = _mm512_loadu_si512(pats.as_ptr() as *const _);
                    let count = popcount(patv);
                    let mut counts = [0i32; TILE];
                    _mm512_storeu_si512(counts.as_mut_ptr() as *mut _, count);
                    for (c, p) in counts.iter().zip(&pats) {
                        assert_eq!(*c as u32, p.count_ones());
                    }
                    let ones = halves(count);
                    let mut want = [0.0f64; TILE];
                    let mut mass = Mass::new();
                    for i in 0..G {
                        let set = _mm512_test_epi32_mask(patv, _mm512_set1_epi32(1 << i));
                        mass.add(i, _mm512_mask_blend_ps(set, a0, a1));
                    }
                    mass.store(&mut want);
                    let mut got = [f64::NAN; TILE];
                    if exact_mass::<G>(a0, a1, &ones, &mut got) {
                        yes += 1;
                        for (g, w) in got.iter().zip(&want) {
                            assert_eq!(g.to_bits(), w.to_bits(), "a0 {:?} a1 {:?} pats {pats:?}", a[0], a[1]);
                        }
                    } else {
                        no += 1;
                    }
                }
                (yes, no)
            }
            let mut rng = crate::rng::SplitMix64::new(5);
            // SAFETY: AVX-512F checked above.
            let runs = unsafe { [check::<10>(&mut rng), check::<12>(&mut rng), check::<4>(&mut rng)] };
            for (yes, no) in runs {
                assert!(yes > 100 && no > 100, "answered {yes}, declined {no}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advantages::{moments, score};
    use crate::blocks::write_prompt_scores;
    use crate::real::Real;

    fn rewards(n: usize, seed: u64, nan_rate: f64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        (0..n)
            .map(|_| {
                let u = rng.uniform();
                if u < nan_rate {
                    f32::NAN
                } else if u < 0.6 {
                    (u * 3.0).floor() as f32 / 2.0
                } else {
                    (u * 7.3 - 2.0) as f32
                }
            })
            .collect()
    }

    /// Every supported G, several prompt counts (partial tiles, fewer than 16 prompts),
    /// every scale, tiles with and without NaN, eps 0 with constant prompts (infinite
    /// inverse scale): the tiles give the scalar code's bits.
    #[test]
    fn tiles_equal_the_scalar_code_bitwise() {
        if !supports(10) {
            return;
        }
        let scales = [(Scale::Group, 0.4), (Scale::Batch, 0.4), (Scale::None, 0.0), (Scale::Group, 0.0)];
        for (k, &g) in SIZES.iter().enumerate() {
            for (np, nan_rate) in
                [(1usize, 0.1), (5, 0.1), (16, 0.0), (17, 0.1), (40, 0.1), (40, 0.0), (300, 0.001)]
            {
                let mut r = rewards(np * g, 100 + k as u64, nan_rate);
                if nan_rate > 0.0 {
                    // an all-NaN prompt and a prompt with one scorable reward
                    r[..g].fill(f32::NAN);
                    if np > 1 {
                        r[g..2 * g].fill(f32::NAN);
                        r[g + 1] = 0.5;
                    }
                }
                if np > 2 {
                    // a constant prompt: std 0
                    r[(np - 1) * g..].fill(1.0);
                }
                for (si, &(scale, bstd)) in scales.iter().enumerate() {
                    let eps = if si == 3 { 0.0 } else { 1e-4 };
                    let p = ScoreParams::new(scale, bstd, eps, g);
                    let mut out = vec![f32::NAN; r.len()];
                    assert_eq!(scores(&r, g, &p, None, &mut out), None);
                    let mut want_sums = Vec::new();
                    for (rq, oq) in r.chunks_exact(g).zip(out.chunks_exact(g)) {
                        let m = moments(rq);
                        let inv = inv_scale(&m, scale, bstd, eps, g);
                        let (mut ssum, mut ssq) = (0.0f64, 0.0f64);
                        for (v, o) in rq.iter().zip(oq) {
                            let s = score(v.to_f64(), m.mean, inv) as f32;
                            assert_eq!(o.to_bits(), s.to_bits(), "g {g} np {np} {scale:?}");
                            ssum += s as f64;
                            ssq += s as f64 * s as f64;
                        }
                        want_sums.push((m.sum, m.count as f64, ssum, ssq, m.mean, inv));
                    }
                    let mut seen = 0;
                    let mut sc = vec![f32::NAN; scores_len(np, g)];
                    let mut bin = vec![true; tiles_len(np)];
                    let mut pat = vec![0u16; tiles_len(np) * TILE];
                    sums(&r, g, &p, None, &mut sc, &mut bin, &mut pat, &mut |q, n, ps| {
                        for l in 0..n {
                            let w = want_sums[q + l];
                            let got = ps.get(l);
                            assert_eq!(got[0].to_bits(), w.0.to_bits());
                            assert_eq!(got[1].to_bits(), w.1.to_bits());
                            assert_eq!(got[2].to_bits(), w.2.to_bits());
                            assert_eq!(got[3].to_bits(), w.3.to_bits());
                        }
                        seen += n;
                    });
                    assert!(!bin.contains(&true));
                    assert_eq!(seen, np);
                    // pass 2: three cells, one with a huge multiplier (non-finite products)
                    let cells: Vec<u32> = (0..np as u32).map(|q| q % 3).collect();
                    let mult = [0.7, 1.3, 1e308];
                    let mut mass = vec![0.0; 3];
                    weighted3(&sc, &bin, &pat, None, g, &three_cells(&cells, &mult), &mut out, &mut mass);
                    let mut want_mass = [0.0f64; 3];
                    let mut want = vec![0.0f32; g];
                    for (q, rq) in r.chunks_exact(g).enumerate() {
                        let (.., mean, inv) = want_sums[q];
                        let c = cells[q] as usize;
                        want_mass[c] += write_prompt_scores(rq, &mut want, mean, inv, mult[c], 0.01, 1.7);
                        for (o, w) in out[q * g..(q + 1) * g].iter().zip(&want) {
                            assert_eq!(o.to_bits(), w.to_bits());
                        }
                    }
                    for (a, b) in mass.iter().zip(&want_mass) {
                        assert_eq!(a.to_bits(), b.to_bits());
                    }
                }
            }
        }
    }

    #[test]
    fn first_infinite_reward_is_found() {
        if !supports(4) {
            return;
        }
        let mut r = rewards(4 * 37, 5, 0.1);
        r[4 * 20 + 3] = f32::NEG_INFINITY;
        r[4 * 35] = f32::INFINITY;
        let p = ScoreParams::new(Scale::Group, 0.0, 1e-4, 4);
        let mut out = vec![0.0; r.len()];
        assert_eq!(scores(&r, 4, &p, None, &mut out), Some(83));
        let mut sc = vec![0.0; scores_len(37, 4)];
        let (mut bin, mut pat) = (vec![false; tiles_len(37)], vec![0u16; tiles_len(37) * TILE]);
        assert_eq!(sums(&r, 4, &p, None, &mut sc, &mut bin, &mut pat, &mut |_, _, _| {}), Some(83));
        assert_eq!(scores(&r[4 * 32..], 4, &p, None, &mut out[4 * 32..]), Some(12));
        // +inf and -inf in one prompt (its sum is NaN)
        r[4 * 20 + 1] = f32::INFINITY;
        assert_eq!(sums(&r, 4, &p, None, &mut sc, &mut bin, &mut pat, &mut |_, _, _| {}), Some(81));
        // a 0/1 run of tiles before the infinity: still found, at its place
        let mut r = vec![1.0f32; 4 * 300];
        r[4 * 290 + 2] = f32::INFINITY;
        let t = BinaryTable::new(4, &p).unwrap();
        let (mut sc, mut bin) = (vec![0.0; scores_len(300, 4)], vec![false; tiles_len(300)]);
        let mut pat = vec![0u16; tiles_len(300) * TILE];
        let found = sums(&r, 4, &p, Some(&t), &mut sc, &mut bin, &mut pat, &mut |_, _, _| {});
        assert_eq!(found, Some(4 * 290 + 2));
        assert!(bin[0] && !bin[tiles_len(300) - 1]);
    }

    /// The table's deduplicated sums give every pattern the bits the kernels give it.
    #[test]
    fn table_sums_are_the_kernels_sums() {
        for &g in SIZES.iter().filter(|&&g| g <= BinaryTable::MAX_G && supports(g)) {
            let np = 1usize << g;
            let r: Vec<f32> = (0..np * g).map(|k| ((k / g) >> (k % g) & 1) as f32).collect();
            for (scale, bstd, eps) in
                [(Scale::Group, 0.4, 1e-4), (Scale::Batch, 0.7, 1e-4), (Scale::None, 0.0, 0.0)]
            {
                let p = ScoreParams::new(scale, bstd, eps, g);
                let table = BinaryTable::new(g, &p).unwrap();
                let mut sc = vec![0.0f32; scores_len(np, g)];
                let (mut bin, mut pat) = (vec![false; tiles_len(np)], vec![0u16; tiles_len(np) * TILE]);
                let mut want = Vec::new();
                sums(&r, g, &p, None, &mut sc, &mut bin, &mut pat, &mut |_, n, s| {
                    want.extend((0..n).map(|l| s.get(l).map(f64::to_bits)))
                });
                for (q, w) in want.iter().enumerate() {
                    assert_eq!(table.sums_of(q as u32).map(f64::to_bits), *w, "g {g} pattern {q}");
                }
                assert!(table.sums.len() <= 64, "g {g}: {} distinct sums", table.sums.len());
            }
        }
    }

    /// The weighting of the tests' three cells (multipliers `mult`, the clusters below),
    /// shift 0.01 and scale 1.7.
    fn three_cells<'a>(cells: &'a [u32], mult: &'a [f64]) -> CellWeights<'a> {
        const CLUSTER: [i64; 3] = [-1, 4, 7];
        CellWeights { cells, mult, cluster: &CLUSTER, shift: 0.01, scale: 1.7, binary: None }
    }

    /// [`weighted`] with [`three_cells`]; checks each prompt's weight and cluster.
    #[allow(clippy::too_many_arguments)]
    fn weighted3(
        sc: &[f32],
        bin: &[bool],
        pat: &[u16],
        t: Option<&BinaryTable>,
        g: usize,
        w: &CellWeights<'_>,
        out: &mut [f32],
        mass: &mut [f64],
    ) {
        let np = w.cells.len();
        let (mut w_out, mut cl_out) = (vec![f64::NAN; np], vec![i64::MIN; np]);
        weighted(
            sc,
            bin,
            pat,
            t,
            g,
            w,
            PromptOut { adv: out, weights: &mut w_out, clusters: &mut cl_out },
            mass,
        );
        for (q, &c) in w.cells.iter().enumerate() {
            assert_eq!((w_out[q], cl_out[q]), (w.mult[c as usize], w.cluster[c as usize]));
        }
    }

    /// Pass 2's weights and clusters are their cells' entries, for tables held in registers
    /// (up to 32 cells) and gathered (more), full tiles and a last partial one.
    #[test]
    fn pass2_writes_each_prompts_cell_weight_and_cluster() {
        if !supports(4) {
            return;
        }
        let (g, np) = (4, 16 * 5 + 7);
        let mut rng = crate::rng::SplitMix64::new(5);
        for n_cells in [1usize, 3, 16, 17, 32, 33, 100] {
            let cells: Vec<u32> = (0..np).map(|_| rng.below(n_cells) as u32).collect();
            // the scores are 0, so every advantage is 0 whatever the weights
            let weight: Vec<f64> = (0..n_cells).map(|c| 0.25 + c as f64).collect();
            let cluster: Vec<i64> =
                (0..n_cells).map(|c| if c % 3 == 0 { -1 } else { c as i64 * 7 }).collect();
            let wt = CellWeights {
                cells: &cells,
                mult: &weight,
                cluster: &cluster,
                shift: 0.0,
                scale: 1.0,
                binary: None,
            };
            let sc = vec![0.0f32; scores_len(np, g)];
            let (bin, pat) = (vec![false; tiles_len(np)], vec![0u16; tiles_len(np) * TILE]);
            let (mut out, mut mass) = (vec![f32::NAN; np * g], vec![0.0; n_cells]);
            let (mut w_out, mut cl_out) = (vec![f64::NAN; np], vec![i64::MIN; np]);
            let po = PromptOut { adv: &mut out, weights: &mut w_out, clusters: &mut cl_out };
            weighted(&sc, &bin, &pat, None, g, &wt, po, &mut mass);
            for (q, &c) in cells.iter().enumerate() {
                assert_eq!(
                    (w_out[q], cl_out[q]),
                    (weight[c as usize], cluster[c as usize]),
                    "{n_cells} cells"
                );
            }
            assert!(out.iter().all(|&a| a == 0.0));
        }
    }

    /// 0/1 rewards through the table give the bits of the kernels without it: runs of 0/1
    /// tiles between tiles with a 0.5, a NaN or a -0.0 reward, a partial last run, every
    /// G with a table, every scale, normal and huge multipliers.
    #[test]
    fn binary_tiles_equal_the_kernels_bitwise() {
        if !supports(10) {
            return;
        }
        let scales = [(Scale::Group, 0.4), (Scale::Batch, 0.4), (Scale::None, 0.0), (Scale::Group, 0.0)];
        for (k, &g) in SIZES.iter().filter(|&&g| g <= BinaryTable::MAX_G).enumerate() {
            let np = TILE * BATCH * 5 + 37;
            let mut rng = crate::rng::SplitMix64::new(900 + k as u64);
            let mut r: Vec<f32> = (0..np * g).map(|_| (rng.uniform() < 0.6) as u8 as f32).collect();
            // constant prompts, and one odd reward in runs 1, 3 and 4
            r[..3 * g].fill(1.0);
            r[3 * g..5 * g].fill(0.0);
            let run = TILE * BATCH * g;
            r[run + 77] = 0.5;
            r[3 * run + 5] = f32::NAN;
            r[4 * run + 9 * g] = -0.0;
            for (si, &(scale, bstd)) in scales.iter().enumerate() {
                let eps = if si == 3 { 0.0 } else { 1e-4 };
                let p = ScoreParams::new(scale, bstd, eps, g);
                let table = BinaryTable::new(g, &p).unwrap();
                assert!(table.fits(g, &p) && !table.fits(g, &ScoreParams::new(scale, bstd + 1.0, 0.5, g)));
                let mut got = Vec::new();
                for (t, per_count) in [(None, false), (Some(&table), false), (Some(&table), true)] {
                    let mut sc = vec![f32::NAN; scores_len(np, g)];
                    let mut bin = vec![false; tiles_len(np)];
                    let mut pat = vec![0u16; tiles_len(np) * TILE];
                    let mut ps = Vec::new();
                    let bad = sums(&r, g, &p, t, &mut sc, &mut bin, &mut pat, &mut |_, n, s| {
                        ps.extend((0..n).map(|l| *s.get(l)))
                    });
                    assert_eq!(bad, None);
                    let flagged = bin.iter().filter(|&&b| b).count();
                    assert_eq!(flagged, if t.is_some() { 2 * TILE * BATCH / TILE } else { 0 }, "g {g}");
                    let cells: Vec<u32> = (0..np as u32).map(|q| q % 3).collect();
                    let mut mult = [0.7, 1.3, 2.5];
                    if si == 1 {
                        mult[2] = 1e308;
                    }
                    let mut wt = three_cells(&cells, &mult);
                    let bw = BinaryWeights::new(&table, &mult, 0.01, 1.7).filter(|_| per_count);
                    assert_eq!(bw.is_some(), per_count, "the scores of 0/1 prompts depend on the count only");
                    wt.binary = bw.as_ref();
                    let (mut out, mut mass) = (vec![f32::NAN; np * g], vec![0.0; 3]);
                    weighted3(&sc, &bin, &pat, t, g, &wt, &mut out, &mut mass);
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let mut gs = vec![f32::NAN; np * g];
                    assert_eq!(scores(&r, g, &p, t, &mut gs), None);
                    let gs: Vec<u64> = gs.iter().map(|x| x.to_bits() as u64).collect();
                    let ps: Vec<u64> = ps.iter().flat_map(|s| bits(s)).collect();
                    got.push((ps, out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits(&mass), gs));
                }
                assert!(got[0] == got[1] && got[0] == got[2], "g {g} scale {scale:?} eps {eps}");
            }
        }
    }
}
