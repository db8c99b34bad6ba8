"""The tiled k-means kernels (d = 1..16 unrolled, wider d row by row; AVX-512 or portable)
against the numpy reference, on data spanning several chunks and partial tiles."""

from __future__ import annotations

import numpy as np
import pytest

import fairgrpo
import reference as ref


def blobs(n: int, d: int, k: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 3 * rng.integers(0, max(k, 1), (n, 1))
    return np.ascontiguousarray(x.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 8, 9, 10, 15, 16, 17, 20])
def test_plusplus_and_lloyd_match_reference_across_chunks(dtype, d):
    n, k = 9_000 + d, 3 + d % 5  # three chunks, the last with a partial tile
    x = blobs(n, d, k, dtype, d)
    c = fairgrpo.kmeans_plusplus(x, k, seed=d)
    np.testing.assert_array_equal(c, ref.kmeans_plusplus(x, k, d))
    ours = fairgrpo.kmeans(x, k, init=c, max_iter=4, tol=0.0)
    want = ref.lloyd(x, c, max_iter=4, tol=0.0)
    np.testing.assert_array_equal(ours.labels, want.labels)
    np.testing.assert_array_equal(ours.sizes, want.sizes)
    assert ours.n_iter == want.n_iter
    np.testing.assert_allclose(ours.centroids, want.centroids, rtol=1e-12, atol=1e-12)
    assert ours.inertia == pytest.approx(want.inertia, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("d", "k"), [(4, 8), (10, 3), (16, 16), (13, 17)])
def test_bitwise_identical_for_any_thread_count(dtype, d, k):
    x = blobs(20_011, d, k, dtype, 7)
    runs = [fairgrpo.kmeans(x, k, seed=3, max_iter=20, n_threads=t) for t in (1, 2, 3)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].labels, other.labels)
        np.testing.assert_array_equal(runs[0].centroids, other.centroids)
        assert runs[0].inertia == other.inertia and runs[0].n_iter == other.n_iter
    c = [fairgrpo.kmeans_plusplus(x, k, seed=1, n_threads=t) for t in (1, 2)]
    np.testing.assert_array_equal(c[0], c[1])


def test_discrete_ties_go_to_the_lowest_centre():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (5_003, 6)).astype(np.float32) / 2
    init = np.array([[0.5] * 6, [0.5] * 6, [0.0] * 6, [1.0] * 6])
    ours = fairgrpo.kmeans(x, 4, init=init, max_iter=1, tol=0.0)
    want = ref.lloyd(x, init, max_iter=1, tol=0.0)
    np.testing.assert_array_equal(ours.labels, want.labels)
    np.testing.assert_array_equal(ours.sizes, want.sizes)
    np.testing.assert_allclose(ours.centroids, want.centroids, rtol=1e-12, atol=1e-12)
