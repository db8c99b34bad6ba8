"""The advantage pipeline in plain, vectorised numpy: the peer of ``fairgrpo.group_advantages``
and of ``FairAdvantage("robust")`` on labelled prompts.

Written as a careful numpy user would: whole-array operations, float32 data, ``bincount`` for
the per-(source, group) statistics, no Python loop over prompts. Simplifications that favour the
peer: labels arrive as dense integer ids (0..n_sources-1, 0..n_groups-1), there are no NaN
rewards (so plain mean/std instead of nanmean/nanstd), and every prompt has a group (no
clustering). Semantics follow ALGORITHM.md §2 with the robust preset's floors and cap.
"""

from __future__ import annotations

import numpy as np
from common import water_fill


def group_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-4) -> np.ndarray:
    """TRL's GRPO score: (r - mean) / (std + eps) per prompt, Bessel std."""
    r = rewards.reshape(-1, group_size)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True)
    return ((r - mean) / (std + eps)).reshape(rewards.shape)


class FairAdvantageNumpy:
    """FairGRPO's robust advantages with cumulative statistics, labelled prompts only."""

    def __init__(
        self,
        n_sources: int,
        n_groups: int,
        eps: float = 1e-4,
        mu_floor: float = 0.05,
        t_floor: float = 1e-6,
        w_cap: float | None = 5.0,
        renorm_eps: float = 1e-6,
    ) -> None:
        self.ns, self.ng = n_sources, n_groups
        self.eps, self.mu_floor, self.t_floor = eps, mu_floor, t_floor
        self.w_cap, self.renorm_eps = w_cap, renorm_eps
        cells = n_sources * n_groups
        self.n = np.zeros(cells)  # prompts seen per (source, group), cumulative
        self.rsum = np.zeros(cells)  # reward sum per cell, cumulative
        self.rcnt = np.zeros(cells)  # rewards counted per cell, cumulative

    def __call__(
        self, rewards: np.ndarray, group_size: int, sources: np.ndarray, groups: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        g = group_size
        r = rewards.reshape(-1, g)
        # step 1: GRPO score per prompt
        mean = r.mean(axis=1, keepdims=True)
        std = r.std(axis=1, ddof=1, keepdims=True)
        s = (r - mean) / (std + self.eps)
        # step 2: per-cell counts and reward sums of this batch, added to the running totals
        cell = sources * self.ng + groups
        cells = self.ns * self.ng
        cnt = np.bincount(cell, minlength=cells).astype(np.float64)
        rs = np.bincount(cell, weights=mean[:, 0], minlength=cells) * g
        self.n += cnt
        self.rsum += rs
        self.rcnt += cnt * g
        # step 4: hierarchical inverse temperatures (robust: floored means)
        n_src = self.n.reshape(self.ns, self.ng).sum(axis=1)
        mu_src = self.rsum.reshape(self.ns, self.ng).sum(axis=1) / self.rcnt.reshape(self.ns, self.ng).sum(
            axis=1
        )
        t_src = np.fmax(np.sqrt(n_src) * np.fmax(mu_src, self.mu_floor), self.t_floor)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = self.rsum / self.rcnt
        t_cell = np.maximum(np.fmax(np.sqrt(self.n) * np.fmax(mu, self.mu_floor), self.t_floor), 1e-12)
        raw = 1.0 / (np.repeat(t_src, self.ng) * t_cell)
        active = np.nonzero(cnt > 0)[0]
        w = np.ones(cells)
        w[active] = water_fill(raw[active].tolist(), cnt[active].tolist(), self.w_cap)
        # step 5: weighted advantage, renormalised by the batch std
        wq = w[cell]
        a = s * wq.astype(np.float32)[:, None]
        a /= a.std(ddof=1) + self.renorm_eps
        return a.reshape(rewards.shape), wq
