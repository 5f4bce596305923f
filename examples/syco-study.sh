#!/usr/bin/env bash
# The seed-004 question on the sycophancy organism: does training on hidden states generalise
# further out of distribution than DPO? Six methods, 3 seeds each, scored on every named shift
# of toy-syco-prefs against the base with paired intervals. About 9 minutes on 2 CPU cores
# (16 CPU-minutes) per learning rate; the organism is built first if it is not cached.
#
#   bash examples/syco-study.sh 1e-4 runs/syco-study      # learning rate, output folder
set -euo pipefail
LR=${1:-1e-4}
OUT=${2:-runs/syco-study-lr$LR}
METHODS="dpo innerdpo prefvec mse rank projgrad"
for m in $METHODS; do
  [ -f "$OUT/$m/manifest.json" ] || reprlab prefs train --model toy-syco \
      --data builtin:toy-syco-prefs --method "$m" --lr "$LR" --out "$OUT/$m" --no-progress
done
reprlab prefs compare $(for m in $METHODS; do printf '%s ' "$OUT/$m"; done) --seeds 3 \
    --out "$OUT/compare" --no-progress
