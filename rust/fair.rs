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

use crate::advantages::{batch_std, check_rewards, infinite_reward, moments, Scale};
use crate::blocks::{BlockScorer, Pass2, L};
use crate::clusters::{ClusterParams, SourceClusters};
use crate::config::{FairConfig, Features, Renorm, StatsMode, Weighting};
use crate::error::{CoreError, Result};
use crate::labels::{Key, LabelMap, Labels};
use crate::metrics::{adjusted_rand_index, normalized_mutual_info};
use crate::pool::{map_chunks_mut, resolve_threads, simd};
use crate::real::Real;
use crate::select_k::SelectKParams;
use crate::tiles::{self, BinaryTable, BinaryWeights, CellWeights, ScoreParams, TileIn, TILE};
use serde::{Deserialize, Serialize};

/// Asks for the `n` (>= 1) values at `p` into L2; the range may lie past the data.
#[inline(always)]
fn prefetch_l2<T>(p: *const T, n: usize) {
    // SAFETY: a prefetch never faults, whatever the address
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::_MM_HINT_T1;
        crate::kernels::avx512::prefetch::<_MM_HINT_T1>(p, n * std::mem::size_of::<T>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, n);
}

/// The labels pass 1 asks for while it sums a run of tiles (with the fused lookup): those one
/// chunk on (the lookup reads a whole chunk's at its start), from the run's first prompt.
/// The 0/1 tiles ask tile by tile as they sum, spread through the work: asked for a whole run
/// at once (32 lines), the requests had filled the core's misses in flight, on top of the
/// rewards' (fair_probe, 10^6 prompts, 2 threads, steps alternating between the two ways in
/// one process through a temporary switch: -4 to -5 % back to back in four runs, 0 to -2 %
/// after 150 ms pauses in two).
#[derive(Clone, Copy, Default)]
struct Ahead(Option<(*const i64, Option<*const i64>)>);

impl Ahead {
    /// Asks for the labels of the `n` prompts `t` prompts into the run.
    #[inline(always)]
    fn labels(&self, t: usize, n: usize) {
        if let Some((s, gr)) = self.0 {
            prefetch_l2(s.wrapping_add(t), n);
            if let Some(gr) = gr {
                prefetch_l2(gr.wrapping_add(t), n);
            }
        }
    }

    /// The same requests for the run `t` prompts on.
    fn skip(&self, t: usize) -> Ahead {
        Ahead(self.0.map(|(s, gr)| (s.wrapping_add(t), gr.map(|gr| gr.wrapping_add(t)))))
    }
}

/// Prompts per chunk of the two passes.
const PROMPTS_PER_CHUNK: usize = 2048;

thread_local! {
    /// Source and group ids of one chunk, for pass 1's fused label lookup (one pair of
    /// buffers per thread, reused from step to step).
    static LOCAL_IDS: std::cell::Cell<(Vec<i32>, Vec<i32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

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
    /// Per-prompt buffers reused from step to step (not part of the state).
    #[serde(skip)]
    scratch: Scratch,
}

/// Per-prompt working buffers of a step, kept so that the next step of the same size does
/// not allocate (and page-fault) them again. Not part of the state: a clone starts empty
/// and every two scratches compare equal.
#[derive(Default)]
struct Scratch {
    /// Source and group id of each prompt (with the fused lookup only the sources of the
    /// chunks that have unlabelled prompts are written: pass 1 keeps the rest in
    /// `LOCAL_IDS`).
    sid: Vec<i32>,
    gid: Vec<i32>,
    /// Weight cell of each prompt.
    cell: Vec<u32>,
    /// (mean, inverse scale) of each prompt, for the portable pass 2.
    pstat: Vec<(f64, f64)>,
    /// The scores for the tiles, in their layout ([`tiles::sums`] writes them,
    /// [`tiles::weighted`] reads them), and which tiles hold 0/1 patterns instead.
    tscore: Vec<f32>,
    tbin: Vec<bool>,
    tpat: Vec<u16>,
    /// The 0/1 table of the last step that had one (kept while G and the scale stay).
    table: Option<BinaryTable>,
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::default()
    }
}

impl PartialEq for Scratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
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
    pub clusters: Vec<i64>,
    pub report: Report,
}

/// Features of one prompt's reward vector: NaN -> the prompt's mean (0 if none), sorted if asked.
fn features<T: Real>(r: &[T], feat: Features, out: &mut Vec<f32>) {
    let m = moments(r);
    let fill = if m.count > 0 { m.mean } else { 0.0 };
    let start = out.len();
    out.extend(r.iter().map(|v| if v.is_nan() { fill as f32 } else { v.to_f64() as f32 }));
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
            scratch: Scratch::default(),
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
            return Err(CoreError::State("per-source tables do not match the source labels".into()));
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
        let p = check_rewards(rewards, group_size)?;
        let mut weights = vec![0.0f64; p];
        let mut clusters = vec![-1i64; p];
        let report = self.step_into(
            rewards,
            group_size,
            sources,
            groups,
            true_groups,
            out,
            &mut weights,
            &mut clusters,
        )?;
        Ok(StepOutput { weights, clusters, report })
    }

    /// [`FairAdvantage::step`] writing the weights and clusters (P each) into the caller's
    /// buffers too.
    #[allow(clippy::too_many_arguments)]
    pub fn step_into<T: Real>(
        &mut self,
        rewards: &[T],
        group_size: usize,
        sources: Labels<'_>,
        groups: Labels<'_>,
        true_groups: Labels<'_>,
        out: &mut [T],
        weights: &mut [f64],
        clusters: &mut [i64],
    ) -> Result<Report> {
        // the buffers are put back after pass 2 (an error drops them: the next step
        // allocates new ones)
        let mut scratch = std::mem::take(&mut self.scratch);
        let cfg = self.config.clone();
        let threads = resolve_threads(cfg.n_threads)?;
        let p = check_rewards(rewards, group_size)?;
        let g = group_size;
        if out.len() != rewards.len() {
            return Err(CoreError::shape("out", "must have the length of rewards"));
        }
        if weights.len() != p || clusters.len() != p {
            return Err(CoreError::shape("weights", "the weights and clusters need one entry per prompt"));
        }
        // --- labels, on copies: committed only once nothing can fail ---
        let mut smap = self.sources.clone();
        let mut gmap = self.groups.clone();
        let Scratch { sid, gid, cell, pstat, tscore, tbin, tpat, table } = &mut scratch;
        // Integer sources and groups whose labels are all known already (usually every step
        // after the first) are looked up chunk by chunk inside pass 1, so the labels are read
        // once; otherwise, or when pass 1 meets a new label, they are mapped here first.
        let mut fused = match (sources, groups) {
            (Labels::Ints(s), Labels::Ints(gr)) if s.len() == p && gr.len() == p => Some((s, Some(gr))),
            (Labels::Ints(s), Labels::Absent) if s.len() == p => Some((s, None)),
            _ => None,
        };
        let map_labels =
            |smap: &mut LabelMap, gmap: &mut LabelMap, sid: &mut Vec<i32>, gid: &mut Vec<i32>| {
                match sources {
                    Labels::Absent => {
                        let default_source = [Some(Key::Str("default".into()))];
                        let id = smap.map(Labels::Keys(&default_source), 1, "sources")?[0];
                        sid.clear();
                        sid.resize(p, id);
                    }
                    l => smap.map_into(l, p, "sources", threads, sid)?,
                };
                if let Some(i) = sid.iter().position(|&s| s < 0) {
                    return Err(unknown_source(i));
                }
                gmap.map_into(groups, p, "groups", threads, gid)?;
                if !cfg.use_groups {
                    gid.iter_mut().for_each(|v| *v = -1);
                }
                Ok(())
            };
        match fused {
            // pass 1 looks the ids up into buffers of its own; these give the chunks their
            // pieces (and take the sources of unlabelled prompts)
            Some(_) => {
                sid.resize(p, 0);
                gid.resize(p, -1);
            }
            None => map_labels(&mut smap, &mut gmap, sid, gid)?,
        }

        // --- pass 1: per-prompt moments and scores, summed per source / group cell ---
        let bstd = if cfg.scale == Scale::Batch { batch_std(rewards, threads) } else { 0.0 };
        // f32 rewards on AVX-512: 16-prompt tiles (bitwise the portable code)
        let tiled = T::as_f32(rewards).filter(|_| tiles::supports(g));
        let sp = ScoreParams::new(cfg.scale, bstd, cfg.score_eps, g);
        cell.resize(p, u32::MAX);
        if tiled.is_none() {
            pstat.resize(p, (0.0, 0.0));
        } else {
            // every entry is written by pass 1 before pass 2 reads it
            tscore.resize(tiles::scores_len(p, g), 0.0);
            tbin.resize(tiles::tiles_len(p), false);
            tpat.resize(tiles::tiles_len(p) * TILE, 0);
            // 0/1 rewards look their results up (built when the batch has as many prompts
            // as the table has patterns; kept while G and the scale stay)
            if table.as_ref().is_none_or(|t| !t.fits(g, &sp)) {
                *table = BinaryTable::for_batch(g, &sp, p);
            }
        }
        let table = table.as_ref().filter(|t| t.fits(g, &sp));
        #[cfg(target_arch = "x86_64")]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let parts = loop {
            let (ns, ng) = (smap.len(), gmap.len());
            let mut ps_chunks = pstat.chunks_mut(PROMPTS_PER_CHUNK);
            // PROMPTS_PER_CHUNK is a multiple of the tile: a chunk's share is scores_len(chunk)
            let mut ts_chunks = tscore.chunks_mut(tiles::scores_len(PROMPTS_PER_CHUNK, g));
            let mut bin_chunks = tbin.chunks_mut(PROMPTS_PER_CHUNK / TILE);
            let mut pat_chunks = tpat.chunks_mut(PROMPTS_PER_CHUNK);
            let mut pieces: Vec<_> = cell
                .chunks_mut(PROMPTS_PER_CHUNK)
                .zip(sid.chunks_mut(PROMPTS_PER_CHUNK).zip(gid.chunks_mut(PROMPTS_PER_CHUNK)))
                .map(|(c, ids)| {
                    let ts = (
                        ts_chunks.next().unwrap_or_default(),
                        bin_chunks.next().unwrap_or_default(),
                        pat_chunks.next().unwrap_or_default(),
                    );
                    (c, ps_chunks.next().unwrap_or_default(), ts, ids)
                })
                .collect();
            let (smap_r, gmap_r) = (&smap, &gmap);
            let parts = map_chunks_mut(&mut pieces, 1, threads, |ci, piece| {
                let (cells, ps, (tst, tbn, tpt), (sid, gid)) = &mut piece[0];
                let q_start = ci * PROMPTS_PER_CHUNK;
                let q_end = q_start + cells.len();
                let mut part = Pass1 {
                    src: vec![Acc::default(); ns],
                    cell: vec![Acc::default(); ns * ng],
                    ..Default::default()
                };
                // fused lookups go to buffers of this thread that stay in its cache: the
                // batch-long ids are written only where the clustering needs the sources
                let mut local = fused.map(|_| LOCAL_IDS.with(|l| l.take()));
                if let (Some((sv, gv)), Some((ls, lg))) = (fused, local.as_mut()) {
                    let n = q_end - q_start;
                    ls.resize(n, 0);
                    lg.resize(n, -1);
                    let mut known = smap_r.lookup_small(&sv[q_start..q_end], ls);
                    match gv {
                        Some(gv) => {
                            known &= gmap_r.lookup_small(&gv[q_start..q_end], lg);
                            if !cfg.use_groups {
                                lg.fill(-1);
                            }
                        }
                        None => lg.fill(-1),
                    }
                    if !known {
                        part.new_label = true;
                    } else if ls.iter().fold(0, |a, &s| a | s) < 0 {
                        // a prompt without a source (-1): found by a search only then (the
                        // or of the sign bits vectorises, the early-exit search does not:
                        // it was 5 % of a step)
                        part.no_source = ls.iter().position(|&s| s < 0).map(|i| q_start + i);
                    }
                }
                if part.new_label || part.no_source.is_some() {
                    LOCAL_IDS.with(|l| l.set(local.unwrap_or_default()));
                    return part;
                }
                let sid_all = &mut **sid;
                let (sid, gid): (&[i32], &[i32]) = match &local {
                    Some((ls, lg)) => (ls, lg),
                    None => (&*sid_all, &**gid),
                };
                let part = 'body: {
                    if let Some(r) = tiled {
                        // the source and cell sums as `Sums4` (the prompt counts apart): the same
                        // additions in the same order as `Pass1::add`, in fewer instructions.
                        // While every tile so far is 0/1 the source sums are not added up prompt
                        // by prompt: their counts and reward sums are integers, so the sums of
                        // the cells and unlabelled prompts of the source give the same bits; and
                        // the cells' sums of those integers are exact in f64 (`BinCell`).
                        let mut src = vec![Sums4::default(); ns];
                        let mut cell = vec![Sums4::default(); ns * ng];
                        let mut bcell = vec![BinCell::default(); ns * ng];
                        let mut binary_so_far = true;
                        let unl = &mut part.unl;
                        let rq = &r[q_start * g..q_end * g];
                        part.bad = tiles::sums(rq, g, &sp, table, tst, tbn, tpt, &mut |q0, n, ps| {
                            let ahead = Ahead(fused.map(|(sv, gv)| {
                                (
                                    sv.as_ptr().wrapping_add(q_end + q0),
                                    gv.map(|v| v.as_ptr().wrapping_add(q_end + q0)),
                                )
                            }));
                            let ids = (&sid[q0..q0 + n], &gid[q0..q0 + n]);
                            let binary = matches!(ps, TileIn::Binary(..));
                            if binary_so_far && !binary {
                                binary_so_far = false;
                                bin_into_sums(&bcell, g, &mut cell);
                                src = Sums4::sources_of(&cell, ns, ng, unl, |q| sid[q - q_start]);
                            }
                            let cells = &mut cells[q0..q0 + n];
                            let unl = &mut *unl;
                            let q = q_start + q0;
                            // one loop per kind of tile, without a branch on it per prompt
                            match (ps, binary_so_far) {
                                (TileIn::Binary(pats, t), true) => {
                                    // the leading tiles whose prompts all have a group with
                                    // AVX-512, the rest (from the first unlabelled prompt's tile)
                                    // prompt by prompt
                                    #[cfg(target_arch = "x86_64")]
                                    let done = if avx512 {
                                        // SAFETY: AVX-512F checked
                                        unsafe {
                                            bin_tile_sums_avx512(
                                                pats,
                                                t,
                                                (ids.0, ids.1, ng),
                                                &mut bcell,
                                                cells,
                                                &ahead,
                                            )
                                        }
                                    } else {
                                        0
                                    };
                                    #[cfg(not(target_arch = "x86_64"))]
                                    let done = 0;
                                    bin_tile_sums(
                                        &pats[done..],
                                        t,
                                        (&ids.0[done..], &ids.1[done..], ng, q + done),
                                        (&mut bcell, unl),
                                        &mut cells[done..],
                                        &ahead.skip(done),
                                    )
                                }
                                _ => {
                                    ahead.labels(0, n);
                                    tile_sums(
                                        |l| ps.get(l),
                                        (ids.0, ids.1, ng, q),
                                        (&mut src, &mut cell, unl),
                                        cells,
                                    )
                                }
                            }
                        })
                        .map(|i| q_start * g + i);
                        if binary_so_far {
                            bin_into_sums(&bcell, g, &mut cell);
                            src = Sums4::sources_of(&cell, ns, ng, &part.unl, |q| sid[q - q_start]);
                        }
                        part.src = src.iter().map(Sums4::acc).collect();
                        part.cell = cell.iter().map(Sums4::acc).collect();
                        break 'body part;
                    }
                    simd(|| {
                        let mut b = BlockScorer::new(g, cfg.scale, bstd, cfg.score_eps);
                        for q0 in (q_start..q_end).step_by(L) {
                            let np = L.min(q_end - q0);
                            let rb = &rewards[q0 * g..(q0 + np) * g];
                            b.load(rb, np);
                            if b.infinite && part.bad.is_none() {
                                part.bad =
                                    rb.iter().position(|v| !v.is_finite() && !v.is_nan()).map(|i| q0 * g + i);
                            }
                            let (mut ssum, mut ssq) = ([0.0f64; L], [0.0f64; L]);
                            for srow in b.s.chunks_exact(L) {
                                for l in 0..L {
                                    ssum[l] += srow[l];
                                    ssq[l] += srow[l] * srow[l];
                                }
                            }
                            for l in 0..np {
                                let q = q0 + l;
                                ps[q - q_start] = (b.mean[l], b.inv[l]);
                                let a = Acc {
                                    n: 1.0,
                                    rsum: b.sum[l],
                                    rcnt: b.cnt[l],
                                    ssum: ssum[l],
                                    ssq: ssq[l],
                                };
                                cells[q - q_start] = part.add(q, sid[q - q_start], gid[q - q_start], ng, a);
                            }
                        }
                    });
                    part
                };
                if let Some((ls, lg)) = local {
                    // the clustering looks the sources of unlabelled prompts up
                    if !part.unl.is_empty() {
                        sid_all.copy_from_slice(&ls);
                    }
                    LOCAL_IDS.with(|l| l.set((ls, lg)));
                }
                part
            });
            drop(pieces);
            if fused.is_some() && parts.iter().any(|pt| pt.new_label) {
                // a label seen for the first time: ids in order of first appearance, then again
                fused = None;
                map_labels(&mut smap, &mut gmap, sid, gid)?;
                continue;
            }
            break parts;
        };
        if let Some(i) = parts.iter().find_map(|pt| pt.no_source) {
            return Err(unknown_source(i));
        }
        let sid = &sid[..];
        let tid = match true_groups {
            Labels::Absent => None,
            l => Some(LabelMap::default().map(l, p, "true_groups")?),
        };
        let (ns, ng) = (smap.len(), gmap.len());
        let mut src_acc = vec![Acc::default(); ns];
        let mut cell_acc = vec![Acc::default(); ns * ng];
        let mut unl: Vec<(u32, Acc)> = Vec::new();
        let bad = parts.iter().find_map(|pt| pt.bad);
        for pt in parts {
            for (a, b) in src_acc.iter_mut().zip(&pt.src) {
                a.add(b);
            }
            for (a, b) in cell_acc.iter_mut().zip(&pt.cell) {
                a.add(b);
            }
            unl.extend(pt.unl);
        }
        for (s, c) in self.clusters.iter().enumerate() {
            // a source of this batch (the group size of a source not in it may change)
            if c.dim != 0 && c.dim != g && src_acc.get(s).is_some_and(|a| a.n > 0.0) {
                return Err(CoreError::value(
                    "group_size",
                    format!(
                        "changed from {} to {g} for source {}; the implicit-group history holds \
                         reward vectors of length {}",
                        c.dim,
                        self.sources.name(s as u32),
                        c.dim
                    ),
                ));
            }
        }
        if let Some(i) = bad {
            return Err(infinite_reward(i));
        }

        // --- commit labels, grow tables; step 2: running statistics ---
        self.sources = smap;
        self.groups = gmap;
        self.source_stats.resize(ns, RunStat::default());
        self.clusters.resize(ns, SourceClusters::default());
        self.group_stats.resize(ns, Vec::new());
        for v in &mut self.group_stats {
            v.resize(ng, RunStat::default());
        }
        self.step += 1;
        for (s, run) in self.source_stats.iter_mut().enumerate() {
            run.fold(&src_acc[s].run(), cfg.stats, cfg.ema_decay);
            for (gg, run) in self.group_stats[s].iter_mut().enumerate() {
                run.fold(&cell_acc[s * ng + gg].run(), cfg.stats, cfg.ema_decay);
            }
        }

        // --- step 3: implicit groups, per source, over the unlabelled prompts ---
        let cparams = self.cluster_params(threads);
        let mut by_source: Vec<Vec<usize>> = vec![Vec::new(); ns];
        for (i, (q, _)) in unl.iter().enumerate() {
            by_source[sid[*q as usize] as usize].push(i);
        }
        let mut unl_cluster = vec![0u32; unl.len()];
        let mut stability = vec![None; ns];
        for (s, idx) in by_source.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(idx.len() * g);
            for &i in idx {
                let q = unl[i].0 as usize;
                features(&rewards[q * g..(q + 1) * g], cfg.features, &mut rows);
            }
            let st = self.clusters[s].step(&rows, g, &cparams)?;
            stability[s] = st.stability_ari;
            for (&i, &l) in idx.iter().zip(&st.batch_labels) {
                unl_cluster[i] = l;
            }
        }

        // --- step 4: cells (labelled groups, then clusters), temperatures, weights ---
        let mut cluster_base = vec![0usize; ns];
        let mut n_cells = ns * ng;
        for (s, base) in cluster_base.iter_mut().enumerate() {
            *base = n_cells;
            n_cells += self.clusters[s].k;
        }
        let mut acc = cell_acc;
        acc.resize(n_cells, Acc::default());
        for (i, (q, a)) in unl.iter().enumerate() {
            let c = cluster_base[sid[*q as usize] as usize] + unl_cluster[i] as usize;
            acc[c].add(a);
            cell[*q as usize] = c as u32;
        }
        let cell_source = |c: usize| {
            if c < ns * ng {
                c / ng
            } else {
                cluster_base.iter().rposition(|&b| b <= c).unwrap_or(0)
            }
        };
        // what each cell puts in the `clusters` output: -1 for a labelled group
        let cell_cluster: Vec<i64> = (0..n_cells)
            .map(|c| if c < ns * ng { -1 } else { (c - cluster_base[cell_source(c)]) as i64 })
            .collect();
        let cell_run = |c: usize| -> RunStat {
            if c < ns * ng {
                self.group_stats[c / ng][c % ng]
            } else {
                let s = cell_source(c);
                let j = c - cluster_base[s];
                let cl = &self.clusters[s];
                RunStat { n: cl.sizes[j] as f64, rsum: cl.centre_mean(j), rcnt: 1.0 }
            }
        };
        let robust = cfg.weighting == Weighting::Robust;
        let floor_mu = |mu: f64| if robust { mu.max(cfg.mu_floor) } else { mu };
        let t_source: Vec<f64> =
            self.source_stats.iter().map(|r| (r.n.sqrt() * floor_mu(r.mean())).max(cfg.t_floor)).collect();
        let active: Vec<usize> = (0..n_cells).filter(|&c| acc[c].n > 0.0).collect();
        let mut t_cell = vec![0.0f64; n_cells];
        // each cell's weight: what multiplies its prompts' scores, and what they report
        let mut mult = vec![1.0f64; n_cells];
        let mut fallback = vec![false; n_cells];
        for &c in &active {
            let run = cell_run(c);
            let t = run.n.sqrt() * floor_mu(run.mean());
            t_cell[c] = if robust { t.max(cfg.t_floor).max(1e-12) } else { t };
        }
        if robust {
            let raw: Vec<f64> =
                active.iter().map(|&c| 1.0 / (t_source[cell_source(c)] * t_cell[c])).collect();
            let counts: Vec<f64> = active.iter().map(|&c| acc[c].n).collect();
            for (&c, w) in active.iter().zip(water_fill(&raw, &counts, cfg.w_cap)) {
                mult[c] = w;
            }
        } else {
            for &c in &active {
                let f = t_source[cell_source(c)] * t_cell[c];
                let inv = 1.0 / f;
                if f.is_nan() || f == 0.0 || !inv.is_finite() {
                    fallback[c] = true;
                } else {
                    mult[c] = inv;
                }
            }
        }

        // --- step 5: renormalisation statistics from the cell sums ---
        let (mut sa, mut saa, mut n_valid) = (0.0f64, 0.0f64, 0.0f64);
        for &c in &active {
            let m = mult[c];
            sa += m * acc[c].ssum;
            saa += m * m * acc[c].ssq;
            n_valid += acc[c].rcnt;
        }
        let mean_a = if n_valid > 0.0 { sa / n_valid } else { 0.0 };
        let std_a =
            if n_valid > 1.0 { ((saa - sa * sa / n_valid).max(0.0) / (n_valid - 1.0)).sqrt() } else { 0.0 };
        let (shift, inv_denom) = match cfg.renorm {
            Renorm::Std => (0.0, 1.0 / (std_a + cfg.renorm_eps)),
            Renorm::Zscore => (mean_a, 1.0 / (std_a + cfg.renorm_eps)),
            Renorm::None => (0.0, 1.0),
        };

        // --- pass 2: write the advantages, weights and clusters; gradient mass per cell ---
        let tiled_out = T::as_f32_mut(out).filter(|_| tiled.is_some());
        let per_out = PROMPTS_PER_CHUNK * g;
        let masses = if let Some(o) = tiled_out {
            // 0/1 prompts' results per cell and count, once for the whole batch
            let bw = table.and_then(|t| BinaryWeights::new(t, &mult, shift, inv_denom));
            let mut pieces: Vec<_> = o
                .chunks_mut(per_out)
                .zip(weights.chunks_mut(PROMPTS_PER_CHUNK))
                .zip(clusters.chunks_mut(PROMPTS_PER_CHUNK))
                .collect();
            map_chunks_mut(&mut pieces, 1, threads, |ci, piece| {
                let ((o, w), cl) = &mut piece[0];
                let q0 = ci * PROMPTS_PER_CHUNK;
                let cells = &cell[q0..q0 + w.len()];
                let st = &tscore[q0 * g..q0 * g + tiles::scores_len(w.len(), g)];
                let nt = tiles::tiles_len(w.len());
                let (bn, pt) = (&tbin[q0 / TILE..q0 / TILE + nt], &tpat[q0..q0 + nt * TILE]);
                let mut mass = vec![0.0f64; n_cells];
                let wt = CellWeights {
                    cells,
                    mult: &mult,
                    cluster: &cell_cluster,
                    shift,
                    scale: inv_denom,
                    binary: bw.as_ref(),
                };
                let po = tiles::PromptOut { adv: o, weights: w, clusters: cl };
                tiles::weighted(st, bn, pt, table, g, &wt, po, &mut mass);
                mass
            })
        } else {
            let pass2 = Pass2 { rewards, g, pstat, cells: cell, mult: &mult, shift, scale: inv_denom };
            let mut pieces: Vec<_> = out
                .chunks_mut(per_out)
                .zip(weights.chunks_mut(PROMPTS_PER_CHUNK))
                .zip(clusters.chunks_mut(PROMPTS_PER_CHUNK))
                .collect();
            map_chunks_mut(&mut pieces, 1, threads, |ci, piece| {
                let ((o, w), cl) = &mut piece[0];
                let q0 = ci * PROMPTS_PER_CHUNK;
                let mut mass = vec![0.0f64; n_cells];
                pass2.run(q0, o, &mut mass);
                write_cells(&cell[q0..q0 + w.len()], &mult, &cell_cluster, w, cl);
                mass
            })
        };
        self.scratch = scratch;
        let mut grad_mass = vec![0.0f64; n_cells];
        for m in &masses {
            for (a, b) in grad_mass.iter_mut().zip(m) {
                *a += b;
            }
        }

        // --- report ---
        let mut w_src = vec![0.0f64; ns];
        let mut mass_src = vec![0.0f64; ns];
        let mut groups_out = Vec::with_capacity(active.len());
        for &c in &active {
            let s = cell_source(c);
            w_src[s] += acc[c].n * mult[c];
            mass_src[s] += grad_mass[c];
            let run = cell_run(c);
            let sname = self.sources.name(s as u32);
            let (kind, label) = if c < ns * ng {
                ("group", self.groups.name((c % ng) as u32))
            } else {
                ("cluster", format!("cluster{}", c - cluster_base[s]))
            };
            groups_out.push(CellReport {
                name: format!("{sname}/{label}"),
                source: sname,
                kind,
                label,
                n: run.n,
                mean_reward: run.mean(),
                temperature: t_cell[c],
                n_batch: acc[c].n as u64,
                batch_mean_reward: acc[c].run().mean(),
                weight: mult[c],
                grad_mass: grad_mass[c],
                fallback: fallback[c],
            });
        }
        let mut sources_out = Vec::new();
        for s in 0..ns {
            if src_acc[s].n == 0.0 {
                continue;
            }
            let cl = &self.clusters[s];
            let (true_ari, true_nmi) = match &tid {
                Some(t) if !by_source[s].is_empty() => {
                    let (a, b): (Vec<i64>, Vec<i64>) = by_source[s]
                        .iter()
                        .map(|&i| (unl_cluster[i] as i64, unl[i].0 as usize))
                        .filter(|&(_, q)| t[q] >= 0)
                        .map(|(c, q)| (c, t[q] as i64))
                        .unzip();
                    if a.is_empty() {
                        (None, None)
                    } else {
                        (Some(adjusted_rand_index(&a, &b)), Some(normalized_mutual_info(&a, &b)))
                    }
                }
                _ => (None, None),
            };
            sources_out.push(SourceReport {
                name: self.sources.name(s as u32),
                n: self.source_stats[s].n,
                mean_reward: self.source_stats[s].mean(),
                temperature: t_source[s],
                n_batch: src_acc[s].n as u64,
                batch_mean_reward: src_acc[s].run().mean(),
                weight: w_src[s] / src_acc[s].n,
                grad_mass: mass_src[s],
                n_unlabelled_batch: by_source[s].len() as u64,
                history_rows: cl.rows(),
                n_clusters: cl.k,
                cluster_sizes: cl.sizes.clone(),
                cluster_inertias: cl.inertias.clone(),
                stability_ari: stability[s],
                true_ari,
                true_nmi,
            });
        }
        Ok(Report {
            step: self.step,
            n_prompts: p,
            group_size: g,
            renorm_mean: mean_a,
            renorm_std: std_a,
            sources: sources_out,
            groups: groups_out,
        })
    }
}

fn unknown_source(i: usize) -> CoreError {
    CoreError::value(
        "sources",
        format!(
            "entry {i} is unknown (None or -1); every prompt needs a data source \
             (use one name for all if there is only one)"
        ),
    )
}

/// Per prompt of a chunk: the weight and the cluster (-1 for a labelled group) of its cell
/// (pass 2's portable path; the AVX-512 tiles write them beside the advantages).
fn write_cells(cells: &[u32], cell_w: &[f64], cell_cluster: &[i64], w: &mut [f64], cl: &mut [i64]) {
    assert!(cell_w.len() == cell_cluster.len() && w.len() == cells.len() && cl.len() == cells.len());
    #[cfg(target_arch = "x86_64")]
    let done = if std::arch::is_x86_feature_detected!("avx512f") && cell_w.len() <= i32::MAX as usize {
        // SAFETY: AVX-512F is available; the lengths are checked above.
        unsafe { tiles::put_cells(cells, cell_w, cell_cluster, w, cl) }
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    // the rest (a last partial tile, or from a tile with a cell past the tables: the row
    // by row indexing panics there)
    write_cells_rows(&cells[done..], cell_w, cell_cluster, &mut w[done..], &mut cl[done..]);
}

/// [`write_cells`] one prompt at a time (panics on a cell past the tables).
fn write_cells_rows(cells: &[u32], cell_w: &[f64], cell_cluster: &[i64], w: &mut [f64], cl: &mut [i64]) {
    for ((&c, w), cl) in cells.iter().zip(w).zip(cl) {
        *w = cell_w[c as usize];
        *cl = cell_cluster[c as usize];
    }
}

/// Per-cell sums of one step: prompts, rewards, scores.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    n: f64,
    rsum: f64,
    rcnt: f64,
    ssum: f64,
    ssq: f64,
}

impl Acc {
    #[inline(always)]
    fn add(&mut self, o: &Acc) {
        self.n += o.n;
        self.rsum += o.rsum;
        self.rcnt += o.rcnt;
        self.ssum += o.ssum;
        self.ssq += o.ssq;
    }
    fn run(&self) -> RunStat {
        RunStat { n: self.n, rsum: self.rsum, rcnt: self.rcnt }
    }
}

/// An [`Acc`] as pass 1 of the tiles builds it: `[rsum, rcnt, ssum, ssq]` summed in
/// prompt order, and the prompt count (`Acc::n`, a sum of ones, is that count exactly).
#[derive(Debug, Clone, Copy, Default)]
struct Sums4 {
    v: [f64; 4],
    n: u64,
}

impl Sums4 {
    #[inline(always)]
    fn add(&mut self, o: &[f64; 4]) {
        for (a, b) in self.v.iter_mut().zip(o) {
            *a += b;
        }
        self.n += 1;
    }
    fn acc(&self) -> Acc {
        let [rsum, rcnt, ssum, ssq] = self.v;
        Acc { n: self.n as f64, rsum, rcnt, ssum, ssq }
    }

    /// Per source, the prompt count, reward sum and reward count of its cells (`ng` per
    /// source) and of its unlabelled prompts (`source_of(prompt)`); the score sums are
    /// left at 0 (nothing reads a source's). Exactly the prompt-order sums when all these
    /// values are integers (0/1 rewards), since then every partial sum is exact.
    fn sources_of(
        cell: &[Sums4],
        ns: usize,
        ng: usize,
        unl: &[(u32, Acc)],
        source_of: impl Fn(usize) -> i32,
    ) -> Vec<Sums4> {
        let mut src = vec![Sums4::default(); ns];
        for (k, c) in cell.iter().enumerate() {
            let s = &mut src[k / ng];
            s.v[0] += c.v[0];
            s.v[1] += c.v[1];
            s.n += c.n;
        }
        for (q, a) in unl {
            let s = &mut src[source_of(*q as usize) as usize];
            s.v[0] += a.rsum;
            s.v[1] += a.rcnt;
            s.n += 1;
        }
        src
    }
}

/// Pass 1's sums of one tile's prompts (`sums(l)` = prompt l's, `ids` = their sources and
/// groups, the groups per source and the first prompt's index): each prompt is added to its
/// source and to its cell, or listed as unlabelled; `cells` gets their cells.
#[inline(always)]
fn tile_sums<'a>(
    sums: impl Fn(usize) -> &'a [f64; 4],
    (sid, gid, ng, q): (&[i32], &[i32], usize, usize),
    (src, cell, unl): (&mut [Sums4], &mut [Sums4], &mut Vec<(u32, Acc)>),
    cells: &mut [u32],
) {
    for (l, c) in cells.iter_mut().enumerate() {
        let v = sums(l);
        let s = sid[l] as usize;
        src[s].add(v);
        *c = if gid[l] >= 0 {
            let k = s * ng + gid[l] as usize;
            cell[k].add(v);
            k as u32
        } else {
            let a = Acc { n: 1.0, rsum: v[0], rcnt: v[1], ssum: v[2], ssq: v[3] };
            unl.push(((q + l) as u32, a));
            u32::MAX
        };
    }
}

/// A cell's sums over the 0/1 prompts of a chunk, in the order of [`Sums4::v`] (reward sum,
/// reward count, score sum, score square sum): the prompts' [`PromptSums`] from the table,
/// added lane by lane in prompt order. A 0/1 prompt's reward sum and count are integers (at
/// most 16), so their f64 sums over a chunk are exact, and its reward count is G.
type BinCell = [f64; 4];

/// The cells as [`Sums4`] (all zero before): the same sums, and the prompt count as the
/// reward count over G (exact: every 0/1 prompt counts G rewards, as `BinaryTable::new`
/// asserts).
fn bin_into_sums(b: &[BinCell], g: usize, cell: &mut [Sums4]) {
    for (c, b) in cell.iter_mut().zip(b) {
        c.v = *b;
        c.n = (b[1] / g as f64) as u64;
    }
}

/// [`tile_sums`] of 0/1 prompts (patterns `pats` of `table`) into [`BinCell`]s, asking for
/// what is `ahead` tile by tile.
#[inline(always)]
fn bin_tile_sums(
    pats: &[u32],
    table: &BinaryTable,
    (sid, gid, ng, q): (&[i32], &[i32], usize, usize),
    (bcell, unl): (&mut [BinCell], &mut Vec<(u32, Acc)>),
    cells: &mut [u32],
    ahead: &Ahead,
) {
    let bs = table.distinct();
    for (l, c) in cells.iter_mut().enumerate() {
        if l % TILE == 0 {
            ahead.labels(l, TILE);
        }
        let b = &bs[table.index(pats[l])];
        let s = sid[l] as usize;
        *c = if gid[l] >= 0 {
            let k = s * ng + gid[l] as usize;
            let e = &mut bcell[k];
            for (e, b) in e.iter_mut().zip(b) {
                *e += b;
            }
            k as u32
        } else {
            unl.push(((q + l) as u32, Acc { n: 1.0, rsum: b[0], rcnt: b[1], ssum: b[2], ssq: b[3] }));
            u32::MAX
        };
    }
}

/// [`bin_tile_sums`] of whole tiles (`pats` a whole number of them) whose prompts all have a
/// group, with AVX-512: each tile's cells computed 16 at a time and each prompt's four sums
/// added as one vector (the same additions in the same order), asking for what is `ahead`
/// tile by tile. Returns the number of leading prompts it summed: all of them, or up to the
/// first tile with an unlabelled prompt. Panics, as the indexing of [`bin_tile_sums`] does,
/// on a cell past `bcell`.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bin_tile_sums_avx512(
    pats: &[u32],
    table: &BinaryTable,
    (sid, gid, ng): (&[i32], &[i32], usize),
    bcell: &mut [BinCell],
    cells: &mut [u32],
    ahead: &Ahead,
) -> usize {
    use std::arch::x86_64::*;
    assert!(pats.len().is_multiple_of(TILE) && sid.len() >= pats.len() && gid.len() >= pats.len());
    assert!(cells.len() >= pats.len());
    let zero = _mm512_setzero_si512();
    let ng32 = _mm512_set1_epi32(i32::try_from(ng).expect("fewer than 2^31 groups"));
    let len = _mm512_set1_epi32(i32::try_from(bcell.len()).expect("fewer than 2^31 cells"));
    for t in (0..pats.len()).step_by(TILE) {
        let gv = _mm512_loadu_si512(gid.as_ptr().add(t) as *const _);
        if _mm512_cmplt_epi32_mask(gv, zero) != 0 {
            return t;
        }
        let sv = _mm512_loadu_si512(sid.as_ptr().add(t) as *const _);
        let kv = _mm512_add_epi32(_mm512_mullo_epi32(sv, ng32), gv);
        // sources and groups are non-negative and small: the cells are exact and, checked
        // here as unsigned, below the number of cells
        assert!(
            _mm512_cmplt_epi32_mask(sv, zero) == 0 && _mm512_cmpge_epu32_mask(kv, len) == 0,
            "a cell past the cell sums"
        );
        _mm512_storeu_si512(cells.as_mut_ptr().add(t) as *mut _, kv);
        ahead.labels(t, TILE);
        for (&p, &k) in pats[t..t + TILE].iter().zip(&cells[t..t + TILE]) {
            let b = table.sums_of(p).as_ptr();
            // SAFETY: `k` was checked above
            let e = bcell.as_mut_ptr().add(k as usize) as *mut f64;
            _mm256_storeu_pd(e, _mm256_add_pd(_mm256_loadu_pd(e), _mm256_loadu_pd(b)));
        }
    }
    pats.len()
}

/// One chunk's share of pass 1.
#[derive(Default)]
struct Pass1 {
    /// Per source; only `n`, `rsum` and `rcnt` are used (the score sums may be left at 0).
    src: Vec<Acc>,
    cell: Vec<Acc>,
    /// Unlabelled prompts (index, sums), in prompt order.
    unl: Vec<(u32, Acc)>,
    /// First infinite reward.
    bad: Option<usize>,
    /// Some label of the chunk is not in the label maps yet (the chunk was not summed).
    new_label: bool,
    /// First prompt of the chunk without a source (the chunk was not summed).
    no_source: Option<usize>,
}

impl Pass1 {
    /// Adds prompt q's sums to its source and to its cell (or the list of unlabelled
    /// prompts, `gid` < 0); returns the cell (`u32::MAX` until the clustering).
    #[inline(always)]
    fn add(&mut self, q: usize, sid: i32, gid: i32, ng: usize, a: Acc) -> u32 {
        let s = sid as usize;
        self.src[s].add(&a);
        if gid >= 0 {
            let c = s * ng + gid as usize;
            self.cell[c].add(&a);
            c as u32
        } else {
            self.unl.push((q as u32, a));
            u32::MAX
        }
    }
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

    /// The vector 0/1 tile sums equal the prompt-by-prompt ones bit for bit over runs of
    /// tiles into the same cells; they stop at the first tile with an unlabelled prompt (the
    /// rest going prompt by prompt), and a cell past the sums panics.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn bin_tile_sums_paths_agree() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let g = 10;
        let table = BinaryTable::new(g, &ScoreParams::new(Scale::Group, 0.0, 1e-4, g)).unwrap();
        let (ns, ng) = (3usize, 5usize);
        let mut rng = crate::rng::SplitMix64::new(9);
        let (mut a, mut b) = (vec![BinCell::default(); ns * ng], vec![BinCell::default(); ns * ng]);
        let (mut ua, mut ub) = (Vec::new(), Vec::new());
        for run in 0..60 {
            let n = TILE * (1 + run % 8);
            let pats: Vec<u32> = (0..n).map(|_| rng.below(1 << g) as u32).collect();
            let sid: Vec<i32> = (0..n).map(|_| rng.below(ns) as i32).collect();
            let mut gid: Vec<i32> = (0..n).map(|_| rng.below(ng) as i32).collect();
            // an unlabelled prompt in some runs, in a tile after the first in most of them
            let unlabelled = (run % 5 == 2).then(|| (run * 37) % n);
            if let Some(at) = unlabelled {
                gid[at] = -1;
            }
            let (mut ca, mut cb) = (vec![0u32; n], vec![0u32; n]);
            let q = 1000 * run;
            // SAFETY: AVX-512F checked
            let done = unsafe {
                bin_tile_sums_avx512(&pats, &table, (&sid, &gid, ng), &mut a, &mut ca, &Ahead::default())
            };
            assert_eq!(done, unlabelled.map_or(n, |at| at / TILE * TILE), "run {run}");
            let rest = (&sid[done..], &gid[done..], ng, q + done);
            bin_tile_sums(&pats[done..], &table, rest, (&mut a, &mut ua), &mut ca[done..], &Ahead::default());
            bin_tile_sums(&pats, &table, (&sid, &gid, ng, q), (&mut b, &mut ub), &mut cb, &Ahead::default());
            assert_eq!(ca, cb, "run {run}");
        }
        let bits = |c: &[BinCell]| c.iter().flat_map(|v| v.map(f64::to_bits)).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        let key = |u: &[(u32, Acc)]| {
            u.iter().map(|(q, x)| (*q, x.ssum.to_bits(), x.ssq.to_bits())).collect::<Vec<_>>()
        };
        assert!(!ua.is_empty());
        assert_eq!(key(&ua), key(&ub));
        // a cell past the sums (a group id past `ng` for the last source) panics
        let bad = std::panic::catch_unwind(|| {
            let mut cells = vec![BinCell::default(); ns * ng];
            let (sid, mut gid) = (vec![(ns - 1) as i32; TILE], vec![0i32; TILE]);
            gid[5] = ng as i32;
            let mut c = vec![0u32; TILE];
            // SAFETY: as above
            unsafe {
                bin_tile_sums_avx512(
                    &[1; TILE],
                    &table,
                    (&sid, &gid, ng),
                    &mut cells,
                    &mut c,
                    &Ahead::default(),
                )
            }
        });
        assert!(bad.is_err());
    }

    /// The gathers write what the prompt-by-prompt loop writes, for every length, and a
    /// cell past the tables panics on both paths (never reads past them).
    #[test]
    fn write_cells_paths_agree() {
        // up to 32 cells the tables are permuted in registers, beyond that gathered
        for n_cells in [1usize, 5, 16, 17, 32, 33, 37] {
            let cell_w: Vec<f64> = (0..n_cells).map(|c| 0.25 + c as f64).collect();
            let cell_cl: Vec<i64> = (0..n_cells as i64).map(|c| if c < 20 { -1 } else { c - 20 }).collect();
            let mut rng = crate::rng::SplitMix64::new(5);
            for n in [0usize, 1, 7, 8, 9, 64, 203] {
                let cells: Vec<u32> = (0..n).map(|_| rng.below(n_cells) as u32).collect();
                let (mut w, mut cl) = (vec![0.0; n], vec![0; n]);
                let (mut w2, mut cl2) = (vec![0.0; n], vec![0; n]);
                write_cells(&cells, &cell_w, &cell_cl, &mut w, &mut cl);
                write_cells_rows(&cells, &cell_w, &cell_cl, &mut w2, &mut cl2);
                assert_eq!((w, cl), (w2, cl2), "{n_cells} cells, n {n}");
            }
            for bad in [n_cells as u32, 32, u32::MAX] {
                if (bad as usize) < n_cells {
                    continue;
                }
                for at in [3usize, 17] {
                    let mut cells = vec![0u32; 20];
                    cells[at] = bad;
                    let r = std::panic::catch_unwind(|| {
                        let (mut w, mut cl) = (vec![0.0; 20], vec![0; 20]);
                        write_cells(&cells, &cell_w, &cell_cl, &mut w, &mut cl);
                    });
                    assert!(r.is_err(), "{n_cells} cells: cell {bad} at {at}");
                }
            }
        }
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
        let r = [1.0f64, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        let src: Vec<Option<Key>> = vec![Some(Key::Str("a".into())); 4];
        let grp = [
            Some(Key::Str("x".into())),
            Some(Key::Str("x".into())),
            Some(Key::Str("x".into())),
            Some(Key::Str("y".into())),
        ];
        let mut out = vec![0.0; 12];
        let o = f.step(&r, 3, Labels::Keys(&src), Labels::Keys(&grp), Labels::Absent, &mut out).unwrap();
        assert!(o.weights[3] > o.weights[0]);
        assert_eq!(o.report.groups.len(), 2);
    }

    #[test]
    fn state_round_trips_and_resumes_bit_for_bit() {
        let mut a = fa("robust");
        let r: Vec<f32> = (0..64).map(|i| ((i * 37) % 5) as f32 / 4.0).collect();
        let grp: Vec<i64> = (0..16).map(|i| if i % 3 == 0 { -1 } else { i % 2 }).collect();
        let src: Vec<i64> = (0..16).map(|i| i % 2).collect();
        let mut out = vec![0.0f32; 64];
        a.step(&r, 4, Labels::Ints(&src), Labels::Ints(&grp), Labels::Absent, &mut out).unwrap();
        let mut b = FairAdvantage::from_json(&a.to_json().unwrap()).unwrap();
        assert_eq!(a, b);
        let mut oa = vec![0.0f32; 64];
        let mut ob = vec![0.0f32; 64];
        a.step(&r, 4, Labels::Ints(&src), Labels::Ints(&grp), Labels::Absent, &mut oa).unwrap();
        b.step(&r, 4, Labels::Ints(&src), Labels::Ints(&grp), Labels::Absent, &mut ob).unwrap();
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
