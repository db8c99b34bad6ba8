"""Small pieces shared by the peer implementations (pure Python, O(number of cells))."""

from __future__ import annotations


def water_fill(raw: list[float], counts: list[float], cap: float | None) -> list[float]:
    """Scales weights so their count-weighted mean is 1, capping the largest at ``cap``.

    The robust preset's normalisation of the per-cell weights (ALGORITHM.md §3.1): at most
    a few dozen cells, so plain Python; the same in every peer.
    """
    total = sum(counts)
    mass = sum(w * n for w, n in zip(raw, counts, strict=True))
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
