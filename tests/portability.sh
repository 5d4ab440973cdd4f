#!/usr/bin/env bash
# The whole suite (`make test`) and the learned-outcome margins (tests/measure_margins.py) under
# each CPU kernel set PyTorch can pick (ATEN_CPU_CAPABILITY) and with 1 and 2 threads: what a
# test must survive on another x86 CPU. Slow (about an hour and a half on 2 cores); results in
# build/portability/, summarised by hand in tests/MARGINS.md.
#
#   tests/portability.sh [capabilities...]      default: "default avx2 avx512"
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/portability
mkdir -p "$out"
make install > "$out/install.log" 2>&1 || { echo "make install failed"; exit 1; }
for cap in ${@:-default avx2 avx512}; do
  for threads in 2 1; do
    tag="$cap-t$threads"
    echo "== $tag $(date +%T)"
    start=$(date +%s)
    ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$threads .venv/bin/python tests/measure_margins.py \
      --seeds 20 --finetune-seeds 3 --out "$out/margins-$tag.json" > "$out/margins-$tag.log" 2>&1
    ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$threads make test > "$out/test-$tag.log" 2>&1
    echo "$tag: make test rc=$? in $(( $(date +%s) - start )) s: $(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$out/test-$tag.log" | tr '\n' ' ')"
  done
done
