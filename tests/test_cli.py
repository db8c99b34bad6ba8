"""`python -m fairgrpo.train` and `python -m fairgrpo.evaluate`: options, config files, a short
end-to-end run, user tables, the evaluation metrics and the logistic-regression reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from sklearn.metrics import f1_score  # noqa: E402

from fairgrpo.data import DataError  # noqa: E402
from fairgrpo.evaluate import evaluate_policy, write_reports  # noqa: E402
from fairgrpo.train import (  # noqa: E402
    BUILTIN_RECIPE,
    DataArgs,
    compact_prompts,
    main,
    parse_args,
    prepare_data,
    reference_report,
)

torch.set_num_threads(1)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ----------------------------------------------------------------------------- options


def test_help_documents_fairness_data_model_and_grpo_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fairgrpo.train", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    for option in (
        "--method",
        "--fairness_preset",
        "--cluster_k_max",
        "--groupdro_eta",
        "--source_column",
        "--eval_every_steps",
        "--data",
        "--label_column",
        "--data_group_columns",
        "--prompt_style",
        "--hide_groups",
        "--model",
        "--learning_rate",
        "--num_generations",
        "--beta",
        "--scale_rewards",
        "--config",
    ):
        assert option in text, option
    assert "built-in policy, options not given take" in text


def test_builtin_recipe_yaml_config_and_grpo_passthrough(tmp_path: Path) -> None:
    config, data_args, model_args = parse_args([])
    assert config.method == "fairgrpo" and config.fairness_preset == "robust"
    assert config.learning_rate == BUILTIN_RECIPE["learning_rate"]
    assert config.max_completion_length == 1 and data_args.data is None and model_args.model is None

    # any GRPOConfig / TrainingArguments option passes through
    config, _, _ = parse_args(
        ["--beta", "0.04", "--epsilon_high", "0.28", "--scale_rewards", "batch", "--seed", "3"]
    )
    assert (config.beta, config.epsilon_high, config.scale_rewards, config.seed) == (0.04, 0.28, "batch", 3)
    assert config.fairness_options()["scale"] == "batch"

    # --config file.yaml beats the recipe; the command line beats the file
    path = tmp_path / "run.yaml"
    path.write_text("method: groupdro\nlearning_rate: 0.0002\nnum_generations: 4\ncluster_k_max: 2\n")
    config, _, _ = parse_args(["--config", str(path), "--num_generations", "2"])
    assert (config.method, config.learning_rate, config.num_generations, config.cluster_k_max) == (
        "groupdro",
        2e-4,
        2,
        2,
    )

    # a pretrained model keeps TRL's defaults (the recipe is for the tiny built-in policy only)
    config, _, model_args = parse_args(["--model", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    assert model_args.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert config.learning_rate == 1e-6 and config.max_completion_length != 1


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(SystemExit):  # argparse rejects an unknown method with the choices
        parse_args(["--method", "ppo"])
    with pytest.raises(DataError, match="label_column"):
        prepare_data(DataArgs(data=str(Path(__file__))))
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(DataArgs(data="no/such/table.csv", label_column="y"))
    with pytest.raises(DataError, match="'site'"):
        prepare_data(DataArgs(data_source_column="site"))


# ----------------------------------------------------------------------------- prompts and data


def test_compact_prompts_bin_on_training_rows_and_hide_the_label() -> None:
    train = pd.DataFrame({"chol": [100, 200, 300, 400, 0, 500, 600], "sex": ["Male", "Female"] * 3 + [None]})
    test = pd.DataFrame({"chol": [50, 650, 0], "sex": ["Female", None, "Male"]})
    prompts = compact_prompts(test, train, ["chol", "sex"], {"chol": (0,)}, num_bins=2)
    # the median of the training values without the missing code 0 is 350
    assert prompts == [
        "chol:q0 sex:female answer:",
        "chol:q1 sex:unknown answer:",
        "chol:unknown sex:male answer:",
    ]

    prepared = prepare_data(DataArgs(), compact=True)
    assert len(prepared.train) + len(prepared.test) == 920
    for r in prepared.train[:50]:
        assert "num:" not in r["prompt"] and "id:" not in r["prompt"] and "dataset:" not in r["prompt"]
        assert len(r["prompt"].split()) == len(prepared.feature_columns) + 1
    train_ids = {r["patient_id"] for r in prepared.train}
    assert not train_ids & {r["patient_id"] for r in prepared.test}


def test_logistic_reference_learns_the_heart_data() -> None:
    prepared = prepare_data(DataArgs(), compact=True)
    ref = reference_report(prepared)
    assert 0.75 < ref["overall"]["f1"] < 0.95
    assert set(ref["per_source"]) == {"Cleveland", "Hungary", "Switzerland", "VA Long Beach"}


# ----------------------------------------------------------------------------- evaluation


class ConstantPolicy(torch.nn.Module):
    """Always answers the same token: a policy whose metrics can be computed by hand."""

    def __init__(self, token_id: int) -> None:
        super().__init__()
        self.token_id = token_id
        self.w = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 1, **kw: Any) -> Any:
        extra = torch.full((input_ids.shape[0], max_new_tokens), self.token_id, dtype=input_ids.dtype)
        return torch.cat([input_ids, extra], dim=1)


def test_evaluation_metrics_of_a_constant_policy() -> None:
    from fairgrpo.models import build_tokenizer

    prepared = prepare_data(DataArgs(), compact=True)
    tok = build_tokenizer([r["prompt"] for r in prepared.train], ["yes", "no"])
    report = evaluate_policy(ConstantPolicy(tok.convert_tokens_to_ids("yes")), tok, prepared.test, 1)
    y = [r["answer"] for r in prepared.test]
    assert report["predictions"] == ["yes"] * len(y)
    expected = f1_score(y, ["yes"] * len(y), average="macro", labels=["yes", "no"], zero_division=0)
    # class "no" is never predicted: its precision is undefined and its F1 is 0
    assert report["overall"]["f1"] == pytest.approx(expected)
    assert report["overall"]["accuracy"] == pytest.approx(np.mean([a == "yes" for a in y]))
    # TPR is 1 on "yes" and 0 on "no": macro 0.5 where both classes occur (1.0 where only "yes" does,
    # the undefined TPR of an absent class being left out of the macro average)
    for subgroups in report["per_subgroup"].values():
        for value, m in subgroups.items():
            assert m["tpr"] in (pytest.approx(0.5), pytest.approx(1.0)), value
    assert report["correct"] == [a == "yes" for a in y]


def test_write_reports_files(tmp_path: Path) -> None:
    prepared = prepare_data(DataArgs(), compact=True)
    ref = reference_report(prepared)
    before = {**ref, "correct": [not c for c in ref["correct"]]}
    history = [{"step": 0, "summary": ref["summary"], "per_group_f1": {"a": 0.5}}]
    paths = write_reports(tmp_path, ref, before=before, reference=ref, history=history, records=prepared.test)
    for kind in ("json", "markdown", "predictions", "history_png", "groups_png"):
        assert paths[kind].exists() and paths[kind].stat().st_size > 0, kind
    data = json.loads(paths["json"].read_text())
    assert data["patient_outcomes"]["total"]["n"] == len(prepared.test)
    assert "Patient outcomes" in paths["markdown"].read_text()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_end_to_end_short_run_then_evaluate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fairgrpo.train", "--max_steps", "4", "--eval_every_steps", "2"]
    cmd += ["--per_device_train_batch_size", "32", "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"report files in {out.resolve()}" in proc.stdout
    assert "logistic regression" in proc.stdout
    for name in (
        "report.json",
        "report.md",
        "predictions.jsonl",
        "metrics_over_training.png",
        "f1_per_group.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "policy" / "config.json").exists() and (out / "fairness_state.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert [h["step"] for h in report["history"]] == [0, 2, 4]
    assert report["reference"]["overall"]["f1"] > 0.75
    for key in ("PP", "EOD", "FPR_Diff", "dF1", "sF1", "dAcc", "sAcc", "F1", "Acc", "F1_ES", "Acc_ES"):
        assert key in report["after"]["summary"], key
    assert report["patient_outcomes"]["total"]["n"] == report["after"]["n"]

    proc = subprocess.run(
        [sys.executable, "-m", "fairgrpo.evaluate", "--run_dir", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((out / "eval" / "report.json").read_text())
    # greedy decoding of the saved policy on the same held-out split reproduces the run's numbers
    assert again["after"]["overall"] == report["after"]["overall"]
    assert (out / "eval" / "report.md").exists() and (out / "eval" / "f1_per_group.png").exists()


def test_user_table_with_hidden_groups_in_process(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "pid": range(n),
            "site": rng.choice(["north", "south"], n),
            "gender": rng.choice(["f", "m", None], n),
            "age": rng.integers(20, 90, n),
            "marker": rng.normal(size=n).round(2),
            "smoker": rng.choice(["yes", "no"], n),
        }
    )
    frame["outcome"] = np.where(frame["marker"] > 0, "sick", "well")
    path = tmp_path / "table.jsonl"
    frame.to_json(path, orient="records", lines=True)
    result = main(
        [
            "--data", str(path), "--label_column", "outcome", "--data_source_column", "site",
            "--data_group_columns", "gender", "age", "--age_column", "age", "--id_column", "pid",
            "--hide_groups", "true", "--method", "fairgrpo_nd", "--max_steps", "2",
            "--per_device_train_batch_size", "32", "--eval_every_steps", "0", "--reference", "false",
            "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    after = result["after"]
    assert after["classes"] == ["sick", "well"] and after["n"] == 30
    assert (tmp_path / "out" / "report.md").exists()
    prepared = prepare_data(
        DataArgs(
            data=str(path),
            label_column="outcome",
            data_source_column="site",
            data_group_columns=["gender", "age"],
            age_column="age",
            hide_groups=True,
        ),
        compact=True,
    )
    assert all(r["group"] is None for r in prepared.train)
    assert any(r["true_group"] is not None for r in prepared.test)
