#!/usr/bin/env bash
# Installs the NDIF server package (ndif 0.1.2, MIT) for the tests that run reprlab's remote
# requests through NDIF's own code. ndif declares Requires-Python >= 3.12, but its modules run
# on 3.11, so it is installed without that check and without its dependency list: what its
# execution core needs (nnsight, torch, pydantic, zstandard) comes with `.[dev]`; the whole
# stack's services come with the `ndif-stack` extra (redis client, FastAPI, gunicorn, Ray)
# plus Debian's redis-server.
set -euo pipefail
python - <<'PY' && exit 0 || true
import importlib.metadata as m, sys
sys.exit(0 if m.version("ndif") == "0.1.2" else 1)
PY
pip install --no-deps --ignore-requires-python "ndif==0.1.2"
