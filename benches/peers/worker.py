"""One benchmark worker process: ours or one peer, on one case, driven by ``benches/compare.py``.

Usage (by compare.py only): ``python worker.py '<json spec>'``. The worker loads its data from
the .npy files named in the spec, sets up and runs the work once untimed (warm-up), answers
``{"ready": ...}`` and then, for every line read from stdin:

- ``run``    -> runs the work once, answers ``{"t": seconds, ...}`` (only the work is timed);
- ``finish`` -> untimed follow-up (saves outputs for the cross-checks), answers ``{...}``;
- ``quit`` / end of input -> exits.

The protocol goes over a private copy of stdout; anything the libraries print goes to stderr.
Thread counts come from the environment compare.py sets (RAYON_NUM_THREADS, OMP_NUM_THREADS,
...); torch also gets ``torch.set_num_threads``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

Runner = tuple[Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]


def _threads() -> int:
    return int(os.environ.get("BENCH_THREADS", "2"))


def _blas_info() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl missing"]
    out = []
    for lib in threadpool_info():
        arch = lib.get("architecture")
        out.append(
            f"{lib.get('prefix')} {lib.get('version') or ''} "
            f"{'kernel=' + arch + ' ' if arch else ''}threads={lib.get('num_threads')}".replace("  ", " ")
        )
    return out


_LAST: dict[str, float] = {}


def _done(**kw: Any) -> dict[str, Any]:
    """A run's answer; adds the CPU time of the last timed call (all threads of the process)."""
    if "cpu" in _LAST:
        kw.setdefault("cpu", _LAST.pop("cpu"))
    return kw


def _timed(f: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of f(); its process CPU time (to tell how many cores it kept busy) goes to _LAST."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    v = f()
    t = time.perf_counter() - t0
    _LAST["cpu"] = time.process_time() - c0
    return t, v


# ------------------------------------------------------------------------------------ memory bandwidth


def setup_bandwidth(spec: dict[str, Any]) -> Runner:
    """Read bandwidth: sum over a large array (f32 data read as f64, 1 and 2 threads, the best of
    both); write bandwidth: fill of the same array (memset, which streams past the caches)."""
    n_bytes = int(spec["bytes"])
    a = np.ones(n_bytes // 4, dtype=np.float32)
    v = a.view(np.float64)

    def one(threads: int, write: bool = False) -> float:
        parts = np.array_split(v, threads)
        res = [0.0] * threads

        def work(i: int) -> None:
            if write:
                parts[i].fill(0.0)  # numpy releases the GIL in fills of large arrays
            else:
                res[i] = float(parts[i].sum())  # and in reductions

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0

    one(1)

    def run() -> dict[str, Any]:
        t1, t2 = one(1), one(2)
        w = min(one(1, write=True), one(2, write=True))
        return _done(t=min(t1, t2), gbs1=n_bytes / t1 / 1e9, gbs2=n_bytes / t2 / 1e9, write=n_bytes / w / 1e9)

    return run, lambda: {}


# ------------------------------------------------------------------------------------ Lloyd, k-means++


def setup_lloyd(spec: dict[str, Any]) -> Runner:
    x = np.load(spec["x"])
    c = np.load(spec["init"])
    k, m = c.shape[0], int(spec["max_iter"])
    impl, algorithm = spec["impl"], spec.get("algorithm", "lloyd")
    if impl == "ours":
        import fairgrpo

        def run() -> dict[str, Any]:
            t, res = _timed(lambda: fairgrpo.kmeans(x, k, init=c, max_iter=m, tol=0.0, algorithm=algorithm))
            return _done(
                t=t, n_iter=res.n_iter, inertia=res.inertia, centres=np.asarray(res.centroids).tolist()
            )

    elif impl == "sklearn":
        from sklearn.cluster import KMeans

        def run() -> dict[str, Any]:
            km = KMeans(n_clusters=k, init=c, n_init=1, max_iter=m, tol=0.0, algorithm=algorithm)
            t, _ = _timed(lambda: km.fit(x))
            cen = km.cluster_centers_.tolist()
            return _done(t=t, n_iter=int(km.n_iter_), inertia=float(km.inertia_), centres=cen)

    elif impl == "faiss":
        import faiss

        c32 = np.ascontiguousarray(c, dtype=np.float32)

        def run() -> dict[str, Any]:
            km = faiss.Kmeans(
                x.shape[1],
                k,
                niter=m,
                max_points_per_centroid=1 << 30,  # no subsampling: train on every point
                min_points_per_centroid=1,
                seed=1234,
                verbose=False,
            )
            t, _ = _timed(lambda: km.train(x, init_centroids=c32))
            dist, _ = km.index.search(x, 1)  # inertia of the final centres (untimed)
            cen = km.centroids.tolist()
            return _done(t=t, n_iter=m, inertia=float(dist.sum(dtype=np.float64)), centres=cen)

    else:
        raise ValueError(impl)
    run()
    return run, lambda: {}


def setup_kpp(spec: dict[str, Any]) -> Runner:
    x = np.load(spec["x"])
    k = int(spec["k"])
    impl = spec["impl"]
    last: dict[str, Any] = {}
    if impl == "ours":
        import fairgrpo

        def work() -> np.ndarray:
            return fairgrpo.kmeans_plusplus(x, k, seed=0)

    elif impl == "sklearn":
        from sklearn.cluster import kmeans_plusplus

        def work() -> np.ndarray:
            return kmeans_plusplus(x, k, random_state=0)[0]

    else:
        raise ValueError(impl)

    def run() -> dict[str, Any]:
        t, cen = _timed(work)
        last["c"] = cen
        return _done(t=t)

    def finish() -> dict[str, Any]:
        # potential (inertia) of the seeding, to show both seedings are of the same quality
        cen = np.asarray(last["c"], dtype=np.float32)
        best = np.full(len(x), np.inf, dtype=np.float32)
        for row in cen:
            np.minimum(best, ((x - row) ** 2).sum(axis=1), out=best)
        return {"potential": float(best.sum(dtype=np.float64))}

    run()
    return run, finish


# ------------------------------------------------------------------------------------ advantages


def setup_advantages(spec: dict[str, Any]) -> Runner:
    r = np.load(spec["rewards"])
    src = np.load(spec["sources"])
    grp = np.load(spec["groups"])
    g = int(spec["group_size"])
    work_name, impl = spec["work"], spec["impl"]
    last: dict[str, Any] = {}
    if impl == "ours":
        import fairgrpo

        fa = fairgrpo.FairAdvantage("robust")

        def work() -> Any:
            if work_name == "group":
                return fairgrpo.group_advantages(r, g)
            return fa(r, g, sources=src, groups=grp).advantages

    elif impl == "numpy":
        import np_advantages

        fa = np_advantages.FairAdvantageNumpy(int(spec["n_sources"]), int(spec["n_groups"]))

        def work() -> Any:
            if work_name == "group":
                return np_advantages.group_advantages(r, g)
            return fa(r, g, src, grp)[0]

    elif impl == "torch":
        import torch
        import torch_advantages

        torch.set_num_threads(_threads())
        rt, st, gt = torch.from_numpy(r), torch.from_numpy(src), torch.from_numpy(grp)
        fa = torch_advantages.FairAdvantageTorch(int(spec["n_sources"]), int(spec["n_groups"]))

        def work() -> Any:
            if work_name == "group":
                return torch_advantages.group_advantages(rt, g)
            return fa(rt, g, st, gt)[0]

    else:
        raise ValueError(impl)

    def run() -> dict[str, Any]:
        last.pop("a", None)  # free the previous output before timing, as a training loop would
        t, a = _timed(work)
        cpu = _LAST.pop("cpu")
        # then once more right away: the same step with both cores already awake (every
        # implementation takes two steps per round, so the stateful ones stay in step)
        del a
        t_hot, a = _timed(work)
        _LAST["cpu"] = cpu
        last["a"] = a
        return _done(t=t, t_hot=t_hot)

    def finish() -> dict[str, Any]:
        a = last["a"]
        a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
        np.save(spec["out"], a)
        return {}

    run()
    return run, finish


# ------------------------------------------------------------------------------------ implicit groups


def _plan(h: int, b: int) -> list[int]:
    """Step sizes that build a history of h rows: small steps, or one big step and 4 small ones."""
    if h <= 5 * b:
        return [b] * (h // b)
    return [h - 4 * b] + [b] * 4


def setup_implicit(spec: dict[str, Any]) -> Runner:
    pool = np.load(spec["pool"])  # (rows, G) f32 reward vectors, raw order
    h, b = int(spec["history"]), int(spec["batch"])
    g = pool.shape[1]
    impl = spec["impl"]
    last: dict[str, Any] = {}
    if impl in ("refit", "incremental"):
        import fairgrpo

        def fresh() -> Any:
            fa = fairgrpo.FairAdvantage("robust", cluster_update=impl)
            start = 0
            for n in _plan(h, b):
                fa(pool[start : start + n].ravel(), g, sources=np.zeros(n, np.int64), groups=None)
                start += n
            return fa

        batch = pool[h : h + b].ravel()
        zeros = np.zeros(b, np.int64)

        def run() -> dict[str, Any]:
            fa = fresh()  # untimed: the history of h rows, built by feeding steps
            t, out = _timed(lambda: fa(batch, g, sources=zeros, groups=None))
            last["fa"] = fa
            return _done(t=t, k=int(out.stats["sources"]["0"]["n_clusters"]))

        def finish() -> dict[str, Any]:
            core = last["fa"].state_dict()["core"]
            labels = np.asarray(core["clusters"][0]["labels"], dtype=np.int64)
            np.save(spec["out"], labels)
            return {"rows": len(labels)}

        # warm-up on a small history (code paths, allocator), not the full build
        fa0 = fairgrpo.FairAdvantage("robust", cluster_update=impl)
        for i in range(2):
            fa0(pool[i * b : (i + 1) * b].ravel(), g, sources=zeros, groups=None)

    elif impl == "sklearn":
        import sk_elbow

        feats = np.sort(pool[: h + b], axis=1)  # the same features ours clusters ("sorted")

        def run() -> dict[str, Any]:
            t, (k, labels) = _timed(lambda: sk_elbow.elbow_step(feats))
            last["labels"] = labels
            return _done(t=t, k=int(k))

        def finish() -> dict[str, Any]:
            np.save(spec["out"], np.asarray(last["labels"], dtype=np.int64))
            return {}

        sk_elbow.elbow_step(feats[: 2 * b])
    else:
        raise ValueError(impl)
    return run, finish


# ------------------------------------------------------------------------------------ bitwise identity


def _h(*arrays: Any) -> str:
    m = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        m.update(str(a.dtype).encode() + str(a.shape).encode())
        m.update(a.tobytes())
    return m.hexdigest()[:16]


def setup_identity(spec: dict[str, Any]) -> Runner:
    """Hashes of ours' outputs under this process's thread pool, and with n_threads=1 vs 2 in-process."""
    import fairgrpo

    x = np.load(spec["x"])
    r = np.load(spec["rewards"])
    src, grp = np.load(spec["sources"]), np.load(spec["groups"])
    pool = np.load(spec["pool"])
    g, gp = int(spec["group_size"]), pool.shape[1]

    # Work is cut into chunks of 4096 rows / 2048 prompts; sizes with an even number of chunks
    # are added so that a 2-thread pool is sure to split the work (see BENCHMARKS.md).
    xe = x[: len(x) // 8192 * 8192]
    pe = len(src) // 4096 * 4096
    re_, se, ge = r[: pe * g], src[:pe], grp[:pe]

    def all_hashes(nt: int | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for tag, xx in (("", x), (" (even chunks)", xe)):
            km = fairgrpo.kmeans(xx, 3, seed=0, max_iter=50, n_threads=nt)
            out["kmeans" + tag] = _h(km.labels, km.centroids, np.float64(km.inertia), np.int64(km.n_iter))
            km = fairgrpo.kmeans(xx, 3, seed=0, max_iter=50, algorithm="hamerly", n_threads=nt)
            out["kmeans hamerly" + tag] = _h(
                km.labels, km.centroids, np.float64(km.inertia), np.int64(km.n_iter)
            )
            out["kmeans_plusplus" + tag] = _h(fairgrpo.kmeans_plusplus(xx, 8, seed=0, n_threads=nt))
        kk, res = fairgrpo.select_k(np.sort(pool[:100_000], axis=1), 3, n_threads=nt)
        out["select_k"] = _h(np.int64(kk), res.labels, res.centroids)
        for tag, rr, ss, gg in (("", r, src, grp), (" (even chunks)", re_, se, ge)):
            out["group_advantages" + tag] = _h(fairgrpo.group_advantages(rr, g, n_threads=nt))
            fa = fairgrpo.FairAdvantage("robust", n_threads=nt)
            hs = []
            for _ in range(2):
                o = fa(rr, g, sources=ss, groups=gg)
                hs.append(_h(o.advantages, o.weights))
            out["FairAdvantage labelled" + tag] = _h(np.array(hs))
        for mode in ("refit", "incremental"):
            fa = fairgrpo.FairAdvantage("robust", cluster_update=mode, n_threads=nt)
            hs = []
            for i in range(4):
                rows = pool[i * 20_000 : (i + 1) * 20_000]
                o = fa(rows.ravel(), gp, sources=np.zeros(len(rows), np.int64), groups=None)
                hs.append(_h(o.advantages, o.weights, o.clusters))
            out[f"FairAdvantage unlabelled {mode}"] = _h(np.array(hs))
        return out

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        pool_default = all_hashes(None)
        one, two = all_hashes(1), all_hashes(2)
        return _done(t=time.perf_counter() - t0, pool=pool_default, n1=one, n2=two)

    return run, lambda: {}


# ------------------------------------------------------------------------------------ trainer


def _random_qwen2_05b(tok: Any) -> tuple[Any, Any]:
    """A randomly initialised Qwen2 of Qwen2.5-0.5B's layer shape (24 layers, hidden 896, GQA 14/2
    heads, MLP 4864) over ``tok``'s vocabulary: ~0.36B parameters without the 151k-token embedding."""
    from fairgrpo.models import builtin_policy

    shape = dict(hidden_size=896, num_layers=24, num_heads=14, intermediate_size=4864, num_kv_heads=2)
    return builtin_policy(tok, seed=0, **shape), tok


def setup_trainer(spec: dict[str, Any]) -> Runner:
    """One training run of ``steps`` steps per call: the built-in policy on the bundled heart data.

    ``impl``: ``trl`` (plain ``trl.GRPOTrainer``), ``grpo`` / ``fairgrpo`` (``FairGRPOTrainer``
    with that method). Same model initialisation, data, seed and batch for all; a third of the
    prompts have their group hidden, so FairGRPO also clusters. Returns the median step time
    (after ``skip`` warm-up steps) and, for FairGRPO, the time spent in the advantage strategy.

    ``model``: ``builtin`` (default: the tiny built-in policy, CPU, fp32), ``random-qwen2-0.5b``
    (a randomly initialised Qwen2 of Qwen2.5-0.5B's shape with the built-in word tokenizer: a
    realistic size with no download) or a model path / hub id. Any model but the built-in one
    trains on the GPU when there is one (bf16 mixed precision). ``completion``: tokens generated
    per rollout (default 1, the built-in recipe's one-token answer).
    """
    import tempfile

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from fairgrpo.config import FairGRPOConfig
    from fairgrpo.data import to_dataset
    from fairgrpo.models import build_tokenizer, load_policy
    from fairgrpo.rewards import accuracy_reward
    from fairgrpo.train import DataArgs, prepare_data
    from fairgrpo.trainer import FairGRPOTrainer

    torch.set_num_threads(int(spec["torch_threads"]))
    impl, steps, skip = spec["impl"], int(spec["steps"]), int(spec["skip"])
    prepared = prepare_data(DataArgs(), compact=True)
    records = [dict(r) for r in prepared.train]
    for r in records[::3]:
        r["group"] = None
    classes = list(prepared.train[0]["classes"])
    out_dir = tempfile.mkdtemp(prefix="fairgrpo-bench-trainer-")
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)

    # FairGRPO's own code per step: the time inside FairGRPOTrainer's two overrides minus the
    # time inside the TRL methods they call (``added``), measured directly so that it does not
    # drown in the step-to-step noise of a whole-step comparison
    clock = {"outer": 0.0, "inner": 0.0}

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                clock[key] += time.perf_counter() - t0

        return wrapper

    if impl != "trl":
        for name in ("_generate_and_score_completions", "_calculate_rewards"):
            setattr(GRPOTrainer, name, timed(getattr(GRPOTrainer, name), "inner"))
            setattr(FairGRPOTrainer, name, timed(getattr(FairGRPOTrainer, name), "outer"))

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.added: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["outer"] = clock["inner"] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)
            self.added.append(clock["outer"] - clock["inner"])

    model_name = spec.get("model", "builtin")
    on_gpu = model_name != "builtin" and torch.cuda.is_available()
    device = torch.cuda.get_device_name() if on_gpu else "cpu"

    def policy() -> tuple[Any, Any]:
        texts = [r["prompt"] for r in records]
        if model_name == "builtin":
            return load_policy(None, texts=texts, extra_words=classes, seed=0)
        if model_name == "random-qwen2-0.5b":
            return _random_qwen2_05b(build_tokenizer(texts, classes))
        return load_policy(model_name)

    def build() -> tuple[Any, StepTimer, list[float]]:
        model, tok = policy()
        opts = dict(
            output_dir=out_dir,
            use_cpu=not on_gpu,
            bf16=on_gpu,
            learning_rate=1e-3 if model_name == "builtin" else 1e-6,
            per_device_train_batch_size=int(spec["batch"]),
            num_generations=int(spec["group_size"]),
            max_completion_length=int(spec.get("completion", 1)),
            max_steps=steps,
            logging_steps=10**6,
            report_to="none",
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
        )
        if impl == "trl":
            cls, cfg = GRPOTrainer, GRPOConfig(**opts)
        else:
            cls, cfg = FairGRPOTrainer, FairGRPOConfig(method=impl, **opts)
        timer = StepTimer()
        tr = cls(
            model=model,
            reward_funcs=accuracy_reward,
            args=cfg,
            train_dataset=to_dataset(records),
            processing_class=tok,
            callbacks=[timer],
        )
        strat_t: list[float] = []
        if impl != "trl":
            inner = tr.strategy.compute

            def timed_compute(*a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return inner(*a, **kw)
                finally:
                    strat_t.append(time.perf_counter() - t0)

            tr.strategy.compute = timed_compute
        return tr, timer, strat_t

    def run() -> dict[str, Any]:
        tr, timer, strat_t = build()  # untimed
        tr.train()
        ts = timer.times[skip:]
        st = float(np.median(strat_t[skip:])) if strat_t[skip:] else 0.0
        added = float(np.median(timer.added[skip:])) if impl != "trl" else 0.0
        if on_gpu:
            torch.cuda.empty_cache()
        return _done(
            t=float(np.median(ts)),
            mean=float(np.mean(ts)),
            strategy=st,
            added=added,
            steps=len(timer.times),
            device=device,
        )

    return run, lambda: {}


SETUPS = {
    "trainer": setup_trainer,
    "bandwidth": setup_bandwidth,
    "lloyd": setup_lloyd,
    "kpp": setup_kpp,
    "advantages": setup_advantages,
    "implicit": setup_implicit,
    "identity": setup_identity,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to stderr, never into the protocol
    sys.stdout = sys.stderr

    def say(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        run, finish = SETUPS[spec["case"]](spec)
    except Exception as e:
        say({"error": f"{type(e).__name__}: {e}"})
        return
    say({"ready": True, "blas": _blas_info(), "pid": os.getpid()})
    for line in sys.stdin:
        op = line.strip()
        if op == "run":
            say(run())
        elif op == "finish":
            say(finish())
        else:
            break


if __name__ == "__main__":
    main()
