#!/usr/bin/env bash
# The GPU check (issue 12): one command, under 8 minutes on one GPU. Runs the gpu-marked tests (exact restore, noise
# and update on CUDA, pinned CPU master, compiled == eager decode, the roofline against a real generation; vLLM ==
# HF when vLLM is importable) and the GPU benchmark rows, and writes a Markdown report under results/bench/.
#   scripts/gpu_wheels.sh            # once, on a machine with PyPI (a bare GPU image has no network)
#   scripts/gpu_check.sh [OUT_DIR]   # on the GPU machine; default OUT_DIR: results/bench
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
mkdir -p "$out"
report="$out/gpu_check_$(date -u +%Y%m%d_%H%M).md"
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
# Missing pure-Python dependencies from the carried wheels; torch and transformers stay the image's own.
for mod in hydra omegaconf antlr4 submitit cloudpickle; do
    python -c "import $mod" 2>/dev/null || pip install -q --no-index --no-deps .gpu-wheels/*.whl 2>&1 | tail -2
done
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo; echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
    python -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null || echo "vllm: not importable (vLLM rows and tests skipped)"
    echo '```'; echo; echo "## gpu-marked tests"; echo; echo '```'
} > "$report"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -25 >> "$report"
echo '```' >> "$report"
echo; echo "## Benchmark: Qwen2.5-1.5B shape (random weights), N=30, 200 prompts of 140 tokens, 1024 tokens forced" >> "$report"
echo '```' >> "$report"
timeout 330 python -m es_repro.bench --model qwen2.5-1.5b-random --device cuda --dtype bfloat16 --population 30 \
    --prompts 200 --prompt-tokens 140 --max-new-tokens 1024 --force-tokens --batch-size 200 --timed-members 1 \
    --modes default,compiled 2>&1 | grep -v Warning | tail -12 >> "$report"
echo '```' >> "$report"
echo; echo "## Members in flight: 2 processes on the GPU, same setting (compare with the default row above)" >> "$report"
echo '```' >> "$report"
timeout 180 python -m es_repro.bench --model qwen2.5-1.5b-random --device cuda --dtype bfloat16 --population 30 \
    --prompts 200 --prompt-tokens 140 --max-new-tokens 1024 --force-tokens --batch-size 200 --timed-members 2 \
    --modes inflight --inflight 2 2>&1 | grep -v Warning | tail -6 >> "$report"
echo '```' >> "$report"
cat "$report"
