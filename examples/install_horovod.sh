#!/usr/bin/env bash
# Builds Horovod 0.28.1 (its last release) from the PyPI sdist against PyTorch, with the
# Gloo controller, into the Python environment VENV (default ~/.cache/aic-tools/torch),
# which must have torch. As published it does not build against current torch (torch's
# headers need C++20, Horovod forces C++14): the two CMake standards are raised here.
# Takes ~6 min on 2 cores. Usage: examples/install_horovod.sh [VENV]
set -euo pipefail
venv="${1:-$HOME/.cache/aic-tools/torch}"
pip="$venv/bin/pip"
"$venv/bin/python" -c "import torch" || { echo "install_horovod.sh: $venv has no torch (pip install torch)" >&2; exit 1; }
if "$venv/bin/python" -c "import horovod.torch" 2>/dev/null; then exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$pip" install --quiet --disable-pip-version-check "cmake<4" wheel packaging pyyaml cloudpickle psutil
"$pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$work" horovod==0.28.1
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/CMakeLists.txt" || sed -i '1a set(CMAKE_CXX_STANDARD 17)' "$src/CMakeLists.txt"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$src/horovod/torch/CMakeLists.txt"
# AIC_HOROVOD_MPI=1 builds the MPI controller too (against the mpicc on PATH) and
# AIC_HOROVOD_NCCL=1 NCCL's GPU operations (CUDA toolkit needed): the worker image does both.
extra=(HOROVOD_WITHOUT_MPI=1)
if [ "${AIC_HOROVOD_MPI:-0}" = 1 ]; then extra=(HOROVOD_WITH_MPI=1); fi
if [ "${AIC_HOROVOD_NCCL:-0}" = 1 ]; then extra+=(HOROVOD_GPU_OPERATIONS=NCCL); fi
env PATH="$venv/bin:$PATH" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 "${extra[@]}" \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  "$pip" install --disable-pip-version-check --no-build-isolation --no-cache-dir "$src"
"$venv/bin/python" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else 'ok')"
