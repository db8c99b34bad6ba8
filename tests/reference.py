"""A readable numpy implementation of FairGRPO's maths: the executable spec of the Rust core.

Follows ALGORITHM.md §2 step by step, with the core's documented conventions spelled out
(summation order, chunking, tie-breaking, the empty-cluster rule, the seeded generator), so
that the parity tests can compare the two implementations value for value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CHUNK = 4096  # rows per chunk of every chunked pass (rust/pool.rs)
PROMPTS_PER_CHUNK = 2048
LANES = 16  # rows per tile of the k-means kernels
BLOCK_ROWS = 256  # rows per block of the Lloyd accumulation
MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- step 1: GRPO score


def moments(r: np.ndarray) -> tuple[float, int, float, float]:
    """(sum, count, nanmean, Bessel nanstd) of one prompt's rewards, sequential sums."""
    ok = r[~np.isnan(r)].astype(np.float64)
    s = 0.0
    for v in ok:
        s += v
    n = len(ok)
    mean = s / n if n else math.nan
    ss = 0.0
    for v in ok:
        ss += (v - mean) ** 2
    std = math.sqrt(ss / (n - 1)) if n > 1 else math.nan
    return s, n, mean, std


def inv_scale(std: float, scale: str, bstd: float, eps: float, g: int) -> float:
    """What multiplies r - mean: 1 / (std + eps), the batch std for "batch", 1 for "none"."""
    if scale == "none":
        return 1.0
    if scale == "batch":
        return 1.0 / (bstd + eps)
    if g == 1:
        return 1.0 / eps
    return 1.0 / (std + eps)


def score(r: float, mean: float, inv: float) -> float:
    a = (r - mean) * inv
    return 0.0 if math.isnan(a) else a


def batch_std(r: np.ndarray) -> float:
    if len(r) <= 1:
        return 0.0
    s, n = 0.0, 0
    for c in range(0, len(r), CHUNK):
        cs, cn, _, _ = moments(r[c : c + CHUNK])
        s += cs
        n += cn
    if n <= 1:
        return math.nan
    mean = s / n
    ss = 0.0
    for c in range(0, len(r), CHUNK):
        part = 0.0
        for v in r[c : c + CHUNK]:
            if not math.isnan(v):
                part += (float(v) - mean) ** 2
        ss += part
    return math.sqrt(ss / (n - 1))


def group_advantages(
    rewards: np.ndarray, group_size: int, scale: str = "group", eps: float = 1e-4
) -> np.ndarray:
    """TRL 1.16 GRPOTrainer's advantages (nanmean / Bessel nanstd, NaN -> 0)."""
    g = group_size
    out = np.zeros_like(rewards)
    bstd = batch_std(rewards) if scale == "batch" else 0.0
    for q in range(len(rewards) // g):
        rq = rewards[q * g : (q + 1) * g]
        _, _, mean, std = moments(rq)
        inv = inv_scale(std, scale, bstd, eps, g)
        for i, v in enumerate(rq):
            out[q * g + i] = score(float(v), mean, inv)
    return out


# ----------------------------------------------------------------------------- K-means


class SplitMix64:
    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        return (self.next_u64() * n) >> 64


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a + b`` rounded, and its exact rounding error (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _round_odd(s: np.ndarray, err: np.ndarray) -> np.ndarray:
    """The exact value ``s + err`` (``s`` its rounding to nearest) rounded to odd: when it is
    not representable, the neighbour of the two around it whose last bit is 1."""
    bits = s.view(np.uint64 if s.dtype == np.float64 else np.uint32).copy()
    fix = (err != 0) & ((bits & 1) == 0)
    away = np.signbit(err) == np.signbit(s)  # the exact value lies further from zero than s
    bits[fix & away] += 1
    bits[fix & ~away] -= 1
    return bits.view(s.dtype)


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` with one rounding, in the arrays' precision (f32 or f64), as the CPU's
    fused multiply-add: f32 through an exact f64 product rounded to odd; f64 by Boldo and
    Melquiond's emulation (Dekker's exact product, TwoSum, one addition rounded to odd)."""
    if a.dtype == np.float32:
        s, err = _two_sum(a.astype(np.float64) * b.astype(np.float64), c.astype(np.float64))
        return _round_odd(s, err).astype(np.float32)
    split = 134217729.0  # 2^27 + 1: Veltkamp's splitting into 26-bit halves

    def halves(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = split * v
        hi = t - (t - v)
        return hi, v - hi

    ph = a * b
    (ah, al), (bh, bl) = halves(a), halves(b)
    pl = ((ah * bh - ph) + ah * bl + al * bh) + al * bl  # a * b == ph + pl exactly
    th, tl = _two_sum(c, ph)
    return th + _round_odd(*_two_sum(tl, pl))


def dist2(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances of rows of x to one centre, in x's precision: ``s = e0 * e0``, then
    ``s = fma(e, e, s)`` in feature order."""
    c = c.astype(x.dtype)
    e = x[:, 0] - c[0]
    acc = e * e
    for j in range(1, x.shape[1]):
        e = x[:, j] - c[j]
        acc = fma(e, e, acc)
    return acc


def seq_sum(v: np.ndarray) -> float:
    """Left-to-right f64 sum (np.cumsum is sequential)."""
    return float(np.cumsum(v.astype(np.float64))[-1]) if len(v) else 0.0


def chunked_sum(v: np.ndarray) -> float:
    total = 0.0
    for c in range(0, len(v), CHUNK):
        total += seq_sum(v[c : c + CHUNK])
    return total


def kmeans_plusplus(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Seeded greedy k-means++ (2 + floor(ln k) candidates per centre)."""
    n, _ = x.shape
    rng = SplitMix64(seed)
    trials = 2 + math.floor(math.log(k))
    first = rng.below(n)
    centres = [x[first].astype(np.float64)]
    closest = dist2(x, x[first]).astype(np.float64)
    sums = [seq_sum(closest[c : c + CHUNK]) for c in range(0, n, CHUNK)]
    pot = 0.0
    for s in sums:
        pot += s
    for _ in range(1, k):
        if not pot > 0:
            while len(centres) < k:
                centres.append(centres[0].copy())
            break
        cands = []
        for _ in range(trials):
            r = rng.uniform() * pot
            cands.append(_sample(closest, sums, r))
        pots = []
        for i in cands:
            d = np.minimum(closest, dist2(x, x[i]).astype(np.float64))
            pots.append(chunked_sum(d))
        best = int(np.argmin(pots))
        closest = np.minimum(closest, dist2(x, x[cands[best]]).astype(np.float64))
        sums = [seq_sum(closest[c : c + CHUNK]) for c in range(0, n, CHUNK)]
        pot = 0.0
        for s in sums:
            pot += s
        centres.append(x[cands[best]].astype(np.float64))
    return np.array(centres)


def _sample(closest: np.ndarray, sums: list[float], r: float) -> int:
    cum = 0.0
    for c, s in enumerate(sums):
        if cum + s > r:
            for i, v in enumerate(closest[c * CHUNK : (c + 1) * CHUNK]):
                cum += v
                if cum > r:
                    return c * CHUNK + i
            break
        cum += s
    pos = np.nonzero(closest > 0)[0]
    return int(pos[-1]) if len(pos) else 0


def _assign(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (lowest index on ties) and the distance, in x's precision."""
    d = np.stack([dist2(x, c) for c in centres], axis=1)
    best = np.full(x.shape[0], np.finfo(x.dtype).max, dtype=x.dtype)
    lab = np.zeros(x.shape[0], dtype=np.int64)
    for j in range(len(centres)):
        better = d[:, j] < best
        best = np.where(better, d[:, j], best)
        lab = np.where(better, j, lab)
    return lab, best


def _chunked_cluster_sums(x: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-centre sums with the kernels' blocking (rust/kernels.rs): within a chunk, row i goes
    to lane i % 16; within a block of 256 rows a lane sums its rows of a centre in x's dtype,
    in row order, then the partial is widened and added to the lane's float64 sum; lanes are
    combined in lane order, chunks in chunk order."""
    d = x.shape[1]
    sums = np.zeros((k, d))
    counts = np.zeros(k, dtype=np.int64)
    for c in range(0, len(x), CHUNK):
        xs, ls = x[c : c + CHUNK], lab[c : c + CHUNK]
        lane = np.zeros((k, LANES, d))
        for b in range(0, len(xs), BLOCK_ROWS):
            part = np.zeros((k, LANES, d), dtype=x.dtype)
            for r in range(b, min(b + BLOCK_ROWS, len(xs)), LANES):
                rows, lr = xs[r : r + LANES], ls[r : r + LANES]
                for j in range(k):
                    m = np.zeros(LANES, dtype=bool)
                    m[: len(lr)] = lr == j
                    part[j, m] = part[j, m] + rows[m[: len(rows)]]
            lane = lane + part.astype(np.float64)
        for j in range(k):
            counts[j] += int((ls == j).sum())
            tot = np.zeros(d)
            for lv in lane[j]:
                tot = tot + lv
            sums[j] = sums[j] + tot
    return sums, counts


def mean_column_variance(x: np.ndarray) -> float:
    n, d = x.shape
    xs = x.astype(np.float64)
    tot = np.zeros(d)
    for c in range(0, n, CHUNK):
        tot = tot + np.cumsum(xs[c : c + CHUNK], axis=0)[-1]
    mean = tot / n
    sq = np.zeros(d)
    for c in range(0, n, CHUNK):
        sq = sq + np.cumsum((xs[c : c + CHUNK] - mean) ** 2, axis=0)[-1]
    out = 0.0
    for v in sq:
        out += v / n
    return out / d


@dataclass
class KMeansRef:
    labels: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    inertia: float
    n_iter: int


def _moved_sums(x: np.ndarray, old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """Hamerly's sum update: per chunk, the rows that changed centre, in row order, add their
    float64 values to the new centre's delta and subtract them from the old one's; chunk
    deltas are combined in chunk order."""
    d = x.shape[1]
    total = np.zeros((k, d))
    for c in range(0, len(x), CHUNK):
        part = np.zeros((k, d))
        for i in np.nonzero(old[c : c + CHUNK] != new[c : c + CHUNK])[0] + c:
            row = x[i].astype(np.float64)
            part[new[i]] = part[new[i]] + row
            part[old[i]] = part[old[i]] - row
        total = total + part
    return total


def lloyd(
    x: np.ndarray, centres: np.ndarray, max_iter: int = 300, tol: float = 1e-4, algorithm: str = "lloyd"
) -> KMeansRef:
    """Lloyd iterations with the core's stopping and empty-cluster rules. With
    ``algorithm="hamerly"`` the labels are the same (the bounds only skip rows whose label
    cannot change), but after the first iteration the per-centre sums are updated with the
    rows that moved instead of being re-summed; a centre left with no row has its sum reset to
    zero (and keeps its position)."""
    centres = np.array(centres, dtype=np.float64)
    k = len(centres)
    tol_abs = tol * mean_column_variance(x) if tol > 0 else 0.0
    labels = np.full(len(x), -1)
    n_iter, strict = 0, False
    sums = np.zeros((k, x.shape[1]))
    counts = np.zeros(k, dtype=np.int64)
    for it in range(max_iter):
        new_lab, _ = _assign(x, centres)
        changed = int((new_lab != labels).sum())
        if algorithm == "hamerly" and it > 0:
            sums = sums + _moved_sums(x, labels, new_lab, k)
            counts = np.bincount(new_lab, minlength=k)
            sums[counts == 0] = 0.0
        else:
            sums, counts = _chunked_cluster_sums(x, new_lab, k)
        labels = new_lab
        n_iter = it + 1
        shift = 0.0
        for j in range(k):
            if counts[j] > 0:
                for t in range(x.shape[1]):
                    new = sums[j, t] / counts[j]
                    shift += (new - centres[j, t]) ** 2
                    centres[j, t] = new
        if changed == 0:
            strict = True
            break
        if shift <= tol_abs:
            break
    if not strict:
        labels, _ = _assign(x, centres)
    _, dist = _assign(x, centres)
    inertia = chunked_sum(dist.astype(np.float64))
    sizes = np.bincount(labels, minlength=k)
    return KMeansRef(labels, centres, sizes, inertia, n_iter)


def kmeans(
    x: np.ndarray,
    k: int,
    init: Any = "k-means++",
    seed: int = 0,
    max_iter: int = 300,
    tol: float = 1e-4,
    algorithm: str = "lloyd",
):
    c = kmeans_plusplus(x, k, seed) if isinstance(init, str) else np.asarray(init, dtype=np.float64)
    return lloyd(x, c, max_iter, tol, algorithm)


def count_distinct(x: np.ndarray, limit: int) -> int:
    seen: set[tuple[float, ...]] = set()
    for row in x:
        seen.add(tuple(float(v) for v in row))
        if len(seen) >= limit:
            break
    return len(seen)


def elbow(inertias: list[float], tol: float) -> int:
    """First k >= 2 with D_k < tol * D_(k-1), where D_k = I_k - I_(k+1); else the largest k."""
    for k in range(2, len(inertias)):
        if inertias[k - 1] - inertias[k] < tol * (inertias[k - 2] - inertias[k - 1]):
            return k
    return max(len(inertias), 1)


def select_k(
    x: np.ndarray,
    k_max: int = 3,
    tol: float = 0.1,
    seed: int = 0,
    max_iter: int = 300,
    kmeans_tol: float = 1e-4,
    warm: list[np.ndarray] | None = None,
):
    k_eff = max(count_distinct(x, k_max), 1)
    fits = []
    for k in range(1, k_eff + 1):
        w = warm[k - 1] if warm is not None and len(warm) >= k and warm[k - 1].shape[0] == k else None
        fits.append(kmeans(x, k, "k-means++" if w is None else w, seed, max_iter, kmeans_tol))
    inertias = [f.inertia for f in fits]
    k = elbow(inertias, tol)
    return k, fits[k - 1], inertias, [f.centroids.copy() for f in fits]


# ----------------------------------------------------------------------------- steps 2-5: FairAdvantage


PRESETS: dict[str, dict[str, Any]] = {
    "faithful": dict(
        weighting="faithful",
        stats="cumulative",
        ema_decay=0.9,
        scale="group",
        eps=1e-4,
        use_groups=True,
        features="raw",
        k_max=3,
        tol=0.1,
        warm_start=False,
        seed=0,
        max_iter=300,
        kmeans_tol=1e-4,
        renorm="std",
        renorm_eps=1e-6,
        t_floor=1e-6,
        mu_floor=0.0,
        w_cap=None,
    ),
}
PRESETS["robust"] = {
    **PRESETS["faithful"],
    "weighting": "robust",
    "features": "sorted",
    "warm_start": True,
    "mu_floor": 0.05,
    "w_cap": 5.0,
}


def water_fill(raw: list[float], counts: list[float], cap: float | None) -> list[float]:
    """Scale so the count-weighted mean is 1, capping the largest at `cap`."""
    total = 0.0
    for c in counts:
        total += c
    mass = 0.0
    for w, n in zip(raw, counts, strict=True):
        mass += w * n
    if total <= 0 or not raw:
        return list(raw)
    if cap is None:
        lam = total / mass
        return [w * lam for w in raw]
    order = sorted(range(len(raw)), key=lambda i: (-raw[i], i))
    capped_n, rest = 0.0, mass
    for j in range(len(order) + 1):
        if j > 0:
            c = order[j - 1]
            capped_n += counts[c]
            rest -= raw[c] * counts[c]
        if j == len(order) or rest <= 0:
            break
        lam = (total - cap * capped_n) / rest
        if lam * raw[order[j]] <= cap * (1 + 1e-12):
            return [min(w * lam, cap) for w in raw]
    return [min(cap, max(1.0, cap)) for _ in raw]


@dataclass
class _Run:
    n: float = 0.0
    rsum: float = 0.0
    rcnt: float = 0.0

    def mean(self) -> float:
        return self.rsum / self.rcnt if self.rcnt > 0 else math.nan

    def fold(self, b: _Run, mode: str, decay: float) -> None:
        if mode == "cumulative":
            self.n += b.n
            self.rsum += b.rsum
            self.rcnt += b.rcnt
        elif mode == "ema":
            self.n = decay * self.n + b.n
            self.rsum = decay * self.rsum + b.rsum
            self.rcnt = decay * self.rcnt + b.rcnt
        else:
            self.n, self.rsum, self.rcnt = b.n, b.rsum, b.rcnt


@dataclass
class _Src:
    history: list[np.ndarray] = field(default_factory=list)  # one (b, G) f32 block per kept step
    labels: np.ndarray | None = None
    centroids: np.ndarray | None = None
    sizes: np.ndarray | None = None
    warm: list[np.ndarray] | None = None


@dataclass
class _Acc:
    n: float = 0.0
    rsum: float = 0.0
    rcnt: float = 0.0
    ssum: float = 0.0
    ssq: float = 0.0

    def add(self, o: _Acc) -> None:
        self.n += o.n
        self.rsum += o.rsum
        self.rcnt += o.rcnt
        self.ssum += o.ssum
        self.ssq += o.ssq

    def run(self) -> _Run:
        return _Run(self.n, self.rsum, self.rcnt)


class RefFair:
    """FairAdvantage in plain numpy (refit clustering only)."""

    def __init__(self, preset: str = "robust", **opts: Any) -> None:
        self.c = {**PRESETS[preset], **opts}
        self.sources: dict[Any, int] = {}
        self.groups: dict[Any, int] = {}
        self.src_stats: dict[int, _Run] = {}
        self.grp_stats: dict[tuple[int, int], _Run] = {}
        self.clusters: dict[int, _Src] = {}

    def _window(self) -> int | None:
        if self.c["stats"] == "cumulative":
            return None
        if self.c["stats"] == "batch":
            return 1
        return math.ceil(1 / (1 - self.c["ema_decay"]) - 1e-9)

    def __call__(self, rewards: np.ndarray, group_size: int, sources: list, groups: list | None):
        c, g = self.c, group_size
        p = len(rewards) // g
        dtype = rewards.dtype.type
        sid = [self.sources.setdefault(s, len(self.sources)) for s in sources]
        gid = []
        for x in groups if groups is not None else [None] * p:
            if x is None or x == -1:
                gid.append(-1)
            else:
                gid.append(self.groups.setdefault(x, len(self.groups)))
        if not c["use_groups"]:
            gid = [-1] * p
        ns, ng = len(self.sources), len(self.groups)
        bstd = batch_std(rewards) if c["scale"] == "batch" else 0.0

        def prompt(q: int) -> tuple[float, int, float, float]:
            rq = rewards[q * g : (q + 1) * g]
            s_, n_, mean, std = moments(rq)
            return s_, n_, mean, inv_scale(std, c["scale"], bstd, c["eps"], g)

        # pass 1: per chunk of prompts, sums per source and per (source, group) cell
        src_acc = [_Acc() for _ in range(ns)]
        cell_acc = [_Acc() for _ in range(ns * ng)]
        unl: list[tuple[int, _Acc]] = []
        for c0 in range(0, p, PROMPTS_PER_CHUNK):
            part_src = [_Acc() for _ in range(ns)]
            part_cell = [_Acc() for _ in range(ns * ng)]
            for q in range(c0, min(c0 + PROMPTS_PER_CHUNK, p)):
                rsum, cnt, mean, inv = prompt(q)
                ss = sq = 0.0
                for v in rewards[q * g : (q + 1) * g]:
                    s = float(dtype(score(float(v), mean, inv)))
                    ss += s
                    sq += s * s
                a = _Acc(1.0, rsum, float(cnt), ss, sq)
                part_src[sid[q]].add(a)
                if gid[q] >= 0:
                    part_cell[sid[q] * ng + gid[q]].add(a)
                else:
                    unl.append((q, a))
            for x, y in zip(src_acc, part_src, strict=True):
                x.add(y)
            for x, y in zip(cell_acc, part_cell, strict=True):
                x.add(y)
        # step 2: statistics, batch first, then read
        for s in range(ns):
            self.src_stats.setdefault(s, _Run()).fold(src_acc[s].run(), c["stats"], c["ema_decay"])
            for gg in range(ng):
                self.grp_stats.setdefault((s, gg), _Run()).fold(
                    cell_acc[s * ng + gg].run(), c["stats"], c["ema_decay"]
                )
        # step 3: implicit groups
        clusters = [-1] * p
        ks = {}
        for s in range(ns):
            idx = [q for q, _ in unl if sid[q] == s]
            st = self.clusters.setdefault(s, _Src())
            ks[s] = 0 if st.sizes is None else len(st.sizes)
            if not idx:
                continue
            rows = []
            for q in idx:
                rsum, cnt, mean, _ = prompt(q)
                fill = mean if cnt > 0 else 0.0
                rq = rewards[q * g : (q + 1) * g]
                f = np.array(
                    [np.float32(fill) if math.isnan(v) else np.float32(float(v)) for v in rq], np.float32
                )
                rows.append(np.sort(f) if c["features"] == "sorted" else f)
            st.history.append(np.array(rows, dtype=np.float32))
            w = self._window()
            if w is not None:
                st.history = st.history[-w:]
            hist = np.concatenate(st.history)
            _k, res, _, allc = select_k(
                hist,
                c["k_max"],
                c["tol"],
                c["seed"],
                c["max_iter"],
                c["kmeans_tol"],
                st.warm if c["warm_start"] else None,
            )
            st.labels, st.centroids, st.sizes, st.warm = res.labels, res.centroids, res.sizes, allc
            ks[s] = len(res.sizes)
            for q, lab in zip(idx, res.labels[len(hist) - len(idx) :], strict=True):
                clusters[q] = int(lab)
        # step 4: cells = labelled (s, g) in index order, then clusters (s, j)
        base, n_cells = {}, ns * ng
        for s in range(ns):
            base[s] = n_cells
            n_cells += ks[s]
        acc = cell_acc + [_Acc() for _ in range(n_cells - ns * ng)]
        cell_src = [i // ng for i in range(ns * ng)] + [s for s in range(ns) for _ in range(ks[s])]
        for q, a in unl:
            acc[base[sid[q]] + clusters[q]].add(a)

        def run_of(ci: int) -> tuple[float, float]:
            if ci < ns * ng:
                r = self.grp_stats[(ci // ng, ci % ng)]
                return r.n, r.mean()
            st = self.clusters[cell_src[ci]]
            j = ci - base[cell_src[ci]]
            tot = 0.0
            for v in st.centroids[j]:
                tot += v
            return float(st.sizes[j]), tot / len(st.centroids[j])

        robust = c["weighting"] == "robust"

        def floor_mu(mu: float) -> float:
            return float(np.fmax(mu, c["mu_floor"])) if robust else mu

        t_src = {
            s: float(np.fmax(math.sqrt(r.n) * floor_mu(r.mean()), c["t_floor"]))
            for s, r in self.src_stats.items()
        }
        active = [ci for ci in range(n_cells) if acc[ci].n > 0]
        mult = [1.0] * n_cells
        for ci in active:
            n, mu = run_of(ci)
            t = math.sqrt(n) * floor_mu(mu)
            if robust:
                t = max(float(np.fmax(t, c["t_floor"])), 1e-12)
            f = t_src[cell_src[ci]] * t
            if robust:
                mult[ci] = 1.0 / f
            else:
                with np.errstate(all="ignore"):
                    inv = np.float64(1.0) / np.float64(f)
                if not (math.isnan(f) or f == 0.0 or not math.isfinite(inv)):
                    mult[ci] = float(inv)
        if robust:
            filled = water_fill([mult[ci] for ci in active], [acc[ci].n for ci in active], c["w_cap"])
            for ci, w in zip(active, filled, strict=True):
                mult[ci] = w
        # step 5: renormalisation from the cell sums
        sa = saa = nv = 0.0
        for ci in active:
            m = mult[ci]
            sa += m * acc[ci].ssum
            saa += m * m * acc[ci].ssq
            nv += acc[ci].rcnt
        mean_a = sa / nv if nv > 0 else 0.0
        std_a = math.sqrt(max(saa - sa * sa / nv, 0.0) / (nv - 1)) if nv > 1 else 0.0
        shift, inv_denom = {
            "std": (0.0, 1.0 / (std_a + c["renorm_eps"])),
            "zscore": (mean_a, 1.0 / (std_a + c["renorm_eps"])),
            "none": (0.0, 1.0),
        }[c["renorm"]]
        out = np.zeros_like(rewards)
        weights = np.zeros(p)
        for q in range(p):
            ci = sid[q] * ng + gid[q] if gid[q] >= 0 else base[sid[q]] + clusters[q]
            weights[q] = mult[ci]
            _, _, mean, inv = prompt(q)
            for i in range(g):
                r = rewards[q * g + i]
                if np.isnan(r):
                    continue
                s = float(dtype(score(float(r), mean, inv)))
                a = s * mult[ci]
                a = a if math.isfinite(a) else s
                out[q * g + i] = dtype((a - shift) * inv_denom)
        return out, weights, np.array(clusters)
