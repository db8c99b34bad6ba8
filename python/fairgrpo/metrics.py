"""Evaluation metrics of FairGRPO (ALGORITHM.md section 4, arXiv 2510.19893).

Per data source: one-vs-rest confusion counts per class (scikit-learn's
``multilabel_confusion_matrix``), macro-averaged accuracy, F1, TPR, FPR and precision. Per
demographic attribute the same metrics per subgroup, then the gaps over subgroups
(Δ = max - min, σ = sample std with ddof=1): PP (precision gap), EOD (TPR gap), FPR_Diff,
ΔF1, σF1, ΔAcc, σAcc, and the equity-scaled scores F1_ES = F1 / (1 + σF1),
Acc_ES = Acc / (1 + σAcc). Gaps are averaged over a source's attributes, then over sources.
Also per-patient outcome changes between two evaluations (ALGORITHM.md section 3, item 4) and
a Markdown rendering of a report.

Conventions:
    * A prediction that is ``None`` or not one of the classes is wrong: it is a separate
      "invalid" class, never the positive of any real class.
    * A per-class rate whose denominator is zero (TPR of a class absent from a subgroup,
      precision of a class never predicted, ...) is undefined and left out of the macro
      average; a metric undefined for every class is ``None``. F1 = 2TP / (2TP + FP + FN).
    * Units follow the paper's tables: PP, EOD, FPR_Diff, ΔAcc, σAcc, Acc and Acc_ES in the
      summary are x100; F1, ΔF1, σF1 and F1_ES are fractions. Per-source and per-subgroup
      metric dicts hold plain fractions.
    * Everything returned is plain ``int`` / ``float`` / ``str`` / ``None`` (JSON-ready).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import multilabel_confusion_matrix

from .rewards import normalize_answer

__all__ = [
    "GAP_KEYS",
    "INVALID",
    "SUMMARY_KEYS",
    "classification_metrics",
    "fairness_report",
    "fairness_report_for_records",
    "history_entry",
    "patient_outcome_changes",
    "report_markdown",
]

INVALID = "__invalid__"
"""The class an unparseable or out-of-vocabulary prediction is counted as."""

UNKNOWN_VALUES = frozenset({"unknown", ""})
MACRO_KEYS = ("accuracy", "f1", "tpr", "fpr", "precision")
GAP_KEYS = ("PP", "EOD", "FPR_Diff", "dF1", "sF1", "dAcc", "sAcc")
SUMMARY_KEYS = ("PP", "EOD", "FPR_Diff", "dF1", "sF1", "dAcc", "sAcc", "F1", "Acc", "F1_ES", "Acc_ES")


# ----------------------------------------------------------------------------- helpers


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(sum(defined) / len(defined)) if defined else None


def _canonical_classes(classes: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes must not be empty")
    lookup: dict[str, str] = {}
    for c in names:
        key = normalize_answer(c)
        if key in lookup:
            raise ValueError(f"classes {names} contain two names that normalise to {key!r}")
        lookup[key] = c
    if INVALID in names:
        raise ValueError(f"{INVALID!r} is reserved for invalid predictions and cannot be a class")
    return names, lookup


def _as_true(values: Sequence[Any], lookup: Mapping[str, str]) -> list[str]:
    out = []
    for v in values:
        c = lookup.get(normalize_answer(str(v))) if v is not None else None
        if c is None:
            raise ValueError(f"true label {v!r} is not one of the classes {list(lookup.values())}")
        out.append(c)
    return out


def _as_pred(values: Sequence[Any], lookup: Mapping[str, str]) -> list[str]:
    return [(lookup.get(normalize_answer(str(v)), INVALID) if v is not None else INVALID) for v in values]


def _is_unknown(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in UNKNOWN_VALUES


def _key(value: Any) -> str:
    return "unknown" if _is_unknown(value) else str(value)


# ----------------------------------------------------------------------------- metrics


def _metrics(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict[str, Any]:
    """Macro one-vs-rest metrics on already canonical labels."""
    n = len(y_true)
    per_class: dict[str, dict[str, Any]] = {}
    if n:
        cm = multilabel_confusion_matrix(y_true, y_pred, labels=classes)  # (C, 2, 2) [[tn, fp], [fn, tp]]
    for i, c in enumerate(classes):
        tn, fp, fn, tp = (int(x) for x in cm[i].ravel()) if n else (0, 0, 0, 0)
        per_class[c] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "support": tp + fn,
            "accuracy": _ratio(tp + tn, n),
            "precision": _ratio(tp, tp + fp),
            "tpr": _ratio(tp, tp + fn),
            "fpr": _ratio(fp, fp + tn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        }
    n_invalid = sum(p == INVALID for p in y_pred)
    out: dict[str, Any] = {
        "n": n,
        "n_invalid": int(n_invalid),
        "invalid_rate": _ratio(n_invalid, n),
        "exact_accuracy": _ratio(sum(t == p for t, p in zip(y_true, y_pred, strict=True)), n),
    }
    for key in MACRO_KEYS:
        out[key] = _mean([per_class[c][key] for c in classes])
    out["per_class"] = per_class
    return out


def classification_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]
) -> dict[str, Any]:
    """One-vs-rest confusion counts per class and their macro averages.

    Args:
        y_true: reference class names.
        y_pred: predicted class names; ``None`` or anything that is not a class (after
            lower-casing and stripping) counts as wrong.
        classes: the class names.

    Returns:
        ``{"n", "n_invalid", "invalid_rate", "exact_accuracy", "accuracy", "f1", "tpr",
        "fpr", "precision", "per_class": {class: {"tp", "fp", "fn", "tn", "support",
        "accuracy", "precision", "tpr", "fpr", "f1"}}}``; ``accuracy`` is the macro
        one-vs-rest accuracy (the paper's Acc), ``exact_accuracy`` the share answered right.

    >>> m = classification_metrics(["yes", "no"], ["yes", None], ["yes", "no"])
    >>> m["exact_accuracy"], m["accuracy"], m["per_class"]["no"]["fn"]
    (0.5, 0.75, 1)
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    names, lookup = _canonical_classes(classes)
    return _metrics(_as_true(y_true, lookup), _as_pred(y_pred, lookup), names)


def _gaps(subgroup_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Δ and σ of the macro metrics over subgroups (PP, EOD, FPR_Diff, ΔAcc, σAcc x100)."""

    def spread(key: str) -> tuple[float | None, float | None]:
        values = [float(m[key]) for m in subgroup_metrics.values() if m[key] is not None]
        if len(values) < 2:
            return None, None
        return float(max(values) - min(values)), float(np.std(values, ddof=1))

    def scaled(x: float | None, k: float) -> float | None:
        return None if x is None else x * k

    d_prec, _ = spread("precision")
    d_tpr, _ = spread("tpr")
    d_fpr, _ = spread("fpr")
    d_f1, s_f1 = spread("f1")
    d_acc, s_acc = spread("accuracy")
    return {
        "PP": scaled(d_prec, 100.0),
        "EOD": scaled(d_tpr, 100.0),
        "FPR_Diff": scaled(d_fpr, 100.0),
        "dF1": d_f1,
        "sF1": s_f1,
        "dAcc": scaled(d_acc, 100.0),
        "sAcc": scaled(s_acc, 100.0),
    }


def _equity_scaled(
    f1: float | None, s_f1: float | None, acc: float | None, s_acc: float | None
) -> dict[str, Any]:
    """F1_ES = F1 / (1 + σF1); Acc_ES = Acc / (1 + σAcc), computed on fractions, Acc_ES x100.
    ``acc`` and ``s_acc`` come in x100."""
    f1_es = None if f1 is None or s_f1 is None else f1 / (1.0 + s_f1)
    acc_es = None if acc is None or s_acc is None else 100.0 * (acc / 100.0) / (1.0 + s_acc / 100.0)
    return {"F1_ES": f1_es, "Acc_ES": acc_es}


def _by_value(
    y_true: list[str], y_pred: list[str], values: Sequence[str], classes: list[str]
) -> dict[str, dict[str, Any]]:
    index: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        index.setdefault(v, []).append(i)
    return {
        v: _metrics([y_true[i] for i in idx], [y_pred[i] for i in idx], classes)
        for v, idx in sorted(index.items())
    }


def fairness_report(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    sources: Sequence[Any],
    attributes: Mapping[str, Sequence[Any]],
    classes: Sequence[Any],
    *,
    groups: Sequence[Any] | None = None,
    min_group_size: int = 1,
) -> dict[str, Any]:
    """The paper's fairness evaluation (ALGORITHM.md section 4).

    Args:
        y_true, y_pred: reference and predicted class names (``None`` = no answer).
        sources: the data source of each sample.
        attributes: attribute name -> per-sample value (e.g. ``{"sex": [...], "age": [...]}``);
            ``None`` / ``"unknown"`` values are reported but left out of the gaps.
        classes: the class names.
        groups: optional intersectional group per sample (e.g. ``"female|51-75"``), reported
            pooled over sources under ``"per_group"`` (not used in the gaps).
        min_group_size: subgroups with fewer samples are left out of the gaps.

    Returns:
        ``{"classes", "n", "overall", "per_source", "per_subgroup", "per_group", "summary"}``.
        ``per_source[s]`` holds ``n``, ``metrics``, ``attributes[a]`` (``subgroups``: value ->
        metrics; ``gap_subgroups``: the values used; ``gaps``: PP, EOD, FPR_Diff, dF1, sF1,
        dAcc, sAcc, or ``None`` when fewer than 2 subgroups qualify), ``gaps`` (averaged over
        the attributes with gaps) and ``F1_ES`` / ``Acc_ES``. ``summary`` averages the
        per-source gaps, F1 and Acc over sources (sources without a gap are skipped for that
        gap) and scores ``F1_ES = F1 / (1 + sF1)``, ``Acc_ES = Acc / (1 + sAcc)`` from those
        averages. Units: see the module docstring.
    """
    n = len(y_true)
    if len(y_pred) != n or len(sources) != n:
        raise ValueError(
            f"y_true ({n}), y_pred ({len(y_pred)}) and sources ({len(sources)}) differ in length"
        )
    for name, values in attributes.items():
        if len(values) != n:
            raise ValueError(f"attribute {name!r} has {len(values)} values for {n} samples")
    if groups is not None and len(groups) != n:
        raise ValueError(f"groups has {len(groups)} values for {n} samples")
    if min_group_size < 1:
        raise ValueError(f"min_group_size must be at least 1, got {min_group_size}")
    names, lookup = _canonical_classes(classes)
    t = _as_true(y_true, lookup)
    p = _as_pred(y_pred, lookup)
    src = [_key(s) for s in sources]
    attrs = {a: [_key(v) for v in values] for a, values in attributes.items()}

    per_source: dict[str, Any] = {}
    for s in sorted(set(src)):
        idx = [i for i, x in enumerate(src) if x == s]
        ts, ps = [t[i] for i in idx], [p[i] for i in idx]
        metrics = _metrics(ts, ps, names)
        attr_reports: dict[str, Any] = {}
        for a, values in attrs.items():
            vs = [values[i] for i in idx]
            subgroups = _by_value(ts, ps, vs, names)
            used = [v for v, m in subgroups.items() if v != "unknown" and m["n"] >= min_group_size]
            gaps = _gaps({v: subgroups[v] for v in used}) if len(used) >= 2 else None
            attr_reports[a] = {"subgroups": subgroups, "gap_subgroups": used, "gaps": gaps}
        with_gaps = [r["gaps"] for r in attr_reports.values() if r["gaps"] is not None]
        source_gaps = {k: _mean([g[k] for g in with_gaps]) for k in GAP_KEYS}
        acc100 = None if metrics["accuracy"] is None else 100.0 * metrics["accuracy"]
        per_source[s] = {
            "n": len(idx),
            "metrics": metrics,
            "attributes": attr_reports,
            "gaps": source_gaps,
            **_equity_scaled(metrics["f1"], source_gaps["sF1"], acc100, source_gaps["sAcc"]),
        }

    summary: dict[str, Any] = {k: _mean([r["gaps"][k] for r in per_source.values()]) for k in GAP_KEYS}
    summary["F1"] = _mean([r["metrics"]["f1"] for r in per_source.values()])
    acc = _mean([r["metrics"]["accuracy"] for r in per_source.values()])
    summary["Acc"] = None if acc is None else 100.0 * acc
    summary.update(_equity_scaled(summary["F1"], summary["sF1"], summary["Acc"], summary["sAcc"]))
    summary["n_sources"] = len(per_source)
    summary["n_sources_with_gaps"] = sum(
        any(v is not None for v in r["gaps"].values()) for r in per_source.values()
    )

    report: dict[str, Any] = {
        "classes": names,
        "n": n,
        "min_group_size": min_group_size,
        "overall": _metrics(t, p, names),
        "per_source": per_source,
        "per_subgroup": {a: _by_value(t, p, values, names) for a, values in attrs.items()},
        "summary": summary,
    }
    if groups is not None:
        report["per_group"] = _by_value(t, p, [_key(g) for g in groups], names)
    return report


def fairness_report_for_records(
    records: Sequence[Mapping[str, Any]], predictions: Sequence[Any], *, min_group_size: int = 1
) -> dict[str, Any]:
    """:func:`fairness_report` for records built by :mod:`fairgrpo.data` and their predicted
    answers (e.g. ``rewards.extract_answer`` of each greedy completion)."""
    if not records:
        raise ValueError("no records to evaluate")
    if len(predictions) != len(records):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    classes = list(records[0]["classes"])
    names: list[str] = []
    for r in records:
        if list(r["classes"]) != classes:
            raise ValueError(f"records mix class lists {classes} and {list(r['classes'])}")
        for a in r.get("attributes", {}):
            if a not in names:
                names.append(a)
    return fairness_report(
        [r["answer"] for r in records],
        predictions,
        [r["source"] for r in records],
        {a: [r.get("attributes", {}).get(a) for r in records] for a in names},
        classes,
        groups=[r.get("true_group") for r in records],
        min_group_size=min_group_size,
    )


def history_entry(step: int, report: Mapping[str, Any]) -> dict[str, Any]:
    """``{"step", "summary", "per_group_f1"}`` for :func:`fairgrpo.plots.plot_metric_history`
    (per-group F1 from ``per_group``, else ``attribute=value`` from ``per_subgroup``)."""
    if report.get("per_group"):
        per_group = {g: m["f1"] for g, m in report["per_group"].items()}
    else:
        per_group = {
            f"{a}={v}": m["f1"] for a, subs in report.get("per_subgroup", {}).items() for v, m in subs.items()
        }
    return {"step": int(step), "summary": dict(report["summary"]), "per_group_f1": per_group}


# ----------------------------------------------------------------------------- individuals


def patient_outcome_changes(
    before_correct: Sequence[Any], after_correct: Sequence[Any], groups: Sequence[Any]
) -> dict[str, Any]:
    """How held-out patients' outcomes changed between two evaluations, per group.

    Returns:
        ``{"per_group": {group: counts}, "total": counts}`` with counts ``n``,
        ``became_correct``, ``became_incorrect``, ``stayed_correct``, ``stayed_incorrect`` and
        ``net`` (= became_correct - became_incorrect). A ``None`` group is ``"unknown"``.
    """
    if not len(before_correct) == len(after_correct) == len(groups):
        raise ValueError(
            f"before_correct ({len(before_correct)}), after_correct ({len(after_correct)}) and groups "
            f"({len(groups)}) differ in length"
        )

    def empty() -> dict[str, int]:
        return dict.fromkeys(
            ("n", "became_correct", "became_incorrect", "stayed_correct", "stayed_incorrect", "net"), 0
        )

    per_group: dict[str, dict[str, int]] = {}
    total = empty()
    for b, a, g in zip(before_correct, after_correct, groups, strict=True):
        kind = {
            (False, True): "became_correct",
            (True, False): "became_incorrect",
            (True, True): "stayed_correct",
            (False, False): "stayed_incorrect",
        }[(bool(b), bool(a))]
        counts = per_group.setdefault(_key(g), empty())
        for c in (counts, total):
            c["n"] += 1
            c[kind] += 1
            c["net"] = c["became_correct"] - c["became_incorrect"]
    return {"per_group": dict(sorted(per_group.items())), "total": total}


# ----------------------------------------------------------------------------- markdown

_ROWS: tuple[tuple[str, str, int], ...] = (
    # key, label (arrow: which way is better), decimals
    ("F1", "F1 ↑", 4),
    ("Acc", "Acc (%) ↑", 2),
    ("F1_ES", "F1_ES ↑", 4),
    ("Acc_ES", "Acc_ES (%) ↑", 2),
    ("PP", "PP ↓", 2),
    ("EOD", "EOD ↓", 2),
    ("FPR_Diff", "FPR_Diff ↓", 2),
    ("dF1", "ΔF1 ↓", 4),
    ("sF1", "σF1 ↓", 4),
    ("dAcc", "ΔAcc ↓", 2),
    ("sAcc", "σAcc ↓", 2),
)


def _fmt(x: Any, digits: int) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{float(x):.{digits}f}"


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return lines


def _cell(after: Any, before: Any, digits: int, with_before: bool) -> str:
    if not with_before:
        return _fmt(after, digits)
    return f"{_fmt(before, digits)} → {_fmt(after, digits)}"


def report_markdown(
    report: Mapping[str, Any],
    before: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
) -> str:
    """A Markdown view of a :func:`fairness_report`: the summary metrics (columns before /
    after / change / reference), then one row per source and per subgroup.

    ``reference`` is another report or a bare summary dict (e.g. the paper's numbers); keys
    it lacks show as ``n/a``.
    """
    ref = None if reference is None else reference.get("summary", reference)
    summary = report["summary"]
    header = ["metric"] + (["before", "after", "change"] if before is not None else ["value"])
    header += ["reference"] if ref is not None else []
    rows = []
    for key, label, digits in _ROWS:
        row = [label]
        if before is not None:
            b, a = before["summary"].get(key), summary.get(key)
            change = None if a is None or b is None else a - b
            row += [_fmt(b, digits), _fmt(a, digits), "n/a" if change is None else f"{change:+.{digits}f}"]
        else:
            row.append(_fmt(summary.get(key), digits))
        if ref is not None:
            row.append(_fmt(ref.get(key), digits))
        rows.append(row)
    overall = report["overall"]
    invalid_row = ["invalid answers (%)"]
    if before is not None:
        b_inv, a_inv = _pct(before["overall"]["invalid_rate"]), _pct(overall["invalid_rate"])
        change = None if a_inv is None or b_inv is None else a_inv - b_inv
        invalid_row += [_fmt(b_inv, 2), _fmt(a_inv, 2), "n/a" if change is None else f"{change:+.2f}"]
    else:
        invalid_row.append(_fmt(_pct(overall["invalid_rate"]), 2))
    if ref is not None:
        invalid_row.append("n/a")
    rows.append(invalid_row)

    n_text = f"{report['n']} samples, classes {', '.join(report['classes'])}"
    lines = ["## Summary", "", n_text, "", *_table(header, rows), ""]

    with_before = before is not None
    cols = ["n", "F1", "Acc (%)", "PP", "EOD", "FPR_Diff", "ΔF1", "σF1"]
    lines += ["## Per source", ""]
    if with_before:
        lines += ["Cells read before → after.", ""]
    src_rows = []
    for s, r in report["per_source"].items():
        b = before["per_source"].get(s) if before is not None else None

        def get(rep: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
            cur: Any = rep
            for k in path:
                if cur is None:
                    return None
                cur = cur.get(k)
            return cur

        src_rows.append(
            [
                s,
                str(r["n"]),
                _cell(r["metrics"]["f1"], get(b, ("metrics", "f1")), 4, with_before),
                _cell(_pct(r["metrics"]["accuracy"]), _pct(get(b, ("metrics", "accuracy"))), 2, with_before),
                _cell(r["gaps"]["PP"], get(b, ("gaps", "PP")), 2, with_before),
                _cell(r["gaps"]["EOD"], get(b, ("gaps", "EOD")), 2, with_before),
                _cell(r["gaps"]["FPR_Diff"], get(b, ("gaps", "FPR_Diff")), 2, with_before),
                _cell(r["gaps"]["dF1"], get(b, ("gaps", "dF1")), 4, with_before),
                _cell(r["gaps"]["sF1"], get(b, ("gaps", "sF1")), 4, with_before),
            ]
        )
    lines += [*_table(["source", *cols], src_rows), ""]

    group_rows = []
    sections: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = [
        (a, subs, (before or {}).get("per_subgroup", {}).get(a, {}))
        for a, subs in report.get("per_subgroup", {}).items()
    ]
    if report.get("per_group"):
        sections.append(("group", report["per_group"], (before or {}).get("per_group", {})))
    for a, subs, before_subs in sections:
        for v, m in subs.items():
            b = before_subs.get(v)
            group_rows.append(
                [
                    f"{a}={v}",
                    str(m["n"]),
                    _cell(m["f1"], None if b is None else b["f1"], 4, with_before),
                    _cell(_pct(m["accuracy"]), _pct(None if b is None else b["accuracy"]), 2, with_before),
                    _cell(m["tpr"], None if b is None else b["tpr"], 4, with_before),
                    _cell(m["precision"], None if b is None else b["precision"], 4, with_before),
                ]
            )
    lines += ["## Per group (all sources pooled)", ""]
    lines += [*_table(["subgroup", "n", "F1", "Acc (%)", "TPR", "precision"], group_rows), ""]
    return "\n".join(lines)
