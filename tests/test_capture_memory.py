"""Peak RSS of a capture does not grow with the number of rows (beyond chunk-sized buffers).

Each capture runs in a fresh process (peak RSS is per process). The store of the 8x run is
~4x larger than its width in memory would allow if written pages were mapped into the process;
the test asserts that the 8x run's peak exceeds the 2x run's by a small fraction of the extra
data it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from conftest import make_tiny
from reprlab.capture import capture

n, out = int(sys.argv[1]), sys.argv[2]
lm = make_tiny("gpt2", hidden=64, layers=6)
words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
texts = [" ".join(words[(i + j) % len(words)] for j in range(18)) + f" {i}" for i in range(n)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store = capture(lm, texts, "layers.*", ["all", "mean"], out, batch_size=32, chunk_rows=64,
                progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = store.info()["size_bytes"]
print(json.dumps({"before_kib": before, "peak_kib": peak, "store_bytes": size}))
"""

BASE_ROWS = 400


def _peak(tmp_path: Path, n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    here = str(Path(__file__).parent)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(tmp_path / f"s{n}"), here],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_capture_peak_rss_does_not_grow_with_rows(tmp_path):
    small = _peak(tmp_path, 2 * BASE_ROWS)
    large = _peak(tmp_path, 8 * BASE_ROWS)
    extra_data = large["store_bytes"] - small["store_bytes"]
    assert extra_data > 80 * 2**20  # the 8x store is big enough to show a leak
    growth = (large["peak_kib"] - small["peak_kib"]) * 1024
    print(f"peak RSS {small['peak_kib'] / 1024:.0f} MiB at {2 * BASE_ROWS} rows, "
          f"{large['peak_kib'] / 1024:.0f} MiB at {8 * BASE_ROWS} rows; store "
          f"{small['store_bytes'] / 2**20:.0f} -> {large['store_bytes'] / 2**20:.0f} MiB")
    # bound: a few chunk-sized buffers (64 rows here) and rows.json, not the store
    assert growth < 0.15 * extra_data, (small, large)
