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

/// Index of the first non-finite element, if any. The common all-finite case is one
/// vectorised, parallel pass (a branch-free fold per chunk); the position is searched only
/// when something is wrong.
pub fn first_non_finite<T: Real>(x: &[T]) -> Option<usize> {
    const C: usize = 1 << 16;
    let threads = rayon::current_num_threads();
    let ok = crate::pool::map_chunks(x.len().div_ceil(C), threads, |c| {
        let part = &x[c * C..((c + 1) * C).min(x.len())];
        crate::pool::simd(|| part.iter().fold(true, |a, v| a & v.is_finite()))
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
    fn finds_first_non_finite() {
        assert_eq!(first_non_finite(&[1.0f32, f32::NAN, f32::INFINITY]), Some(1));
        assert_eq!(first_non_finite(&[1.0f64, 2.0]), None);
    }
}
