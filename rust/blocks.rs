//! GRPO scores of blocks of `L` prompts computed lane-parallel (one SIMD lane per prompt).
//!
//! A prompt's statistics are a chain of dependent operations (a sum, a division, a square
//! root, another division); done one prompt at a time the chain's latency, not the memory,
//! bounds the speed. Here a block of `L` prompts is transposed into a `[G][L]` buffer and
//! every step runs across the `L` lanes, which the compiler vectorises. Each lane performs
//! exactly the operations of [`crate::advantages::moments`] and [`crate::advantages::score`]
//! in the same order, so the results are bitwise those of the scalar code, on every CPU
//! (the AVX2 / AVX-512 builds below differ only in vector width: no FMA contraction).

use crate::advantages::{score, Scale};
use crate::real::Real;

/// Prompts per block.
pub const L: usize = 8;

/// Moments and scores of one block of up to `L` prompts.
#[derive(Debug, Clone)]
pub struct BlockScorer {
    g: usize,
    scale: Scale,
    batch_std: f64,
    eps: f64,
    /// Rewards of the block, transposed: `buf[i * L + l]` is rollout i of prompt l.
    buf: Vec<f64>,
    /// Scores, rounded to the input precision, same layout.
    pub s: Vec<f64>,
    pub sum: [f64; L],
    pub cnt: [f64; L],
    pub mean: [f64; L],
    pub inv: [f64; L],
    /// Some reward of the block is infinite.
    pub infinite: bool,
    /// Whether `load` also fills `s` (else only the moments).
    pub with_scores: bool,
}

impl BlockScorer {
    pub fn new(g: usize, scale: Scale, batch_std: f64, eps: f64) -> Self {
        BlockScorer {
            g,
            scale,
            batch_std,
            eps,
            buf: vec![0.0; g * L],
            s: vec![0.0; g * L],
            sum: [0.0; L],
            cnt: [0.0; L],
            mean: [0.0; L],
            inv: [0.0; L],
            infinite: false,
            with_scores: true,
        }
    }

    /// Loads `np <= L` prompts (`np * G` rewards) and computes their moments and scores.
    pub fn load<T: Real>(&mut self, r: &[T], np: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { self.load_avx512(r, np) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { self.load_avx2(r, np) };
            }
        }
        self.load_dispatch(r, np)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_avx512<T: Real>(&mut self, r: &[T], np: usize) {
        self.load_dispatch(r, np)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn load_avx2<T: Real>(&mut self, r: &[T], np: usize) {
        self.load_dispatch(r, np)
    }

    /// Picks a copy of the kernel compiled for the group size, so its loops unroll.
    #[inline(always)]
    fn load_dispatch<T: Real>(&mut self, r: &[T], np: usize) {
        macro_rules! fixed {
            ($($g:literal)*) => {
                match self.g {
                    $($g => self.load_impl::<T, $g>(r, np),)*
                    _ => self.load_impl::<T, 0>(r, np),
                }
            };
        }
        fixed!(1 2 3 4 5 6 7 8 10 12 16)
    }

    /// Scores of the block's prompts straight into `out` (prompt-major), from the moments.
    pub fn write_scores<T: Real>(&self, r: &[T], out: &mut [T]) {
        let g = self.g;
        for (l, (rq, oq)) in r.chunks_exact(g).zip(out.chunks_exact_mut(g)).enumerate() {
            write_prompt_scores(rq, oq, self.mean[l], self.inv[l], 1.0, 0.0, 1.0);
        }
    }

    /// The kernel; `G` is the group size when fixed at compile time, 0 otherwise.
    #[inline(always)]
    fn load_impl<T: Real, const G: usize>(&mut self, r: &[T], np: usize) {
        let g = if G > 0 { G } else { self.g };
        let buf = &mut self.buf[..g * L];
        if np < L {
            buf.iter_mut().for_each(|v| *v = 0.0);
        }
        for (l, rq) in r[..np * g].chunks_exact(g).enumerate() {
            for (i, v) in rq.iter().enumerate() {
                buf[i * L + l] = v.to_f64();
            }
        }
        let mut sum = [0.0f64; L];
        let mut cnt = [0.0f64; L];
        let mut inf = [false; L];
        for row in self.buf.chunks_exact(L) {
            for l in 0..L {
                let v = row[l];
                let ok = !v.is_nan();
                inf[l] |= v.abs() == f64::INFINITY;
                sum[l] += if ok { v } else { 0.0 };
                cnt[l] += if ok { 1.0 } else { 0.0 };
            }
        }
        let mut mean = [0.0f64; L];
        for l in 0..L {
            mean[l] = if cnt[l] > 0.0 { sum[l] / cnt[l] } else { f64::NAN };
        }
        let mut ss = [0.0f64; L];
        for row in self.buf.chunks_exact(L) {
            for l in 0..L {
                let v = row[l];
                let e = v - mean[l];
                ss[l] += if v.is_nan() { 0.0 } else { e * e };
            }
        }
        let mut inv = [0.0f64; L];
        for l in 0..L {
            let std = if cnt[l] > 1.0 { (ss[l] / (cnt[l] - 1.0)).sqrt() } else { f64::NAN };
            inv[l] = match self.scale {
                Scale::None => 1.0,
                Scale::Batch => 1.0 / (self.batch_std + self.eps),
                Scale::Group if g == 1 => 1.0 / self.eps,
                Scale::Group => 1.0 / (std + self.eps),
            };
        }
        for (row, srow) in self
            .buf
            .chunks_exact(L)
            .zip(self.s.chunks_exact_mut(L))
            .take(if self.with_scores { g } else { 0 })
        {
            for l in 0..L {
                srow[l] = T::from_f64(score(row[l], mean[l], inv[l])).to_f64();
            }
        }
        self.sum = sum;
        self.cnt = cnt;
        self.mean = mean;
        self.inv = inv;
        self.infinite = inf[..np].iter().any(|&b| b);
    }
}

/// One prompt's final advantages in natural layout: `s = T((r - mean) * inv)` (NaN -> 0),
/// then `a = s * mult` (falling back to `s` where not finite), then `(a - shift) * scale`;
/// a NaN reward gets 0. Returns the sum of |a| as written (rounded to `T`). With
/// `mult = 1, shift = 0, scale = 1` this is the plain GRPO score, rounded to `T` once.
#[inline(always)]
pub fn write_prompt_scores<T: Real>(
    rq: &[T],
    oq: &mut [T],
    mean: f64,
    inv: f64,
    mult: f64,
    shift: f64,
    scale: f64,
) -> f64 {
    // |A| summed in four interleaved partial sums (fixed order) from the values in registers:
    // reading the freshly written output back would stall on store forwarding
    let mut part = [0.0f64; 4];
    for (i, (ov, &r)) in oq.iter_mut().zip(rq).enumerate() {
        let r = r.to_f64();
        let sc = T::from_f64(score(r, mean, inv)).to_f64();
        let a = sc * mult;
        let a = if a.is_finite() { a } else { sc };
        let a = T::from_f64(if r.is_nan() { 0.0 } else { (a - shift) * scale });
        part[i & 3] += a.to_f64().abs();
        *ov = a;
    }
    (part[0] + part[1]) + (part[2] + part[3])
}

/// Everything pass 2 of a FairAdvantage step needs besides the chunk itself.
pub struct Pass2<'a, T> {
    pub rewards: &'a [T],
    pub g: usize,
    /// Per prompt: (mean, inverse scale) from pass 1, and its weight cell.
    pub pstat: &'a [(f64, f64)],
    pub cells: &'a [u32],
    /// Per cell: what multiplies the score.
    pub mult: &'a [f64],
    pub shift: f64,
    pub scale: f64,
}

impl<T: Real> Pass2<'_, T> {
    /// Writes the advantages of the prompts from `q0` on; adds |A| per cell.
    pub fn run(&self, q0: usize, out: &mut [T], mass: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                return unsafe { self.run_avx512(q0, out, mass) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { self.run_avx2(q0, out, mass) };
            }
        }
        self.run_dispatch(q0, out, mass)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, q0: usize, out: &mut [T], mass: &mut [f64]) {
        self.run_dispatch(q0, out, mass)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, q0: usize, out: &mut [T], mass: &mut [f64]) {
        self.run_dispatch(q0, out, mass)
    }

    #[inline(always)]
    fn run_dispatch(&self, q0: usize, out: &mut [T], mass: &mut [f64]) {
        macro_rules! fixed {
            ($($g:literal)*) => {
                match self.g {
                    $($g => self.run_impl::<$g>(q0, out, mass),)*
                    _ => self.run_impl::<0>(q0, out, mass),
                }
            };
        }
        fixed!(2 4 5 6 8 10 12 16)
    }

    #[inline(always)]
    fn run_impl<const G: usize>(&self, q0: usize, out: &mut [T], mass: &mut [f64]) {
        let g = if G > 0 { G } else { self.g };
        for (j, oq) in out.chunks_exact_mut(g).enumerate() {
            let q = q0 + j;
            let c = self.cells[q] as usize;
            let (mean, inv) = self.pstat[q];
            let rq = &self.rewards[q * g..(q + 1) * g];
            mass[c] += write_prompt_scores(rq, oq, mean, inv, self.mult[c], self.shift, self.scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advantages::{inv_scale, moments};

    #[test]
    fn lanes_equal_the_scalar_code_bitwise() {
        let mut rng = crate::rng::SplitMix64::new(9);
        for g in [1usize, 2, 3, 7, 16] {
            for scale in [Scale::Group, Scale::Batch, Scale::None] {
                let r: Vec<f32> = (0..L * g)
                    .map(|_| {
                        let u = rng.uniform();
                        if u < 0.1 {
                            f32::NAN
                        } else {
                            (u * 3.0).floor() as f32 / 2.0
                        }
                    })
                    .collect();
                for np in [1, L - 1, L] {
                    let mut b = BlockScorer::new(g, scale, 0.4, 1e-4);
                    b.load(&r, np);
                    for l in 0..np {
                        let rq = &r[l * g..(l + 1) * g];
                        let m = moments(rq);
                        let inv = inv_scale(&m, scale, 0.4, 1e-4, g);
                        assert_eq!(b.sum[l].to_bits(), m.sum.to_bits());
                        assert_eq!(b.inv[l].to_bits(), inv.to_bits());
                        for (i, v) in rq.iter().enumerate() {
                            let want = (score(v.to_f64(), m.mean, inv) as f32) as f64;
                            assert_eq!(b.s[i * L + l].to_bits(), want.to_bits());
                        }
                    }
                }
            }
        }
    }
}
