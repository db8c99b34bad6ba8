"""Fairness gaps with and without FairGRPO, over several seeds, on the bundled clinical data.

Runs ``python -m fairgrpo.train`` once per (method, seed) — each run is the default job with
``--method`` and ``--seed`` changed — then prints and writes a table of the held-out metrics
(mean ± sample std over seeds) and a PNG with error bars. Finished runs are reused, so an
interrupted experiment resumes where it stopped.

    python scripts/fairness_experiment.py --methods grpo fairgrpo --seeds 0 1 2
    python scripts/fairness_experiment.py --methods grpo fairgrpo -- --max_steps 50   # extra train args
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METRICS = [  # (key in the report summary, label, lower is better)
    ("PP", "PP", True),
    ("EOD", "EOD", True),
    ("FPR_Diff", "FPR_Diff", True),
    ("sF1", "σF1", True),
    ("dF1", "ΔF1", True),
    ("dAcc", "ΔAcc", True),
    ("F1", "F1", False),
    ("Acc", "Acc", False),
    ("F1_ES", "F1_ES", False),
]


def run_one(method: str, seed: int, out: Path, extra: list[str], same_split: bool = False) -> dict[str, Any]:
    report = out / method / f"seed_{seed}" / "report.json"
    if not report.exists():
        cmd = [sys.executable, "-m", "fairgrpo.train", "--method", method, "--seed", str(seed)]
        if not same_split:
            cmd += ["--split_seed", str(seed)]
        cmd += ["--output_dir", str(report.parent), *extra]
        print(f"[experiment] {' '.join(cmd)}", flush=True)
        t0 = time.time()
        log = report.parent.with_suffix(".log")
        report.parent.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not report.exists():
            raise SystemExit(f"run {method} seed {seed} failed (exit {rc}); see {log}")
        print(f"[experiment] {method} seed {seed} done in {time.time() - t0:.0f} s", flush=True)
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def fmt(values: list[float | None]) -> str:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def summary(report: dict[str, Any], which: str) -> dict[str, Any]:
    part = report.get(which) or {}
    out: dict[str, Any] = dict(part.get("summary") or {})
    out["overall_f1"] = (part.get("overall") or {}).get("f1")
    return out


def table(results: dict[str, list[dict[str, Any]]], seeds: list[int]) -> str:
    head = "| method | " + " | ".join(f"{lab}{'↓' if low else '↑'}" for _, lab, low in METRICS)
    head += " | macro-F1 (pooled)↑ |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    first = next(iter(results.values()))
    rows: list[tuple[str, list[dict[str, Any]]]] = [
        ("starting policy", [summary(r, "before") for r in first]),
        ("logistic regression (reference)", [summary(r, "reference") for r in first]),
    ]
    rows += [(m, [summary(r, "after") for r in runs]) for m, runs in results.items()]
    for name, sums in rows:
        cells = [fmt([s.get(k) for s in sums]) for k, _, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt([s.get('overall_f1') for s in sums])} |")
    note = f"mean ± sample std over seeds {seeds}; each seed also draws its own train / held-out split"
    return "\n".join(lines) + "\n\n" + note + " (unless --same_split)."


def paired(results: dict[str, list[dict[str, Any]]], baseline: str = "grpo") -> str:
    """Per-seed differences to the baseline (same seed, same split): mean ± std, and how often lower."""
    if baseline not in results:
        return ""
    keys = [("PP", True), ("EOD", True), ("dF1", True), ("sF1", True), ("F1", False), ("Acc", False)]
    lines = [
        f"| method − {baseline} | " + " | ".join(k for k, _ in keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    base = [summary(r, "after") for r in results[baseline]]
    for m, runs in results.items():
        if m == baseline:
            continue
        cells = []
        for k, _ in keys:
            d = [
                (summary(r, "after").get(k) or 0.0) - (b.get(k) or 0.0)
                for r, b in zip(runs, base, strict=True)
            ]
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            cells.append(f"{statistics.mean(d):+.3f} ± {sd:.3f} ({sum(x < 0 for x in d)}/{len(d)} lower)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("PP", "PP (×100)"), ("EOD", "EOD (×100)"), ("dF1", "ΔF1"), ("F1", "F1")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    methods = list(results)
    for ax, (k, lab) in zip(axes, keys, strict=True):
        means, errs = [], []
        for m in methods:
            v = [summary(r, "after").get(k) for r in results[m]]
            v = [x for x in v if x is not None]
            means.append(statistics.mean(v) if v else float("nan"))
            errs.append(statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.bar(
            methods,
            means,
            yerr=errs,
            capsize=4,
            color=["#888", "#2a7", "#27a", "#a72", "#a27", "#7a2"][: len(methods)],
        )
        ax.set_title(lab)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Held-out fairness gaps and F1 (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["grpo", "fairgrpo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/experiment"))
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one torch thread)")
    ap.add_argument(
        "--same_split", action="store_true", help="keep the default train / held-out split for every seed"
    )
    ap.add_argument(
        "extra", nargs="*", help="arguments passed to every `python -m fairgrpo.train` (after --)"
    )
    args = ap.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            m: [pool.submit(run_one, m, s, args.out, args.extra, args.same_split) for s in args.seeds]
            for m in args.methods
        }
        results = {m: [f.result() for f in fs] for m, fs in futures.items()}
    md = table(results, args.seeds)
    diff = paired(results)
    if diff:
        md += "\n\nPaired differences to GRPO (same seed and split):\n\n" + diff
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(md + "\n")
    plot(results, args.out / "results.png")
    print(f"[experiment] wrote {args.out / 'results.md'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
