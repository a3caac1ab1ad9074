#!/usr/bin/env bash
# The GPU check: one device call, about 6 minutes on one H200, leaving time in a 15-minute budget for a rerun.
#   1. preflight: the carried wheels installed where the image lacks them, then every import the check needs,
#      so a missing module stops the script in seconds, not after the benchmark;
#   2. the device's facts and noise fingerprints (python -m es_repro.es.fingerprint): the noise a seed draws
#      depends on the GPU model (docs/slurm.md);
#   3. the gpu-marked tests only (tests/engines/test_gpu.py: exact restore and update on CUDA, pinned CPU master,
#      compiled == eager decode, the roofline against a real generation);
#   4. the benchmark rows, sized to fit: the Qwen2.5-1.5B shape with random weights, default and compiled (one
#      process each, so a slow cold compile cannot cost the default row), then two members in flight.
# Limits add up to 9 min (60 + 150 + 100 + 170 + 90 s); the expected run is about 6.
# A Markdown report goes under OUT_DIR (default results/bench) and to stdout.
#   scripts/gpu_wheels.sh            # once, on a machine with PyPI (a bare GPU image has no network)
#   scripts/gpu_check.sh [OUT_DIR]   # on the GPU machine
#   GPU_CHECK_DRY=1 scripts/gpu_check.sh OUT_DIR   # the same steps on CPU with a tiny model (CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
dry=${GPU_CHECK_DRY:-0}
mkdir -p "$out"
report="$out/gpu_check_$(date -u +%Y%m%d_%H%M%S)$([[ $dry == 1 ]] && echo _dry).md"
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false
section() { printf '\n## %s\n\n```\n' "$1" >> "$report"; }
end() { echo '```' >> "$report"; }
# step LIMIT LINES CMD...: CMD under a time limit; its last LINES lines (warnings dropped) go to the report, and a
# step stopped by its limit says so there
step() {
    local limit=$1 lines=$2
    shift 2
    timeout "$limit" "$@" 2>&1 | grep -v Warning | tail -n "$lines" >> "$report"
    (( PIPESTATUS[0] == 124 )) && echo "(stopped at the $limit s limit)" >> "$report"
}

# 1. preflight ---------------------------------------------------------------------------------------------------
if ! python -c "import hydra, omegaconf, submitit, pytest" 2>/dev/null && ls .gpu-wheels/*.whl >/dev/null 2>&1; then
    pip install -q --no-index --no-deps .gpu-wheels/*.whl 2>&1 | tail -2  # torch, transformers: the image's own
fi
if ! python -c "import es_repro.cli, es_repro.bench.throughput, es_repro.es.fingerprint, pytest, tests.helpers"; then
    echo "gpu_check: an import failed (above); on a bare image run scripts/gpu_wheels.sh where PyPI is reachable" \
         "and carry .gpu-wheels/" >&2
    exit 2
fi
if [[ $dry == 1 ]]; then
    bench=(--model tiny-random --device cpu --dtype float32 --population 4 --prompts 2 --max-new-tokens 4
           --batch-size 2 --task synthetic)
    modes=(default)
else
    bench=(--model qwen2.5-1.5b-random --device cuda --dtype bfloat16 --population 30 --prompts 128
           --prompt-tokens 140 --max-new-tokens 256 --force-tokens --batch-size 128)
    modes=(default compiled)
fi
{
    echo "# GPU check$([[ $dry == 1 ]] && echo ' (dry run on CPU)'), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo; echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
    python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
    python -c "import vllm; print('vllm', vllm.__version__)" 2>/dev/null || echo "vllm: not importable"
    echo '```'
} > "$report"

# 2. device facts and noise fingerprints --------------------------------------------------------------------------
section "Device and noise fingerprints"
step 60 40 python -m es_repro.es.fingerprint
end

# 3. gpu-marked tests ----------------------------------------------------------------------------------------------
section "gpu-marked tests (tests/engines/test_gpu.py)"
step 150 15 python -m pytest -q -m gpu -p no:cacheprovider tests/engines/test_gpu.py
end

# 4. benchmark rows ------------------------------------------------------------------------------------------------
# one process per mode, each with its own limit: a slow cold compile must not take the default row with it
for mode in "${modes[@]}"; do
    section "Benchmark: ${bench[*]} (mode $mode)"
    step "$([[ $mode == compiled ]] && echo 170 || echo 100)" 12 python -m es_repro.bench "${bench[@]}" --timed-members 1 --modes "$mode"
    end
done
section "Members in flight: 2 processes on the device, same setting (compare with the default row above)"
step 90 6 python -m es_repro.bench "${bench[@]}" --timed-members 2 --modes inflight --inflight 2
end
cat "$report"
