//! FairGRPO's fairness-aware advantages (ALGORITHM.md §2, steps 1-5), stateful across steps.
//!
//! One call handles one global rollout batch of P prompts x G rollouts:
//! 1. GRPO score `s` per rollout (as TRL);
//! 2. the batch is added to the running statistics of every source d and every labelled
//!    group (d, g): N (prompts) and mu (mean raw reward over scorable rollouts);
//! 3. prompts without a group are clustered per source on their reward vectors; each
//!    cluster is a pseudo-group with N = its size and mu = the mean of its centre;
//! 4. `T_d = sqrt(N_d) mu_d`, `T_dg = sqrt(N_dg) mu_dg`, weight `1 / (T_d T_dg)`;
//! 5. `A = w s`, renormalised over the batch.
//!
//! The batch is read twice (scores and per-prompt sums, then the weighted write); the
//! renormalisation statistics come from per-prompt sums, so no third pass is needed.

use crate::advantages::{batch_std, check_rewards, moments, score, Moments, Scale};
use crate::clusters::{ClusterParams, SourceClusters};
use crate::config::{FairConfig, Features, Renorm, StatsMode, Weighting};
use crate::error::{CoreError, Result};
use crate::labels::{Key, LabelMap, Labels};
use crate::metrics::{adjusted_rand_index, normalized_mutual_info};
use crate::pool::{map_chunks_mut, resolve_threads};
use crate::real::Real;
use crate::select_k::SelectKParams;
use serde::{Deserialize, Serialize};

/// Prompts per chunk of the two passes.
const PROMPTS_PER_CHUNK: usize = 2048;

/// Running count / reward statistics of a source or group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStat {
    /// Prompts seen (decayed in `ema` mode).
    pub n: f64,
    /// Sum of scorable rewards.
    pub rsum: f64,
    /// Number of scorable rewards.
    pub rcnt: f64,
}

impl RunStat {
    pub fn mean(&self) -> f64 {
        if self.rcnt > 0.0 {
            self.rsum / self.rcnt
        } else {
            f64::NAN
        }
    }
    fn fold(&mut self, batch: &RunStat, mode: StatsMode, decay: f64) {
        match mode {
            StatsMode::Cumulative => {
                self.n += batch.n;
                self.rsum += batch.rsum;
                self.rcnt += batch.rcnt;
            }
            StatsMode::Ema => {
                self.n = decay * self.n + batch.n;
                self.rsum = decay * self.rsum + batch.rsum;
                self.rcnt = decay * self.rcnt + batch.rcnt;
            }
            StatsMode::Batch => *self = *batch,
        }
    }
}

/// The whole state: options, label maps, running statistics, cluster histories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FairAdvantage {
    pub config: FairConfig,
    pub step: u64,
    pub sources: LabelMap,
    pub groups: LabelMap,
    /// Per source.
    pub source_stats: Vec<RunStat>,
    /// Per source, per group label id.
    pub group_stats: Vec<Vec<RunStat>>,
    /// Per source.
    pub clusters: Vec<SourceClusters>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PromptStat {
    m: Moments,
    /// Denominator std used for the score.
    std: f64,
    ssum: f64,
    ssq: f64,
    smax: f64,
}

/// One weight cell of a step: a labelled group or a cluster of a source.
#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    pub name: String,
    pub source: String,
    /// "group" or "cluster".
    pub kind: &'static str,
    /// Group label, or cluster index.
    pub label: String,
    pub n: f64,
    pub mean_reward: f64,
    pub temperature: f64,
    pub n_batch: u64,
    pub batch_mean_reward: f64,
    pub weight: f64,
    pub grad_mass: f64,
    /// Faithful weighting fell back to the unweighted score for this cell.
    pub fallback: bool,
}

/// Per-source summary of a step.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub n: f64,
    pub mean_reward: f64,
    pub temperature: f64,
    pub n_batch: u64,
    pub batch_mean_reward: f64,
    pub weight: f64,
    pub grad_mass: f64,
    pub n_unlabelled_batch: u64,
    pub history_rows: usize,
    pub n_clusters: usize,
    pub cluster_sizes: Vec<u64>,
    pub cluster_inertias: Vec<f64>,
    pub stability_ari: Option<f64>,
    pub true_ari: Option<f64>,
    pub true_nmi: Option<f64>,
}

/// What a step reports, for logging.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub step: u64,
    pub n_prompts: usize,
    pub group_size: usize,
    pub renorm_mean: f64,
    pub renorm_std: f64,
    pub sources: Vec<SourceReport>,
    pub groups: Vec<CellReport>,
}

/// The arrays of a step besides the advantages.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Fairness weight of every prompt (P).
    pub weights: Vec<f64>,
    /// Cluster of every prompt, -1 where the prompt has a group label (P).
    pub clusters: Vec<i32>,
    pub report: Report,
}

struct Cell {
    source: u32,
    kind: &'static str,
    label: u32,
    run: RunStat,
    batch: RunStat,
}

/// Features of one prompt's reward vector: NaN -> the prompt's mean (0 if none), sorted if asked.
fn features<T: Real>(r: &[T], m: &Moments, feat: Features, out: &mut Vec<f32>) {
    let fill = if m.count > 0 { m.mean } else { 0.0 };
    let start = out.len();
    out.extend(r.iter().map(|v| {
        if v.is_nan() {
            fill as f32
        } else {
            v.to_f64() as f32
        }
    }));
    if feat == Features::Sorted {
        out[start..].sort_by(|a, b| a.total_cmp(b));
    }
}

impl FairAdvantage {
    pub fn new(config: FairConfig) -> Result<Self> {
        config.validate()?;
        Ok(FairAdvantage {
            config,
            step: 0,
            sources: LabelMap::default(),
            groups: LabelMap::default(),
            source_stats: Vec::new(),
            group_stats: Vec::new(),
            clusters: Vec::new(),
        })
    }

    /// Serialises the whole state (exact: floats round-trip bit for bit).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| CoreError::State(e.to_string()))
    }

    /// Restores a state written by [`FairAdvantage::to_json`].
    pub fn from_json(s: &str) -> Result<Self> {
        let mut fa: FairAdvantage = serde_json::from_str(s)
            .map_err(|e| CoreError::State(format!("not a FairAdvantage state: {e}")))?;
        fa.config.validate()?;
        fa.sources.rebuild()?;
        fa.groups.rebuild()?;
        let ns = fa.sources.len();
        if fa.source_stats.len() != ns || fa.group_stats.len() != ns || fa.clusters.len() != ns {
            return Err(CoreError::State(
                "per-source tables do not match the source labels".into(),
            ));
        }
        Ok(fa)
    }

    fn cluster_params(&self, threads: usize) -> ClusterParams {
        let c = &self.config;
        ClusterParams {
            select: SelectKParams {
                k_max: c.k_max,
                tol: c.elbow_tol,
                seed: c.seed,
                max_iter: c.max_iter,
                kmeans_tol: c.kmeans_tol,
                threads,
            },
            warm_start: c.warm_start,
            update: c.cluster_update,
            window_steps: c.window_steps(),
        }
    }

    /// One training step: fairness-weighted advantages of `rewards` (P*G, prompt-major)
    /// written into `out`. Nothing in the state changes when an error is returned.
    pub fn step<T: Real>(
        &mut self,
        rewards: &[T],
        group_size: usize,
        sources: Labels<'_>,
        groups: Labels<'_>,
        true_groups: Labels<'_>,
        out: &mut [T],
    ) -> Result<StepOutput> {
        let cfg = self.config.clone();
        let threads = resolve_threads(cfg.n_threads)?;
        let p = check_rewards(rewards, group_size)?;
        let g = group_size;
        if out.len() != rewards.len() {
            return Err(CoreError::shape("out", "must have the length of rewards"));
        }
        // --- labels (on copies: committed only once nothing can fail) ---
        let mut smap = self.sources.clone();
        let mut gmap = self.groups.clone();
        let default_source = [Some(Key::Str("default".into()))];
        let sid = match sources {
            Labels::Absent => {
                let id = smap.map(Labels::Keys(&default_source), 1, "sources")?[0];
                vec![id; p]
            }
            l => smap.map(l, p, "sources")?,
        };
        if let Some(i) = sid.iter().position(|&s| s < 0) {
            return Err(CoreError::value(
                "sources",
                format!("entry {i} is unknown (None or -1); every prompt needs a data source (use one name for all if there is only one)"),
            ));
        }
        let mut gid = gmap.map(groups, p, "groups")?;
        if !cfg.use_groups {
            gid.iter_mut().for_each(|v| *v = -1);
        }
        let mut tmap = LabelMap::default();
        let tid = match true_groups {
            Labels::Absent => None,
            l => Some(tmap.map(l, p, "true_groups")?),
        };
        for (s, c) in self.clusters.iter().enumerate() {
            if c.dim != 0 && c.dim != g && sid.contains(&(s as i32)) {
                return Err(CoreError::value(
                    "group_size",
                    format!(
                        "changed from {} to {g} for source {}; the implicit-group history holds reward vectors of length {}",
                        c.dim,
                        self.sources.name(s as u32),
                        c.dim
                    ),
                ));
            }
        }
        // --- commit labels, grow tables ---
        self.sources = smap;
        self.groups = gmap;
        let ns = self.sources.len();
        let ng = self.groups.len();
        self.source_stats.resize(ns, RunStat::default());
        self.clusters.resize(ns, SourceClusters::default());
        self.group_stats.resize(ns, Vec::new());
        for v in &mut self.group_stats {
            v.resize(ng, RunStat::default());
        }
        self.step += 1;

        // --- pass 1: per-prompt moments and score sums ---
        let bstd = if cfg.scale == Scale::Batch {
            batch_std(rewards, threads)
        } else {
            0.0
        };
        let mut ps = vec![PromptStat::default(); p];
        map_chunks_mut(&mut ps, PROMPTS_PER_CHUNK, threads, |ci, chunk| {
            let q0 = ci * PROMPTS_PER_CHUNK;
            for (j, st) in chunk.iter_mut().enumerate() {
                let rq = &rewards[(q0 + j) * g..(q0 + j + 1) * g];
                let m = moments(rq);
                let std = match cfg.scale {
                    Scale::Batch => bstd,
                    _ if g == 1 => 0.0,
                    _ => m.std,
                };
                let (mut ssum, mut ssq, mut smax) = (0.0, 0.0, 0.0f64);
                for &r in rq {
                    let s = T::from_f64(score(r.to_f64(), m.mean, std, cfg.scale, cfg.score_eps))
                        .to_f64();
                    ssum += s;
                    ssq += s * s;
                    smax = smax.max(s.abs());
                }
                *st = PromptStat {
                    m,
                    std,
                    ssum,
                    ssq,
                    smax,
                };
            }
        });

        // --- step 2: batch aggregates and running statistics ---
        let mut src_batch = vec![RunStat::default(); ns];
        let mut grp_batch = vec![vec![RunStat::default(); ng]; ns];
        for q in 0..p {
            let s = sid[q] as usize;
            let st = RunStat {
                n: 1.0,
                rsum: ps[q].m.sum,
                rcnt: ps[q].m.count as f64,
            };
            let b = &mut src_batch[s];
            b.n += 1.0;
            b.rsum += st.rsum;
            b.rcnt += st.rcnt;
            if gid[q] >= 0 {
                let b = &mut grp_batch[s][gid[q] as usize];
                b.n += 1.0;
                b.rsum += st.rsum;
                b.rcnt += st.rcnt;
            }
        }
        for (s, run) in self.source_stats.iter_mut().enumerate() {
            run.fold(&src_batch[s], cfg.stats, cfg.ema_decay);
            for (run, b) in self.group_stats[s].iter_mut().zip(&grp_batch[s]) {
                run.fold(b, cfg.stats, cfg.ema_decay);
            }
        }

        // --- step 3: implicit groups ---
        let cparams = self.cluster_params(threads);
        let mut clusters = vec![-1i32; p];
        let mut stability = vec![None; ns];
        let mut unl_batch = vec![0u64; ns];
        for s in 0..ns {
            let idx: Vec<usize> = (0..p)
                .filter(|&q| sid[q] as usize == s && gid[q] < 0)
                .collect();
            unl_batch[s] = idx.len() as u64;
            if idx.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(idx.len() * g);
            for &q in &idx {
                features(
                    &rewards[q * g..(q + 1) * g],
                    &ps[q].m,
                    cfg.features,
                    &mut rows,
                );
            }
            let st = self.clusters[s].step(&rows, g, &cparams)?;
            stability[s] = st.stability_ari;
            for (&q, &l) in idx.iter().zip(&st.batch_labels) {
                clusters[q] = l as i32;
            }
        }

        // --- step 4: cells and weights ---
        let mut cells: Vec<Cell> = Vec::new();
        let mut group_cell = vec![vec![u32::MAX; ng]; ns];
        let mut cluster_cell: Vec<Vec<u32>> =
            self.clusters.iter().map(|c| vec![u32::MAX; c.k]).collect();
        let mut cell_of = vec![0u32; p];
        for q in 0..p {
            let s = sid[q] as usize;
            let slot = if gid[q] >= 0 {
                &mut group_cell[s][gid[q] as usize]
            } else {
                &mut cluster_cell[s][clusters[q] as usize]
            };
            if *slot == u32::MAX {
                *slot = cells.len() as u32;
                let (kind, label, run) = if gid[q] >= 0 {
                    ("group", gid[q] as u32, self.group_stats[s][gid[q] as usize])
                } else {
                    let c = &self.clusters[s];
                    let j = clusters[q] as usize;
                    let mu = c.centre_mean(j);
                    (
                        "cluster",
                        j as u32,
                        RunStat {
                            n: c.sizes[j] as f64,
                            rsum: mu,
                            rcnt: 1.0,
                        },
                    )
                };
                cells.push(Cell {
                    source: s as u32,
                    kind,
                    label,
                    run,
                    batch: RunStat::default(),
                });
            }
            let c = &mut cells[*slot as usize];
            c.batch.n += 1.0;
            c.batch.rsum += ps[q].m.sum;
            c.batch.rcnt += ps[q].m.count as f64;
            cell_of[q] = *slot;
        }
        let robust = cfg.weighting == Weighting::Robust;
        let floor_mu = |mu: f64| if robust { mu.max(cfg.mu_floor) } else { mu };
        let t_source: Vec<f64> = self
            .source_stats
            .iter()
            .map(|r| (r.n.sqrt() * floor_mu(r.mean())).max(cfg.t_floor))
            .collect();
        let t_cell: Vec<f64> = cells
            .iter()
            .map(|c| {
                let t = c.run.n.sqrt() * floor_mu(c.run.mean());
                if robust {
                    t.max(cfg.t_floor).max(1e-12)
                } else {
                    t
                }
            })
            .collect();
        // factor per cell (faithful divides by it) or weight per cell (robust multiplies)
        let factor: Vec<f64> = cells
            .iter()
            .zip(&t_cell)
            .map(|(c, t)| t_source[c.source as usize] * t)
            .collect();
        let cell_w: Vec<f64> = if robust {
            let raw: Vec<f64> = factor.iter().map(|f| 1.0 / f).collect();
            let counts: Vec<f64> = cells.iter().map(|c| c.batch.n).collect();
            water_fill(&raw, &counts, cfg.w_cap)
        } else {
            factor.iter().map(|f| 1.0 / f).collect()
        };
        // per prompt: multiplier on s (robust), or the faithful divisor unless it falls back to s
        let mut fallback_cell = vec![false; cells.len()];
        let mut mult = vec![1.0f64; p];
        let mut weights = vec![1.0f64; p];
        let mut faithful_div: Vec<Option<f64>> = vec![None; p];
        for q in 0..p {
            let c = cell_of[q] as usize;
            if robust {
                mult[q] = cell_w[c];
                weights[q] = cell_w[c];
            } else if falls_back(factor[c], &ps[q]) {
                fallback_cell[c] = true;
            } else {
                mult[q] = 1.0 / factor[c];
                weights[q] = 1.0 / factor[c];
                faithful_div[q] = Some(factor[c]);
            }
        }

        // --- step 5: renormalisation statistics from per-prompt sums ---
        let (mut sa, mut saa, mut n_valid) = (0.0f64, 0.0f64, 0.0f64);
        for q in 0..p {
            let m = mult[q];
            sa += m * ps[q].ssum;
            saa += m * m * ps[q].ssq;
            n_valid += ps[q].m.count as f64;
        }
        let mean_a = if n_valid > 0.0 { sa / n_valid } else { 0.0 };
        let std_a = if n_valid > 1.0 {
            ((saa - sa * sa / n_valid).max(0.0) / (n_valid - 1.0)).sqrt()
        } else {
            0.0
        };
        let (shift, denom) = match cfg.renorm {
            Renorm::Std => (0.0, std_a + cfg.renorm_eps),
            Renorm::Zscore => (mean_a, std_a + cfg.renorm_eps),
            Renorm::None => (0.0, 1.0),
        };

        // --- pass 2: write the advantages, gradient mass per cell ---
        let n_cells = cells.len();
        let masses = map_chunks_mut(out, PROMPTS_PER_CHUNK * g, threads, |ci, o| {
            let q0 = ci * PROMPTS_PER_CHUNK;
            let mut mass = vec![0.0f64; n_cells];
            for (j, oq) in o.chunks_exact_mut(g).enumerate() {
                let q = q0 + j;
                let st = &ps[q];
                let rq = &rewards[q * g..(q + 1) * g];
                let mut local = 0.0;
                for (ov, &r) in oq.iter_mut().zip(rq) {
                    if r.is_nan() {
                        *ov = T::ZERO;
                        continue;
                    }
                    let s = T::from_f64(score(
                        r.to_f64(),
                        st.m.mean,
                        st.std,
                        cfg.scale,
                        cfg.score_eps,
                    ))
                    .to_f64();
                    let a = match faithful_div[q] {
                        Some(f) => s / f,
                        None => s * mult[q],
                    };
                    let a = (a - shift) / denom;
                    local += a.abs();
                    *ov = T::from_f64(a);
                }
                mass[cell_of[q] as usize] += local;
            }
            mass
        });
        let mut grad_mass = vec![0.0f64; n_cells];
        for m in &masses {
            for (a, b) in grad_mass.iter_mut().zip(m) {
                *a += b;
            }
        }

        // --- report ---
        let mut w_sum_src = vec![0.0f64; ns];
        for q in 0..p {
            w_sum_src[sid[q] as usize] += weights[q];
        }
        let mut mass_src = vec![0.0f64; ns];
        let mut groups_out = Vec::with_capacity(n_cells);
        for (c, cell) in cells.iter().enumerate() {
            mass_src[cell.source as usize] += grad_mass[c];
            let sname = self.sources.name(cell.source);
            let label = if cell.kind == "group" {
                self.groups.name(cell.label)
            } else {
                format!("cluster{}", cell.label)
            };
            groups_out.push(CellReport {
                name: format!("{sname}/{label}"),
                source: sname,
                kind: cell.kind,
                label,
                n: cell.run.n,
                mean_reward: cell.run.mean(),
                temperature: t_cell[c],
                n_batch: cell.batch.n as u64,
                batch_mean_reward: cell.batch.mean(),
                weight: if fallback_cell[c] { 1.0 } else { cell_w[c] },
                grad_mass: grad_mass[c],
                fallback: fallback_cell[c],
            });
        }
        let mut sources_out = Vec::new();
        for s in 0..ns {
            if src_batch[s].n == 0.0 {
                continue;
            }
            let cl = &self.clusters[s];
            let clustered = unl_batch[s] > 0;
            let (true_ari, true_nmi) = match (&tid, clustered) {
                (Some(t), true) => {
                    let pairs: Vec<(i64, i64)> = (0..p)
                        .filter(|&q| sid[q] as usize == s && gid[q] < 0 && t[q] >= 0)
                        .map(|q| (clusters[q] as i64, t[q] as i64))
                        .collect();
                    if pairs.is_empty() {
                        (None, None)
                    } else {
                        let a: Vec<i64> = pairs.iter().map(|x| x.0).collect();
                        let b: Vec<i64> = pairs.iter().map(|x| x.1).collect();
                        (
                            Some(adjusted_rand_index(&a, &b)),
                            Some(normalized_mutual_info(&a, &b)),
                        )
                    }
                }
                _ => (None, None),
            };
            sources_out.push(SourceReport {
                name: self.sources.name(s as u32),
                n: self.source_stats[s].n,
                mean_reward: self.source_stats[s].mean(),
                temperature: t_source[s],
                n_batch: src_batch[s].n as u64,
                batch_mean_reward: src_batch[s].mean(),
                weight: w_sum_src[s] / src_batch[s].n,
                grad_mass: mass_src[s],
                n_unlabelled_batch: unl_batch[s],
                history_rows: cl.rows(),
                n_clusters: cl.k,
                cluster_sizes: cl.sizes.clone(),
                cluster_inertias: cl.inertias.clone(),
                stability_ari: stability[s],
                true_ari,
                true_nmi,
            });
        }
        let report = Report {
            step: self.step,
            n_prompts: p,
            group_size: g,
            renorm_mean: mean_a,
            renorm_std: std_a,
            sources: sources_out,
            groups: groups_out,
        };
        Ok(StepOutput {
            weights,
            clusters,
            report,
        })
    }
}

/// Whether faithful weighting falls back to the plain score: `s / factor` is not finite
/// for some rollout of the prompt (factor 0 or NaN, or an overflow).
fn falls_back(f: f64, st: &PromptStat) -> bool {
    f.is_nan() || f == 0.0 || !(st.smax / f.abs()).is_finite() || !(1.0 / f).is_finite()
}

/// Scales `raw` weights so that their count-weighted mean is 1 with none above `cap`
/// (exact water-filling: the largest cells are capped, the rest share the remainder).
pub fn water_fill(raw: &[f64], counts: &[f64], cap: Option<f64>) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || raw.is_empty() {
        return raw.to_vec();
    }
    let mass: f64 = raw.iter().zip(counts).map(|(w, n)| w * n).sum();
    let lam = total / mass;
    let Some(cap) = cap else {
        return raw.iter().map(|w| w * lam).collect();
    };
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
    let mut capped_n = 0.0;
    let mut rest_mass = mass;
    for j in 0..=order.len() {
        // the first j cells (largest raw weights) are capped
        if j > 0 {
            let c = order[j - 1];
            capped_n += counts[c];
            rest_mass -= raw[c] * counts[c];
        }
        if j == order.len() || rest_mass <= 0.0 {
            break;
        }
        let lam = (total - cap * capped_n) / rest_mass;
        if lam * raw[order[j]] <= cap * (1.0 + 1e-12) {
            return raw.iter().map(|w| (w * lam).min(cap)).collect();
        }
    }
    // every cell capped (cap >= 1 makes this the all-equal case)
    raw.iter().map(|_| cap.min(1.0f64.max(cap))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fa(preset: &str) -> FairAdvantage {
        FairAdvantage::new(FairConfig::preset(preset).unwrap()).unwrap()
    }

    #[test]
    fn water_fill_caps_and_keeps_mean_one() {
        let w = water_fill(&[10.0, 1.0, 1.0], &[1.0, 5.0, 5.0], Some(3.0));
        let mean = (w[0] + 5.0 * w[1] + 5.0 * w[2]) / 11.0;
        assert!((mean - 1.0).abs() < 1e-12);
        assert!((w[0] - 3.0).abs() < 1e-12);
        let w = water_fill(&[2.0, 1.0], &[1.0, 1.0], None);
        assert!((w[0] - 4.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn minority_and_hard_groups_weigh_more() {
        let mut f = fa("faithful");
        // source a: group x (3 prompts, easy), group y (1 prompt, hard)
        let r = [
            1.0f64, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0,
        ];
        let src: Vec<Option<Key>> = vec![Some(Key::Str("a".into())); 4];
        let grp = [
            Some(Key::Str("x".into())),
            Some(Key::Str("x".into())),
            Some(Key::Str("x".into())),
            Some(Key::Str("y".into())),
        ];
        let mut out = vec![0.0; 12];
        let o = f
            .step(
                &r,
                3,
                Labels::Keys(&src),
                Labels::Keys(&grp),
                Labels::Absent,
                &mut out,
            )
            .unwrap();
        assert!(o.weights[3] > o.weights[0]);
        assert_eq!(o.report.groups.len(), 2);
    }

    #[test]
    fn state_round_trips_and_resumes_bit_for_bit() {
        let mut a = fa("robust");
        let r: Vec<f32> = (0..64).map(|i| ((i * 37) % 5) as f32 / 4.0).collect();
        let grp: Vec<i64> = (0..16)
            .map(|i| if i % 3 == 0 { -1 } else { i % 2 })
            .collect();
        let src: Vec<i64> = (0..16).map(|i| i % 2).collect();
        let mut out = vec![0.0f32; 64];
        a.step(
            &r,
            4,
            Labels::Ints(&src),
            Labels::Ints(&grp),
            Labels::Absent,
            &mut out,
        )
        .unwrap();
        let mut b = FairAdvantage::from_json(&a.to_json().unwrap()).unwrap();
        assert_eq!(a, b);
        let mut oa = vec![0.0f32; 64];
        let mut ob = vec![0.0f32; 64];
        a.step(
            &r,
            4,
            Labels::Ints(&src),
            Labels::Ints(&grp),
            Labels::Absent,
            &mut oa,
        )
        .unwrap();
        b.step(
            &r,
            4,
            Labels::Ints(&src),
            Labels::Ints(&grp),
            Labels::Absent,
            &mut ob,
        )
        .unwrap();
        assert_eq!(oa, ob);
    }

    #[test]
    fn errors_leave_the_state_untouched() {
        let mut f = fa("faithful");
        let before = f.clone();
        let mut out = vec![0.0f64; 4];
        let e = f.step(
            &[1.0, 0.0, 1.0, 0.0],
            2,
            Labels::Ints(&[0, 1]),
            Labels::Ints(&[0, 1, 2]),
            Labels::Absent,
            &mut out,
        );
        assert!(e.unwrap_err().to_string().contains("groups"));
        assert_eq!(f, before);
        let e = f.step(
            &[1.0, 0.0, 1.0, 0.0],
            2,
            Labels::Ints(&[0, -1]),
            Labels::Absent,
            Labels::Absent,
            &mut out,
        );
        assert!(e.unwrap_err().to_string().contains("sources"));
        assert_eq!(f, before);
    }
}
