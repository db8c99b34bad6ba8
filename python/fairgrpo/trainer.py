"""``FairGRPOTrainer``: TRL's ``GRPOTrainer`` with fairness-aware advantages (arXiv 2510.19893).

What changes relative to ``trl.GRPOTrainer`` (1.16), and nothing else:

1. ``_calculate_rewards`` keeps TRL's gathered ``rewards_per_func`` of the whole global batch
   and gathers (``gather_object``, every rank in process order) the data-source, group and
   hidden-group columns of that batch, so every rank holds the same labels in the same order.
2. ``_generate_and_score_completions`` calls TRL's, then replaces ``output["advantages"]`` with
   this process's slice of the advantages an :class:`AdvantageStrategy` computes from the
   gathered batch. The per-completion reward is TRL's: the ``reward_weights``-weighted nansum
   over reward functions, NaN where every function returned ``None`` (TRL's default
   ``multi_objective_aggregation="sum_then_normalize"``; with ``"normalize_then_sum"`` only
   method ``grpo`` reproduces TRL). Every rank computes the same result, so the weights are
   identical across processes. Evaluation batches keep TRL's advantages.
3. ``_save_checkpoint`` writes the strategy's state to ``fairness_state.json`` in the
   checkpoint; ``_load_optimizer_and_scheduler`` restores it on ``resume_from_checkpoint``.

The strategy is chosen by ``FairGRPOConfig.method``: ``grpo`` (TRL's advantages untouched),
``fairgrpo`` / ``fairgrpo_nd`` (:class:`fairgrpo.FairAdvantage`, ALGORITHM.md §2), ``resample``
(GRPO on a training set balanced by :func:`balance_dataset`), ``groupdro`` (GRPO scores x online
Group-DRO weights) and ``rloo`` (leave-one-out baseline). Per source and per group the reward
mean, prompt count, mean weight, gradient mass (sum of |A|) and the cluster count / stability
go to TRL's ``self._metrics`` (console, TensorBoard, W&B).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from fairgrpo.config import METHODS, FairGRPOConfig
from fairgrpo.core import FairAdvantage, group_advantages

__all__ = [
    "FAIRNESS_STATE_NAME",
    "AdvantageStrategy",
    "FairGRPOTrainer",
    "FairStrategy",
    "GRPOStrategy",
    "GroupDROStrategy",
    "RLOOStrategy",
    "StrategyOutput",
    "balance_dataset",
    "make_strategy",
]

FAIRNESS_STATE_NAME = "fairness_state.json"
UNKNOWN_GROUP = "unknown"


# ----------------------------------------------------------------------------- strategies


@dataclass
class StrategyOutput:
    """Advantages of one global batch (``None``: keep TRL's) and what to log about them."""

    advantages: np.ndarray | None  # (P*G,) or None
    weights: np.ndarray  # (P,) per-prompt weight (1 where the method does not weight)
    stats: dict[str, Any] = field(default_factory=dict)  # {"sources": {...}, "groups": {...}}


def _group_key(source: str, group: str | None) -> str:
    return f"{source}/{UNKNOWN_GROUP if group is None else group}"


def _batch_stats(
    rewards: np.ndarray,
    advantages: np.ndarray,
    weights: np.ndarray,
    group_size: int,
    sources: Sequence[str],
    groups: Sequence[str | None],
) -> dict[str, Any]:
    """Per source and per (source, group): prompts, mean reward, mean weight, gradient mass."""
    r = rewards.reshape(-1, group_size)  # (P, G)
    a = np.abs(np.nan_to_num(advantages.reshape(-1, group_size), nan=0.0))  # (P, G)
    out: dict[str, Any] = {"sources": {}, "groups": {}}
    buckets: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (s, g) in enumerate(zip(sources, groups, strict=True)):
        buckets[("sources", s)].append(i)
        buckets[("groups", _group_key(s, g))].append(i)
    for (level, key), idx in buckets.items():
        rr = r[idx]
        finite = rr[np.isfinite(rr)]
        out[level][key] = {
            "n_batch": len(idx),
            "batch_mean_reward": float(finite.mean()) if finite.size else float("nan"),
            "weight": float(weights[idx].mean()),
            "grad_mass": float(a[idx].sum()),
        }
    return out


class AdvantageStrategy:
    """How one method turns a global rollout batch into advantages (one code path for all).

    Subclasses implement :meth:`compute`; stateful ones also :meth:`state_dict` /
    :meth:`load_state_dict` (saved in checkpoints as ``fairness_state.json``).
    """

    method: str = "grpo"

    def __init__(self, args: FairGRPOConfig) -> None:
        self.args = args

    def compute(
        self,
        rewards: np.ndarray,
        group_size: int,
        sources: list[str],
        groups: list[str | None],
        true_groups: list[str | None] | None,
    ) -> StrategyOutput:
        """Advantages for ``rewards`` ``(P*G,)`` (prompt-major, NaN = unscorable)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def _scores(self, rewards: np.ndarray, group_size: int) -> np.ndarray:
        """GRPO's score with TRL's ``scale_rewards`` and eps (equal to TRL's advantages)."""
        return group_advantages(rewards, group_size, scale=self.args.scale_rewards, eps=1e-4)


class GRPOStrategy(AdvantageStrategy):
    """``grpo`` and ``resample``: TRL's advantages, untouched (only statistics are computed)."""

    def __init__(self, args: FairGRPOConfig, method: str = "grpo") -> None:
        super().__init__(args)
        self.method = method

    def compute(
        self,
        rewards: np.ndarray,
        group_size: int,
        sources: list[str],
        groups: list[str | None],
        true_groups: list[str | None] | None,
    ) -> StrategyOutput:
        weights = np.ones(len(sources))
        scores = self._scores(rewards, group_size)
        return StrategyOutput(
            None, weights, _batch_stats(rewards, scores, weights, group_size, sources, groups)
        )


class RLOOStrategy(AdvantageStrategy):
    """``rloo``: ``A_i = r_i - mean(r_j, j != i)`` within each prompt, unscaled (Ahmadian et al. 2024).

    NaN rewards are left out of the baseline and get advantage 0; a prompt with fewer than two
    scorable rollouts gets 0 everywhere.
    """

    method = "rloo"

    def compute(
        self,
        rewards: np.ndarray,
        group_size: int,
        sources: list[str],
        groups: list[str | None],
        true_groups: list[str | None] | None,
    ) -> StrategyOutput:
        r = rewards.reshape(-1, group_size).astype(np.float64)  # (P, G)
        valid = np.isfinite(r)
        n = valid.sum(axis=1, keepdims=True)  # (P, 1)
        total = np.where(valid, r, 0.0).sum(axis=1, keepdims=True)  # (P, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            baseline = (total - np.where(valid, r, 0.0)) / (n - 1)
        adv = np.where(valid & (n > 1), r - baseline, 0.0).astype(rewards.dtype).reshape(-1)
        weights = np.ones(len(sources))
        return StrategyOutput(adv, weights, _batch_stats(rewards, adv, weights, group_size, sources, groups))


class GroupDROStrategy(AdvantageStrategy):
    """``groupdro``: GRPO scores times online Group-DRO weights (Sagawa et al. 2020).

    Groups are (source, group) pairs (unknown groups pooled per source). Each step, for every group
    in the batch, ``q_g <- q_g * exp(eta * loss_g)`` with ``loss_g = 1 - mean reward of g``, then
    ``q`` is normalised to sum 1 over all groups seen so far (new groups enter at the mean).
    A prompt's weight is its group's ``q``, normalised to mean 1 over the batch; ``A = w * s``.
    """

    method = "groupdro"

    def __init__(self, args: FairGRPOConfig) -> None:
        super().__init__(args)
        self.log_q: dict[str, float] = {}
        self.steps = 0

    def compute(
        self,
        rewards: np.ndarray,
        group_size: int,
        sources: list[str],
        groups: list[str | None],
        true_groups: list[str | None] | None,
    ) -> StrategyOutput:
        keys = [_group_key(s, g) for s, g in zip(sources, groups, strict=True)]
        r = rewards.reshape(-1, group_size)
        batch: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            batch[k].append(i)
        mean_log = float(np.mean(list(self.log_q.values()))) if self.log_q else 0.0
        for k, idx in batch.items():
            vals = r[idx]
            vals = vals[np.isfinite(vals)]
            loss = 1.0 - float(vals.mean()) if vals.size else 0.0
            self.log_q[k] = self.log_q.get(k, mean_log) + self.args.groupdro_eta * loss
        # normalise in log space (sum of q = 1); stable for any number of steps
        m = max(self.log_q.values())
        log_z = m + math.log(sum(math.exp(v - m) for v in self.log_q.values()))
        self.log_q = {k: v - log_z for k, v in self.log_q.items()}
        self.steps += 1
        q = np.array([math.exp(self.log_q[k]) for k in keys])
        weights = q / q.mean()
        scores = self._scores(rewards, group_size).reshape(-1, group_size)
        adv = (scores * weights[:, None].astype(scores.dtype)).reshape(-1)
        stats = _batch_stats(rewards, adv, weights, group_size, sources, groups)
        for k in stats["groups"]:
            stats["groups"][k]["q"] = math.exp(self.log_q[k])
        return StrategyOutput(adv, weights, stats)

    def state_dict(self) -> dict[str, Any]:
        return {"log_q": dict(self.log_q), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_q = {str(k): float(v) for k, v in state.get("log_q", {}).items()}
        self.steps = int(state.get("steps", 0))


class FairStrategy(AdvantageStrategy):
    """``fairgrpo`` / ``fairgrpo_nd``: :class:`fairgrpo.FairAdvantage` (ALGORITHM.md §2)."""

    def __init__(self, args: FairGRPOConfig) -> None:
        super().__init__(args)
        self.method = args.method
        self.fair = FairAdvantage(preset=args.fairness_preset, **args.fairness_options())

    def compute(
        self,
        rewards: np.ndarray,
        group_size: int,
        sources: list[str],
        groups: list[str | None],
        true_groups: list[str | None] | None,
    ) -> StrategyOutput:
        out = self.fair(
            rewards, group_size=group_size, sources=sources, groups=groups, true_groups=true_groups
        )
        return StrategyOutput(out.advantages, out.weights, out.stats)

    def state_dict(self) -> dict[str, Any]:
        return self.fair.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fair = FairAdvantage.from_state_dict(state)


def make_strategy(args: FairGRPOConfig) -> AdvantageStrategy:
    """The :class:`AdvantageStrategy` of ``args.method``."""
    if args.method in ("grpo", "resample"):
        return GRPOStrategy(args, args.method)
    if args.method in ("fairgrpo", "fairgrpo_nd"):
        return FairStrategy(args)
    if args.method == "groupdro":
        return GroupDROStrategy(args)
    if args.method == "rloo":
        return RLOOStrategy(args)
    raise ValueError(f"`method`: unknown method {args.method!r}; expected one of {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- resampling


def balance_dataset(dataset: Any, source_column: str | None, group_column: str | None, seed: int = 0) -> Any:
    """Oversample ``dataset`` so every (source, group) stratum has the size of the largest.

    The baseline "GRPO + resampling" of the paper. A missing group value is its own stratum
    (``unknown``); each stratum keeps all its rows and draws the rest with replacement (seeded).
    Returns a new ``datasets.Dataset`` (rows shuffled).
    """
    cols = [c for c in (source_column, group_column) if c is not None]
    for c in cols:
        if c not in dataset.column_names:
            raise ValueError(
                f"method 'resample': the training dataset has no column {c!r} "
                f"(columns: {', '.join(dataset.column_names)}); set --source_column / --group_column"
            )
    if not cols:
        return dataset
    strata: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    values = [dataset[c] for c in cols]
    for i, key in enumerate(zip(*values, strict=True)):
        strata[key].append(i)
    target = max(len(v) for v in strata.values())
    rng = np.random.default_rng(seed)
    indices: list[int] = []
    for key in sorted(strata, key=str):
        idx = strata[key]
        extra = rng.choice(idx, size=target - len(idx), replace=True).tolist() if target > len(idx) else []
        indices.extend(idx + extra)
    indices = [indices[j] for j in rng.permutation(len(indices))]
    return dataset.select(indices)


# ----------------------------------------------------------------------------- trainer


class FairGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages come from ``args.method`` (see the module docstring).

    Takes every argument of ``GRPOTrainer``; ``args`` must be a :class:`FairGRPOConfig`. The
    training dataset needs the columns named by ``args.source_column`` / ``args.group_column``
    for the methods that use them (``fairgrpo``, ``fairgrpo_nd``, ``resample``, ``groupdro``).

    Attributes:
        strategy: the :class:`AdvantageStrategy` in use (its state is checkpointed).
        last_batch: the last global training batch: ``rewards`` (P*G,), ``sources``, ``groups``,
            ``true_groups`` (per prompt), ``advantages`` (P*G,, the ones used in the loss) and
            ``stats``. For tests and inspection.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: FairGRPOConfig | None = None,
        train_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = FairGRPOConfig(output_dir="fairgrpo-output")
        if not isinstance(args, FairGRPOConfig):
            raise TypeError(
                f"`args`: FairGRPOTrainer needs a FairGRPOConfig, got {type(args).__name__}; "
                "FairGRPOConfig takes every GRPOConfig option, so build it with the same arguments"
            )
        if train_dataset is not None and hasattr(train_dataset, "column_names"):
            self._check_columns(args, list(train_dataset.column_names))
            if args.method == "resample":
                train_dataset = balance_dataset(
                    train_dataset, args.source_column, args.group_column, seed=args.seed
                )
        self.strategy: AdvantageStrategy = make_strategy(args)
        self.last_batch: dict[str, Any] | None = None
        self._fair_labels: dict[str, list[Any]] | None = None
        self._fair_rewards: torch.Tensor | None = None
        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, **kwargs)

    @staticmethod
    def _check_columns(args: FairGRPOConfig, columns: list[str]) -> None:
        need: list[tuple[str, str | None]] = []
        if args.method in ("fairgrpo", "fairgrpo_nd", "resample", "groupdro"):
            need.append(("source_column", args.source_column))
        if args.method in ("fairgrpo", "resample", "groupdro"):
            need.append(("group_column", args.group_column))
        for option, column in need:
            if column is not None and column not in columns:
                raise ValueError(
                    f"method {args.method!r}: the training dataset has no column {column!r} (`{option}`); "
                    f"its columns are {', '.join(columns)}. Add the column, point `{option}` at another "
                    f"column, or set `{option}` to none"
                )

    @property
    def _training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    # -- step 1: keep the gathered rewards, gather the labels -----------------------------------

    def _calculate_rewards(
        self,
        inputs: list[dict[str, Any]],
        prompts: list[Any],
        completions: list[Any],
        completion_ids_list: Any,
    ) -> torch.Tensor:
        """TRL's rewards (gathered over processes) plus the gathered label columns of the batch."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._training:
            args: Any = self.args
            labels: dict[str, list[Any]] = {}
            for name, column in (
                ("sources", args.source_column),
                ("groups", args.group_column),
                ("true_groups", args.true_group_column),
            ):
                local = [x.get(column) for x in inputs] if column is not None else [None] * len(inputs)
                labels[name] = gather_object(local)
            self._fair_labels = labels
            self._fair_rewards = self._fair_reward(rewards_per_func)
        return rewards_per_func

    # -- step 2: replace this process's advantages ----------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's generation and scoring, then the advantages of ``args.method`` for this process."""
        self._fair_rewards = None
        output = super()._generate_and_score_completions(inputs)
        if not self._training or self._fair_labels is None or self._fair_rewards is None:
            return output
        g = int(self.num_generations or 1)
        rewards = self._fair_rewards.detach().float().cpu().numpy()  # (P*G,)
        labels, self._fair_labels = self._fair_labels, None
        sources, groups, true_groups = self._per_prompt(labels, g)
        result = self.strategy.compute(rewards, g, sources, groups, true_groups)
        n_local = len(inputs)
        start = self.accelerator.process_index * n_local
        if result.advantages is not None:
            full = torch.as_tensor(np.asarray(result.advantages, dtype=np.float32))
            full = torch.nan_to_num(full, nan=0.0)
            output["advantages"] = full[start : start + n_local].to(output["advantages"].device)
            logged: Any = self._logs["advantages"]
            for _ in range(min(len(full), len(logged))):
                logged.pop()
            logged.extend(full.tolist())
            used = full.numpy()
        else:
            used = None
        self.last_batch = {
            "rewards": rewards,
            "sources": sources,
            "groups": groups,
            "true_groups": true_groups,
            "weights": result.weights,
            "advantages": used,
            "local_advantages": output["advantages"].detach().cpu().numpy(),
            "stats": result.stats,
        }
        if getattr(self.args, "log_fairness", True):
            self._log_fairness(result.stats)
        return output

    def _per_prompt(
        self, labels: dict[str, list[Any]], g: int
    ) -> tuple[list[str], list[str | None], list[str | None] | None]:
        """Per-completion gathered labels -> one per prompt (checked constant within a prompt)."""

        def norm(v: Any) -> str | None:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            return str(v)

        out: dict[str, list[Any]] = {}
        for name, values in labels.items():
            if len(values) % g:
                raise RuntimeError(f"{len(values)} gathered {name} labels do not form groups of {g}")
            per_prompt = [norm(v) for v in values[::g]]
            for p, v in enumerate(per_prompt):
                if any(norm(x) != v for x in values[p * g : (p + 1) * g]):
                    raise RuntimeError(
                        f"the {g} rollouts of prompt {p} carry different {name} labels; "
                        "the global batch is not grouped by prompt"
                    )
            out[name] = per_prompt
        sources = [s if s is not None else UNKNOWN_GROUP for s in out["sources"]]
        if getattr(self.args, "source_column", None) is None:
            sources = ["all"] * len(sources)
        true_groups = out["true_groups"] if any(v is not None for v in out["true_groups"]) else None
        return sources, out["groups"], true_groups

    def _log_fairness(self, stats: dict[str, Any]) -> None:
        """Per source / per group metrics into TRL's ``self._metrics["train"]``."""
        metrics = self._metrics["train"]

        def put(name: str, value: Any) -> None:
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[name].append(float(value))

        for src, s in stats.get("sources", {}).items():
            if not s.get("n_batch"):
                continue
            base = f"fairness/{src}"
            put(f"{base}/reward", s.get("batch_mean_reward"))
            put(f"{base}/prompts", s.get("n_batch"))
            put(f"{base}/weight", s.get("weight"))
            put(f"{base}/grad_mass", s.get("grad_mass"))
            if "n_clusters" in s and s.get("n_unlabelled_batch", 0):
                put(f"{base}/clusters", s.get("n_clusters"))
                put(f"{base}/cluster_stability_ari", s.get("stability_ari"))
                put(f"{base}/cluster_true_ari", s.get("true_ari"))
        for key, s in stats.get("groups", {}).items():
            if not s.get("n_batch"):
                continue
            base = f"fairness/{key}"
            put(f"{base}/reward", s.get("batch_mean_reward"))
            put(f"{base}/prompts", s.get("n_batch"))
            put(f"{base}/weight", s.get("weight"))
            put(f"{base}/grad_mass", s.get("grad_mass"))

    # -- the rewards as TRL aggregates them -----------------------------------------------------

    def _fair_reward(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """TRL's per-completion reward: weighted nansum over functions, NaN if all are NaN."""
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return rewards

    # -- step 3: checkpoints --------------------------------------------------------------------

    def fairness_state(self) -> dict[str, Any]:
        """The method and its strategy's state (what ``fairness_state.json`` holds)."""
        return {"method": self.strategy.method, "strategy": self.strategy.state_dict()}

    def load_fairness_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`fairness_state` (the method must match)."""
        if state.get("method") != self.strategy.method:
            raise ValueError(
                f"{FAIRNESS_STATE_NAME}: saved by method {state.get('method')!r} but this run uses "
                f"{self.strategy.method!r}; resume with the same --method"
            )
        self.strategy.load_state_dict(state.get("strategy", {}))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, FAIRNESS_STATE_NAME), "w") as f:
                json.dump(self.fairness_state(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, FAIRNESS_STATE_NAME)
            if os.path.exists(path):
                with open(path) as f:
                    self.load_fairness_state(json.load(f))
