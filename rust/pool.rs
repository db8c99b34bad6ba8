//! Parallel execution with results that do not depend on the thread count.
//!
//! Work is cut into fixed-size chunks (the size never depends on the number of threads);
//! each chunk produces a partial result, and partials are combined sequentially in chunk
//! order. Everything runs on rayon's one global pool; `n_threads` only limits how many
//! pieces the chunk list is split into.

use crate::error::{CoreError, Result};
use rayon::prelude::*;

/// Rows per chunk of every chunked pass.
pub const CHUNK: usize = 4096;

/// Checks a user's `n_threads` and turns it into a split count (`None` = the whole pool).
pub fn resolve_threads(n_threads: Option<usize>) -> Result<usize> {
    match n_threads {
        None => Ok(rayon::current_num_threads().max(1)),
        Some(0) => Err(CoreError::value("n_threads", "must be >= 1 or None, got 0")),
        Some(n) => Ok(n),
    }
}

/// Maps `f` over `n_chunks` chunk indices on at most `threads` threads; results in chunk order.
pub fn map_chunks<R, F>(n_chunks: usize, threads: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize) -> R + Sync + Send,
{
    if threads <= 1 || n_chunks <= 1 {
        return (0..n_chunks).map(f).collect();
    }
    let min_len = (n_chunks / threads).max(1); // rayon splits while both halves keep min_len
    (0..n_chunks).into_par_iter().with_min_len(min_len).map(f).collect()
}

/// Like [`map_chunks`] but each chunk also gets its own disjoint slice of `out`
/// (`out` is cut into pieces of `per_chunk` elements).
pub fn map_chunks_mut<O, R, F>(out: &mut [O], per_chunk: usize, threads: usize, f: F) -> Vec<R>
where
    O: Send,
    R: Send,
    F: Fn(usize, &mut [O]) -> R + Sync + Send,
{
    let n_chunks = out.len().div_ceil(per_chunk.max(1));
    if threads <= 1 || n_chunks <= 1 {
        return out.chunks_mut(per_chunk.max(1)).enumerate().map(|(i, c)| f(i, c)).collect();
    }
    let min_len = (n_chunks / threads).max(1); // rayon splits while both halves keep min_len
    out.par_chunks_mut(per_chunk.max(1)).with_min_len(min_len).enumerate().map(|(i, c)| f(i, c)).collect()
}

/// Like [`map_chunks_mut`] over two outputs cut in step: chunk `i` gets
/// `a[i*per*ga .. (i+1)*per*ga]` and `b[i*per .. (i+1)*per]`.
pub fn map_chunks_mut2<A, B, R, F>(
    a: &mut [A],
    b: &mut [B],
    per: usize,
    ga: usize,
    threads: usize,
    f: F,
) -> Vec<R>
where
    A: Send,
    B: Send,
    R: Send,
    F: Fn(usize, &mut [A], &mut [B]) -> R + Sync + Send,
{
    let per = per.max(1);
    let n_chunks = b.len().div_ceil(per);
    if threads <= 1 || n_chunks <= 1 {
        return a
            .chunks_mut(per * ga)
            .zip(b.chunks_mut(per))
            .enumerate()
            .map(|(i, (x, y))| f(i, x, y))
            .collect();
    }
    let min_len = (n_chunks / threads).max(1); // rayon splits while both halves keep min_len
    a.par_chunks_mut(per * ga)
        .zip(b.par_chunks_mut(per))
        .with_min_len(min_len)
        .enumerate()
        .map(|(i, (x, y))| f(i, x, y))
        .collect()
}

/// Runs `f` compiled for the widest vector unit the CPU has (AVX-512, AVX2, or the
/// baseline). The closure is inlined into a function with those target features, so its
/// loops vectorise wider; the arithmetic, and so the result, is the same on every path.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { simd_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_order_is_kept() {
        let a = map_chunks(100, 1, |i| i * 2);
        let b = map_chunks(100, 2, |i| i * 2);
        assert_eq!(a, b);
        assert_eq!(a[99], 198);
    }

    #[test]
    fn zero_threads_is_an_error() {
        assert!(resolve_threads(Some(0)).is_err());
        assert_eq!(resolve_threads(Some(3)).unwrap(), 3);
    }

    #[test]
    fn mut_chunks_cover_everything() {
        let mut v = vec![0usize; 10_001];
        let sizes = map_chunks_mut(&mut v, 4096, 2, |i, c| {
            c.iter_mut().for_each(|x| *x = i);
            c.len()
        });
        assert_eq!(sizes, vec![4096, 4096, 1809]);
        assert_eq!(v[10_000], 2);
    }
}
