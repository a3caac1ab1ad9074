#!/usr/bin/env bash
# The QES CPU pilot (results/qes_cpu/): five runs, one after another, one thread each, peak RSS from GNU time.
# SEED=1 scripts/qes_cpu_pilot.sh runs the five training runs again with seed=1 (the base-model and memory rows
# do not depend on the seed); two seeds can run side by side, one core each.
# Prerequisite: the INT4/INT8 GPTQ directories (python -m es_repro.qes.quantize ..., see conf/model/smollm2-135m-int*.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SEED=${SEED:-0}
mkdir -p results/qes_cpu/rss
run() {  # name, overrides...
  local name=$1; shift
  if [ "$SEED" != 0 ]; then name=${name}_seed$SEED; set -- "$@" seed="$SEED"; fi
  /usr/bin/time -v "$PY" -m es_repro experiment=qes_conciseness_cpu progress=false "$@" \
    2> >(tee "results/qes_cpu/rss/$name.log" | grep -E "^\[|Error|error" >&2)
}
run fp_es       model=smollm2-135m es.sigma=0.01 es.alpha=0.005
run qes_int4    model=smollm2-135m-int4 es.update=qes es.qes.bits=4 es.sigma=0.15 es.alpha=0.02
run naive_int4  model=smollm2-135m-int4 es.update=qes es.qes.bits=4 es.sigma=0.15 es.alpha=0.02 es.qes.gamma=0
run qes_int8    model=smollm2-135m-int8 es.update=qes es.qes.bits=8 es.sigma=2.6 es.alpha=0.33
run naive_int8  model=smollm2-135m-int8 es.update=qes es.qes.bits=8 es.sigma=2.6 es.alpha=0.33 es.qes.gamma=0
[ "$SEED" = 0 ] || exit 0
# The base models' held-out reward (es.generations=0: only the final evaluation runs).
run base_smollm2-135m       model=smollm2-135m es.generations=0
run base_smollm2-135m-int4  model=smollm2-135m-int4 es.update=qes es.qes.bits=4 es.generations=0
run base_smollm2-135m-int8  model=smollm2-135m-int8 es.update=qes es.qes.bits=8 es.generations=0
# Memory only: QES INT4 with the default replayed residual (no fp16 residual tensor), 2 generations.
run qes_int4_replay_mem  model=smollm2-135m-int4 es.update=qes es.qes.bits=4 es.sigma=0.15 es.alpha=0.02 es.qes.residual=replay es.generations=2
