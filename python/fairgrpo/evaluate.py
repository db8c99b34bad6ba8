"""Held-out fairness evaluation: greedy decoding, the metrics of ALGORITHM.md §4, reports.

* :func:`generate_predictions` decodes greedily and reads each answer with
  :func:`fairgrpo.rewards.extract_answer`;
* :func:`evaluate_policy` turns them into :func:`fairgrpo.metrics.fairness_report`;
* :func:`logistic_reference` fits the scikit-learn logistic-regression reference on the same
  features and split;
* :class:`FairnessEvalCallback` evaluates every ``eval_every_steps`` during training and keeps
  the metric history for :func:`fairgrpo.plots.plot_metric_history`;
* :func:`write_reports` writes JSON, Markdown and PNG files.

``python -m fairgrpo.evaluate --run_dir DIR`` re-evaluates the policy a ``fairgrpo.train`` run
saved in ``DIR/policy`` on the same held-out split (or ``--model`` any model on any data).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from transformers import TrainerCallback

from fairgrpo.metrics import (
    fairness_report_for_records,
    history_entry,
    patient_outcome_changes,
    report_markdown,
)
from fairgrpo.plots import plot_metric_history
from fairgrpo.rewards import extract_answer

__all__ = [
    "EvalArgs",
    "FairnessEvalCallback",
    "evaluate_policy",
    "generate_predictions",
    "logistic_reference",
    "main",
    "plot_group_comparison",
    "write_reports",
]


# ----------------------------------------------------------------------------- decoding


def _prompt_texts(tokenizer: Any, prompts: Sequence[Any]) -> list[str]:
    """Plain prompts as they are; chat prompts through the tokenizer's chat template."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        else:
            out.append(tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False))
    return out


def generate_predictions(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> tuple[list[str | None], list[str]]:
    """Greedy completions of the records' prompts and the answers read from them.

    Returns:
        ``(answers, completions)``: the extracted answer of each record (``None`` when the
        completion gives none) and the raw completion texts.
    """
    import torch

    was_training = model.training
    model.eval()
    texts = _prompt_texts(tokenizer, [r["prompt"] for r in records])
    chat = bool(records) and not isinstance(records[0]["prompt"], str)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    completions: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                out = model.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            completions += tokenizer.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    answers = [
        extract_answer(c, list(r.get("classes") or [])) for c, r in zip(completions, records, strict=True)
    ]
    return answers, completions


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Greedy decoding on ``records`` and the fairness report of the answers.

    Returns:
        :func:`fairgrpo.metrics.fairness_report` plus ``"predictions"`` (answers),
        ``"correct"`` (per record) and ``"completions"``.
    """
    answers, completions = generate_predictions(model, tokenizer, records, max_new_tokens, batch_size)
    report = fairness_report_for_records(records, answers)
    report["predictions"] = answers
    report["correct"] = [a is not None and a == r["answer"] for a, r in zip(answers, records, strict=True)]
    report["completions"] = completions
    return report


# ----------------------------------------------------------------------------- reference


def logistic_reference(
    train_frame: Any,
    test_frame: Any,
    train_answers: Sequence[str],
    feature_columns: Sequence[str],
    missing_values: Mapping[str, Sequence[Any]] | None = None,
    seed: int = 0,
) -> list[str]:
    """Predictions of a logistic regression fitted on the same features and training split.

    Numeric columns: median imputation with missing indicators, standardised; the others:
    one-hot with missing as its own value. ``missing_values`` lists codes that mean missing
    (e.g. cholesterol 0). Returns the predicted class name of every test row.
    """
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    missing_values = missing_values or {}

    def clean(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[list(feature_columns)].copy()
        for c in feature_columns:
            codes = list(missing_values.get(c, ()))
            if codes:
                out[c] = out[c].mask(out[c].isin(codes))
        return out

    tr, te = clean(train_frame), clean(test_frame)
    numeric = [c for c in feature_columns if _is_numeric(tr[c])]
    categorical = [c for c in feature_columns if c not in numeric]
    for frame in (tr, te):
        for c in categorical:
            frame[c] = frame[c].map(lambda v: "unknown" if v is None or v != v else str(v).lower())
        for c in numeric:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    pre = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                numeric,
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    clf = make_pipeline(pre, LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(tr, list(train_answers))
    return [str(p) for p in clf.predict(te)]


def _is_numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


# ----------------------------------------------------------------------------- during training


class FairnessEvalCallback(TrainerCallback):
    """Held-out fairness evaluation every ``every`` optimizer steps (main process only).

    Appends :func:`fairgrpo.metrics.history_entry` dicts to :attr:`history` and logs the
    summary (``eval_fair/F1``, ...) through the trainer's loggers.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        tokenizer: Any,
        every: int,
        max_new_tokens: int,
        batch_size: int = 64,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.records = list(records)
        self.tokenizer = tokenizer
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = history if history is not None else []
        self.pending_logs: dict[str, float] = {}

    def evaluate(self, model: Any, step: int) -> dict[str, Any]:
        """Evaluate now and record the result at ``step``."""
        report = evaluate_policy(model, self.tokenizer, self.records, self.max_new_tokens, self.batch_size)
        entry = history_entry(step, report)
        entry["overall_f1"] = report["overall"]["f1"]
        self.history.append(entry)
        return report

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every <= 0 or state.global_step % self.every or not state.is_world_process_zero:
            return
        if self.history and self.history[-1]["step"] == state.global_step:
            return
        report = self.evaluate(model, state.global_step)
        summary = report["summary"]
        self.pending_logs = {
            f"eval_fair/{k}": float(summary[k])
            for k in ("F1", "Acc", "PP", "EOD", "dF1")
            if summary.get(k) is not None
        }
        self.pending_logs["eval_fair/overall_F1"] = float(report["overall"]["f1"] or 0.0)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs is not None and self.pending_logs:
            logs.update(self.pending_logs)
            self.pending_logs = {}


# ----------------------------------------------------------------------------- files


def _strip(report: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in ("predictions", "correct", "completions")}


def plot_group_comparison(
    reports: Mapping[str, Mapping[str, Any]], path: str | Path, metric: str = "f1"
) -> Path:
    """Bar chart of one metric per demographic group for several reports (before / after /
    reference), from their ``per_group`` sections."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = sorted({g for r in reports.values() for g in (r.get("per_group") or {})})
    fig = Figure(figsize=(max(6.0, 0.7 * len(groups) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(reports))
    x = np.arange(len(groups))
    for i, (name, rep) in enumerate(reports.items()):
        per = rep.get("per_group") or {}
        ys = [float("nan") if per.get(g, {}).get(metric) is None else per[g][metric] for g in groups]
        ax.bar(x + i * width, ys, width, label=name)
    ax.set_xticks(x + width * (len(reports) - 1) / 2, groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"macro {metric}")
    ax.set_title(f"held-out {metric} per group")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=110)
    return out


def write_reports(
    out_dir: str | Path,
    after: Mapping[str, Any],
    before: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    records: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
    title: str = "FairGRPO fairness report",
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``predictions.jsonl`` and the PNG plots.

    ``after`` / ``before`` / ``reference`` are :func:`evaluate_policy` results (the reference may
    be any fairness report). With ``before`` and ``records`` the per-patient outcome changes per
    group are included. Returns the paths written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    outcome = None
    if before is not None and records is not None and "correct" in before and "correct" in after:
        outcome = patient_outcome_changes(
            before["correct"], after["correct"], [r.get("true_group") for r in records]
        )
    payload: dict[str, Any] = {
        "after": _strip(after),
        "before": None if before is None else _strip(before),
        "reference": None if reference is None else _strip(reference),
        "patient_outcomes": outcome,
        "history": list(history or []),
        **dict(extra or {}),
    }
    paths["json"] = out / "report.json"
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))

    lines = [f"# {title}", ""]
    headline = _headline(after, before, reference)
    lines += [*headline, ""]
    if extra and extra.get("notes"):
        lines += [str(n) for n in extra["notes"]] + [""]
    lines.append(report_markdown(after, before=before, reference=reference))
    if reference is not None:
        lines += ["", "_reference_ column: logistic regression on the same features and split._"]
    if outcome is not None:
        lines += ["", "## Patient outcomes (held-out, vs the starting policy)", ""]
        lines += ["| group | n | became correct | became incorrect | net |", "|---|---|---|---|---|"]
        for g, c in outcome["per_group"].items():
            name = g.replace("|", "\\|")
            lines.append(
                f"| {name} | {c['n']} | {c['became_correct']} | {c['became_incorrect']} | {c['net']:+d} |"
            )
        t = outcome["total"]
        lines.append(
            f"| **all** | {t['n']} | {t['became_correct']} | {t['became_incorrect']} | {t['net']:+d} |"
        )
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(lines) + "\n")

    if records is not None and "predictions" in after:
        paths["predictions"] = out / "predictions.jsonl"
        with paths["predictions"].open("w") as f:
            for i, r in enumerate(records):
                row = {
                    "patient_id": r.get("patient_id"),
                    "source": r.get("source"),
                    "group": r.get("true_group"),
                    "answer": r.get("answer"),
                    "prediction": after["predictions"][i],
                    "before": None if before is None else before["predictions"][i],
                    "reference": None
                    if reference is None
                    else reference.get("predictions", [None] * len(records))[i],
                }
                f.write(json.dumps(row) + "\n")

    if history:
        paths["history_png"] = plot_metric_history(history, out / "metrics_over_training.png")
    bars = {k: v for k, v in (("before", before), ("after", after), ("logistic reference", reference)) if v}
    paths["groups_png"] = plot_group_comparison(bars, out / "f1_per_group.png")
    return paths


def _headline(
    after: Mapping[str, Any], before: Mapping[str, Any] | None, reference: Mapping[str, Any] | None
) -> list[str]:
    def f1(r: Mapping[str, Any] | None) -> str:
        if r is None or r["overall"]["f1"] is None:
            return "n/a"
        return f"{r['overall']['f1']:.4f}"

    rows = [
        "| held-out macro-F1 (pooled) | policy before | policy after | logistic regression |",
        "|---|---|---|---|",
        f"| all sources | {f1(before)} | {f1(after)} | {f1(reference)} |",
    ]
    return rows


# ----------------------------------------------------------------------------- CLI


@dataclass
class EvalArgs:
    """Options of ``python -m fairgrpo.evaluate`` (data options: see ``python -m fairgrpo.train --help``)."""

    run_dir: str | None = field(
        default=None,
        metadata={
            "help": "A `python -m fairgrpo.train` output directory: evaluates its saved policy on its "
            "held-out split with its data options (run_config.json)."
        },
    )
    eval_output_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write the report (default: RUN_DIR/eval or ./fairgrpo_eval)."},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Tokens to decode (default: the run's max_completion_length, else 64)."},
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m fairgrpo.evaluate``: greedy held-out evaluation, JSON + Markdown + PNG."""
    from transformers import HfArgumentParser

    from fairgrpo import train as T

    parser = HfArgumentParser(
        cast(Any, [EvalArgs, T.DataArgs, T.ModelArgs]), prog="python -m fairgrpo.evaluate"
    )
    parser.description = main.__doc__
    parsed: Any = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    eval_args, data_args, model_args = parsed
    t0 = time.time()
    max_new = eval_args.max_new_tokens
    if eval_args.run_dir is not None:
        run = Path(eval_args.run_dir)
        cfg_path = run / "run_config.json"
        if not cfg_path.exists():
            raise SystemExit(
                f"--run_dir {run}: no run_config.json there; pass a `python -m fairgrpo.train` output dir"
            )
        cfg = json.loads(cfg_path.read_text())
        data_args = T.DataArgs(**cfg["data"])
        model_args = T.ModelArgs(**{**cfg["model"], "model": str(run / "policy")})
        max_new = max_new or cfg.get("max_completion_length")
        out_dir = Path(eval_args.eval_output_dir or run / "eval")
    else:
        out_dir = Path(eval_args.eval_output_dir or "fairgrpo_eval")
    T.set_threads(model_args.torch_threads or (1 if model_args.model in (None, "builtin") else None))
    prepared = T.prepare_data(data_args, compact=T.uses_compact_prompts(data_args, model_args))
    model, tok = T.load_model(model_args, prepared)
    report = evaluate_policy(model, tok, prepared.test, max_new or 64, model_args.eval_batch_size)
    reference = None
    if model_args.reference:
        reference = T.reference_report(prepared)
    paths = write_reports(
        out_dir,
        report,
        reference=reference,
        records=prepared.test,
        title="FairGRPO held-out evaluation",
        extra={"model": model_args.model, "wall_time_s": time.time() - t0},
    )
    print(Path(paths["markdown"]).read_text())
    print(f"held-out macro-F1 {report['overall']['f1']:.4f}", end="")
    if reference is not None:
        print(f" (logistic regression {reference['overall']['f1']:.4f})", end="")
    print(f"\nreport files in {out_dir.resolve()}")
    return report


if __name__ == "__main__":
    main()
