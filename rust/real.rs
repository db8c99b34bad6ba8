//! The floating-point element types the core accepts (f32 and f64).

/// An input element type. Arithmetic on the input happens in `Self`; sums in f64.
pub trait Real: Copy + Send + Sync + PartialOrd + Default + std::fmt::Debug + 'static {
    const ZERO: Self;
    const MAX: Self;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn add(self, o: Self) -> Self;
    /// `self * a + b` with one rounding (a fused multiply-add, as the CPU's FMA unit does).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The slice as f32 when `Self` is f32 (for the f32-only kernels), else None.
    fn as_f32(_x: &[Self]) -> Option<&[f32]> {
        None
    }
    /// [`Real::as_f32`] for a mutable slice.
    fn as_f32_mut(_x: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

macro_rules! impl_real {
    ($t:ty $(, $extra:item)*) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const MAX: Self = <$t>::MAX;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            $($extra)*
        }
    };
}
impl_real!(
    f32,
    #[inline(always)]
    fn as_f32(x: &[f32]) -> Option<&[f32]> {
        Some(x)
    },
    #[inline(always)]
    fn as_f32_mut(x: &mut [f32]) -> Option<&mut [f32]> {
        Some(x)
    }
);
impl_real!(f64);

/// Whether every element is finite, on this thread: the exponent bits of every value OR-ed
/// together as integers (a value is not finite when its exponent is all ones), which
/// vectorises fully, unlike a fold over `is_finite`.
pub fn all_finite<T: Real>(x: &[T]) -> bool {
    match T::as_f32(x) {
        Some(x) => crate::pool::simd(|| {
            const EXP: u32 = 0x7f80_0000;
            x.chunks(1024).all(|c| c.iter().fold(0u32, |a, v| a | ((v.to_bits() & EXP == EXP) as u32)) == 0)
        }),
        None => crate::pool::simd(|| {
            const EXP: u64 = 0x7ff0_0000_0000_0000;
            x.chunks(1024)
                .all(|c| c.iter().fold(0u64, |a, v| a | ((v.to_f64().to_bits() & EXP == EXP) as u64)) == 0)
        }),
    }
}

/// Index of the first non-finite element, if any. The common all-finite case is one
/// vectorised, parallel pass (a branch-free fold per chunk); the position is searched only
/// when something is wrong.
pub fn first_non_finite<T: Real>(x: &[T]) -> Option<usize> {
    const C: usize = 1 << 16;
    let threads = rayon::current_num_threads();
    let ok = crate::pool::map_chunks(x.len().div_ceil(C), threads, |c| {
        all_finite(&x[c * C..((c + 1) * C).min(x.len())])
    });
    if ok.iter().all(|&b| b) {
        None
    } else {
        x.iter().position(|v| !v.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_test_agrees_with_is_finite() {
        // specials at chunk edges, in both precisions; MAX and subnormals are finite
        let n = 5001;
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            for at in [0, 1023, 1024, 4999, 5000] {
                let mut x64: Vec<f64> =
                    (0..n).map(|i| [f64::MAX, -f64::MIN_POSITIVE / 4.0, 1.5][i % 3]).collect();
                let mut x32: Vec<f32> =
                    (0..n).map(|i| [f32::MAX, -f32::MIN_POSITIVE / 4.0, 1.5][i % 3]).collect();
                assert!(all_finite(&x64) && all_finite(&x32));
                x64[at] = bad;
                x32[at] = bad as f32;
                assert!(!all_finite(&x64) && !all_finite(&x32));
                assert_eq!(first_non_finite(&x64), Some(at));
                assert_eq!(first_non_finite(&x32), Some(at));
            }
        }
    }

    #[test]
    fn finds_first_non_finite() {
        assert_eq!(first_non_finite(&[1.0f32, f32::NAN, f32::INFINITY]), Some(1));
        assert_eq!(first_non_finite(&[1.0f64, 2.0]), None);
    }
}
