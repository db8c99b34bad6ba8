"""Type stubs of the compiled module ``fairgrpo._core`` (checked by ``mypy.stubtest``)."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FairCore",
    "FairGRPOError",
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

__version__: str

class FairGRPOError(ValueError): ...
class ShapeError(FairGRPOError): ...
class OptionError(FairGRPOError): ...
class NonFiniteError(FairGRPOError): ...
class StateError(FairGRPOError): ...

@final
class KMeansResult:
    @property
    def labels(self) -> npt.NDArray[np.int64]: ...
    @property
    def centroids(self) -> npt.NDArray[np.float64]: ...
    @property
    def sizes(self) -> npt.NDArray[np.int64]: ...
    @property
    def inertia(self) -> float: ...
    @property
    def n_iter(self) -> int: ...

def group_advantages(
    rewards: npt.NDArray[Any],
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
    n_threads: int | None = None,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]: ...
def kmeans(
    x: npt.NDArray[Any],
    k: int,
    init: npt.NDArray[np.float64] | None = None,
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    algorithm: str = "lloyd",
    n_threads: int | None = None,
) -> KMeansResult: ...
def kmeans_plusplus(
    x: npt.NDArray[Any], k: int, seed: int = 0, n_threads: int | None = None
) -> npt.NDArray[np.float64]: ...
def select_k(
    x: npt.NDArray[Any],
    k_max: int = 3,
    tol: float = 0.1,
    seed: int = 0,
    max_iter: int = 300,
    kmeans_tol: float = 1e-4,
    n_threads: int | None = None,
) -> tuple[int, KMeansResult, list[float]]: ...
def adjusted_rand_index(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float: ...
def normalized_mutual_info(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float: ...

@final
class FairCore:
    def __new__(cls, config_json: str) -> FairCore: ...
    def config_json(self) -> str: ...
    def state_json(self) -> str: ...
    @staticmethod
    def from_state_json(state: str) -> FairCore: ...
    @property
    def step_count(self) -> int: ...
    def step(
        self,
        rewards: npt.NDArray[Any],
        group_size: int,
        sources: Any = None,
        groups: Any = None,
        true_groups: Any = None,
        out: npt.NDArray[Any] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], npt.NDArray[np.int64], str]: ...
