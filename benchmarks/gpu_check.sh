#!/usr/bin/env bash
# The GPU check: every CUDA path and the GPU rows of benchmarks/RESULTS.md, one table (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh --dry-run                           # CI, on CPU: is every step wired? (< 2 min)
#   bash benchmarks/gpu_check.sh --out gpu.md --log-dir gpu-logs    # on a GPU (< 8 min); record the table in
#                                                                    # RESULTS.md's "## GPU" with the device named
#   bash benchmarks/gpu_check.sh --steps device,bench                # a subset
#
# It runs with $PYTHON (default: python) and installs nothing, unless --install is given: then the project is
# installed in that Python first (`pip install -e .`; with --no-deps --no-build-isolation when torch is already
# there, as on a GPU machine with its own CUDA build of torch and no network). Every other option goes to
# benchmarks/gpu_check.py (--help lists them). Exit status 0 when no step FAILed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

install=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--install" ]; then install=1; else args+=("$arg"); fi
done

if [ "$install" = 1 ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "installing the project into $("$PYTHON" -c 'import sys; print(sys.executable)') (torch present: --no-deps)"
        "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || echo "WARNING: pip install failed"
    else
        echo "installing the project and its dependencies into $("$PYTHON" -c 'import sys; print(sys.executable)')"
        "$PYTHON" -m pip install --quiet -e . || echo "WARNING: pip install failed"
    fi
    missing=$("$PYTHON" -c "
import importlib.util
names = ['torch', 'optuna', 'ray', 'numpy', 'pandas', 'yaml', 'PIL', 'matplotlib']
print(' '.join(name for name in names if importlib.util.find_spec(name) is None))")
    [ -n "$missing" ] && echo "WARNING: not importable in $PYTHON: $missing (the steps that need them will FAIL)"
fi

# The project from this tree, installed or not (the steps' processes and Ray's workers inherit it).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py ${args[@]+"${args[@]}"}
