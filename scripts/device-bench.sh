#!/usr/bin/env bash
# The GPU reference, as one prepared script for a lent H200 (the `device` tool), whose image already
# holds torch, transformers, tokenizers, safetensors, tqdm, matplotlib and pyyaml.
#
# Here, first (the GPU machine cannot fetch the corpus package):
#   .venv/bin/growlength prepare --out runs/data-gpu --vocab-size 8192
# Then run this script there with runs/data-gpu carried; results land in $OUT (bench.json, PNGs, logs).
set -euo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
# The GPU-only tests (bf16 step, peak memory and MFU in the metrics, the cpu:gloo,cuda:nccl group);
# pytest may be missing from the device image: then say so and go on.
GROWLENGTH_TEST_DATA=runs/data-gpu python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log" \
  || echo "pytest -m gpu did not pass or could not run: see pytest-gpu.log" | tee -a "$OUT/device.txt"
python3 -m growlength profile --config configs/bench-gpu-70m.yaml --data runs/data-gpu --rounds 5 --quiet \
  --out "$OUT/profile-70m.json" 2>&1 | tee "$OUT/profile-70m.log"
python3 -m growlength bench --config configs/bench-gpu-70m.yaml --data runs/data-gpu --out "$OUT/bench-70m" \
  --quiet 2>&1 | tee "$OUT/bench-70m.log"
