"""The documented Python API over the Rust core (``fairgrpo._core``).

Implements ALGORITHM.md §2 (arXiv 2510.19893, FairGRPO): GRPO's group-relative score,
reward-vector K-means with the elbow rule, and the hierarchical inverse-temperature weights.
Arguments are checked and converted here once (to contiguous float32/float64 arrays); every
batch then crosses into Rust in one call that releases the GIL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairgrpo import _core
from fairgrpo._core import FairGRPOError, KMeansResult, OptionError, ShapeError

__all__ = [
    "FairAdvantage",
    "FairOutput",
    "adjusted_rand_index",
    "group_advantages",
    "kmeans",
    "kmeans_plusplus",
    "normalized_mutual_info",
    "select_k",
]

PRESETS = ("faithful", "robust")
_STATE_VERSION = 1


def _to_numpy(x: Any, arg: str) -> np.ndarray:
    """Anything array-like (lists, numpy, CPU or GPU torch tensors) to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:
        raise ShapeError(f"`{arg}`: cannot be read as an array ({e})") from e


def _floats(x: Any, arg: str, ndim: int) -> np.ndarray:
    a = _to_numpy(x, arg)
    if a.dtype not in (np.float32, np.float64):
        if a.dtype.kind not in "biuf":
            raise ShapeError(f"`{arg}`: expected numbers, got an array of dtype {a.dtype}")
        a = a.astype(np.float64)
    if a.ndim != ndim:
        hint = " (use x.reshape(-1, 1) for one feature)" if ndim == 2 and a.ndim == 1 else ""
        raise ShapeError(f"`{arg}`: expected a {ndim}-D array, got shape {a.shape}{hint}")
    return np.ascontiguousarray(a)


def _threads(n_threads: int | None) -> int | None:
    if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
        raise OptionError(f"`n_threads`: must be a positive int or None, got {n_threads!r}")
    return n_threads


def group_advantages(
    rewards: Any,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
    n_threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """GRPO advantages exactly as TRL 1.16's ``GRPOTrainer``.

    Args:
        rewards: ``(P*G,)`` rewards, prompt-major (or ``(P, G)``; the result keeps the shape).
            NaN marks an unscorable completion: left out of mean/std, advantage 0.
        group_size: G, rollouts per prompt.
        scale: ``"group"``, ``"batch"`` or ``"none"`` (TRL's ``scale_rewards``).
        eps: added to the std (TRL uses 1e-4).
        n_threads: threads (``None``: all); results are identical for any value.
        out: optional 1-D array of the same length and dtype to write into (reusing a large
            buffer saves the page faults of a fresh one); it is returned.

    Returns:
        Advantages with the shape and float dtype of ``rewards``. A fresh result of 1 MiB or
        more reuses the memory of an earlier large result that is no longer referenced (a pool
        of at most 8 such arrays and 1 GiB per process): it is an ordinary writable array whose
        ``base`` is the pool's lease, and training loops skip the page faults of new memory.

    Speed: float32 rewards that are all 0 or 1 with G <= 12 look their two scores per prompt
    up in a per-pattern table (runs of 128 prompts, batches of at least 2**G prompts), with the
    same bits as the general path.

    Example:
        >>> group_advantages([1.0, 0.0, 1.0, 1.0], group_size=2).round(4)
        array([ 0.707, -0.707,  0.   ,  0.   ])
    """
    a = _to_numpy(rewards, "rewards")
    shape = a.shape
    if a.ndim == 2:
        if a.shape[1] != group_size:
            raise ShapeError(
                f"`rewards`: shape {a.shape} has {a.shape[1]} columns but group_size={group_size}"
            )
        a = a.reshape(-1)
    r = _floats(a, "rewards", 1)
    _check_group_size(group_size)
    res = _core.group_advantages(r, group_size, scale, float(eps), _threads(n_threads), out)
    return res if out is not None else res.reshape(shape)


def _check_group_size(g: Any) -> None:
    if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1:
        raise OptionError(f"`group_size`: must be a positive int, got {g!r}")


def kmeans(
    x: Any,
    k: int,
    init: str | Any = "k-means++",
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    algorithm: str = "lloyd",
    n_threads: int | None = None,
) -> KMeansResult:
    """K-means with Lloyd iterations.

    Args:
        x: ``(n, d)`` float32 or float64 data (other numbers are cast to float64).
        k: number of clusters, >= 1. May exceed the number of distinct rows: the extra
            centres are copies of the first and stay empty.
        init: ``"k-means++"`` (seeded, greedy) or a ``(k, d)`` array of initial centres.
        seed: seed of k-means++.
        max_iter: most Lloyd iterations.
        tol: stop once the summed squared centre shift is <= ``tol * mean(var(x, axis=0))``
            (scikit-learn's rule); also stops when no label changes.
        algorithm: ``"lloyd"`` measures every row against every centre in every
            iteration. ``"hamerly"`` keeps, per row, a bound on how far its nearest centre
            is ahead of the others and skips the rows that cannot have changed centre
            (usually most of them after a few iterations); each iteration gives the labels
            Lloyd's would from the same centres, and the centre sums are updated with the
            rows that moved, so the centres can differ from ``"lloyd"``'s in the last bits.
            It pays off on fits that run many iterations (2-2.5x faster measured); a fit
            that converges in two or three iterations costs about a quarter more.
        n_threads: threads; results are bitwise identical for any value.

    Returns:
        ``KMeansResult`` with ``labels`` (n,), ``centroids`` (k, d), ``sizes`` (k,),
        ``inertia`` and ``n_iter``. An empty cluster keeps its previous centre.
    """
    xs = _floats(x, "x", 2)
    _check_k(k, "k")
    if isinstance(init, str):
        if init != "k-means++":
            raise OptionError(f'`init`: unknown option {init!r}; expected "k-means++" or a (k, d) array')
        c = None
    else:
        c = _floats(init, "init", 2).astype(np.float64)
        if c.shape != (k, xs.shape[1]):
            raise ShapeError(f"`init`: expected shape ({k}, {xs.shape[1]}), got {c.shape}")
    if algorithm not in ("lloyd", "hamerly"):
        raise OptionError(f'`algorithm`: unknown option {algorithm!r}; expected "lloyd" or "hamerly"')
    return _core.kmeans(xs, k, c, _seed(seed), int(max_iter), float(tol), algorithm, _threads(n_threads))


def _check_k(k: Any, arg: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise OptionError(f"`{arg}`: must be an int >= 1, got {k!r}")


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"`seed`: must be a non-negative int, got {seed!r}")
    return int(seed) & 0xFFFF_FFFF_FFFF_FFFF


def kmeans_plusplus(x: Any, k: int, seed: int = 0, n_threads: int | None = None) -> np.ndarray:
    """Seeded greedy k-means++ initial centres, ``(k, d)`` float64."""
    xs = _floats(x, "x", 2)
    _check_k(k, "k")
    return _core.kmeans_plusplus(xs, k, _seed(seed), _threads(n_threads))


def select_k(
    x: Any,
    k_max: int = 3,
    tol: float = 0.10,
    seed: int = 0,
    max_iter: int = 300,
    kmeans_tol: float = 1e-4,
    n_threads: int | None = None,
) -> tuple[int, KMeansResult]:
    """The elbow rule of ALGORITHM.md: the number of implicit groups and that fit.

    Fits k = 1..min(k_max, distinct rows); with inertia drops ``D_k = I_k - I_(k+1)``
    returns the first k >= 2 with ``D_k < tol * D_(k-1)``, else the largest k fitted.

    Returns:
        ``(k, result)``; ``result.inertia`` is that of the chosen k.
    """
    xs = _floats(x, "x", 2)
    _check_k(k_max, "k_max")
    k, res, _ = _core.select_k(
        xs, k_max, float(tol), _seed(seed), int(max_iter), float(kmeans_tol), _threads(n_threads)
    )
    return k, res


def _labels_int(a: Any, arg: str) -> np.ndarray:
    x = _to_numpy(a, arg)
    if x.ndim != 1 or x.dtype.kind not in "iu":
        raise ShapeError(f"`{arg}`: expected a 1-D integer array")
    return np.ascontiguousarray(x, dtype=np.int64)


def adjusted_rand_index(a: Any, b: Any) -> float:
    """Adjusted Rand index of two labelings of the same items."""
    return _core.adjusted_rand_index(_labels_int(a, "a"), _labels_int(b, "b"))


def normalized_mutual_info(a: Any, b: Any) -> float:
    """Normalised mutual information (arithmetic mean) of two labelings."""
    return _core.normalized_mutual_info(_labels_int(a, "a"), _labels_int(b, "b"))


# --------------------------------------------------------------------------- FairAdvantage

# option name -> (core config field, converter)
_OPTIONS: dict[str, str] = {
    "weighting": "weighting",
    "stats": "stats",
    "ema_decay": "ema_decay",
    "scale": "scale",
    "eps": "score_eps",
    "use_groups": "use_groups",
    "features": "features",
    "k_max": "k_max",
    "tol": "elbow_tol",
    "warm_start": "warm_start",
    "cluster_update": "cluster_update",
    "seed": "seed",
    "max_iter": "max_iter",
    "kmeans_tol": "kmeans_tol",
    "renorm": "renorm",
    "renorm_eps": "renorm_eps",
    "t_floor": "t_floor",
    "mu_floor": "mu_floor",
    "w_cap": "w_cap",
    "n_threads": "n_threads",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "weighting": ("faithful", "robust"),
    "stats": ("cumulative", "ema", "batch"),
    "scale": ("group", "batch", "none"),
    "features": ("sorted", "raw"),
    "cluster_update": ("refit", "incremental"),
    "renorm": ("std", "zscore", "none"),
}


def _preset_config(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise OptionError(f"`preset`: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    faithful: dict[str, Any] = {
        "weighting": "faithful",
        "stats": "cumulative",
        "ema_decay": 0.9,
        "scale": "group",
        "score_eps": 1e-4,
        "use_groups": True,
        "features": "raw",
        "k_max": 3,
        "elbow_tol": 0.10,
        "warm_start": False,
        "cluster_update": "refit",
        "seed": 0,
        "max_iter": 300,
        "kmeans_tol": 1e-4,
        "renorm": "std",
        "renorm_eps": 1e-6,
        "t_floor": 1e-6,
        "mu_floor": 0.0,
        "w_cap": None,
        "n_threads": None,
    }
    if preset == "faithful":
        return faithful
    return {
        **faithful,
        "weighting": "robust",
        "features": "sorted",
        "warm_start": True,
        "mu_floor": 0.05,
        "w_cap": 5.0,
    }


def _labels(x: Any, arg: str) -> Any:
    """Labels to what the core takes: None, an int64 array, or a list of str/int/None."""
    if x is None:
        return None
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.ndim != 1:
            raise ShapeError(f"`{arg}`: expected one label per prompt (1-D), got shape {x.shape}")
        if x.dtype.kind in "iu":
            return np.ascontiguousarray(x, dtype=np.int64)
        return [None if v is None or (isinstance(v, float) and v != v) else v for v in x.tolist()]
    if isinstance(x, (str, bytes)):
        raise ShapeError(f"`{arg}`: expected a sequence of labels, one per prompt, got a single string")
    if not isinstance(x, Sequence) and not hasattr(x, "__iter__"):
        raise ShapeError(f"`{arg}`: expected a sequence of labels, got {type(x).__name__}")
    out = []
    for v in x:
        if isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, float) and v != v:  # pandas' NaN for a missing value
            v = None
        out.append(v)
    return out


@dataclass
class FairOutput:
    """The result of one :class:`FairAdvantage` step."""

    advantages: np.ndarray  # (P*G,) fairness-weighted, renormalised advantages
    weights: np.ndarray  # (P,) fairness weight of each prompt (before renormalisation)
    clusters: np.ndarray  # (P,) implicit group of each unlabelled prompt, -1 if labelled
    stats: dict[str, Any] = field(default_factory=dict)  # per source / group, for logging


class FairAdvantage:
    """FairGRPO's fairness-aware advantages, stateful across training steps.

    Each call takes one global rollout batch (P prompts x G rollouts) with a data source
    and an optional demographic group per prompt, and returns the advantages
    ``A_qi = w_q * s_qi`` renormalised over the batch, where ``s`` is GRPO's score and
    ``w_q = 1 / (T_d * T_dg)`` with ``T = sqrt(N) * mean reward`` of the prompt's source and
    group (ALGORITHM.md §2). Prompts with no group are clustered per source on their reward
    vectors (K-means, elbow rule) and each cluster acts as a group.

    Args:
        preset: ``"faithful"`` (the released code's semantics) or ``"robust"`` (floored
            means, weights of mean 1 capped at ``w_cap``, sorted features, warm starts).
        stats: running statistics ``"cumulative"`` | ``"ema"`` | ``"batch"``.
        ema_decay: per-step decay of ``"ema"``; its clustering keeps ceil(1/(1-decay)) steps.
        scale: GRPO score scaling ``"group"`` | ``"batch"`` | ``"none"`` (TRL's).
        eps: the score's eps (TRL: 1e-4).
        use_groups: False ignores group labels (FairGRPO-ND: every prompt clustered).
        features: ``"sorted"`` (permutation-invariant) or ``"raw"`` reward vectors.
        k_max, tol: the elbow rule (k = 1..k_max, threshold tol).
        warm_start: start each k's fit from the previous step's centres.
        cluster_update: ``"refit"`` on the whole history every step, or ``"incremental"``
            (cost grows with the batch, not the history).
        seed, max_iter, kmeans_tol: K-means options.
        renorm: ``"std"`` (divide by batch std), ``"zscore"`` or ``"none"``.
        renorm_eps: added to the batch std.
        t_floor: floor on the source temperature.
        mu_floor: floor on every mean reward (robust).
        w_cap: cap on a weight in units of the batch mean weight (robust; None = no cap).
        n_threads: threads; results do not depend on it.

    Example:
        >>> fa = FairAdvantage(preset="robust")
        >>> rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
        >>> out = fa(rewards, group_size=4, sources=["a", "a", "b"], groups=["f", None, "m"])
        >>> out.advantages.shape, out.weights.shape
        ((12,), (3,))
    """

    def __init__(self, preset: str = "robust", **options: Any) -> None:
        cfg = _preset_config(preset)
        for name, value in options.items():
            if name not in _OPTIONS:
                raise OptionError(
                    f"unknown option `{name}`; valid options: preset, {', '.join(sorted(_OPTIONS))}"
                )
            if name in _CHOICES and value not in _CHOICES[name]:
                raise OptionError(f"`{name}`: unknown option {value!r}; expected one of {_CHOICES[name]}")
            if name == "seed":
                value = _seed(value)
            cfg[_OPTIONS[name]] = value
        self.preset = preset
        try:
            self._core = _core.FairCore(json.dumps(cfg))
        except OptionError:
            raise
        except FairGRPOError as e:
            raise OptionError(str(e)) from e

    @property
    def config(self) -> dict[str, Any]:
        """The full option set in force (core field names)."""
        out: dict[str, Any] = json.loads(self._core.config_json())
        return out

    @property
    def step_count(self) -> int:
        """Steps taken so far."""
        return self._core.step_count

    def __call__(
        self,
        rewards: Any,
        group_size: int,
        sources: Any = None,
        groups: Any = None,
        true_groups: Any = None,
        out: np.ndarray | None = None,
    ) -> FairOutput:
        """One training step on a global batch.

        Args:
            rewards: ``(P*G,)`` rewards, prompt-major; NaN = unscorable completion.
            group_size: G.
            sources: one data source per prompt (str or int); None = one source for all.
            groups: one demographic group per prompt (str or int), None / -1 = unknown.
            true_groups: optional hidden demographics, only to score how well the implicit
                groups align with them (``stats["sources"][d]["true_ari"]``).
            out: optional 1-D array (length P*G, the rewards' dtype) to write the advantages into.

        Returns:
            :class:`FairOutput`. On an error the state is unchanged. Large fresh advantages,
            weights and clusters (1 MiB or more each) come from the same pool of freed results
            as :func:`group_advantages`.

        Speed: float32 rewards that are all 0 or 1 (a correctness reward) with G <= 12 take
        a table of per-pattern results for runs of 128 prompts, with the same bits as the
        general path (BENCHMARKS.md).
        """
        _check_group_size(group_size)
        r = _floats(rewards, "rewards", 1)
        adv, w, c, report = self._core.step(
            r,
            int(group_size),
            _labels(sources, "sources"),
            _labels(groups, "groups"),
            _labels(true_groups, "true_groups"),
            out,
        )
        rep = json.loads(report)
        stats = {
            **{k: v for k, v in rep.items() if k not in ("sources", "groups")},
            "sources": {s.pop("name"): s for s in rep["sources"]},
            "groups": {g.pop("name"): g for g in rep["groups"]},
        }
        return FairOutput(advantages=adv, weights=w, clusters=c, stats=stats)

    def state_dict(self) -> dict[str, Any]:
        """The whole state as a JSON-serialisable dict (exact round trip)."""
        return {"version": _STATE_VERSION, "preset": self.preset, "core": json.loads(self._core.state_json())}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FairAdvantage:
        """Restores a :meth:`state_dict`; the restored object continues bit for bit."""
        if not isinstance(state, dict) or "core" not in state:
            raise _core.StateError("`state`: expected a dict made by FairAdvantage.state_dict()")
        if state.get("version") != _STATE_VERSION:
            raise _core.StateError(f"`state`: version {state.get('version')!r} is not {_STATE_VERSION}")
        obj = cls.__new__(cls)
        obj.preset = state.get("preset", "custom")
        obj._core = _core.FairCore.from_state_json(json.dumps(state["core"]))
        return obj

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """In-place variant of :meth:`from_state_dict`."""
        other = type(self).from_state_dict(state)
        self.preset, self._core = other.preset, other._core

    def __repr__(self) -> str:
        return f"FairAdvantage(preset={self.preset!r}, step={self.step_count})"
