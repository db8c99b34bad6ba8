"""The advantage pipeline in PyTorch (CPU): the peer of ``fairgrpo.group_advantages`` and of
``FairAdvantage("robust")`` on labelled prompts. Same maths and the same simplifications as
``np_advantages.py`` (dense integer labels, no NaN rewards, every prompt labelled); tensor ops
only, the per-cell weight normalisation (a few dozen cells) in plain Python.
"""

from __future__ import annotations

import torch
from common import water_fill


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """TRL's GRPO score: (r - mean) / (std + eps) per prompt, Bessel std (as TRL's GRPOTrainer)."""
    r = rewards.view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)
    return ((r - mean) / (std + eps)).view(rewards.shape)


class FairAdvantageTorch:
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
        self.n = torch.zeros(cells, dtype=torch.float64)
        self.rsum = torch.zeros(cells, dtype=torch.float64)
        self.rcnt = torch.zeros(cells, dtype=torch.float64)

    def __call__(
        self, rewards: torch.Tensor, group_size: int, sources: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = group_size
        r = rewards.view(-1, g)
        mean = r.mean(dim=1, keepdim=True)
        std = r.std(dim=1, keepdim=True)
        s = (r - mean) / (std + self.eps)
        cell = sources * self.ng + groups
        cells = self.ns * self.ng
        cnt = torch.bincount(cell, minlength=cells).to(torch.float64)
        rs = torch.bincount(cell, weights=mean[:, 0].to(torch.float64), minlength=cells) * g
        self.n += cnt
        self.rsum += rs
        self.rcnt += cnt * g
        n_src = self.n.view(self.ns, self.ng).sum(dim=1)
        mu_src = self.rsum.view(self.ns, self.ng).sum(dim=1) / self.rcnt.view(self.ns, self.ng).sum(dim=1)
        t_src = torch.clamp(torch.sqrt(n_src) * torch.clamp(mu_src, min=self.mu_floor), min=self.t_floor)
        mu = self.rsum / self.rcnt
        t_cell = torch.clamp(
            torch.sqrt(self.n) * torch.fmax(mu, torch.tensor(self.mu_floor, dtype=mu.dtype)),
            min=max(self.t_floor, 1e-12),
        )
        raw = 1.0 / (t_src.repeat_interleave(self.ng) * t_cell)
        active = torch.nonzero(cnt > 0).flatten()
        w = torch.ones(cells, dtype=torch.float64)
        w[active] = torch.tensor(
            water_fill(raw[active].tolist(), cnt[active].tolist(), self.w_cap), dtype=torch.float64
        )
        wq = w[cell]
        a = s * wq.to(torch.float32).unsqueeze(1)
        a /= a.std() + self.renorm_eps
        return a.view(rewards.shape), wq
