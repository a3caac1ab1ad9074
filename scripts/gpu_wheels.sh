#!/usr/bin/env bash
# Build (on a machine with PyPI) the pure-Python wheels a bare GPU image (torch + transformers preinstalled, no
# network) needs to run scripts/gpu_check.sh, into .gpu-wheels/ (git-ignored; ~2 MB: carry it with the tree).
#   scripts/gpu_wheels.sh [DEST]   # DEST defaults to .gpu-wheels
# `pip wheel`, not `pip download --only-binary`: antlr4-python3-runtime 4.9.3 (omegaconf's parser) is published as
# a source archive only, so it is built here into a py3-none-any wheel. pygments is pytest's (rich brings it with
# transformers, but an image may lack it).
set -euo pipefail
dest=$(realpath -m "${1:-$(dirname "$0")/../.gpu-wheels}")
cd "$(dirname "$0")/.."
mkdir -p "$dest"
pip wheel -q --no-deps -w "$dest" -c constraints/cpu.txt \
    hydra-core omegaconf antlr4-python3-runtime submitit cloudpickle pytest iniconfig pluggy pygments
ls "$dest"
du -sh "$dest"
