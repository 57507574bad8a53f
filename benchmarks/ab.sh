#!/usr/bin/env bash
# A/B of two fulfil binaries in the same hour: three-step at concurrency 256
# and 1, alternating A and B so drift in the host hits both alike.
#   benchmarks/ab.sh A_BINARY B_BINARY OUT_DIR [PAIRS]
# Prints one line per run and writes each JSON report into OUT_DIR.
# A_ARGS / B_ARGS add bench flags to one side (A and B may then be the same
# binary: `B_ARGS="--auth tokens" benchmarks/ab.sh fulfil fulfil out`).
# SCENARIOS=c1 runs only concurrency 1.
set -euo pipefail
a=$1 b=$2 out=$3 pairs=${4:-3}
mkdir -p "$out"
run() {
  local label=$1 bin=$2 name=$3; shift 3
  "$bin" bench "$@" --json "$out/$label-$name.json" >/dev/null 2>>"$out/stderr.txt"
  python3 - "$out/$label-$name.json" "$label" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latency_ms"]
print(f'{sys.argv[2]} {sys.argv[3]:<10} steps/s {d["steps_per_s"]:7.0f}  '
      f'p50 {lat["p50"]:6.2f} ms  p99 {lat["p99"]:6.2f} ms  failed {d["failed"]}')
PY
}
for i in $(seq 1 "$pairs"); do
  for side in A B; do
    bin=$a extra=${A_ARGS:-}
    [ "$side" = B ] && bin=$b extra=${B_ARGS:-}
    # shellcheck disable=SC2086 # the extra flags are words on purpose
    if [ "${SCENARIOS:-all}" = all ]; then
      run "$side" "$bin" "c256-$i" --scenario three-step --workflows 6000 --concurrency 256 $extra
    fi
    # shellcheck disable=SC2086
    run "$side" "$bin" "c1-$i" --scenario three-step --workflows 300 --concurrency 1 $extra
  done
done
