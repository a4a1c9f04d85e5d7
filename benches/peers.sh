#!/usr/bin/env bash
# Peer comparison for `weir flows`: packets/s and peak memory against softflowd, nfpcapd, tcpdump and cat,
# on two generated captures read from the page cache, each tool best of three runs.
#
#   benches/peers.sh [PACKETS] [FLOWS_LONG] [FLOWS_MANY]     (defaults: 4000000 40000 200000)
#
# Needs: softflowd, nfdump (nfpcapd), tcpdump (apt-get install -y softflowd nfdump tcpdump). softflowd sends its
# NetFlow export to the discard port on loopback; nothing leaves the machine. Results go to bench-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
packets=${1:-4000000}
flows_long=${2:-40000}
flows_many=${3:-200000}
out=bench-out
mkdir -p "$out"
for tool in softflowd nfpcapd tcpdump; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y softflowd nfdump tcpdump" >&2; exit 1; }
done
cargo build --release -q -p weir -p weir-synth
weir=target/release/weir

[ -f "$out/long.pcap" ] || target/release/weir-synth bench "$packets" "$flows_long" "$out/long.pcap"
[ -f "$out/many.pcap" ] || target/release/weir-synth bench "$packets" "$flows_many" "$out/many.pcap"

# best of three: prints "seconds peak_kb"
# softflowd 1.1.0 sometimes stalls in accept() on its control socket before reading the file; a stalled run is
# retried (up to three times), and reported on stderr.
run_once() {
  local try
  for try in 1 2 3; do
    rm -rf "$out/nf" /tmp/weir-peers-sf.ctl /tmp/weir-peers-sf.pid && mkdir -p "$out/nf"
    if timeout 60 /usr/bin/time -f "%e %M" -o "$out/time.txt" "$@" >/dev/null 2>"$out/stderr.txt" </dev/null; then
      return 0
    fi
    echo "run $try of '$*' failed or stalled; retrying" >&2
  done
  cat "$out/stderr.txt" >&2
  return 1
}

# best of three: prints "seconds peak_kb"
measure() {
  local best_t="" best_m="" t m
  for _ in 1 2 3; do
    run_once "$@" || { echo "stalled stalled"; return 0; }
    read -r t m < "$out/time.txt"
    if [ -z "$best_t" ] || awk "BEGIN{exit !($t < $best_t)}"; then best_t=$t; best_m=$m; fi
  done
  echo "$best_t $best_m"
}

report() {
  local file=$1 label=$2
  local n
  n=$($weir flows --summary --format jsonl "$file" 2>&1 >/dev/null | sed -n 's/.*packets read: \([0-9]*\).*/\1/p')
  cat "$file" > /dev/null   # into the page cache
  echo
  echo "### $label: $n packets, $(du -h "$file" | cut -f1)"
  echo
  echo "| tool | seconds | packets/s | peak memory | weir's speed ÷ tool's | tool's memory ÷ weir's |"
  echo "|---|---:|---:|---:|---:|---:|"
  read -r wt wm < <(measure "$weir" flows --format jsonl "$file")
  declare -a rows=(
    "weir flows|$wt $wm"
    "weir flows --threads 2|$(measure "$weir" flows --threads 2 --format jsonl "$file")"
    "softflowd -r|$(measure softflowd -d -r "$file" -m 1000000 -n 127.0.0.1:9 -c /tmp/weir-peers-sf.ctl -p /tmp/weir-peers-sf.pid)"
    "nfpcapd -r|$(measure nfpcapd -r "$file" -w "$out/nf")"
    "tcpdump -r -w /dev/null|$(measure tcpdump -r "$file" -w /dev/null)"
    "cat > /dev/null|$(measure cat "$file")"
  )
  for row in "${rows[@]}"; do
    local name=${row%%|*} t m
    read -r t m <<< "${row#*|}"
    if [ "$t" = stalled ]; then
      echo "| $name | stalled (see stderr; measure it by hand) | | | | |"
      continue
    fi
    awk -v name="$name" -v t="$t" -v m="$m" -v n="$n" -v wt="$wt" -v wm="$wm" 'BEGIN {
      pps = (t > 0) ? n / t : 0
      printf "| %s | %.2f | %.2f M | %.0f MB | %.2f | %.2f |\n", name, t, pps / 1e6, m / 1024, (wt > 0 ? t / wt : 0), m / wm
    }'
  done
}

echo "## weir flows against its peers ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r))"
report "$out/long.pcap" "Long flows ($flows_long flows)"
report "$out/many.pcap" "Many flows ($flows_many flows)"
