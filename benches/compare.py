"""FairGRPO's Rust core side by side with scikit-learn, faiss, numpy and torch (issue 4).

    python benches/compare.py            # the full run (~5 min on 2 idle cores)
    python benches/compare.py --quick    # small sizes, 3 repeats: checks the script (< 1 min)

Prints one table: work, size, threads, ours, peer, ratio (peer time / ours), % of the memory
lower bound, and notes (iterations, inertia, agreement with ours). How it measures:

- every implementation runs in its own process (``benches/peers/worker.py``), on the same data,
  written once to .npy files in a temporary directory; each worker warms up once untimed;
- the workers of one case stay alive and are timed in turn, ``--repeats`` rounds (>= 5 for the
  full run), so ours and the peers see the same machine state; each cell is the median; the
  driver pauses 20 ms before each timed call (libgomp's threads spin ~5-7 ms after torch's
  work and would otherwise hold a core while the next worker is timed);
- threads: RAYON_NUM_THREADS = OMP_NUM_THREADS = OPENBLAS/MKL_NUM_THREADS = torch threads = 2
  (Lloyd also at 1); faiss adds OMP_WAIT_POLICY=PASSIVE. The peers' processes run without
  OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (a quirk of these machines that slows numpy's BLAS);
  the BLAS kernel threadpoolctl reports in each peer is printed;
- the lower bound is the bytes a single streaming pass must move divided by the machine's read
  bandwidth, measured in the same run (numpy sum over a 400 MB array, 1 and 2 threads, best).

Also: the implicit-group step per training step as the unlabelled history grows, against the
scikit-learn elbow pipeline (PNG under benches/results/), bitwise identity of ours for 1 vs 2
threads, and the trainer's FairGRPO-vs-GRPO step overhead when the trainer is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peers" / "worker.py"
RESULTS = HERE / "results"
QUIRK_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------------ workers


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process: ours or one peer on one case, timed on request."""

    def __init__(self, name: str, spec: dict[str, Any], threads: int, peer: bool, tmp: Path, extra_env=None):
        self.name = name
        env = dict(os.environ)
        for v in THREAD_VARS:
            env[v] = str(threads)
        env["BENCH_THREADS"] = str(threads)
        if peer:
            for v in QUIRK_VARS:
                env.pop(v, None)
        env.update(extra_env or {})
        self.log = tmp / f"worker-{name.replace(' ', '_').replace('/', '_')}-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            env=env,
            text=True,
            bufsize=1,
        )
        self.info = self._read()
        if "error" in self.info:
            self.close()
            raise WorkerError(f"{name}: {self.info['error']}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise WorkerError(f"{self.name}: worker exited ({self.proc.returncode}); stderr tail:\n{tail}")
        return json.loads(line)

    def call(self, op: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# Pause between two timed calls. libgomp's threads (torch) spin for ~5-7 ms after each parallel
# region by default; without a pause the next worker is timed while they still hold a core.
SETTLE_S = 0.02


def interleaved(workers: list[Worker], repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Times every worker once per round, rotating the order each round; returns all results."""
    res: dict[str, list[dict[str, Any]]] = {w.name: [] for w in workers}
    for i in range(repeats):
        order = workers[i % len(workers) :] + workers[: i % len(workers)]
        for w in order:
            time.sleep(SETTLE_S)
            res[w.name].append(w.call("run"))
    return res


def med(rs: list[dict[str, Any]], key: str = "t") -> float:
    return statistics.median(r[key] for r in rs)


def cores(rs: list[dict[str, Any]]) -> str:
    """Median CPU time / wall time of the timed calls: how many cores the work kept busy."""
    v = [r["cpu"] / r["t"] for r in rs if r.get("cpu") is not None and r["t"] > 0]
    return f"{statistics.median(v):.1f}" if v else "?"


# ------------------------------------------------------------------------------------ table


@dataclass
class Row:
    work: str
    size: str
    threads: str
    ours: str
    peer: str
    peer_t: str
    ratio: str
    bound: str
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[str, bool | None, str]] = field(default_factory=list)  # (target, met, how)
    blas: dict[str, list[str]] = field(default_factory=dict)
    plot: dict[str, Any] = field(default_factory=dict)

    def add(self, *a: Any, **kw: Any) -> None:
        self.rows.append(Row(*a, **kw))


def fmt_t(s: float | None) -> str:
    if s is None or s != s:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_x(peer: float | None, ours: float | None) -> str:
    if not peer or not ours:
        return "—"
    r = peer / ours
    return f"{r:.3g}x"


def fmt_pct(bound: float | None, ours: float | None) -> str:
    if not bound or not ours:
        return "—"
    return f"{100 * bound / ours:.0f} %"


def inertia64(x: np.ndarray, centres: Any) -> float:
    """Inertia of the given centres, every point to its nearest centre, all in float64."""
    c = np.asarray(centres, dtype=np.float64)
    total = 0.0
    for i in range(0, len(x), 200_000):
        xs = x[i : i + 200_000].astype(np.float64)
        best = np.full(len(xs), np.inf)
        for row in c:
            np.minimum(best, ((xs - row) ** 2).sum(axis=1), out=best)
        total += float(best.sum())
    return total


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def print_table(rep: Report) -> None:
    head = ["work", "size", "thr", "ours", "peer", "peer time", "peer/ours", "% of bound", "notes"]
    cells = [
        [r.work, r.size, r.threads, r.ours, r.peer, r.peer_t, r.ratio, r.bound, r.note] for r in rep.rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")


# ------------------------------------------------------------------------------------ machine


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"Model name": platform.processor() or "unknown"}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def build_info() -> str:
    """Which build of the core was measured: the extension's mtime, git HEAD, uncommitted Rust changes."""
    try:
        import fairgrpo._core as core

        so = Path(core.__file__)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(so.stat().st_mtime))
    except Exception as e:
        return f"cannot import fairgrpo._core ({e})"
    root = HERE.parent

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    dirty = git("status", "--porcelain", "--", "rust", "Cargo.toml", "Cargo.lock")
    return (
        f"{so.name} built {stamp}; git HEAD {git('rev-parse', '--short', 'HEAD')}"
        f"{'; rust/ has uncommitted changes' if dirty else ''}"
    )


def measure_bandwidth(tmp: Path, rounds: int, n_bytes: int) -> tuple[float, float, float, float]:
    """(best GB/s, median 1-thread GB/s, median 2-thread GB/s) of a streaming read, and the best
    GB/s of a streaming write (1 or 2 threads)."""
    w = Worker("bandwidth", {"case": "bandwidth", "bytes": n_bytes}, 2, True, tmp)
    try:
        rs = [w.call("run") for _ in range(rounds)]
    finally:
        w.close()
    best = max(max(r["gbs1"], r["gbs2"]) for r in rs)
    return best, med(rs, "gbs1"), med(rs, "gbs2"), max(r["write"] for r in rs)


# ------------------------------------------------------------------------------------ data


def make_blobs(n: int, d: int, k: int, seed: int, spread: float) -> np.ndarray:
    """k overlapping Gaussian blobs (centres ~ N(0, spread^2), unit noise), float32.

    Overlap makes Lloyd take tens of iterations, so fixed costs do not hide the iteration.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, size=(k, d))
    lab = rng.integers(0, k, size=n)
    x = centres[lab] + rng.normal(0.0, 1.0, size=(n, d))
    return np.ascontiguousarray(x, dtype=np.float32)


def make_rollouts(
    p: int, g: int, n_src: int, n_grp: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary rewards of p prompts x g rollouts, imbalanced groups whose accuracy differs."""
    rng = np.random.default_rng(seed)
    src = rng.choice(n_src, size=p, p=np.linspace(2, 1, n_src) / np.linspace(2, 1, n_src).sum())
    gp = np.geomspace(1, 0.15, n_grp)
    grp = rng.choice(n_grp, size=p, p=gp / gp.sum())
    acc = 0.25 + 0.5 * rng.random((n_src, n_grp))
    pq = np.clip(acc[src, grp] + rng.normal(0, 0.15, p), 0.0, 1.0)
    r = (rng.random((p, g)) < pq[:, None]).astype(np.float32).ravel()
    return r, src.astype(np.int64), grp.astype(np.int64)


def make_history(rows: int, g: int, seed: int) -> np.ndarray:
    """Reward vectors of a training run: each prompt has one of a few difficulties; 0/1 rewards."""
    rng = np.random.default_rng(seed)
    levels = np.array([0.03, 0.35, 0.7, 0.97])
    pq = levels[rng.choice(len(levels), size=rows, p=[0.3, 0.2, 0.2, 0.3])]
    return (rng.random((rows, g)) < pq[:, None]).astype(np.float32)


# ------------------------------------------------------------------------------------ cases


def sklearn_f64(x: np.ndarray, k: int, m: int) -> dict[str, Any]:
    """scikit-learn's Lloyd on the same data as float64 (same initial centres; untimed, in
    the driver): its inertia is accumulated in float64, so it can be compared at 1e-6."""
    from sklearn.cluster import KMeans

    x64 = x.astype(np.float64)
    km = KMeans(n_clusters=k, init=x64[:k], n_init=1, max_iter=m, tol=0.0, algorithm="lloyd").fit(x64)
    return {"inertia": float(km.inertia_), "n_iter": int(km.n_iter_)}


def case_lloyd(rep: Report, cfg: argparse.Namespace, tmp: Path, bw: float) -> None:
    """Ours with full passes ("lloyd") and with Hamerly's bounds ("hamerly", the same labels
    every iteration) against scikit-learn's Lloyd and Elkan and faiss (full passes)."""
    for n, d, k, spread, m in cfg.lloyd_cases:
        x = make_blobs(n, d, k, seed=d * 100 + k, spread=spread)
        xp, cp = tmp / f"x_{n}_{d}_{k}.npy", tmp / f"c_{n}_{d}_{k}.npy"
        np.save(xp, x)
        np.save(cp, x[:k].astype(np.float64))  # the same explicit initial centres for everyone
        spec = {"case": "lloyd", "x": str(xp), "init": str(cp), "max_iter": m}
        size = f"n=1e{round(np.log10(n))} d={d} k={k}"
        bound = 4 * n * d / (bw * 1e9)
        s64: dict[str, Any] | None = None
        for threads in (2, 1):
            t = f"{threads}t"
            workers = [
                Worker(f"ours {t}", {**spec, "impl": "ours"}, threads, False, tmp),
                Worker(
                    f"ours-hamerly {t}", {**spec, "impl": "ours", "algorithm": "hamerly"}, threads, False, tmp
                ),
                Worker(f"sklearn {t}", {**spec, "impl": "sklearn"}, threads, True, tmp),
            ]
            rep.blas[f"sklearn ({t})"] = workers[-1].info["blas"]
            if threads == 2:
                workers.append(
                    Worker(
                        f"sklearn-elkan {t}",
                        {**spec, "impl": "sklearn", "algorithm": "elkan"},
                        threads,
                        True,
                        tmp,
                    )
                )
            faiss_note = ""
            if threads == 2 and cfg.faiss:
                try:
                    workers.append(
                        Worker(
                            "faiss 2t",
                            {**spec, "impl": "faiss"},
                            threads,
                            True,
                            tmp,
                            {"OMP_WAIT_POLICY": "PASSIVE"},
                        )
                    )
                    rep.blas["faiss (2t)"] = workers[-1].info["blas"]
                except WorkerError as e:
                    faiss_note = f"faiss skipped: {str(e).splitlines()[0][:80]}"
            try:
                res = interleaved(workers, cfg.repeats)
            finally:
                for w in workers:
                    w.close()
            per_it = lambda rs: statistics.median(r["t"] / r["n_iter"] for r in rs)  # noqa: E731
            label = {
                "sklearn": "sklearn KMeans(lloyd)",
                "sklearn-elkan": "sklearn KMeans(elkan)",
                "faiss": "faiss Kmeans",
            }
            ratios: dict[tuple[str, str], float] = {}
            for mine, work, peers in (
                ("ours", "Lloyd, time per iteration", ("sklearn", "faiss")),
                ("ours-hamerly", "Lloyd with Hamerly bounds, per iteration", ("sklearn", "sklearn-elkan")),
            ):
                ours = res[f"{mine} {t}"]
                o_it, o_n, o_in = per_it(ours), ours[0]["n_iter"], ours[0]["inertia"]
                o_64 = inertia64(x, ours[-1]["centres"])
                for name in peers:
                    if f"{name} {t}" not in res:
                        continue
                    rs = res[f"{name} {t}"]
                    p_it, p_n, p_in = per_it(rs), rs[0]["n_iter"], rs[0]["inertia"]
                    p_64 = inertia64(x, rs[-1]["centres"])
                    ratios[(mine, name)] = p_it / o_it
                    extra = "; faiss has no early stop" if name == "faiss" else ""
                    if mine == "ours-hamerly":
                        extra += "; reads only the rows whose label may change (the bound is for a full pass)"
                    extra += f"; cores busy {cores(ours)}/{cores(rs)}"
                    rep.add(
                        work,
                        size,
                        str(threads),
                        fmt_t(o_it),
                        label[name],
                        fmt_t(p_it),
                        fmt_x(p_it, o_it),
                        fmt_pct(bound, o_it),
                        f"iters {o_n}/{p_n} (max {m}); inertia {o_in:.8g} / {p_in:.8g}: "
                        f"rel diff {rel(o_in, p_in):.1e} "
                        f"as reported, {rel(o_64, p_64):.1e} in f64 from the final centres{extra}",
                    )
                    if threads == 2 and (n, d, k) == cfg.lloyd_sizes[0] and name == "sklearn":
                        s64 = s64 or sklearn_f64(x, k, m)
                        rep.checks.append(
                            (
                                f"Lloyd {size}: inertia within 1e-6 relative of sklearn ({mine})",
                                rel(o_in, s64["inertia"]) <= 1e-6,
                                f"{rel(o_in, s64['inertia']):.1e} against scikit-learn fitted on the data "
                                f"as float64 (its float32 fit accumulates the inertia in float32: "
                                f"{rel(o_in, p_in):.1e} as reported; from each one's final centres in "
                                f"f64 {rel(o_64, p_64):.1e}); iterations {o_n} / {s64['n_iter']} / {p_n}",
                            )
                        )
                if mine == "ours" and threads == 2 and (n, d, k) == cfg.lloyd_sizes[0]:
                    rep.checks.append(
                        (
                            f"Lloyd {size}: >= 50 % of the memory bound (full passes)",
                            bound / o_it >= 0.5,
                            f"{100 * bound / o_it:.0f} % ({fmt_t(o_it)} vs bound {fmt_t(bound)})",
                        )
                    )
            if threads == 2 and (n, d, k) == cfg.lloyd_sizes[0] and ("ours-hamerly", "sklearn") in ratios:
                best = ratios[("ours-hamerly", "sklearn")]
                elkan_x = ratios.get(("ours-hamerly", "sklearn-elkan"), 0.0)
                rep.checks.append(
                    (
                        f"Lloyd {size}: >= 10x sklearn per iteration",
                        best >= 10,
                        f"{best:.2f}x with Hamerly bounds (same labels every iteration), "
                        f"{ratios[('ours', 'sklearn')]:.2f}x with full passes; "
                        f"Hamerly vs sklearn's own Elkan {elkan_x:.2f}x",
                    )
                )
            if faiss_note:
                o_it = per_it(res[f"ours {t}"])
                rep.add(
                    "Lloyd, time per iteration", size, "2", fmt_t(o_it), "faiss", "—", "—", "—", faiss_note
                )


def case_kpp(rep: Report, cfg: argparse.Namespace, tmp: Path, bw: float) -> None:
    for n, d, k in cfg.lloyd_sizes:
        xp = tmp / f"x_{n}_{d}_{k}.npy"
        spec = {"case": "kpp", "x": str(xp), "k": k}
        workers = [
            Worker("ours", {**spec, "impl": "ours"}, 2, False, tmp),
            Worker("sklearn", {**spec, "impl": "sklearn"}, 2, True, tmp),
        ]
        try:
            res = interleaved(workers, cfg.repeats)
            fin = {w.name: w.call("finish") for w in workers}
        finally:
            for w in workers:
                w.close()
        o, p = med(res["ours"]), med(res["sklearn"])
        bound = k * 4 * n * d / (bw * 1e9)  # one pass over x per centre
        rep.add(
            "k-means++ init",
            f"n=1e{round(np.log10(n))} d={d} k={k}",
            "2",
            fmt_t(o),
            "sklearn kmeans_plusplus",
            fmt_t(p),
            fmt_x(p, o),
            fmt_pct(bound, o),
            f"potential {fin['ours']['potential']:.4g}/{fin['sklearn']['potential']:.4g}; "
            f"bound: k reads of x; cores busy {cores(res['ours'])}/{cores(res['sklearn'])}",
        )
        if (n, d, k) == cfg.lloyd_sizes[0]:
            rep.checks.append(
                (
                    f"k-means++ n=1e{round(np.log10(n))} d={d} k={k}: >= 10x sklearn",
                    p / o >= 10,
                    f"{p / o:.2f}x",
                )
            )


def case_advantages(rep: Report, cfg: argparse.Namespace, tmp: Path, bw: float) -> None:
    p, g, ns, ng = cfg.adv_prompts, 10, 4, 8
    r, src, grp = make_rollouts(p, g, ns, ng, seed=7)
    paths = {"rewards": tmp / "adv_r.npy", "sources": tmp / "adv_s.npy", "groups": tmp / "adv_g.npy"}
    for key, a in zip(paths, (r, src, grp), strict=True):
        np.save(paths[key], a)
    # graded rewards (0/1 correctness plus 0.2 for the answer format) take FairAdvantage's
    # general path; 0/1 rewards its per-pattern table
    graded = tmp / "adv_r_graded.npy"
    np.save(graded, r + np.float32(0.2) * (np.random.default_rng(8).random(r.size) < 0.7).astype(np.float32))
    n = p * g
    base = {k: str(v) for k, v in paths.items()} | {"case": "advantages", "group_size": g}
    base |= {"n_sources": ns, "n_groups": ng}
    grpo_vs_bound = None
    for work in ("group", "fair", "fair-graded"):
        workers = []
        for impl in ("ours", "numpy", "torch"):
            spec = {**base, "work": work.removesuffix("-graded"), "impl": impl}
            spec["out"] = str(tmp / f"adv_{work}_{impl}.npy")
            if work.endswith("-graded"):
                spec["rewards"] = str(graded)
            workers.append(Worker(impl, spec, 2, impl != "ours", tmp))
            if impl != "ours":
                rep.blas[f"{impl} (2t)"] = workers[-1].info["blas"]
        try:
            res = interleaved(workers, cfg.repeats)
            for w in workers:
                w.call("finish")
        finally:
            for w in workers:
                w.close()
        ours_a = np.load(tmp / f"adv_{work}_ours.npy")
        o = med(res["ours"])
        o_hot = med(res["ours"], "t_hot")
        if work == "group":
            label, size = "group_advantages (GRPO score)", f"N=1e{round(np.log10(n))} G={g}"
            bound = 8 * n / (bw * 1e9)  # read rewards, write advantages
            bnote = "bound: read r + write A"
            grpo_vs_bound = o / bound
        else:
            label = 'FairAdvantage("robust") step'
            size = f"N=1e{round(np.log10(n))} G={g}, {ns}x{ng} groups"
            size += ", graded r" if work.endswith("-graded") else ", 0/1 r"
            # read r and the int64 source and group labels; write A and the per-prompt
            # weights (f64) and clusters (int64) that the step returns
            bound = (8 * n + 32 * p) / (bw * 1e9)
            bound_a = (8 * n + 16 * p) / (bw * 1e9)  # the same without the weights and clusters
            # for the reading only: the written half charged at the measured write bandwidth
            bound_w = (4 * n + 16 * p) / (bw * 1e9) + (4 * n + 16 * p) / (cfg.write_bw * 1e9)
            bnote = "bound: read r + labels, write A + weights + clusters"
        for impl in ("numpy", "torch"):
            pt = med(res[impl])
            diff = float(np.max(np.abs(np.load(tmp / f"adv_{work}_{impl}.npy") - ours_a)))
            rep.add(
                label,
                size,
                "2",
                fmt_t(o),
                impl,
                fmt_t(pt),
                fmt_x(pt, o),
                fmt_pct(bound, o),
                f"max|A-A_ours| {diff:.1e}; {bnote}; cores busy {cores(res['ours'])}/{cores(res[impl])}",
            )
            if work == "fair":
                need = 10 if impl == "numpy" else 5
                rep.checks.append(
                    (f"advantage pipeline {size}: >= {need}x {impl}", pt / o >= need, f"{pt / o:.2f}x")
                )
        if work == "fair":
            rep.checks.append(
                (
                    f"advantage pipeline {size}: within 2.5x of the memory bound",
                    o <= 2.5 * bound,
                    f"{o / bound:.2f}x the bound ({fmt_t(o)} vs {fmt_t(bound)}: read r + labels, write A + "
                    f"weights + clusters); {o / bound_a:.2f}x a bound that leaves out the weights and "
                    f"clusters ({fmt_t(bound_a)}); {o / bound_w:.2f}x a bound that charges the writes at "
                    f"the measured write bandwidth ({cfg.write_bw:.1f} GB/s: {fmt_t(bound_w)}); for "
                    f"scale, the GRPO scores (one streaming pass, read r + write A) read "
                    f"{grpo_vs_bound:.2f}x theirs; the step called again right after the timed one "
                    f"(both cores awake, as when the bandwidth is sampled): {fmt_t(o_hot)}, "
                    f"{o_hot / bound:.2f}x the bound",
                )
            )


def case_implicit(rep: Report, cfg: argparse.Namespace, tmp: Path, bw: float) -> None:
    from fairgrpo import adjusted_rand_index

    b, g = cfg.implicit_batch, 8
    pool = make_history(max(cfg.implicit_sizes) + b, g, seed=11)
    pp = tmp / "history.npy"
    np.save(pp, pool)
    curve: dict[str, list[tuple[int, float]]] = {
        "ours refit": [],
        "ours incremental": [],
        "sklearn elbow": [],
    }
    for h in cfg.implicit_sizes:
        spec = {"case": "implicit", "pool": str(pp), "history": h, "batch": b}
        workers = []
        for impl, name in (
            ("refit", "ours refit"),
            ("incremental", "ours incremental"),
            ("sklearn", "sklearn elbow"),
        ):
            out = str(tmp / f"labels_{h}_{impl}.npy")
            workers.append(Worker(name, {**spec, "impl": impl, "out": out}, 2, impl == "sklearn", tmp))
        reps = cfg.repeats
        try:
            res = interleaved(workers, reps)
            for w in workers:
                w.call("finish")
        finally:
            for w in workers:
                w.close()
        t = {name: med(rs) for name, rs in res.items()}
        k = {name: rs[-1]["k"] for name, rs in res.items()}
        for name in curve:
            curve[name].append((h, t[name]))
        lab = {impl: np.load(tmp / f"labels_{h}_{impl}.npy") for impl in ("refit", "incremental", "sklearn")}
        ari_inc = adjusted_rand_index(lab["incremental"], lab["refit"])
        ari_sk = adjusted_rand_index(lab["sklearn"], lab["refit"])
        size = f"history 1e{round(np.log10(h))} x G={g}, +{b}/step"
        c_sk = cores(res["sklearn elbow"])
        note_r = (
            f"k {k['ours refit']}/{k['sklearn elbow']}; ARI(refit, sklearn) {ari_sk:.3f}; "
            f"cores busy {cores(res['ours refit'])}/{c_sk}"
        )
        rep.add(
            "implicit-group step, refit",
            size,
            "2",
            fmt_t(t["ours refit"]),
            "sklearn elbow (k=1..3 + final, n_init=1)",
            fmt_t(t["sklearn elbow"]),
            fmt_x(t["sklearn elbow"], t["ours refit"]),
            "—",
            note_r,
        )
        note_i = (
            f"k {k['ours incremental']}; ARI(incremental, refit) {ari_inc:.3f} on {len(lab['refit'])} rows"
        )
        rep.add(
            "implicit-group step, incremental",
            size,
            "2",
            fmt_t(t["ours incremental"]),
            "sklearn elbow (k=1..3 + final, n_init=1)",
            fmt_t(t["sklearn elbow"]),
            fmt_x(t["sklearn elbow"], t["ours incremental"]),
            "—",
            note_i,
        )
        if h == max(cfg.implicit_sizes):
            sp = t["sklearn elbow"] / t["ours refit"]
            rep.checks.append(
                (
                    f"implicit-group step at 1e{round(np.log10(h))} history: refit >= 20x sklearn elbow",
                    sp >= 20,
                    f"{sp:.1f}x ({fmt_t(t['ours refit'])} vs {fmt_t(t['sklearn elbow'])})",
                )
            )
            rep.checks.append(
                (
                    "incremental mode: per-step cost grows with the batch, not the history",
                    None,
                    f"{fmt_t(t['ours incremental'])} at 1e{round(np.log10(h))} rows vs "
                    f"{fmt_t(curve['ours incremental'][0][1])} "
                    f"at 1e{round(np.log10(cfg.implicit_sizes[0]))}; "
                    f"ARI vs refit {ari_inc:.3f}",
                )
            )
    rep.plot["implicit"] = curve
    rep.plot["implicit_batch"] = b


def case_identity(rep: Report, cfg: argparse.Namespace, tmp: Path) -> None:
    x = tmp / f"x_{cfg.lloyd_sizes[0][0]}_{cfg.lloyd_sizes[0][1]}_{cfg.lloyd_sizes[0][2]}.npy"
    spec = {
        "case": "identity",
        "x": str(x),
        "rewards": str(tmp / "adv_r.npy"),
        "sources": str(tmp / "adv_s.npy"),
        "groups": str(tmp / "adv_g.npy"),
        "pool": str(tmp / "history.npy"),
        "group_size": 10,
    }
    hashes = {}
    for threads in (1, 2):
        w = Worker(f"identity {threads}t", spec, threads, False, tmp)
        try:
            hashes[threads] = w.call("run")
        finally:
            w.close()
    names = list(hashes[1]["pool"])
    bad = []
    for nm in names:
        vals = {
            hashes[1]["pool"][nm],
            hashes[2]["pool"][nm],
            hashes[1]["n1"][nm],
            hashes[1]["n2"][nm],
            hashes[2]["n1"][nm],
            hashes[2]["n2"][nm],
        }
        if len(vals) != 1:
            bad.append(nm)
    ok = not bad
    for nm in names:
        mark = "✗" if nm in bad else "✓"
        print(f"  bitwise identity, 1 vs 2 threads: {nm:40s} {mark}")
    rep.add(
        "bitwise identity 1 vs 2 threads",
        f"{len(names)} outputs",
        "1/2",
        "✓" if ok else "✗ " + ", ".join(bad),
        "—",
        "—",
        "—",
        "—",
        "pools of 1 and 2 threads x n_threads=1/2, SHA-256 of outputs",
    )
    rep.checks.append(
        ("results identical for 1 and 2 threads (bitwise)", ok, "all equal" if ok else f"differ: {bad}")
    )


def case_trainer(rep: Report, cfg: argparse.Namespace, tmp: Path) -> None:
    todo = ("trainer step FairGRPO vs GRPO", "—", "—", "TODO", "GRPO step", "—", "—", "—")
    try:
        import fairgrpo.trainer  # noqa: F401
    except Exception as e:
        rep.add(*todo, note=f"TODO: fairgrpo.trainer does not import ({type(e).__name__}: {e})"[:120])
        rep.checks.append(("trainer: FairGRPO step <= +2 % over GRPO", None, "TODO: trainer not importable"))
        return
    skip = 3
    builtin = cfg.trainer_model == "builtin"
    spec = {
        "case": "trainer",
        "steps": cfg.trainer_steps,
        "skip": skip,
        "batch": cfg.trainer_batch,
        "group_size": 8,
        "model": cfg.trainer_model,
        "completion": cfg.trainer_completion,
        # the project runs its ~140k-parameter built-in policy on one thread
        "torch_threads": 1 if builtin else 2,
    }
    try:
        # the same environment for all three (quirk variables unset): only the method differs
        workers = [
            Worker(f"trainer {impl}", {**spec, "impl": impl}, 2, True, tmp) for impl in cfg.trainer_impls
        ]
    except WorkerError as e:
        rep.add(*todo, note=f"TODO: trainer worker failed: {str(e).splitlines()[0]}"[:160])
        rep.checks.append(("trainer: FairGRPO step <= +2 % over GRPO", None, "TODO: trainer worker failed"))
        return
    try:
        res = interleaved(workers, cfg.trainer_rounds)
    finally:
        for w in workers:
            w.close()
    t = {w.name.split()[1]: med(res[w.name]) for w in workers}
    strat = med(res["trainer fairgrpo"], "strategy")
    added = med(res["trainer fairgrpo"], "added")
    device = res["trainer fairgrpo"][0].get("device", "cpu")
    size = f"{spec['batch'] // spec['group_size']} prompts x G={spec['group_size']}, " + (
        "built-in policy" if builtin else f"{cfg.trainer_model}, {spec['completion']} tokens, {device}"
    )

    def spread(base: str) -> str:
        """Whole-step ratio FairGRPO / base of each round (the rounds are interleaved)."""
        pairs = zip(res["trainer fairgrpo"], res[f"trainer {base}"], strict=True)
        r = sorted(a["t"] / b["t"] for a, b in pairs)
        return f"per-round ratios {r[0]:.3f}..{r[-1]:.3f}"

    for base, label in (("trl", "trl.GRPOTrainer"), ("grpo", 'FairGRPOTrainer(method="grpo")')):
        if base not in t:
            continue
        over = t["fairgrpo"] / t[base] - 1
        rep.add(
            "trainer step, FairGRPO",
            size,
            "1+2",
            fmt_t(t["fairgrpo"]),
            label,
            fmt_t(t[base]),
            fmt_x(t[base], t["fairgrpo"]),
            "—",
            f"whole step {100 * over:+.1f} % ({spread(base)}); FairGRPO's own code {fmt_t(added)}/step "
            f"= {100 * added / t[base]:.2f} % of the {base} step, of which the advantage strategy "
            f"{fmt_t(strat)}; median step of {cfg.trainer_steps - skip}",
        )
    over = t["fairgrpo"] / t["trl"] - 1
    rep.checks.append(
        (
            "trainer: FairGRPO step <= +2 % over GRPO (trl.GRPOTrainer)",
            added / t["trl"] <= 0.02,
            f"FairGRPO's own code per step (time in its overrides minus the TRL code they call) "
            f"{fmt_t(added)} = {100 * added / t['trl']:.2f} % of the TRL step {fmt_t(t['trl'])}; "
            f"whole-step medians differ by {100 * over:+.1f} % ({spread('trl')}), which is within "
            "the step-to-step noise of two separately trained runs",
        )
    )


# ------------------------------------------------------------------------------------ plot


def plot(rep: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = rep.plot.get("implicit")
    if not curve:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    styles = {"ours refit": ("o-", "C0"), "ours incremental": ("s-", "C2"), "sklearn elbow": ("^--", "C3")}
    for name, pts in curve.items():
        xs, ys = zip(*pts, strict=True)
        ax.loglog(xs, [y * 1e3 for y in ys], styles[name][0], color=styles[name][1], label=name)
    ax.set_xlabel("unlabelled history (prompts, G = 8 reward vectors)")
    ax.set_ylabel(f"time of one step of {rep.plot['implicit_batch']} prompts (ms)")
    ax.set_title("Implicit-group step per training step (2 threads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 3 repeats: checks the script works")
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds per case (default 7; quick 3)"
    )
    ap.add_argument("--no-faiss", dest="faiss", action="store_false")
    ap.add_argument(
        "--only", default="", help="comma list of cases: lloyd,kpp,advantages,implicit,identity,trainer"
    )
    ap.add_argument(
        "--trainer-model",
        default="builtin",
        help="the trainer case's policy: builtin (CPU), random-qwen2-0.5b (Qwen2.5-0.5B's shape, random "
        "weights, no download) or a model path / hub id; any but builtin trains on the GPU if there is one",
    )
    ap.add_argument("--trainer-batch", type=int, default=128, help="trainer case: completions per step")
    ap.add_argument(
        "--trainer-completion", type=int, default=1, help="trainer case: tokens generated per rollout"
    )
    ap.add_argument(
        "--trainer-steps",
        dest="trainer_steps_arg",
        type=int,
        default=None,
        help="trainer case: steps per run (default 30; quick 6)",
    )
    ap.add_argument(
        "--plot",
        default=None,
        help="PNG of the implicit-group curve (default benches/results/implicit_step.png; "
        "--quick: a file in the temporary directory)",
    )
    cfg = ap.parse_args(argv)
    if cfg.plot is None:
        cfg.plot = (
            str(Path(tempfile.gettempdir()) / "fairgrpo_implicit_step_quick.png")
            if cfg.quick
            else str(RESULTS / "implicit_step.png")
        )
    if cfg.quick:
        cfg.repeats = cfg.repeats or 3
        # (n, d, k, blob spread, max_iter): d=10 converges in ~30 iterations, d=4 k=8 runs to max_iter
        cfg.lloyd_cases = [(100_000, 10, 3, 0.5, 50), (100_000, 4, 8, 1.2, 10)]
        cfg.adv_prompts = 100_000
        cfg.implicit_sizes = [1_000, 10_000]
        cfg.implicit_batch = 1000
        cfg.trainer_steps, cfg.trainer_rounds, cfg.trainer_impls = 6, 1, ("trl", "fairgrpo")
        bw_bytes, bw_rounds = 200_000_000, 3
    else:
        cfg.repeats = cfg.repeats or 7
        cfg.lloyd_cases = [(1_000_000, 10, 3, 0.5, 50), (1_000_000, 4, 8, 1.2, 20)]
        cfg.adv_prompts = 1_000_000
        cfg.implicit_sizes = [1_000, 10_000, 100_000, 1_000_000]
        cfg.implicit_batch = 1000
        cfg.trainer_steps, cfg.trainer_rounds, cfg.trainer_impls = (
            30,
            cfg.repeats,
            ("trl", "grpo", "fairgrpo"),
        )
        bw_bytes, bw_rounds = 400_000_000, 7
    cfg.trainer_steps = cfg.trainer_steps_arg or cfg.trainer_steps
    cfg.lloyd_sizes = [c[:3] for c in cfg.lloyd_cases]
    only = set(filter(None, cfg.only.split(",")))
    want = lambda c: not only or c in only  # noqa: E731

    t_start = time.time()
    cfg.load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    cpu = lscpu()
    rep = Report()
    with tempfile.TemporaryDirectory(prefix="fairgrpo-bench-") as d:
        tmp = Path(d)
        bw, bw1, bw2, cfg.write_bw = measure_bandwidth(tmp, bw_rounds, bw_bytes)
        if want("lloyd"):
            case_lloyd(rep, cfg, tmp, bw)
        elif want("kpp") or want("identity"):
            for n, dd, k, spread, _ in cfg.lloyd_cases:
                np.save(tmp / f"x_{n}_{dd}_{k}.npy", make_blobs(n, dd, k, seed=dd * 100 + k, spread=spread))
        if want("kpp"):
            case_kpp(rep, cfg, tmp, bw)
        if want("advantages") or want("identity"):
            if want("advantages"):
                case_advantages(rep, cfg, tmp, bw)
            else:
                r, s, g = make_rollouts(cfg.adv_prompts, 10, 4, 8, seed=7)
                for nm, a in (("adv_r", r), ("adv_s", s), ("adv_g", g)):
                    np.save(tmp / f"{nm}.npy", a)
        if want("implicit"):
            case_implicit(rep, cfg, tmp, bw)
        elif want("identity"):
            np.save(tmp / "history.npy", make_history(100_000, 8, seed=11))
        if want("identity"):
            case_identity(rep, cfg, tmp)
        if want("trainer"):
            case_trainer(rep, cfg, tmp)
        bw_end, _, _, _ = measure_bandwidth(tmp, max(3, bw_rounds // 2), bw_bytes)
    elapsed = time.time() - t_start

    print()
    kind = "QUICK (small sizes, not for quoting)" if cfg.quick else "full sizes"
    kind += f", cases {cfg.only}" if cfg.only else ", all cases"
    print(
        f"FairGRPO core vs peers — {kind}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}, {elapsed:.0f} s"
    )
    print(
        f"CPU: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', '?')} CPUs "
        f"({cpu.get('Core(s) per socket', '?')} cores/socket, "
        f"{cpu.get('Thread(s) per core', '?')} thr/core), "
        f"L2 {cpu.get('L2 cache', '?')}, L3 {cpu.get('L3 cache', '?')}; load average at start/end: "
        f"{cfg.load_start} / {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(
        f"Threads: RAYON_NUM_THREADS=OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=torch=2 "
        f"(thr column); faiss with OMP_WAIT_POLICY=PASSIVE; peers without {'/'.join(QUIRK_VARS)} "
        f"(set here: {', '.join(v for v in QUIRK_VARS if v in os.environ) or 'none'})"
    )
    print(
        f"DRAM read bandwidth (numpy sum over {bw_bytes / 1e6:.0f} MB): median 1 thread {bw1:.1f} GB/s, "
        f"2 threads {bw2:.1f} GB/s; best {bw:.1f} GB/s at start, {bw_end:.1f} GB/s at end -> "
        f"bounds use {bw:.1f} GB/s; write (numpy fill): best {cfg.write_bw:.1f} GB/s at start"
    )
    print(f"fairgrpo: {build_info()}")
    for who, libs in rep.blas.items():
        print(f"BLAS/OpenMP in {who}: " + "; ".join(libs))
    print(
        f"Median of {cfg.repeats} interleaved rounds, each implementation in its own process; "
        f"peer/ours > 1 means ours is faster; 'cores busy a/b' = CPU time / wall time of ours / the peer."
    )
    print()
    print_table(rep)
    print()
    print("Targets of issue 4:")
    for target, met, how in rep.checks:
        mark = {True: "MET   ", False: "MISSED", None: "n/a   "}[met]
        print(f"  [{mark}] {target}: {how}")
    if rep.plot.get("implicit"):
        plot(rep, Path(cfg.plot))
        shown = Path(cfg.plot).resolve()
        here = Path.cwd().resolve()
        print(f"\nplot: {shown.relative_to(here) if shown.is_relative_to(here) else shown}")
    failed_identity = any(t.startswith("results identical") and met is False for t, met, _ in rep.checks)
    return 1 if failed_identity else 0


if __name__ == "__main__":
    sys.exit(main())
