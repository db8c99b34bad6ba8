"""``FairGRPOConfig``: TRL's ``GRPOConfig`` plus the fairness options of FairGRPO.

Every option of ``GRPOConfig`` (and of ``transformers.TrainingArguments``) passes through
unchanged; the fields below choose the advantage method (ALGORITHM.md §2 and the paper's
baselines, §5) and the options of :class:`fairgrpo.FairAdvantage`. A fairness option left at
``None`` takes the value of the chosen ``fairness_preset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

__all__ = ["METHODS", "FairGRPOConfig"]

METHODS = ("grpo", "fairgrpo", "fairgrpo_nd", "resample", "groupdro", "rloo")

_CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "fairness_preset": ("robust", "faithful"),
    "fairness_stats": ("cumulative", "ema", "batch"),
    "cluster_features": ("sorted", "raw"),
    "cluster_update": ("refit", "incremental"),
    "renorm": ("std", "zscore", "none"),
}


def _none_if_blank(value: Any) -> Any:
    """``"none"`` / ``""`` from a command line or YAML file means no column."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


@dataclass
class FairGRPOConfig(GRPOConfig):
    r"""
    Configuration of [`fairgrpo.trainer.FairGRPOTrainer`]: every parameter of TRL's
    [`~trl.GRPOConfig`] plus the ones below.

    Parameters:
        > Parameters that choose the advantage

        method (`str`, *optional*, defaults to `"fairgrpo"`):
            How advantages are computed from the global rollout batch: `"grpo"` (TRL's GRPO advantages,
            untouched), `"fairgrpo"` (FairGRPO's hierarchical inverse-temperature weights, using the
            demographic groups), `"fairgrpo_nd"` (FairGRPO without demographics: every prompt is clustered on
            its
            reward vector), `"resample"` (GRPO on a training set oversampled so that every (source, group)
            has the same count), `"groupdro"` (GRPO scores times online Group-DRO weights over the groups) or
            `"rloo"` (leave-one-out baseline `r_i - mean(r_j, j != i)`, unscaled).
        fairness_preset (`str`, *optional*, defaults to `"robust"`):
            Preset of the FairGRPO weighting: `"faithful"` (the authors' released code) or `"robust"` (floored
            means, capped weights of batch mean 1, sorted reward vectors, warm-started clustering).
        fairness_stats (`str` or `None`, *optional*):
            Running statistics `"cumulative"` (whole history), `"ema"` (exponential decay) or `"batch"` (this
            step only). `None`: the preset's (`"cumulative"`).
        ema_decay (`float` or `None`, *optional*):
            Per-step decay of the `"ema"` statistics. `None`: the preset's (0.9).

        > Parameters of the implicit groups (K-means on reward vectors)

        cluster_features (`str` or `None`, *optional*):
            `"sorted"` (permutation-invariant reward vectors) or `"raw"`. `None`: the preset's.
        cluster_k_max (`int` or `None`, *optional*):
            Largest number of implicit groups per source tried by the elbow rule. `None`: the preset's (3).
        cluster_tol (`float` or `None`, *optional*):
            Threshold of the elbow rule. `None`: the preset's (0.10).
        cluster_warm_start (`bool` or `None`, *optional*):
            Start each step's K-means from the previous step's centres. `None`: the preset's.
        cluster_update (`str` or `None`, *optional*):
            `"refit"` on the whole unlabelled history every step, or `"incremental"`. `None`: the preset's.
        cluster_seed (`int`, *optional*, defaults to `0`):
            Seed of k-means++.

        > Parameters of the weights

        renorm (`str` or `None`, *optional*):
            Batch renormalisation of the weighted advantages: `"std"` (divide by the batch std, the authors'
            code), `"zscore"` (zero mean, unit variance, the paper's text) or `"none"`. `None`: the preset's.
        mu_floor (`float` or `None`, *optional*):
            Floor on every mean reward entering a temperature. `None`: the preset's (0 faithful, 0.05 robust).
        w_cap (`float` or `None`, *optional*):
            Cap on a weight, in units of the batch mean weight (robust preset: 5). `None`: the preset's.
        groupdro_eta (`float`, *optional*, defaults to `0.1`):
            Step size of the exponentiated-gradient update of the Group-DRO weights (method `"groupdro"`).

        > Parameters naming the dataset columns

        source_column (`str` or `None`, *optional*, defaults to `"source"`):
            Dataset column with each prompt's data source. `None` (or `"none"`): one source for all prompts.
        group_column (`str` or `None`, *optional*, defaults to `"group"`):
            Dataset column with each prompt's demographic group (`None` values: unknown, clustered by
            FairGRPO).
            `None` (or `"none"`): no demographic labels at all.
        true_group_column (`str` or `None`, *optional*, defaults to `"true_group"`):
            Optional dataset column with the hidden demographics, used only to score how well the implicit
            groups
            align with them (ARI / NMI). Ignored when the dataset lacks it.

        > Parameters of the evaluation during training

        eval_every_steps (`int`, *optional*, defaults to `0`):
            Greedy-decoding fairness evaluation on the held-out split every this many optimizer steps,
            recorded for
            the metric plots (`python -m fairgrpo.train`). `0`: only before and after training.
        log_fairness (`bool`, *optional*, defaults to `True`):
            Log per source and per group reward mean, prompt count, mean weight, gradient mass, cluster count
            and
            cluster stability through TRL's metrics (console, TensorBoard, W&B).
    """

    method: str = field(
        default="fairgrpo",
        metadata={
            "help": "Advantage method: grpo (TRL's, untouched), fairgrpo, fairgrpo_nd (no demographics), "
            "resample (oversample every (source, group) to equal count), groupdro (online Group-DRO "
            "weights) or rloo (leave-one-out baseline).",
            "choices": list(METHODS),
        },
    )
    fairness_preset: str = field(
        default="robust",
        metadata={
            "help": "FairGRPO preset: faithful (the authors' released code) or robust (floored means, "
            "capped weights).",
            "choices": ["robust", "faithful"],
        },
    )
    fairness_stats: str | None = field(
        default=None,
        metadata={"help": "Running statistics: cumulative, ema or batch. None: the preset's (cumulative)."},
    )
    ema_decay: float | None = field(
        default=None, metadata={"help": "Per-step decay of the ema statistics. None: the preset's (0.9)."}
    )
    cluster_features: str | None = field(
        default=None,
        metadata={"help": "Reward-vector features for K-means: sorted or raw. None: the preset's."},
    )
    cluster_k_max: int | None = field(
        default=None,
        metadata={"help": "Most implicit groups per source (elbow rule). None: the preset's (3)."},
    )
    cluster_tol: float | None = field(
        default=None, metadata={"help": "Elbow-rule threshold. None: the preset's (0.10)."}
    )
    cluster_warm_start: bool | None = field(
        default=None,
        metadata={"help": "Warm-start K-means from the previous step's centres. None: the preset's."},
    )
    cluster_update: str | None = field(
        default=None,
        metadata={"help": "refit (whole unlabelled history every step) or incremental. None: the preset's."},
    )
    cluster_seed: int = field(default=0, metadata={"help": "Seed of k-means++."})
    renorm: str | None = field(
        default=None,
        metadata={"help": "Batch renormalisation: std, zscore or none. None: the preset's."},
    )
    mu_floor: float | None = field(
        default=None, metadata={"help": "Floor on mean rewards in the temperatures. None: the preset's."}
    )
    w_cap: float | None = field(
        default=None,
        metadata={"help": "Cap on a weight in units of the batch mean weight. None: the preset's."},
    )
    groupdro_eta: float = field(
        default=0.1,
        metadata={"help": "Step size of the Group-DRO exponentiated-gradient update (method groupdro)."},
    )
    source_column: str | None = field(
        default="source",
        metadata={
            "help": "Dataset column with each prompt's data source; 'none' = one source for all prompts."
        },
    )
    group_column: str | None = field(
        default="group",
        metadata={
            "help": "Dataset column with each prompt's demographic group (null = unknown); "
            "'none' = no labels."
        },
    )
    true_group_column: str | None = field(
        default="true_group",
        metadata={
            "help": "Optional dataset column with hidden demographics, to score cluster alignment (ARI/NMI)."
        },
    )
    eval_every_steps: int = field(
        default=0,
        metadata={
            "help": "Held-out fairness evaluation every N steps during training (0: before and after only)."
        },
    )
    log_fairness: bool = field(
        default=True,
        metadata={"help": "Log per source / per group reward, count, weight, gradient mass and clusters."},
    )

    def __post_init__(self) -> None:
        for name in ("source_column", "group_column", "true_group_column"):
            setattr(self, name, _none_if_blank(getattr(self, name)))
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ValueError(f"`{name}`: unknown value {value!r}; expected one of {', '.join(choices)}")
        if self.groupdro_eta <= 0:
            raise ValueError(f"`groupdro_eta`: must be > 0, got {self.groupdro_eta}")
        if self.eval_every_steps < 0:
            raise ValueError(f"`eval_every_steps`: must be >= 0 (0 = off), got {self.eval_every_steps}")
        super().__post_init__()

    def fairness_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`fairgrpo.FairAdvantage` set by this config (preset aside).

        The GRPO score scaling follows TRL's ``scale_rewards``, so fairness off equals TRL.
        """
        opts: dict[str, Any] = {
            "stats": self.fairness_stats,
            "ema_decay": self.ema_decay,
            "features": self.cluster_features,
            "k_max": self.cluster_k_max,
            "tol": self.cluster_tol,
            "warm_start": self.cluster_warm_start,
            "cluster_update": self.cluster_update,
            "renorm": self.renorm,
            "mu_floor": self.mu_floor,
        }
        out = {k: v for k, v in opts.items() if v is not None}
        if self.w_cap is not None:
            out["w_cap"] = None if self.w_cap <= 0 else self.w_cap
        out["seed"] = self.cluster_seed
        out["scale"] = self.scale_rewards
        out["use_groups"] = self.method != "fairgrpo_nd"
        return out
