"""Rust core vs the numpy reference (tests/reference.py), driven by hypothesis."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fairgrpo
import reference as ref

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_fma_is_correctly_rounded(dtype):
    """The reference's fused multiply-add (the distances' arithmetic) against exact rational
    arithmetic, on wide magnitudes and near-cancellations, where a plain multiply-then-add or a
    double rounding would differ."""
    rng = np.random.default_rng(0)
    n = 3000
    a = (rng.normal(size=n) * np.exp(rng.normal(size=n) * 3)).astype(dtype)
    b = (rng.normal(size=n) * np.exp(rng.normal(size=n) * 3)).astype(dtype)
    c = (-(a.astype(np.float64) * b) * (1 + rng.normal(size=n) * 1e-6)).astype(dtype)
    c[::2] = rng.normal(size=n // 2).astype(dtype)
    got = ref.fma(a, b, c)
    for ai, bi, ci, gi in zip(a, b, c, got, strict=True):
        exact = Fraction(float(ai)) * Fraction(float(bi)) + Fraction(float(ci))
        nearest = dtype(float(exact))  # float(Fraction) rounds to nearest f64
        if dtype == np.float32:
            # the f32 neighbours of the f64 rounding: the nearest of them to the exact value,
            # the even one on a tie
            around = [np.nextafter(nearest, dtype(-np.inf)), nearest, np.nextafter(nearest, dtype(np.inf))]
            err = [abs(Fraction(float(v)) - exact) for v in around]
            best = [v for v, e in zip(around, err, strict=True) if e == min(err)]
            nearest = min(best, key=lambda v: int(np.array(v).view(np.uint32)) & 1)
        assert gi == nearest, (ai, bi, ci)


DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def reward_batches(draw, max_prompts: int = 24, max_g: int = 8, nan: bool = True):
    """Prompt-major rewards: binary, graded or continuous, some all-equal groups, some NaN."""
    p = draw(st.integers(1, max_prompts))
    g = draw(st.integers(1, max_g))
    dtype = draw(DTYPES)
    kind = draw(st.sampled_from(["binary", "graded", "continuous", "constant"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "binary":
        r = rng.integers(0, 2, p * g).astype(dtype)
    elif kind == "graded":
        r = (rng.integers(0, 5, p * g) / 4).astype(dtype)
    elif kind == "continuous":
        r = rng.normal(size=p * g).astype(dtype)
    else:
        r = np.full(p * g, draw(st.sampled_from([0.0, 1.0, 0.3])), dtype=dtype)
    if nan and draw(st.booleans()):
        r[rng.random(p * g) < 0.15] = np.nan
    return r, g


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    """Identical up to one rounding of the output dtype."""
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=4 * np.finfo(a.dtype).eps, atol=4 * np.finfo(a.dtype).eps)


# ------------------------------------------------------------------ group_advantages


@SETTINGS
@given(reward_batches(), st.sampled_from(["group", "batch", "none"]))
def test_group_advantages_match_reference(batch, scale):
    r, g = batch
    ours = fairgrpo.group_advantages(r, g, scale=scale)
    assert_same(ours, ref.group_advantages(r, g, scale))
    np.testing.assert_array_equal(ours, fairgrpo.group_advantages(r, g, scale=scale, n_threads=1))


@pytest.mark.parametrize("g", [4, 10, 12])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_on_large_binary_batches(g, scale):
    """Runs of 128 prompts of 0/1 rewards take the pattern table; runs with a NaN, a 0.5 or a
    -0.0 reward do not: the reference's scores, and the same bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(10 + g)
    p = 128 * 40 + 77
    r = (rng.random(p * g) < 0.6).astype(np.float32)
    r[: 3 * g] = 1.0
    r[128 * g * 3 + 5] = np.nan
    r[128 * g * 7 + 1] = 0.5
    r[128 * g * 11 + 2] = -0.0
    ours = fairgrpo.group_advantages(r, g, scale=scale)
    assert_same(ours, ref.group_advantages(r, g, scale))
    for t in (1, 3):
        np.testing.assert_array_equal(ours, fairgrpo.group_advantages(r, g, scale=scale, n_threads=t))


def trl_advantages(rewards: np.ndarray, g: int, scale: str) -> np.ndarray:
    """TRL 1.16 GRPOTrainer's lines (sum_then_normalize), on torch, with TRL's own nanstd."""
    torch = pytest.importorskip("torch")
    from trl.trainer.utils import nanstd

    t = torch.tensor(rewards, dtype=torch.float32)
    mean = torch.nanmean(t.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale in ("group", "none"):
        std = nanstd(t.view(-1, g), dim=1).repeat_interleave(g, dim=0) if g > 1 else torch.zeros_like(t)
    else:
        std = nanstd(t).expand_as(t) if t.numel() > 1 else torch.zeros_like(t)
    adv = t - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).numpy()


@SETTINGS
@given(reward_batches(max_prompts=16, max_g=8), st.sampled_from(["group", "batch", "none"]))
def test_group_advantages_match_trl(batch, scale):
    r, g = batch
    r = r.astype(np.float32)
    ours = fairgrpo.group_advantages(r, g, scale=scale)
    trl = trl_advantages(r, g, scale)
    # Where a group's rewards are all equal, the exact std is 0: we give 0, while TRL's float32
    # mean can miss the value by an ulp, which its 1/(0 + 1e-4) scale magnifies to ~1e-3.
    grouped = r.astype(np.float64).reshape(-1, g)
    const = np.repeat(np.nanmax(grouped, axis=1) == np.nanmin(grouped, axis=1), g) if g > 1 else None
    if scale == "batch" and np.nanmax(r) == np.nanmin(r) and len(r) > 1:
        const = np.ones(len(r), dtype=bool)
    if const is not None and scale in ("group", "batch"):
        assert np.all(ours[const] == 0) and np.all(np.abs(trl[const]) < 1e-2)
        ours, trl = ours[~const], trl[~const]
    np.testing.assert_allclose(ours, trl, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------ k-means


@st.composite
def point_sets(draw):
    n = draw(st.integers(1, 300))
    d = draw(st.integers(1, 10))
    dtype = draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["binary", "graded", "continuous", "duplicated"]))
    if kind == "binary":
        x = rng.integers(0, 2, (n, d))
    elif kind == "graded":
        x = rng.integers(0, 5, (n, d)) / 4
    elif kind == "continuous":
        x = rng.normal(size=(n, d)) + 3 * rng.integers(0, 3, (n, 1))
    else:
        x = np.repeat(rng.normal(size=(max(1, n // 10), d)), 10, axis=0)[:n]
        if len(x) < n:
            x = np.concatenate([x, x[: n - len(x)]])
    return np.ascontiguousarray(x.astype(dtype))


@SETTINGS
@given(point_sets(), st.integers(1, 6), st.integers(0, 1000))
def test_kmeans_plusplus_matches_reference(x, k, seed):
    ours = fairgrpo.kmeans_plusplus(x, k, seed=seed)
    np.testing.assert_array_equal(ours, ref.kmeans_plusplus(x, k, seed))


ALGORITHMS = st.sampled_from(["lloyd", "hamerly"])


@SETTINGS
@given(point_sets(), st.integers(1, 6), st.integers(0, 1000), st.sampled_from([0.0, 1e-4]), ALGORITHMS)
def test_kmeans_matches_reference(x, k, seed, tol, algorithm):
    """Binary, graded and duplicated rows put many rows at equal distance from two centres:
    Hamerly's bounds must never skip such a row when its label could change."""
    ours = fairgrpo.kmeans(x, k, seed=seed, max_iter=50, tol=tol, algorithm=algorithm)
    want = ref.kmeans(x, k, seed=seed, max_iter=50, tol=tol, algorithm=algorithm)
    np.testing.assert_array_equal(ours.labels, want.labels)
    np.testing.assert_array_equal(ours.sizes, want.sizes)
    assert ours.n_iter == want.n_iter
    np.testing.assert_array_equal(ours.centroids, want.centroids)
    assert ours.inertia == pytest.approx(want.inertia, rel=1e-12, abs=1e-12)


@SETTINGS
@given(point_sets(), st.integers(1, 5), st.integers(0, 50), ALGORITHMS)
def test_kmeans_bitwise_identical_for_any_thread_count(x, k, seed, algorithm):
    a = fairgrpo.kmeans(x, k, seed=seed, n_threads=1, algorithm=algorithm)
    b = fairgrpo.kmeans(x, k, seed=seed, n_threads=2, algorithm=algorithm)
    c = fairgrpo.kmeans(x, k, seed=seed, n_threads=3, algorithm=algorithm)
    for other in (b, c):
        np.testing.assert_array_equal(a.labels, other.labels)
        np.testing.assert_array_equal(a.centroids, other.centroids)
        assert a.inertia == other.inertia and a.n_iter == other.n_iter


@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
def test_kmeans_bitwise_identical_across_threads_on_many_chunks(algorithm):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40_000, 6)) + rng.integers(0, 4, (40_000, 1))).astype(np.float32)
    a = fairgrpo.kmeans(x, 4, seed=1, n_threads=1, algorithm=algorithm)
    b = fairgrpo.kmeans(x, 4, seed=1, n_threads=2, algorithm=algorithm)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("d", "k"), [(10, 3), (4, 8), (17, 3), (2, 1)])
def test_hamerly_matches_reference_on_many_chunks(dtype, d, k):
    """Overlapping blobs over several chunks: the bounded passes measure dense windows
    straight from x and gather sparse rows, and most rows are skipped after a few
    iterations; every iteration's labels must still be Lloyd's (the reference measures
    every row)."""
    rng = np.random.default_rng(d * 10 + k)
    n = 9000
    x = (rng.normal(0, 0.5, (k, d))[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)
    init = x[:k].astype(np.float64)
    ours = fairgrpo.kmeans(x, k, init=init, max_iter=60, tol=0.0, algorithm="hamerly")
    want = ref.kmeans(x, k, init=init, max_iter=60, tol=0.0, algorithm="hamerly")
    assert ours.n_iter == want.n_iter
    np.testing.assert_array_equal(ours.labels, want.labels)
    np.testing.assert_array_equal(ours.centroids, want.centroids)
    assert ours.inertia == pytest.approx(want.inertia, rel=1e-12)
    lloyd = fairgrpo.kmeans(x, k, init=init, max_iter=60, tol=0.0, algorithm="lloyd")
    np.testing.assert_allclose(ours.centroids, lloyd.centroids, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_hamerly_on_binary_reward_vectors(k):
    """Rollout rewards as the trainer clusters them: a few distinct 0/1 vectors, each
    repeated thousands of times, so whole blocks of rows tie between centres."""
    rng = np.random.default_rng(k)
    p = rng.uniform(0.1, 0.9, 20_000)[:, None]
    x = (rng.uniform(size=(20_000, 8)) < p).astype(np.float32)
    ours = fairgrpo.kmeans(x, k, seed=3, max_iter=100, tol=0.0, algorithm="hamerly")
    want = ref.kmeans(x, k, seed=3, max_iter=100, tol=0.0, algorithm="hamerly")
    assert ours.n_iter == want.n_iter
    np.testing.assert_array_equal(ours.labels, want.labels)
    np.testing.assert_array_equal(ours.centroids, want.centroids)


@SETTINGS
@given(point_sets(), st.integers(1, 4), st.floats(0.0, 0.5))
def test_select_k_matches_reference(x, k_max, tol):
    k, res = fairgrpo.select_k(x, k_max=k_max, tol=tol)
    k_ref, res_ref, _, _ = ref.select_k(x, k_max, tol)
    assert k == k_ref
    np.testing.assert_array_equal(res.labels, res_ref.labels)
    assert res.inertia == pytest.approx(res_ref.inertia, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("n", "d", "k"), [(2000, 10, 3), (5000, 4, 8), (300, 16, 5)])
def test_kmeans_inertia_matches_scikit_learn(dtype, n, d, k):
    """Same data, same initial centres, same iteration count as scikit-learn's Lloyd."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(n + d + k)
    x = (rng.normal(size=(n, d)) + 2 * rng.integers(0, k, (n, 1))).astype(dtype)
    init = x[rng.choice(n, k, replace=False)].astype(np.float64)
    sk = KMeans(n_clusters=k, init=init.astype(dtype), n_init=1, max_iter=300, tol=1e-4, algorithm="lloyd")
    sk.fit(x)
    ours = fairgrpo.kmeans(x, k, init=init, max_iter=sk.n_iter_, tol=1e-4)
    rel = 1e-6 if dtype == np.float64 else 1e-5
    assert ours.inertia == pytest.approx(float(sk.inertia_), rel=rel)
    assert ours.n_iter == sk.n_iter_
    assert (ours.labels == sk.labels_).mean() > 0.999


def test_k_above_distinct_rows_is_defined():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    res = fairgrpo.kmeans(x, 5)
    assert res.inertia == 0.0
    assert sorted(res.sizes.tolist()) == [0, 0, 0, 1, 2]
    k, res = fairgrpo.select_k(x, k_max=3)
    assert k == 2 and res.inertia == 0.0


# ------------------------------------------------------------------ FairAdvantage


@st.composite
def fair_runs(draw):
    """A few steps of labelled / unlabelled prompts over one to three sources."""
    preset = draw(st.sampled_from(["faithful", "robust"]))
    opts = {
        "stats": draw(st.sampled_from(["cumulative", "ema", "batch"])),
        "features": draw(st.sampled_from(["sorted", "raw"])),
        "scale": draw(st.sampled_from(["group", "batch", "none"])),
        "renorm": draw(st.sampled_from(["std", "zscore", "none"])),
        "use_groups": draw(st.booleans()),
    }
    g = draw(st.integers(1, 6))
    dtype = draw(DTYPES)
    n_sources = draw(st.integers(1, 3))
    labelling = draw(st.sampled_from(["mixed", "all_labelled", "all_unknown"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        p = draw(st.integers(1, 20))
        r = rng.integers(0, 2, p * g).astype(dtype)
        if draw(st.booleans()):
            r[rng.random(p * g) < 0.1] = np.nan
        sources = [f"s{v}" for v in rng.integers(0, n_sources, p)]
        groups: list = [["f", "m", "x"][v] for v in rng.integers(0, 3, p)]
        if labelling == "mixed":
            groups = [None if rng.random() < 0.4 else v for v in groups]
        elif labelling == "all_unknown":
            groups = [None] * p
        steps.append((r, sources, groups))
    return preset, opts, g, steps


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fair_runs())
def test_fair_advantage_matches_reference(run):
    preset, opts, g, steps = run
    ours = fairgrpo.FairAdvantage(preset, **opts)
    want = ref.RefFair(preset, **opts)
    for r, sources, groups in steps:
        out = ours(r, g, sources=sources, groups=groups)
        adv, w, cl = want(r, g, sources, groups)
        assert_same(out.advantages, adv)
        np.testing.assert_allclose(out.weights, w, rtol=1e-12)
        np.testing.assert_array_equal(out.clusters, cl)


@SETTINGS
@given(fair_runs(), st.integers(1, 3))
def test_fair_advantage_thread_count_does_not_change_bits(run, threads):
    preset, opts, g, steps = run
    a = fairgrpo.FairAdvantage(preset, n_threads=1, **opts)
    b = fairgrpo.FairAdvantage(preset, n_threads=threads, **opts)
    for r, sources, groups in steps:
        oa = a(r, g, sources=sources, groups=groups)
        ob = b(r, g, sources=sources, groups=groups)
        np.testing.assert_array_equal(oa.advantages, ob.advantages)
        np.testing.assert_array_equal(oa.weights, ob.weights)


def test_faithful_falls_back_to_the_score_for_a_group_that_never_succeeds():
    """mu_dg = 0 makes the factor 0: the released code then uses the unweighted score."""
    r = np.array([0, 0, 0, 0, 1, 0, 1, 1], dtype=np.float64)  # group "a" all wrong
    fa = fairgrpo.FairAdvantage("faithful")
    out = fa(r, 4, sources=["s", "s"], groups=["a", "b"])
    assert out.stats["groups"]["s/a"]["fallback"] is True
    assert out.weights[0] == 1.0
    robust = fairgrpo.FairAdvantage("robust")(r, 4, sources=["s", "s"], groups=["a", "b"])
    # robust floors the mean: the hard group gets the larger (capped) weight instead
    assert robust.weights[0] > robust.weights[1]
    assert np.isfinite(robust.advantages).all()


def test_fair_advantage_with_integer_sources_and_no_groups():
    """Integer sources and no groups over several chunks: after the first step the labels are
    looked up inside pass 1 (every prompt unlabelled, so the sources go to the clustering);
    the reference's results, and the same bits for 1 and 2 threads."""
    rng = np.random.default_rng(5)
    want = ref.RefFair("robust")
    outs = {t: fairgrpo.FairAdvantage("robust", n_threads=t) for t in (1, 2)}
    for step in range(3):
        p, g = 2048 * 2 + 300 + step, 8
        r = (rng.random(p * g) < rng.uniform(0.2, 0.8)).astype(np.float32)
        sources = rng.integers(0, 3, p)
        got = {t: fa(r, g, sources=sources) for t, fa in outs.items()}
        adv, w, cl = want(r, g, [int(s) for s in sources], [None] * p)
        assert_same(got[1].advantages, adv)
        np.testing.assert_allclose(got[1].weights, w, rtol=1e-12)
        np.testing.assert_array_equal(got[1].clusters, cl)
        np.testing.assert_array_equal(got[2].advantages, got[1].advantages)
        np.testing.assert_array_equal(got[2].clusters, got[1].clusters)


@pytest.mark.parametrize("g", [4, 8, 10, 12])
@pytest.mark.parametrize("scale", ["group", "batch"])
def test_fair_advantage_on_large_binary_batches(g, scale):
    """0/1 rewards in runs of 128 prompts take the pattern table; runs broken by a NaN, a 0.5
    or a -0.0 reward, and a short last run, do not. Three steps (the "batch" scale changes the
    table every step): the reference's results, and the same bits for 1, 2 and 3 threads."""
    rng = np.random.default_rng(g)
    runs = []
    for step in range(3):
        p = 128 * 40 + 77 + step
        r = (rng.random(p * g) < rng.uniform(0.2, 0.8)).astype(np.float32)
        r[: 3 * g] = 1.0  # constant prompts: std 0
        r[128 * g * 3 + 5] = np.nan
        r[128 * g * 7 + 1] = 0.5
        r[128 * g * 11 + 2] = -0.0
        sources = rng.integers(0, 3, p)
        groups = np.where(rng.random(p) < 0.2, -1, rng.integers(0, 4, p))
        runs.append((r, sources, groups))
    want = ref.RefFair("robust", scale=scale)
    outs = {t: fairgrpo.FairAdvantage("robust", scale=scale, n_threads=t) for t in (1, 2, 3)}
    for r, sources, groups in runs:
        got = {t: fa(r, g, sources=sources, groups=groups) for t, fa in outs.items()}
        adv, w, cl = want(r, g, [int(s) for s in sources], [None if v < 0 else int(v) for v in groups])
        assert_same(got[1].advantages, adv)
        np.testing.assert_allclose(got[1].weights, w, rtol=1e-12)
        np.testing.assert_array_equal(got[1].clusters, cl)
        for t in (2, 3):
            np.testing.assert_array_equal(got[t].advantages, got[1].advantages)
            np.testing.assert_array_equal(got[t].weights, got[1].weights)
