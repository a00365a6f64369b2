#!/usr/bin/env bash
# Install MLflow (the reference MemAlign implementation) into its own virtual environment for
# benchmarks/mlflow_side_by_side.py. MLflow is never a dependency of memalign-mcp itself; this venv is
# git-ignored (benchmarks/.venv-*/). About 1.2 GB and a minute. Rerunning reuses an existing venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${MLFLOW_VENV:-$here/.venv-mlflow}"
python="${PYTHON:-python3.11}"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
# The newest mlflow on some mirrors needs an mlflow-skinny that is absent; pip then settles on 3.17.x.
"$venv/bin/pip" install --quiet "mlflow>=3.9" dspy
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
print("mlflow", md.version("mlflow"), "dspy", md.version("dspy"), "litellm", md.version("litellm"))
PY
