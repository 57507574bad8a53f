#!/usr/bin/env bash
# Runs every scenario of BENCHMARKS.md three times against the servers named
# by DATABASE_URL and NATS_URL, writing one JSON report per run into the
# directory given (default: benchmarks/results-<today>).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results-$(date +%F)}
runs=${RUNS:-3}
mkdir -p "$out"
cargo build --release -p fulfil
# The processes' warnings (stderr) are kept beside the reports, as .txt
# because git ignores *.log: an outlier run is explained there or nowhere.
bench() { ./target/release/fulfil bench "$@" 2>>"$out/stderr.txt"; }
for i in $(seq 1 "$runs"); do
  bench --scenario three-step --workflows 6000 --concurrency 64 --json "$out/three-step-c64-$i.json"
  bench --scenario three-step --workflows 6000 --concurrency 256 --json "$out/three-step-c256-$i.json"
  bench --scenario three-step --workflows 300 --concurrency 1 --json "$out/three-step-c1-$i.json"
  bench --scenario chain --steps 40 --workflows 30 --concurrency 1 --warmup 3 --json "$out/chain40-$i.json"
  bench --scenario fanout --steps 10 --workflows 500 --concurrency 16 --json "$out/fanout10-c16-$i.json"
  bench --scenario three-step --workflows 2500 --rate 500 --json "$out/rate500-$i.json"
  bench --scenario three-step --workflows 10000 --rate 10000 --warmup 0 --json "$out/backlog10k-$i.json"
  # A small worker under a backlog: pulls two tasks at a time, where a pull
  # stream that miscounts what it is owed stalls (fifth round).
  bench --scenario three-step --workflows 3000 --rate 10000 --warmup 0 --worker-concurrency 4 --json "$out/backlog3k-worker4-$i.json"
done
echo "reports in $out"
