//! Step 1 of FairGRPO: GRPO's group-relative score, exactly as TRL 1.16's `GRPOTrainer`.
//!
//! For prompt q with rollout rewards r_q1..r_qG:
//!     s_qi = (r_qi - nanmean(r_q)) / (nanstd(r_q) + eps)
//! with Bessel's correction, NaN rewards (unscorable completions) left out of the mean and
//! std, and every advantage that comes out NaN set to 0 (so a NaN reward, or a group with a
//! single scorable rollout under `scale = "group"`, gets advantage 0).

use crate::blocks::{BlockScorer, L};
use crate::error::{CoreError, Result};
use crate::pool::{map_chunks, map_chunks_mut, simd, CHUNK};
use crate::real::Real;
use crate::tiles;
use std::str::FromStr;

/// How rewards are scaled after the mean is subtracted (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Divide by the std of the prompt's own group (TRL's default).
    Group,
    /// Divide by the std of the whole batch.
    Batch,
    /// Do not divide.
    None,
}

impl FromStr for Scale {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "group" => Ok(Scale::Group),
            "batch" => Ok(Scale::Batch),
            "none" => Ok(Scale::None),
            _ => Err(CoreError::value(
                "scale",
                format!("unknown option {s:?}; expected one of \"group\", \"batch\", \"none\""),
            )),
        }
    }
}

/// Mean and std of one prompt's rewards, NaNs left out (TRL's `nanmean` / `nanstd`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Sum of the non-NaN rewards.
    pub sum: f64,
    /// Number of non-NaN rewards.
    pub count: u32,
    /// nanmean (NaN when every reward is NaN).
    pub mean: f64,
    /// Bessel-corrected nanstd (NaN when fewer than two rewards are finite).
    pub std: f64,
    /// Some reward is infinite (an input error).
    pub infinite: bool,
}

/// Moments of a slice of rewards, NaNs ignored; sums left to right in f64.
#[inline(always)]
pub fn moments<T: Real>(r: &[T]) -> Moments {
    let mut sum = 0.0f64;
    let mut count = 0u32;
    let mut infinite = false;
    for &v in r {
        let ok = !v.is_nan();
        infinite |= ok && !v.is_finite();
        sum += if ok { v.to_f64() } else { 0.0 };
        count += ok as u32;
    }
    let mean = if count > 0 { sum / count as f64 } else { f64::NAN };
    let mut ss = 0.0f64;
    for &v in r {
        let e = v.to_f64() - mean;
        ss += if v.is_nan() { 0.0 } else { e * e };
    }
    let std = if count > 1 { (ss / (count - 1) as f64).sqrt() } else { f64::NAN };
    Moments { sum, count, mean, std, infinite }
}

/// The factor that multiplies `r - mean`: `1 / (std + eps)`, or 1 for `scale = "none"`.
/// `std` is the batch std for `"batch"`, 0 when G = 1, else the prompt's own.
#[inline(always)]
pub fn inv_scale(m: &Moments, scale: Scale, batch_std: f64, eps: f64, group_size: usize) -> f64 {
    match scale {
        Scale::None => 1.0,
        Scale::Batch => 1.0 / (batch_std + eps),
        Scale::Group if group_size == 1 => 1.0 / eps,
        Scale::Group => 1.0 / (m.std + eps),
    }
}

/// The per-rollout score `(r - mean) * inv`, with NaN (unscorable, or undefined std) -> 0.
#[inline(always)]
pub fn score(r: f64, mean: f64, inv: f64) -> f64 {
    let a = (r - mean) * inv;
    if a.is_nan() {
        0.0
    } else {
        a
    }
}

/// Prompts per chunk of the tiled (f32, AVX-512) path.
const TILED_CHUNK: usize = 2048;

/// The error for an infinite reward at flat index `i`.
pub fn infinite_reward(i: usize) -> CoreError {
    CoreError::value(
        "rewards",
        format!("infinite reward at index {i}; rewards must be finite (NaN marks an unscorable completion)"),
    )
}

/// Checks `rewards` against `group_size` (shape only); returns the number of prompts.
pub fn check_rewards<T: Real>(rewards: &[T], group_size: usize) -> Result<usize> {
    if group_size == 0 {
        return Err(CoreError::value("group_size", "must be >= 1, got 0"));
    }
    if !rewards.len().is_multiple_of(group_size) {
        return Err(CoreError::shape(
            "rewards",
            format!(
                "length {} is not divisible by group_size {group_size}; rewards must be laid out \
                 prompt-major, group_size rollouts per prompt",
                rewards.len()
            ),
        ));
    }
    Ok(rewards.len() / group_size)
}

/// The std used by `scale = "batch"`: nanstd of the whole batch (0 for a single element).
pub fn batch_std<T: Real>(rewards: &[T], threads: usize) -> f64 {
    if rewards.len() <= 1 {
        return 0.0;
    }
    let n_chunks = rewards.len().div_ceil(CHUNK);
    let chunk = |c: usize| &rewards[c * CHUNK..((c + 1) * CHUNK).min(rewards.len())];
    let parts = map_chunks(n_chunks, threads, |c| {
        let m = moments(chunk(c));
        (m.sum, m.count as u64)
    });
    let (sum, count) = parts.iter().fold((0.0, 0u64), |a, p| (a.0 + p.0, a.1 + p.1));
    if count <= 1 {
        return f64::NAN;
    }
    let mean = sum / count as f64;
    let ss: f64 = map_chunks(n_chunks, threads, |c| {
        chunk(c).iter().filter(|v| !v.is_nan()).map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>()
    })
    .iter()
    .sum();
    (ss / (count - 1) as f64).sqrt()
}

/// GRPO advantages of a prompt-major batch, written into `out` (same length as `rewards`).
///
/// Errors on a zero `group_size`, a length not divisible by it, an infinite reward, or an
/// `out` of the wrong length.
pub fn group_advantages<T: Real>(
    rewards: &[T],
    group_size: usize,
    scale: Scale,
    eps: f64,
    threads: usize,
    out: &mut [T],
) -> Result<()> {
    check_rewards(rewards, group_size)?;
    if out.len() != rewards.len() {
        return Err(CoreError::shape("out", "must have the length of rewards"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(CoreError::value("eps", format!("must be finite and >= 0, got {eps}")));
    }
    let g = group_size;
    let bstd = if scale == Scale::Batch { batch_std(rewards, threads) } else { 0.0 };
    let bad = if let (Some(r), Some(o), true) = (T::as_f32(rewards), T::as_f32_mut(out), tiles::supports(g)) {
        // f32 on AVX-512: 16 prompts per tile, bitwise the portable code below
        let p = tiles::ScoreParams::new(scale, bstd, eps, g);
        // 0/1 rewards look their scores up (when the batch has as many prompts as patterns)
        let table = tiles::BinaryTable::for_batch(g, &p, rewards.len() / g);
        let per_chunk = TILED_CHUNK * g;
        map_chunks_mut(o, per_chunk, threads, |c, o| {
            let base = c * per_chunk;
            tiles::scores(&r[base..base + o.len()], g, &p, table.as_ref(), o).map(|i| base + i)
        })
    } else {
        let per_chunk = (CHUNK / g).max(1) * g;
        map_chunks_mut(out, per_chunk, threads, |c, o| {
            simd(|| {
                let base = c * per_chunk;
                let r = &rewards[base..base + o.len()];
                let mut b = BlockScorer::new(g, scale, bstd, eps);
                b.with_scores = false;
                let mut bad = None;
                for (k, (rb, ob)) in r.chunks(L * g).zip(o.chunks_mut(L * g)).enumerate() {
                    let np = rb.len() / g;
                    b.load(rb, np);
                    if b.infinite && bad.is_none() {
                        bad = rb
                            .iter()
                            .position(|v| !v.is_finite() && !v.is_nan())
                            .map(|i| base + k * L * g + i);
                    }
                    b.write_scores(rb, ob);
                }
                bad
            })
        })
    };
    match bad.into_iter().flatten().next() {
        Some(i) => Err(infinite_reward(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(r: &[f64], g: usize, scale: Scale) -> Vec<f64> {
        let mut out = vec![0.0; r.len()];
        group_advantages(r, g, scale, 1e-4, 2, &mut out).unwrap();
        out
    }

    #[test]
    fn group_scale_matches_hand_computation() {
        let a = adv(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, Scale::Group);
        let std = (1.0f64 / 3.0).sqrt(); // Bessel std of [1,0,0]
        assert!((a[0] - (2.0 / 3.0) / (std + 1e-4)).abs() < 1e-12);
        assert_eq!(&a[3..], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn nan_rewards_are_ignored_and_get_zero() {
        let a = adv(&[1.0, f64::NAN, 0.0, f64::NAN, 2.0, f64::NAN], 3, Scale::Group);
        assert_eq!(a[1], 0.0);
        assert!(a[0] > 0.0 && a[2] < 0.0);
        // a single scorable rollout: std is NaN, so its advantage is 0 (TRL's nan_to_num)
        assert_eq!(&a[3..], &[0.0, 0.0, 0.0]);
        let n = adv(&[1.0, f64::NAN, 0.0], 3, Scale::None);
        assert_eq!(n, vec![0.5, 0.0, -0.5]);
    }

    #[test]
    fn batch_scale_uses_global_std() {
        let r = [1.0, 0.0, 3.0, 2.0];
        let a = adv(&r, 2, Scale::Batch);
        let mean = 1.5;
        let std = (r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 3.0).sqrt();
        assert!((a[0] - 0.5 / (std + 1e-4)).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut out = vec![0.0; 5];
        assert!(group_advantages(&[0.0; 5], 2, Scale::Group, 1e-4, 1, &mut out).is_err());
        assert!(group_advantages(&[0.0; 5], 0, Scale::Group, 1e-4, 1, &mut out).is_err());
        let mut out = vec![0.0; 2];
        assert!(group_advantages(&[f64::INFINITY, 0.0], 2, Scale::Group, 1e-4, 1, &mut out).is_err());
        assert!("groups".parse::<Scale>().is_err());
    }

    #[test]
    fn thread_count_does_not_change_bits() {
        let r: Vec<f32> = (0..50_000).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let mut a = vec![0.0f32; r.len()];
        let mut b = vec![0.0f32; r.len()];
        group_advantages(&r, 8, Scale::Batch, 1e-4, 1, &mut a).unwrap();
        group_advantages(&r, 8, Scale::Batch, 1e-4, 2, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
