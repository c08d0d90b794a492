#!/usr/bin/env bash
# What idle connections cost fulcrum: RSS (VmRSS) of a release fulcrum at idle, then with N
# connections of one kind open and idle, in MiB and KiB per connection.
#
#   benches/idle-conns.sh KIND [N]     KIND: h1 | h2 | l4 | raw   N: default 10000
#
#   h1   HTTP/1.1 keep-alive connections that made one request each, then sit idle
#   h2   h2c (prior knowledge) connections that made one request each, then sit idle
#   l4   TCP connections through a tcp listener, relayed to the origin, idle after one
#        small HTTP exchange
#   raw  connections to the http listener that never send a byte
#
# Loopback only. Starts an origin (examples/idle_conns.rs), fulcrum in front of it, and a
# client that opens and holds the connections; all three are stopped on exit. Timeouts in
# the generated config are far above the run's length, so nothing is closed while measured.
# N is lowered when the open-file limit cannot give fulcrum the descriptors it needs
# (an l4 connection costs fulcrum two). RSS is read SETTLE seconds (default 6) after every
# connection is open, past the 1 s after which an idle HTTP/1 connection parks; the
# script prints how many are parked.
set -euo pipefail

kind=${1:-}
n=${2:-10000}
case "$kind" in
  h1 | h2 | l4 | raw) ;;
  *) echo "usage: $0 h1|h2|l4|raw [N]" >&2; exit 2 ;;
esac
[[ "$n" =~ ^[0-9]+$ ]] && (( n > 0 && n <= 100000 )) || { echo "N must be 1..100000" >&2; exit 2; }

cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
per=1
[[ "$kind" == l4 ]] && per=2
max=$(( (limit - 200) / per ))
if (( n > max )); then
  echo "note: open-file limit $limit allows fulcrum $max $kind connections; N lowered from $n" >&2
  n=$max
fi

cargo build --release --quiet --bin fulcrum --example idle_conns
bin=${FULCRUM_BIN:-target/release/fulcrum}
helper=target/release/examples/idle_conns

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits (bounded) until FILE has a line matching PATTERN; prints the first one.
wait_line() {
  local file=$1 pattern=$2 what=$3 i
  for (( i = 0; i < 600; i++ )); do
    if grep -m1 -E "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $what; log follows" >&2
  cat "$file" >&2
  exit 1
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# The origin and the client run until their standard input closes: hold a pipe open to each.
mkfifo "$work/origin.in" "$work/client.in"
"$helper" origin <"$work/origin.in" >"$work/origin.out" 2>&1 &
pids+=($!)
exec 7>"$work/origin.in"
origin=$(wait_line "$work/origin.out" '^[0-9.]+:[0-9]+$' "the origin")

cat >"$work/fulcrum.toml" <<EOF
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"
max_connections = 100000
[listener.timeouts]
keepalive_idle = "1h"
header_read = "1h"
[listener.limits]
# Every connection comes from 127.0.0.1: lift the per-client cap (default 1000).
max_connections_per_client = 100000

[[listener]]
name = "relay"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
max_connections = 100000
[listener.timeouts]
tunnel_idle = "1h"
[listener.limits]
max_connections_per_client = 100000

[[pool]]
name = "app"
servers = [ { addr = "$origin" } ]
[pool.health]
kind = "none"
EOF

"$bin" --log-format json --log-level info run --config "$work/fulcrum.toml" >"$work/fulcrum.log" 2>&1 &
fpid=$!
pids+=("$fpid")
wait_line "$work/fulcrum.log" '"fulcrum ready"' "fulcrum" >/dev/null
addr_of() { grep -m1 "\"listener\":\"$1\"" "$work/fulcrum.log" | sed -E 's/.*"addr":"([^"]+)".*/\1/'; }
admin=$(grep -m1 '"admin listening"' "$work/fulcrum.log" | sed -E 's/.*"addr":"([^"]+)".*/\1/')
listener=web
[[ "$kind" == l4 ]] && listener=relay
target=$(addr_of "$listener")

# One warm-up connection of the same kind, so the first-use costs (runtime, pools, metric
# series) are in the idle figure rather than spread over the N.
"$helper" hold "$kind" "$target" 1 </dev/null >/dev/null
sleep 2
idle=$(rss_kib "$fpid")

"$helper" hold "$kind" "$target" "$n" <"$work/client.in" >"$work/client.out" 2>&1 &
pids+=($!)
exec 8>"$work/client.in"
wait_line "$work/client.out" '^holding' "$n $kind connections" >&2

# Every connection is accepted and being served: fulcrum's own gauge says so.
active() {
  curl -sf "http://$admin/metrics" |
    awk -v l="$listener" '$1 == "fulcrum_listener_connections_active{listener=\"" l "\"}" { print $2 }'
}
for (( i = 0; i < 300; i++ )); do
  a=$(active || echo 0)
  (( ${a:-0} >= n )) && break
  sleep 0.1
done
(( ${a:-0} >= n )) || { echo "fulcrum has ${a:-0} of $n connections active" >&2; exit 1; }
sleep "${SETTLE:-6}" # parking is 1-2 s after idle; mimalloc gives freed pages back lazily
held=$(rss_kib "$fpid")
parked=$(curl -sf "http://$admin/metrics" |
  awk -v l="$listener" '$1 == "fulcrum_listener_connections_parked{listener=\"" l "\"}" { print $2 }')
echo "open: $(active); parked (idle HTTP/1 connections holding no buffers): ${parked:-0}"

awk -v k="$kind" -v n="$n" -v i="$idle" -v h="$held" 'BEGIN {
  d = h - i
  printf "%s: %d idle connections: RSS %.1f MiB idle -> %.1f MiB held: +%.1f MiB, %.2f KiB per connection\n",
    k, n, i / 1024, h / 1024, d / 1024, d / n
}'
