"""Training curves of the fairness metrics (the paper's "F1 gap over training" figure).

:func:`plot_metric_history` draws, from one evaluation per logged step, the summary metrics
of :func:`fairgrpo.metrics.fairness_report` (F1, Acc, PP / EOD / FPR_Diff, ΔF1 / σF1,
ΔAcc / σAcc) and each group's
F1 over training steps into a PNG. It uses matplotlib's object API on the Agg canvas, so it
never touches the global pyplot backend and works without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_metric_history"]

_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("F1 (macro, mean over sources)", (("F1", "F1"), ("F1_ES", "F1_ES"))),
    ("Acc (%)", (("Acc", "Acc"), ("Acc_ES", "Acc_ES"))),
    ("rate gaps (x100)", (("PP", "PP"), ("EOD", "EOD"), ("FPR_Diff", "FPR_Diff"))),
    ("F1 gaps", (("dF1", "ΔF1"), ("sF1", "σF1"))),
    ("Acc gaps (x100)", (("dAcc", "ΔAcc"), ("sAcc", "σAcc"))),
)


def _value(x: Any) -> float:
    return float("nan") if x is None else float(x)


def plot_metric_history(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a PNG of the metrics over training steps and return its path.

    Args:
        history: one entry per evaluation, ``{"step": int, "summary": {...},
            "per_group_f1": {group: f1}}`` (see :func:`fairgrpo.metrics.history_entry`);
            missing or ``None`` values leave gaps in the lines.
        path: the PNG to write (parent folders are created).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted(history, key=lambda e: int(e["step"]))
    steps = [int(e["step"]) for e in entries]

    fig = Figure(figsize=(15, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(2, 3).ravel())
    for ax, (title, series) in zip(axes[:5], _PANELS, strict=True):
        for key, label in series:
            ys = [_value(e.get("summary", {}).get(key)) for e in entries]
            ax.plot(steps, ys, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    ax = axes[5]
    groups: list[str] = []
    for e in entries:
        for g in e.get("per_group_f1", {}) or {}:
            if g not in groups:
                groups.append(g)
    for g in sorted(groups):
        ys = [_value((e.get("per_group_f1") or {}).get(g)) for e in entries]
        ax.plot(steps, ys, marker="o", markersize=3, label=g)
    ax.set_title("F1 per group")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7, ncol=2 if len(groups) > 6 else 1)
    if not entries:
        for a in axes:
            a.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=a.transAxes)
    fig.savefig(out, dpi=110)
    return out
