#!/usr/bin/env bash
# Installs the NDIF server package (ndif 0.1.2, MIT) for the tests that run reprlab's remote
# requests through NDIF's own code. ndif declares Requires-Python >= 3.12, but its modules run
# on 3.11, so it is installed without that check and without its dependency list: what its
# execution core needs (nnsight, torch, pydantic, zstandard) comes with `.[dev]`; what the whole
# stack needs (redis client, FastAPI, gunicorn, Ray with its client and dashboard) is the
# `ndif-stack` extra of pyproject.toml, installed here without reinstalling the project, plus
# Debian's redis-server (used by `reprlab ndif up` and tests/test_ndif_stack.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
python - <<'PY' || pip install --no-deps --ignore-requires-python "ndif==0.1.2"
import importlib.metadata as m, sys
sys.exit(0 if m.version("ndif") == "0.1.2" else 1)
PY
mapfile -t stack < <(python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["ndif-stack"]))')
pip install "${stack[@]}"
if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null; then
    (apt-get install -y redis-server || (apt-get update && apt-get install -y redis-server)) \
      || echo "install_ndif: redis-server could not be installed; the whole-stack test skips"
  else
    echo "install_ndif: no apt-get; install redis-server to run the whole-stack test"
  fi
fi
