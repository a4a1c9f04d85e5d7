#!/usr/bin/env bash
# Records pcaps/loopback-any.pcap: a real `tcpdump -i any` capture (Linux cooked capture v2) of HTTP requests,
# UDP datagrams and pings, all on the loopback address. Needs root, tcpdump, python3 and curl.
# The traffic loop is bounded (5 requests, 3 datagrams, 3 pings) and everything it starts is stopped on exit.
set -euo pipefail
out="${1:-$(dirname "$0")/loopback-any.pcap}"
port=18080
tmp=$(mktemp -d)
cleanup() { kill "${server:-}" "${dump:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
(cd "$tmp" && echo hello > index.html && exec python3 -m http.server "$port" --bind 127.0.0.1) >/dev/null 2>&1 &
server=$!
tcpdump -i any -s 262144 -U -w "$out" "host 127.0.0.1 and (port $port or port 15353 or icmp)" 2>/dev/null &
dump=$!
sleep 1.5
for _ in 1 2 3 4 5; do curl -s -o /dev/null "http://127.0.0.1:$port/index.html"; done
for i in 1 2 3; do echo "query $i" > /dev/udp/127.0.0.1/15353 || true; done
ping -c 3 -i 0.2 127.0.0.1 >/dev/null || true
sleep 1
