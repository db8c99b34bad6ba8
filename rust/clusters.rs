//! Implicit groups of one data source (ALGORITHM.md, step 3): K-means on the reward vectors
//! of the source's unlabelled prompts, k chosen by the elbow rule.
//!
//! Two update modes:
//! - `refit` (the authors'): every step re-fits k = 1..k_max on the whole kept history
//!   (optionally warm-started from the previous step's centres); cost grows with history.
//! - `incremental`: every k keeps its centres and per-cluster sufficient statistics
//!   (count, sum, sum of squares); a step assigns only the new rows and updates the
//!   statistics, so its cost grows with the batch. The inertia of each k is exact for the
//!   kept assignment, so the elbow rule still applies. A k seen for the first time is
//!   fitted once on the whole history.

use crate::error::{CoreError, Result};
use crate::kmeans::{count_distinct_rows, kmeans_trusted, Algorithm, Init};
use crate::metrics::adjusted_rand_index;
use crate::select_k::{elbow, select_k, SelectKParams};
use serde::{Deserialize, Serialize};

/// How clusters follow the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterUpdate {
    Refit,
    Incremental,
}

/// Clustering options shared by all sources.
#[derive(Debug, Clone)]
pub struct ClusterParams {
    pub select: SelectKParams,
    pub warm_start: bool,
    pub update: ClusterUpdate,
    /// Keep only the last this many steps of history (`None`: all).
    pub window_steps: Option<usize>,
}

/// Sufficient statistics of one k in incremental mode.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IncK {
    pub centroids: Vec<f64>,
    pub counts: Vec<f64>,
    pub sums: Vec<f64>,
    pub sumsq: Vec<f64>,
    pub labels: Vec<u32>,
}

impl IncK {
    fn from_labels(x: &[f32], d: usize, k: usize, centroids: Vec<f64>, labels: Vec<u32>) -> Self {
        let mut s = IncK {
            centroids,
            counts: vec![0.0; k],
            sums: vec![0.0; k * d],
            sumsq: vec![0.0; k],
            labels: Vec::new(),
        };
        s.add(x, d, &labels);
        s.labels = labels;
        s
    }

    fn add(&mut self, x: &[f32], d: usize, labels: &[u32]) {
        for (row, &l) in x.chunks_exact(d).zip(labels) {
            let l = l as usize;
            self.counts[l] += 1.0;
            for (t, &v) in row.iter().enumerate() {
                let v = v as f64;
                self.sums[l * d + t] += v;
                self.sumsq[l] += v * v;
            }
        }
        for (j, &c) in self.counts.iter().enumerate() {
            if c > 0.0 {
                for t in 0..d {
                    self.centroids[j * d + t] = self.sums[j * d + t] / c;
                }
            }
        }
    }

    fn inertia(&self, d: usize) -> f64 {
        let mut total = 0.0;
        for (j, &c) in self.counts.iter().enumerate() {
            if c > 0.0 {
                let s = &self.sums[j * d..(j + 1) * d];
                let sq: f64 = s.iter().map(|v| v * v).sum();
                total += (self.sumsq[j] - sq / c).max(0.0);
            }
        }
        total
    }

    fn assign(&self, x: &[f32], d: usize) -> Vec<u32> {
        let c: Vec<f32> = self.centroids.iter().map(|&v| v as f32).collect();
        x.chunks_exact(d)
            .map(|row| {
                let mut best = f32::MAX;
                let mut arg = 0;
                for (j, cj) in c.chunks_exact(d).enumerate() {
                    let mut s = 0.0f32;
                    for (a, b) in row.iter().zip(cj) {
                        s += (a - b) * (a - b);
                    }
                    if s < best {
                        best = s;
                        arg = j as u32;
                    }
                }
                arg
            })
            .collect()
    }
}

/// The implicit-group state of one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceClusters {
    /// Feature length (the group size G).
    pub dim: usize,
    /// Kept history, rows x dim (features already transformed).
    pub history: Vec<f32>,
    /// Rows added by each kept step.
    pub step_rows: Vec<usize>,
    /// Current cluster of every history row.
    pub labels: Vec<u32>,
    /// Current centres (k x dim) and cluster sizes.
    pub centroids: Vec<f64>,
    pub sizes: Vec<u64>,
    pub k: usize,
    /// Inertia of each k tried at the last fit.
    pub inertias: Vec<f64>,
    /// Centres of each k at the last fit (warm starts).
    pub warm: Vec<Vec<f64>>,
    /// Incremental statistics per k (index k - 1).
    pub inc: Vec<IncK>,
}

/// What a step tells about the batch's rows of one source.
#[derive(Debug, Clone)]
pub struct ClusterStep {
    /// Cluster of each new row.
    pub batch_labels: Vec<u32>,
    /// ARI between the previous and the new assignment of the rows both fits saw.
    pub stability_ari: Option<f64>,
}

impl SourceClusters {
    pub fn rows(&self) -> usize {
        self.history.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Mean of centre `j` over its coordinates (the pseudo-group's mean reward).
    pub fn centre_mean(&self, j: usize) -> f64 {
        let c = &self.centroids[j * self.dim..(j + 1) * self.dim];
        c.iter().sum::<f64>() / self.dim as f64
    }

    /// Adds `rows` (n x dim features) and updates the clusters.
    pub fn step(&mut self, rows: &[f32], dim: usize, p: &ClusterParams) -> Result<ClusterStep> {
        if self.dim == 0 {
            self.dim = dim;
        } else if self.dim != dim {
            return Err(CoreError::value(
                "group_size",
                format!(
                    "changed from {} to {dim}; the implicit-group history holds reward vectors of length {}",
                    self.dim, self.dim
                ),
            ));
        }
        let b = rows.len() / dim;
        let old_rows = self.rows();
        self.history.extend_from_slice(rows);
        self.step_rows.push(b);
        let mut dropped = 0;
        if let Some(w) = p.window_steps {
            while self.step_rows.len() > w.max(1) {
                dropped += self.step_rows.remove(0);
            }
        }
        if dropped > 0 {
            self.history.drain(..dropped * dim);
            for inc in &mut self.inc {
                // dropped rows leave the statistics: rebuilt from the kept rows below
                inc.labels.clear();
            }
        }
        let prev: Vec<u32> =
            self.labels.get(dropped.min(self.labels.len())..).map(|s| s.to_vec()).unwrap_or_default();
        match p.update {
            ClusterUpdate::Refit => self.refit(p)?,
            ClusterUpdate::Incremental => self.incremental(rows, b, p)?,
        }
        let common = old_rows.saturating_sub(dropped).min(prev.len());
        let stability_ari = if common >= 2 && p.update == ClusterUpdate::Refit {
            let a: Vec<i64> = prev[..common].iter().map(|&v| v as i64).collect();
            let c: Vec<i64> = self.labels[..common].iter().map(|&v| v as i64).collect();
            Some(adjusted_rand_index(&a, &c))
        } else {
            None
        };
        let n = self.rows();
        Ok(ClusterStep { batch_labels: self.labels[n - b..].to_vec(), stability_ari })
    }

    fn refit(&mut self, p: &ClusterParams) -> Result<()> {
        let warm: &[Vec<f64>] = if p.warm_start { &self.warm } else { &[] };
        let sel = select_k(&self.history, self.dim, &p.select, warm)?;
        self.k = sel.k;
        self.labels = sel.result.labels;
        self.centroids = sel.result.centroids;
        self.sizes = sel.result.sizes;
        self.inertias = sel.inertias;
        self.warm = sel.all_centroids;
        Ok(())
    }

    fn incremental(&mut self, rows: &[f32], b: usize, p: &ClusterParams) -> Result<()> {
        let d = self.dim;
        let s = &p.select;
        let k_eff = count_distinct_rows(&self.history, d, s.k_max).max(1);
        let n = self.rows();
        for k in 1..=k_eff {
            let fresh = self.inc.len() < k || self.inc[k - 1].labels.len() + b != n;
            if fresh {
                let init = match self.warm.get(k - 1) {
                    Some(c) if c.len() == k * d && p.warm_start => Init::Centres(c),
                    _ => Init::PlusPlus { seed: s.seed },
                };
                let fit = kmeans_trusted(
                    &self.history,
                    d,
                    k,
                    init,
                    s.max_iter,
                    s.kmeans_tol,
                    Algorithm::Lloyd,
                    s.threads,
                    true,
                )?;
                let inc = IncK::from_labels(&self.history, d, k, fit.centroids, fit.labels);
                if self.inc.len() < k {
                    self.inc.push(inc);
                } else {
                    self.inc[k - 1] = inc;
                }
            } else {
                let inc = &mut self.inc[k - 1];
                let lab = inc.assign(rows, d);
                inc.add(rows, d, &lab);
                inc.labels.extend_from_slice(&lab);
            }
        }
        self.inc.truncate(k_eff);
        self.inertias = self.inc.iter().map(|i| i.inertia(d)).collect();
        self.k = elbow(&self.inertias, s.tol);
        let cur = &self.inc[self.k - 1];
        self.labels = cur.labels.clone();
        self.centroids = cur.centroids.clone();
        self.sizes = cur.counts.iter().map(|&c| c as u64).collect();
        self.warm = self.inc.iter().map(|i| i.centroids.clone()).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(update: ClusterUpdate) -> ClusterParams {
        ClusterParams {
            select: SelectKParams {
                k_max: 3,
                tol: 0.1,
                seed: 0,
                max_iter: 100,
                kmeans_tol: 1e-4,
                threads: 1,
            },
            warm_start: true,
            update,
            window_steps: None,
        }
    }

    fn batch(step: usize) -> Vec<f32> {
        // three kinds of prompts: always wrong, half right, always right
        let mut v = Vec::new();
        for i in 0..30 {
            let kind = (i + step) % 3;
            v.extend_from_slice(match kind {
                0 => &[0.0, 0.0, 0.0, 0.0],
                1 => &[0.0, 0.0, 1.0, 1.0],
                _ => &[1.0, 1.0, 1.0, 1.0],
            });
        }
        v
    }

    #[test]
    fn refit_finds_the_three_kinds_and_is_stable() {
        let mut s = SourceClusters::default();
        let p = params(ClusterUpdate::Refit);
        s.step(&batch(0), 4, &p).unwrap();
        assert_eq!(s.k, 3);
        let st = s.step(&batch(1), 4, &p).unwrap();
        assert_eq!(st.batch_labels.len(), 30);
        assert_eq!(st.stability_ari, Some(1.0));
        assert_eq!(s.sizes.iter().sum::<u64>(), 60);
    }

    #[test]
    fn incremental_agrees_with_refit_on_clean_data() {
        let mut a = SourceClusters::default();
        let mut b = SourceClusters::default();
        for step in 0..4 {
            a.step(&batch(step), 4, &params(ClusterUpdate::Refit)).unwrap();
            b.step(&batch(step), 4, &params(ClusterUpdate::Incremental)).unwrap();
        }
        let la: Vec<i64> = a.labels.iter().map(|&v| v as i64).collect();
        let lb: Vec<i64> = b.labels.iter().map(|&v| v as i64).collect();
        assert_eq!(adjusted_rand_index(&la, &lb), 1.0);
        assert_eq!(a.k, b.k);
    }

    #[test]
    fn window_drops_old_steps() {
        let mut s = SourceClusters::default();
        let mut p = params(ClusterUpdate::Refit);
        p.window_steps = Some(2);
        for step in 0..5 {
            s.step(&batch(step), 4, &p).unwrap();
        }
        assert_eq!(s.rows(), 60);
    }

    #[test]
    fn changing_dim_is_an_error() {
        let mut s = SourceClusters::default();
        let p = params(ClusterUpdate::Refit);
        s.step(&batch(0), 4, &p).unwrap();
        assert!(s.step(&[0.0; 6], 3, &p).is_err());
    }
}
