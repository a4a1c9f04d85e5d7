#!/usr/bin/env bash
# How `weir flows` scales with the cores it is given, as ratios against a ceiling measured in the same run: K
# one-thread `weir flows` processes side by side, each pinned to its own core, on the same capture (what the
# machine gives for K streams of this work), against one `weir flows --threads K` pinned to the same K cores.
# Target (issue 23): on 2 cores, --threads 2 reaches >= 90% of the two-process ceiling.
#
#   benches/scaling.sh [PACKETS] [FLOWS]     (defaults: 4000000 200000; the capture is kept in bench-out/)
#
# Each figure is the best of three runs; the capture is read from the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
packets=${1:-4000000}
flows=${2:-200000}
out=bench-out
mkdir -p "$out"
command -v taskset >/dev/null || { echo "missing taskset: apt-get install -y util-linux" >&2; exit 1; }
cargo build --release -q -p weir -p weir-synth
weir=target/release/weir
capture="$out/scaling-$packets-$flows.pcap"
[ -f "$capture" ] || target/release/weir-synth bench "$packets" "$flows" "$capture" >/dev/null
cat "$capture" >/dev/null
cores=$(nproc)

now() { date +%s.%N; }

# Seconds for one command, best of three.
best() {
  local best="" t0 t1 s
  for _ in 1 2 3; do
    t0=$(now); "$@" >/dev/null; t1=$(now)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
  done
  echo "$best"
}

# Seconds for K one-thread processes side by side, one per core (the slowest decides), best of three.
side_by_side() {
  local k=$1 best="" t0 t1 s
  for _ in 1 2 3; do
    t0=$(now)
    for ((c = 0; c < k; c++)); do
      taskset -c "$c" "$weir" flows --format jsonl --threads 1 "$capture" >/dev/null &
    done
    wait
    t1=$(now)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    if [ -z "$best" ] || awk -v a="$s" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$s; fi
  done
  echo "$best"
}

one=$(best taskset -c 0 "$weir" flows --format jsonl --threads 1 "$capture")
echo "machine: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
echo "capture: $packets packets, $flows flows; one thread on one core: ${one} s"
printf '%-8s %12s %14s %16s %10s\n' cores "threads K s" "speed-up vs 1" "K processes s" "of ceiling"
k=2
while [ "$k" -le "$cores" ]; do
  many=$(best taskset -c "0-$((k - 1))" "$weir" flows --format jsonl --threads "$k" "$capture")
  ceiling=$(side_by_side "$k")
  # The ceiling does K captures' work in `ceiling` seconds; --threads K does one in `many`.
  awk -v k="$k" -v m="$many" -v o="$one" -v c="$ceiling" \
    'BEGIN { printf "%-8d %12.2f %13.2fx %16.2f %9.0f%%\n", k, m, o / m, c, 100 * (c / k) / m }'
  k=$((k * 2))
done
echo "of ceiling: throughput of --threads K against K one-thread processes side by side (target on 2 cores: >= 90%)"
