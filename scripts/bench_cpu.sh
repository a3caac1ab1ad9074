#!/usr/bin/env bash
# The CPU benchmark table of docs/speed.md: three shapes, es-repro's modes against the release's loop in bf16
# (paper@bfloat16). Run on a quiet machine (nothing else heavy running). Output: $OUT_DIR/<shape>.md.
#   BANDWIDTH_GBS=28 scripts/bench_cpu.sh          # the machine's measured read bandwidth, for the limit column
#   ONLY="cpu_quickstart_shape" BANDWIDTH_GBS=28 scripts/bench_cpu.sh   # one shape
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-results/bench}
BW=${BANDWIDTH_GBS:?give BANDWIDTH_GBS, the measured memory read bandwidth in GB/s}
TFLOPS=${PEAK_TFLOPS:-1}
BF16=$(grep -o -m1 -w 'avx512_bf16\|amx_bf16' /proc/cpuinfo | head -1)
CPU="$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs), native bf16: ${BF16:-none}, torch $("$PY" -c 'import torch; print(torch.__version__)')"
mkdir -p "$OUT_DIR"
run() {  # name, then the benchmark's arguments; ONLY="name ..." runs only those
  local name=$1; shift
  [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]] || return 0
  { echo "# $name on $CPU, $(nproc) cores, $(date -u +%F)"; echo; echo '```'
    echo "python -m es_repro.bench $* --mem-bandwidth-gbs $BW --peak-tflops $TFLOPS"; echo '```'; echo
    "$PY" -m es_repro.bench "$@" --mem-bandwidth-gbs "$BW" --peak-tflops "$TFLOPS" 2>/dev/null | grep -v "^Loading"
  } | tee "$OUT_DIR/$name.md"
}
run cpu_quickstart_shape --task conciseness --population 8 --prompts 2 --max-new-tokens 32 --force-tokens \
    --members-per-forward 8 --modes paper@bfloat16,default@bfloat16,default@float32,lowrank@bfloat16
run cpu_quickstart_shape_antithetic --task conciseness --population 8 --prompts 2 --max-new-tokens 32 --force-tokens \
    --members-per-forward 8 --modes default@bfloat16,lowrank@bfloat16 --overrides es.antithetic=true
run cpu_n4_p16_t64 --task countdown --population 4 --prompts 16 --max-new-tokens 64 --force-tokens \
    --members-per-forward 4 --modes paper@bfloat16,default@bfloat16,default@float32,lowrank@bfloat16
run cpu_n30_p32_t256 --task countdown --population 30 --prompts 32 --max-new-tokens 256 --force-tokens \
    --timed-members 2 --members-per-forward 2 --modes paper@bfloat16,default@bfloat16,lowrank@bfloat16
