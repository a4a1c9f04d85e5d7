#!/usr/bin/env bash
# Live capture on a veth: weir's TPACKET_V3 ring against `tcpdump -i VETH -w /dev/null` (libpcap, also a
# TPACKET_V3 ring, parsing nothing) and against weir's pnet fallback (one recvfrom per packet), on the same
# traffic: 60-byte UDP frames pushed from one pod namespace to another by `weir-synth udp-blast` as fast as one
# core can, then at a lower rate. For each run: packets that
# crossed the veth (kernel interface counters), packets the tool got, kernel drops, and the tool's CPU time per
# packet (user + system, from /proc). Needs root, iproute2, tcpdump.
#
#   benches/capture.sh [SECONDS] [RATE...]      (default: 5 seconds, rates max and 100000 packets/s)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
shift || true
rates=("${@:-max 100000}")
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "missing tcpdump: apt-get install -y tcpdump" >&2; exit 1; }
cargo build --release -q -p weir -p weir-synth
weir=$PWD/target/release/weir
synth=$PWD/target/release/weir-synth

tag=$$
br=wbb$tag a=wpb$tag-0 b=wpb$tag-1 va=wvb${tag}0 vb=wvb${tag}1
cleanup() {
  ip netns del "$a" 2>/dev/null || true
  ip netns del "$b" 2>/dev/null || true
  ip link del "$va" 2>/dev/null || true
  ip link del "$vb" 2>/dev/null || true
  ip link del "$br" 2>/dev/null || true
}
trap cleanup EXIT
ip link add "$br" type bridge && ip link set "$br" up
i=0
for pair in "$a:$va" "$b:$vb"; do
  ns=${pair%%:*} veth=${pair##*:}
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" || true
  ip link set "$veth" master "$br" && ip link set "$veth" up
  ip -n "$ns" addr add "10.252.0.1$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  i=$((i + 1))
done
# The target drops the datagrams before any socket (no port unreachable storm back).
ip netns exec "$b" ip route add prohibit 10.252.0.99/32 2>/dev/null || true
ip netns exec "$a" ping -c 1 -q 10.252.0.11 >/dev/null

counter() { cat "/sys/class/net/$va/statistics/$1"; }
cpu_seconds() {  # utime + stime of a pid, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

run() {  # tool rate
  local tool=$1 rate=$2 pid out err before after crossed got drops cpu sent
  out=$(mktemp) err=$(mktemp)
  case $tool in
    weir) "$weir" capture -i "$va" --format jsonl >"$out" 2>"$err" & ;;
    weir-pnet) "$weir" capture --backend pnet -i "$va" --format jsonl >"$out" 2>"$err" & ;;
    tcpdump) tcpdump -i "$va" -w /dev/null -B 8192 -s 256 >"$out" 2>"$err" & ;;
  esac
  pid=$!
  sleep 1.5
  before=$(( $(counter rx_packets) + $(counter tx_packets) ))
  local cpu0; cpu0=$(cpu_seconds "$pid")
  if [ "$rate" = max ]; then
    sent=$(ip netns exec "$a" "$synth" udp-blast 10.252.0.11:9 "$seconds")
  else
    sent=$(ip netns exec "$a" "$synth" udp-blast 10.252.0.11:9 "$seconds" "$rate")
  fi
  sleep 0.5
  after=$(( $(counter rx_packets) + $(counter tx_packets) ))
  local cpu1; cpu1=$(cpu_seconds "$pid")
  kill -INT "$pid"; wait "$pid" || true
  crossed=$((after - before))
  case $tool in
    weir-pnet)
      got=$(awk '/packets read/ { for (i = 1; i <= NF; i++) if ($i == "packets" && $(i+1) == "read") print $(i-1) }' "$err")
      drops=$((crossed > got ? crossed - got : 0)) ;;
    weir)
      got=$(awk '/packets read/ { for (i = 1; i <= NF; i++) if ($i == "packets" && $(i+1) == "read") print $(i-1) }' "$err")
      drops=$(awk '/dropped by the kernel/ { for (i = 1; i <= NF; i++) if ($i == "dropped") print $(i-1) }' "$err") ;;
    tcpdump)
      got=$(awk '/packets captured/ { print $1 }' "$err")
      drops=$(awk '/dropped by kernel/ { print $1 }' "$err") ;;
  esac
  cpu=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')
  awk -v tool="$tool" -v rate="$rate" -v sent="${sent%% *}" -v secs="${sent##* }" -v crossed="$crossed" \
      -v got="$got" -v drops="$drops" -v cpu="$cpu" 'BEGIN {
    printf "%-8s %8s %10.0f %10d %10d %8d %10.0f\n", tool, rate, sent / secs, crossed, got, drops, cpu * 1e9 / (crossed > 0 ? crossed : 1) }'
  rm -f "$out" "$err"
}

printf '%-8s %8s %10s %10s %10s %8s %10s\n' tool rate sent_pps crossed got drops cpu_ns/pkt
for rate in ${rates[@]}; do
  run weir "$rate"
  run tcpdump "$rate"
  run weir-pnet "$rate"
done
echo "crossed: packets on the veth during the run (kernel counters; weir counts packets in the whole run, so got >= crossed)"
echo "weir-pnet: drops are the packets that crossed and were not read (pnet exposes no kernel counters)"
