#!/usr/bin/env bash
# The trainer on one GPU: the user's path end to end, then FairGRPO's step cost against GRPO's.
#
#   bash benches/gpu_check.sh [OUT_DIR]
#
# Needs torch with CUDA and fairgrpo[train] importable. On a machine with no network, put the
# missing wheels (this project's, trl, datasets, ...) in .whl/ first: they are installed into
# python3's environment (a disposable machine's). The policy is a randomly initialised Qwen2 of
# Qwen2.5-0.5B's shape (no download): speed depends on the shape, not on the weights.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=python3

if compgen -G ".whl/*.whl" >/dev/null; then
    # into the interpreter's own site-packages, not a --target folder on PYTHONPATH: dill (under
    # datasets' fingerprinting) pickles modules outside site-packages by value, and fails on pyarrow
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl || exit 1
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    lscpu | grep -m1 "Model name"
    $PY -c "import sys, torch, transformers, trl, accelerate, datasets, fairgrpo; \
print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__, \
'| trl', trl.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__, \
'| fairgrpo', fairgrpo.__version__)"
} 2>&1 | tee "$OUT/versions.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "the trainer's packages do not import: see above" >&2; exit 1; }

echo "==> 1. python -m fairgrpo.train on the GPU (random 0.5B-shaped policy saved to a folder)"
$PY - <<'EOF' || exit 1
import sys
sys.path.insert(0, "benches/peers")
from worker import _random_qwen2_05b
from fairgrpo.models import build_tokenizer
from fairgrpo.train import DataArgs, prepare_data

prepared = prepare_data(DataArgs(), compact=True)
texts = [r["prompt"] for r in prepared.train]
model, tok = _random_qwen2_05b(build_tokenizer(texts, prepared.train[0]["classes"]))
model.save_pretrained("/tmp/fairgrpo-random-0.5b")
tok.save_pretrained("/tmp/fairgrpo-random-0.5b")
print(f"saved: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
EOF
start=$(date +%s)
$PY -m fairgrpo.train --model /tmp/fairgrpo-random-0.5b --max_steps 6 --logging_steps 2 \
    --per_device_train_batch_size 64 --num_generations 8 --max_completion_length 16 \
    --learning_rate 1e-6 --eval_every_steps 3 --output_dir /tmp/fairgrpo-gpu-run 2>&1 |
    tee "$OUT/train.log" | grep -v "it/s]$" | tail -40
rc=${PIPESTATUS[0]}
echo "train exit $rc after $(($(date +%s) - start)) s"
[ "$rc" -eq 0 ] || exit "$rc"

echo "==> 2. step cost: FairGRPO vs trl.GRPOTrainer vs FairGRPOTrainer(method=grpo), interleaved"
$PY benches/compare.py --only trainer --trainer-model random-qwen2-0.5b --trainer-batch 128 \
    --trainer-completion 64 --trainer-steps 10 --repeats 2 --no-faiss \
    --plot /tmp/fairgrpo-gpu-unused.png 2>&1 | tee "$OUT/trainer_step.txt"
exit "${PIPESTATUS[0]}"
