"""FairGRPO: GRPO with fairness-aware advantages (arXiv 2510.19893).

The numeric core (GRPO scores, reward-vector K-means, hierarchical weights) is Rust,
compiled into ``fairgrpo._core``; this package is its public face, and the trainer
(``fairgrpo.trainer``, ``python -m fairgrpo.train``) builds on TRL.
"""

from fairgrpo._core import (
    FairGRPOError,
    KMeansResult,
    NonFiniteError,
    OptionError,
    ShapeError,
    StateError,
    __version__,
)
from fairgrpo.core import (
    FairAdvantage,
    FairOutput,
    adjusted_rand_index,
    group_advantages,
    kmeans,
    kmeans_plusplus,
    normalized_mutual_info,
    select_k,
)

__all__ = [
    "FairAdvantage",
    "FairGRPOError",
    "FairOutput",
    "KMeansResult",
    "NonFiniteError",
    "OptionError",
    "ShapeError",
    "StateError",
    "__version__",
    "adjusted_rand_index",
    "group_advantages",
    "kmeans",
    "kmeans_plusplus",
    "normalized_mutual_info",
    "select_k",
]
