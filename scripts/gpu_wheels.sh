#!/usr/bin/env bash
# Fetch (on a machine with PyPI) the pure-Python wheels a bare GPU image (torch + transformers preinstalled, no
# network) needs to run scripts/gpu_check.sh, into .gpu-wheels/ (git-ignored; ~4 MB: carry it with the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-wheels
pip download -q --no-deps --only-binary=:all: -d .gpu-wheels -c constraints/cpu.txt \
    hydra-core omegaconf antlr4-python3-runtime submitit cloudpickle pytest iniconfig pluggy
du -sh .gpu-wheels
