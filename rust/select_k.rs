//! The elbow rule that picks the number of implicit groups (ALGORITHM.md, step 3).
//!
//! Fit k = 1..k_eff, where k_eff = min(k_max, number of distinct rows). With inertia drops
//! D_k = I_k - I_(k+1), the answer is the first k >= 2 with D_k < tol * D_(k-1); if there is
//! none, k_eff. (With k_max = 3: k = 2 when D_2 < tol * D_1, else 3.)

use crate::error::{CoreError, Result};
use crate::kmeans::{check_data, count_distinct_rows, kmeans_trusted, Algorithm, Init, KMeansResult};
use crate::real::Real;

/// The elbow rule on a list of inertias `I_1..I_m` (index 0 holds k = 1).
pub fn elbow(inertias: &[f64], tol: f64) -> usize {
    let m = inertias.len();
    for k in 2..m {
        let d_prev = inertias[k - 2] - inertias[k - 1];
        let d_k = inertias[k - 1] - inertias[k];
        if d_k < tol * d_prev {
            return k;
        }
    }
    m.max(1)
}

/// The outcome of the elbow search.
#[derive(Debug, Clone)]
pub struct SelectK {
    /// The chosen number of clusters.
    pub k: usize,
    /// The fit for the chosen k.
    pub result: KMeansResult,
    /// Inertia of every k tried (index 0 holds k = 1).
    pub inertias: Vec<f64>,
    /// Centres of every k tried, for warm starts.
    pub all_centroids: Vec<Vec<f64>>,
}

/// Options of [`select_k`].
#[derive(Debug, Clone)]
pub struct SelectKParams {
    pub k_max: usize,
    pub tol: f64,
    pub seed: u64,
    pub max_iter: usize,
    pub kmeans_tol: f64,
    pub threads: usize,
}

/// Fits k = 1..k_eff and applies the elbow rule. `warm[k-1]`, when present and of the
/// right size, replaces k-means++ as the initial centres for that k.
pub fn select_k<T: Real>(x: &[T], d: usize, p: &SelectKParams, warm: &[Vec<f64>]) -> Result<SelectK> {
    check_data(x, d)?;
    if p.k_max == 0 {
        return Err(CoreError::value("k_max", "must be >= 1, got 0"));
    }
    if !(p.tol.is_finite() && p.tol >= 0.0) {
        return Err(CoreError::value("tol", format!("must be finite and >= 0, got {}", p.tol)));
    }
    let k_eff = count_distinct_rows(x, d, p.k_max).max(1);
    let mut fits = Vec::with_capacity(k_eff);
    for k in 1..=k_eff {
        let init = match warm.get(k - 1) {
            Some(c) if c.len() == k * d => Init::Centres(c),
            _ => Init::PlusPlus { seed: p.seed },
        };
        fits.push(kmeans_trusted(
            x,
            d,
            k,
            init,
            p.max_iter,
            p.kmeans_tol,
            Algorithm::Lloyd,
            p.threads,
            true,
        )?);
    }
    let inertias: Vec<f64> = fits.iter().map(|f| f.inertia).collect();
    let k = elbow(&inertias, p.tol);
    let all_centroids = fits.iter().map(|f| f.centroids.clone()).collect();
    let result = fits.swap_remove(k - 1);
    Ok(SelectK { k, result, inertias, all_centroids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elbow_rule() {
        // big drop then a small one: k = 2
        assert_eq!(elbow(&[100.0, 10.0, 9.5], 0.1), 2);
        // second drop still large: k_max
        assert_eq!(elbow(&[100.0, 50.0, 20.0], 0.1), 3);
        assert_eq!(elbow(&[5.0], 0.1), 1);
        assert_eq!(elbow(&[5.0, 0.0], 0.1), 2);
    }

    #[test]
    fn capped_by_distinct_rows() {
        let x = [0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0];
        let p = SelectKParams { k_max: 3, tol: 0.1, seed: 0, max_iter: 100, kmeans_tol: 1e-4, threads: 1 };
        let s = select_k(&x, 2, &p, &[]).unwrap();
        assert_eq!(s.k, 2);
        assert_eq!(s.inertias.len(), 2);
        assert_eq!(s.result.inertia, 0.0);
    }
}
