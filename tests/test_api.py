"""The public Python API: names, dtypes, errors, state round trips, logging stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fairgrpo
from fairgrpo import FairAdvantage, FairGRPOError, group_advantages, kmeans, select_k


def binary_batch(p: int, g: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, p * g).astype(dtype)


def test_public_names():
    for name in ("group_advantages", "kmeans", "select_k", "FairAdvantage", "FairGRPOError", "__version__"):
        assert name in fairgrpo.__all__
    assert issubclass(FairGRPOError, ValueError)
    for sub in (fairgrpo.ShapeError, fairgrpo.OptionError, fairgrpo.NonFiniteError, fairgrpo.StateError):
        assert issubclass(sub, FairGRPOError)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_are_kept(dtype):
    r = binary_batch(5, 4, dtype=dtype)
    assert group_advantages(r, 4).dtype == dtype
    assert FairAdvantage()(r, 4).advantages.dtype == dtype
    assert kmeans(r.reshape(5, 4), 2).centroids.dtype == np.float64


def test_two_d_rewards_and_torch_tensors():
    torch = pytest.importorskip("torch")
    r = binary_batch(6, 4)
    a = group_advantages(r.reshape(6, 4), 4)
    assert a.shape == (6, 4)
    np.testing.assert_array_equal(a.ravel(), group_advantages(torch.from_numpy(r), 4))
    out = FairAdvantage()(torch.from_numpy(r), 4, sources=torch.tensor([0, 1, 0, 1, 0, 1]))
    assert out.advantages.shape == (24,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algorithm", ["lloyd", "hamerly"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kmeans_from_given_centres_names_the_non_finite_value(dtype, algorithm, bad):
    """From given centres there is no scan before the first pass (the pass looks for NaN and
    infinities itself): the error must still name the first bad value, and leave x as it was."""
    x = np.random.default_rng(0).normal(size=(20_000, 10)).astype(dtype)
    x[12_345, 3] = bad
    x[17_000, 0] = bad
    before = x.copy()
    with pytest.raises(fairgrpo.NonFiniteError, match=r"`x`.*index 123453\b"):
        kmeans(x, 3, init=x[:3], algorithm=algorithm)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: group_advantages(np.zeros(7), 2), fairgrpo.ShapeError, ["rewards", "divisible"]),
        (lambda: group_advantages(np.zeros(4), 0), fairgrpo.OptionError, ["group_size"]),
        (lambda: group_advantages(np.array([np.inf, 0.0]), 2), fairgrpo.OptionError, ["rewards", "infinite"]),
        (lambda: group_advantages(np.zeros(4), 2, scale="groups"), fairgrpo.OptionError, ["scale", "groups"]),
        (lambda: group_advantages(np.array(["a", "b"]), 2), fairgrpo.ShapeError, ["rewards", "dtype"]),
        (lambda: kmeans(np.zeros((4, 2)), 0), fairgrpo.OptionError, ["k", ">= 1"]),
        (lambda: kmeans(np.zeros(4), 2), fairgrpo.ShapeError, ["x", "reshape"]),
        (lambda: kmeans(np.array([[np.nan, 0.0]]), 1), fairgrpo.NonFiniteError, ["x", "index 0"]),
        (lambda: kmeans(np.zeros((0, 3)), 1), fairgrpo.ShapeError, ["x"]),
        (lambda: kmeans(np.zeros((4, 2)), 2, init=np.zeros((3, 2))), fairgrpo.ShapeError, ["init"]),
        (lambda: kmeans(np.zeros((4, 2)), 2, init="random"), fairgrpo.OptionError, ["init", "random"]),
        (lambda: kmeans(np.zeros((4, 2)), 2, n_threads=0), fairgrpo.OptionError, ["n_threads"]),
        (lambda: kmeans(np.zeros((4, 2)), 2, algorithm="elk"), fairgrpo.OptionError, ["algorithm", "elk"]),
        (
            lambda: fairgrpo._core.kmeans(np.zeros((4, 2)), 2, algorithm="x"),
            fairgrpo.FairGRPOError,
            ["algorithm"],
        ),
        (lambda: select_k(np.zeros((4, 2)), k_max=0), fairgrpo.OptionError, ["k_max"]),
        (lambda: FairAdvantage(preset="fast"), fairgrpo.OptionError, ["preset", "fast"]),
        (lambda: FairAdvantage(temperature=2), fairgrpo.OptionError, ["temperature", "valid options"]),
        (lambda: FairAdvantage(stats="window"), fairgrpo.OptionError, ["stats", "window"]),
        (lambda: FairAdvantage(ema_decay=1.0), fairgrpo.OptionError, ["ema_decay"]),
        (lambda: FairAdvantage(w_cap=0.5), fairgrpo.OptionError, ["w_cap"]),
        (lambda: FairAdvantage(k_max=0), fairgrpo.OptionError, ["k_max"]),
        (lambda: FairAdvantage()(np.zeros(8), 4, groups=["a"]), fairgrpo.ShapeError, ["groups", "2 prompts"]),
        (lambda: FairAdvantage()(np.zeros(8), 4, sources=["a", None]), fairgrpo.OptionError, ["sources"]),
        (lambda: FairAdvantage()(np.zeros(8), 4, groups=[-3, 1]), fairgrpo.OptionError, ["groups", "-3"]),
        (lambda: FairAdvantage()(np.zeros(8), 4, groups="ab"), fairgrpo.ShapeError, ["groups", "string"]),
    ],
)
def test_bad_input_gets_an_error_that_names_it(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value), str(e.value)


def test_labels_of_the_wrong_type_are_type_errors():
    with pytest.raises(TypeError, match="groups"):
        FairAdvantage()(np.zeros(8), 4, groups=[1.5, "a"])


def test_an_error_leaves_the_state_untouched():
    fa = FairAdvantage("faithful")
    r = binary_batch(4, 4)
    fa(r, 4, sources=["a", "b", "a", "b"], groups=["f", None, "m", None])
    before = fa.state_dict()
    with pytest.raises(FairGRPOError):
        fa(r, 4, sources=["a", "b", "new", "b"], groups=["f", None, "m"])
    with pytest.raises(FairGRPOError):
        fa(binary_batch(2, 8), 8, sources=["a", "b"])  # group size changed under a clustered source
    assert fa.state_dict() == before


def test_state_round_trips_exactly_and_resumes_bit_for_bit():
    rng = np.random.default_rng(3)
    kw = dict(stats="ema", cluster_update="refit")
    a = FairAdvantage("robust", **kw)
    steps = []
    for _ in range(6):
        r = rng.integers(0, 3, 30 * 5).astype(np.float32) / 2
        src = rng.choice(["cleveland", "hungary", 7], 30).tolist()
        grp = [None if rng.random() < 0.5 else str(v) for v in rng.integers(0, 4, 30)]
        steps.append((r, src, grp))
    for r, src, grp in steps[:3]:
        a(r, 5, sources=src, groups=grp)
    state = json.loads(json.dumps(a.state_dict()))
    b = FairAdvantage.from_state_dict(state)
    assert b.state_dict() == a.state_dict()
    for r, src, grp in steps[3:]:
        oa, ob = a(r, 5, sources=src, groups=grp), b(r, 5, sources=src, groups=grp)
        np.testing.assert_array_equal(oa.advantages, ob.advantages)
        np.testing.assert_array_equal(oa.weights, ob.weights)
        assert oa.stats == ob.stats


def test_bad_state_is_a_state_error():
    with pytest.raises(fairgrpo.StateError):
        FairAdvantage.from_state_dict({"version": 1, "core": {"config": {}}})
    with pytest.raises(fairgrpo.StateError):
        FairAdvantage.from_state_dict({"nothing": 1})


def test_stats_report_sources_groups_and_clusters():
    rng = np.random.default_rng(0)
    fa = FairAdvantage("robust")
    for _ in range(3):
        r = rng.integers(0, 2, 40 * 4).astype(np.float32)
        src = ["a"] * 20 + ["b"] * 20
        grp = ["f", "m", None, None] * 10
        hidden = ["f", "m", "f", "m"] * 10
        out = fa(r, 4, sources=src, groups=grp, true_groups=hidden)
    s = out.stats
    assert s["step"] == 3 and s["n_prompts"] == 40
    a = s["sources"]["a"]
    assert a["n"] == 60 and a["n_batch"] == 20 and a["history_rows"] == 30
    assert a["n_clusters"] >= 1 and sum(a["cluster_sizes"]) == 30
    assert -1.0 <= a["stability_ari"] <= 1.0 and a["true_ari"] is not None
    assert {"a/f", "a/m", "b/f", "b/m"} <= set(s["groups"])
    assert any(k.startswith("a/cluster") for k in s["groups"])
    total_mass = sum(v["grad_mass"] for v in s["groups"].values())
    assert total_mass == pytest.approx(np.abs(out.advantages).sum(), rel=1e-5)
    # robust weights have mean 1 over the batch's prompts
    assert out.weights.mean() == pytest.approx(1.0, rel=1e-9)
    assert (out.clusters[[0, 1]] == -1).all() and (out.clusters[[2, 3]] >= 0).all()


def test_minority_and_low_reward_groups_weigh_more():
    # group f: 2 prompts, mostly wrong; group m: 8 prompts, mostly right
    r = np.array([1, 0, 0, 0] * 2 + [1, 1, 1, 0] * 8, dtype=np.float64)
    out = FairAdvantage("robust")(r, 4, sources=["s"] * 10, groups=["f"] * 2 + ["m"] * 8)
    assert out.weights[0] > 2 * out.weights[5]


def test_nd_ignores_labels_and_clusters_everything():
    r = binary_batch(12, 4, seed=2)
    out = FairAdvantage("robust", use_groups=False)(r, 4, sources=["s"] * 12, groups=["f", "m"] * 6)
    assert (out.clusters >= 0).all()
    assert all(v["kind"] == "cluster" for v in out.stats["groups"].values())


def test_incremental_clusters_stay_close_to_refit():
    rng = np.random.default_rng(5)
    refit = FairAdvantage("robust", cluster_update="refit")
    inc = FairAdvantage("robust", cluster_update="incremental")
    probs = np.array([0.1, 0.5, 0.9])
    for _ in range(8):
        kinds = rng.integers(0, 3, 50)
        r = (rng.random((50, 8)) < probs[kinds, None]).astype(np.float32).ravel()
        a = refit(r, 8, sources=["s"] * 50)
        b = inc(r, 8, sources=["s"] * 50)
    ari = fairgrpo.adjusted_rand_index(a.clusters, b.clusters)
    assert ari > 0.5, ari
    assert b.stats["sources"]["s"]["history_rows"] == 400


def test_ari_and_nmi_helpers():
    assert fairgrpo.adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert fairgrpo.adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.5714285714285715)
    assert fairgrpo.normalized_mutual_info([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.8)


def test_repr_and_config():
    fa = FairAdvantage("faithful", k_max=2)
    assert "faithful" in repr(fa)
    assert fa.config["k_max"] == 2 and fa.config["features"] == "raw"
    assert fa.step_count == 0


def test_out_buffers_are_written_in_place_and_checked():
    r = binary_batch(6, 4)
    buf = np.empty_like(r)
    res = group_advantages(r, 4, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, group_advantages(r, 4))
    fa, fb = FairAdvantage(), FairAdvantage()
    buf2 = np.empty_like(r)
    a = fa(r, 4, sources=["a", "b"] * 3, out=buf2)
    assert a.advantages is buf2
    np.testing.assert_array_equal(buf2, fb(r, 4, sources=["a", "b"] * 3).advantages)
    with pytest.raises(fairgrpo.ShapeError, match="out"):
        group_advantages(r, 4, out=np.empty(5, dtype=np.float32))
    with pytest.raises(fairgrpo.ShapeError, match="out"):
        group_advantages(r, 4, out=np.empty(24, dtype=np.float64))  # wrong dtype
    with pytest.raises(fairgrpo.ShapeError, match="out"):
        group_advantages(r, 4, out=r)  # aliases the input


def test_weights_and_clusters_are_recycled_only_once_unreferenced():
    # weights and clusters of >= 1 MiB come from the pool too (a fresh 8 MB array can page
    # fault on its first write): a live result keeps its memory, a freed one gives it back
    import gc

    p, g = 200_000, 4
    fa = FairAdvantage("robust")
    r = binary_batch(p, g, seed=5)
    src = np.arange(p) % 3
    grp = np.where(np.arange(p) % 7 == 0, -1, np.arange(p) % 2)
    o1 = fa(r, g, sources=src, groups=grp)
    w1, c1 = o1.weights.copy(), o1.clusters.copy()
    addr = (o1.weights.ctypes.data, o1.clusters.ctypes.data)
    o2 = fa(binary_batch(p, g, seed=6), g, sources=src, groups=grp)
    assert {o2.weights.ctypes.data, o2.clusters.ctypes.data}.isdisjoint(addr)
    np.testing.assert_array_equal(o1.weights, w1)
    np.testing.assert_array_equal(o1.clusters, c1)
    del o1
    gc.collect()
    o3 = fa(r, g, sources=src, groups=grp)
    assert (o3.weights.ctypes.data, o3.clusters.ctypes.data) == addr
    assert type(o3.weights.base).__name__ == type(o3.clusters.base).__name__ == "RecycledBuffer"
    assert o3.weights.dtype == np.float64 and o3.clusters.dtype == np.int64
    assert o3.weights.flags.writeable and o3.clusters.flags.c_contiguous
    b = FairAdvantage("robust")
    b(r, g, sources=src, groups=grp)
    b(binary_batch(p, g, seed=6), g, sources=src, groups=grp)
    want = b(r, g, sources=src, groups=grp)
    np.testing.assert_array_equal(o3.weights, want.weights)
    np.testing.assert_array_equal(o3.clusters, want.clusters)


def test_large_outputs_are_recycled_only_once_unreferenced():
    # advantages of >= 1 MiB come from a pool of freed outputs: a result (or a view of
    # it) that is still alive is never handed out again
    import gc

    p, g = 500_000, 10
    fa = FairAdvantage("robust")
    r = binary_batch(p, g, seed=3)
    src = np.arange(p) % 3
    a1 = fa(r, g, sources=src).advantages
    keep = a1.copy()
    view = a1[::3]
    addr = a1.ctypes.data
    del a1
    gc.collect()
    a2 = fa(binary_batch(p, g, seed=4), g, sources=src).advantages
    assert a2.ctypes.data != addr and a2.flags.writeable and a2.flags.c_contiguous
    np.testing.assert_array_equal(view, keep[::3])
    del view, a2
    gc.collect()
    fresh = FairAdvantage("robust")
    fresh(r, g, sources=src)
    a3 = fresh(r, g, sources=src).advantages  # memory of an earlier result, fully rewritten
    b = FairAdvantage("robust")
    b(r, g, sources=src)
    np.testing.assert_array_equal(a3, b(r, g, sources=src, out=np.full_like(r, 7.0)).advantages)
