#!/usr/bin/env bash
# GPU checks for one H100/H200 (issue 14, part 3), in under 8 minutes; results under ${OUT:-runs/device_check}.
#   bash scripts/device_check.sh
# 1. The Stage I full-size bf16 train step (remat, cuDNN attention) at 8 clips: step time, measured MFU, peak memory.
# 2. The largest batch whose step runs (doubling from 8 until the step fails; the first failure's error is kept).
# 3. The GPU forward of the sync_full parity case against the original's CPU float32 outputs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/device_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
step() {  # step BATCH: one timed train step after a warm-up; writes $out/train_step_bBATCH.json
  timeout 180 python scripts/benchmark.py train-step --stage avclip --size full --dtype bfloat16 --remat \
    --attention_impl cudnn --batch "$1" --repeats 2 --out "$out/train_step_b$1.json" > "$out/train_step_b$1.log" 2>&1
}
step 8 && tail -2 "$out/train_step_b8.log"
largest=8
for batch in 16 32 64; do
  if step "$batch" && ! grep -q '"error"' "$out/train_step_b$batch.json"; then largest=$batch; else break; fi
done
echo "largest batch that ran (of 8, 16, 32, 64): $largest" | tee "$out/largest_batch.txt"
timeout 240 python -m pytest -q -s 'tests/parity/test_models_vs_reference.py::test_model_vs_reference[sync_full]' \
  2>&1 | tail -15 | tee "$out/sync_full_parity.txt"
