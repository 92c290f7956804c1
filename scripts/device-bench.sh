#!/usr/bin/env bash
# The GPU reference, as one prepared script for a lent H200 (the `device` tool), whose image already
# holds torch, transformers, tokenizers, safetensors, tqdm, matplotlib and pyyaml. About 6 minutes;
# each part has its own time limit so the whole stays under 8.
#
# Here, first (the GPU machine cannot fetch the corpus package):
#   .venv/bin/growlength prepare --out runs/data-gpu --vocab-size 8192
# Then run this script there with runs/data-gpu carried. At most 8 files come back from $OUT:
#   device.txt  pytest-gpu.log  profile-160m.json  profile-160m.log  bench-70m.json  bench-70m.log  bench-70m.png
set -uo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt"

# 1. The GPU-only tests: a bf16 run logging peak memory and MFU, --compile's graph count on CUDA, the
#    cpu:gloo,cuda:nccl group running every collective. pytest may be missing from the image: say so.
GROWLENGTH_TEST_DATA=runs/data-gpu timeout 180 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 \
  | tee "$OUT/pytest-gpu.log" || echo "pytest -m gpu failed or could not run: see pytest-gpu.log" | tee -a "$OUT/device.txt"

# 2. Pythia-160m's shape at 128 ... 8192, 65,536 tokens per step, bf16: tokens/s, MFU, peak memory per length.
timeout 150 python3 -m growlength profile --model pythia-160m-8k --data runs/data-gpu --device cuda \
  --start-len 128 --target-len 8192 --tokens-per-step 65536 --micro-batch-tokens 65536 --block-tokens 65536 \
  --rounds 4 --quiet --out "$OUT/profile-160m.json" 2>&1 | tee "$OUT/profile-160m.log" \
  || echo "profile failed or ran out of time: see profile-160m.log" | tee -a "$OUT/device.txt"

# 3. A short arena on Pythia-70m's shape: the baseline, GrowLength and the best CPU peers, 30 s each.
timeout 240 python3 -m growlength bench --config configs/bench-gpu-70m.yaml --data runs/data-gpu \
  --runs fixed-target,growlength,dd,deepspeed --budget-seconds 30 --evals 6 --out runs/bench-70m --quiet 2>&1 \
  | tee "$OUT/bench-70m.log" || echo "bench failed or ran out of time: see bench-70m.log" | tee -a "$OUT/device.txt"
cp runs/bench-70m/bench.json "$OUT/bench-70m.json" 2>/dev/null || true
cp runs/bench-70m/bench-loss.png "$OUT/bench-70m.png" 2>/dev/null || true
