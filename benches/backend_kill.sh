#!/usr/bin/env bash
# benches/backend_kill.sh — the backend-kill story under load: three origin processes
# (`fulcrum origin`), the proxy in front, `wrk -t2 -c50 -d30s`; origin 2 is SIGKILLed at 10 s
# and restarted at 15 s. With --storm, 1,000 uploads are first aborted mid-body (reset while
# the origins read them), the clients' fault a proxy must not charge to its servers.
# Prints wrk's totals and the failed requests (socket errors + non-2xx).
#
# usage: benches/backend_kill.sh [-t fulcrum|haproxy|nginx] [--storm] [-d SECONDS]
# Needs: a release build (cargo build --release), wrk, python3; haproxy/nginx for those targets.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=fulcrum STORM=0 DUR=30
while [ $# -gt 0 ]; do
  case "$1" in
    -t) TARGET=$2; shift 2 ;;
    --storm) STORM=1; shift ;;
    -d) DUR=$2; shift 2 ;;
    *) echo "usage: $0 [-t fulcrum|haproxy|nginx] [--storm] [-d SECONDS]" >&2; exit 2 ;;
  esac
done
BIN=$PWD/target/release/fulcrum
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

O=( "$(port)" "$(port)" "$(port)" )
start_origin() { "$BIN" origin --listen "127.0.0.1:${O[$1]}" --name "o$1" >/dev/null 2>&1 & ORIGIN_PID[$1]=$!; PIDS+=("${ORIGIN_PID[$1]}"); wait_port "${O[$1]}"; }
declare -a ORIGIN_PID
for i in 0 1 2; do start_origin $i; done

P=$(port)
case $TARGET in
  fulcrum)
    cat >"$W/f.toml" <<TOML
[runtime]
worker_threads = 2
[admin]
bind = "127.0.0.1:$(port)"
[[listener]]
name = "web"
bind = "127.0.0.1:$P"
protocol = "http"
pool = "app"
[[pool]]
name = "app"
servers = [ { addr = "127.0.0.1:${O[0]}" }, { addr = "127.0.0.1:${O[1]}" }, { addr = "127.0.0.1:${O[2]}" } ]
[pool.health]
kind = "tcp"
interval = "500ms"
rise = 2
fall = 2
TOML
    "$BIN" run --config "$W/f.toml" >"$W/proxy.log" 2>&1 & ;;
  haproxy)
    cat >"$W/h.cfg" <<CFG
global
  nbthread 2
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
  retries 2
  option redispatch
  retry-on conn-failure empty-response response-timeout
frontend f
  bind 127.0.0.1:$P
  default_backend b
backend b
  balance roundrobin
  http-reuse always
  server o0 127.0.0.1:${O[0]} check inter 500 rise 2 fall 2
  server o1 127.0.0.1:${O[1]} check inter 500 rise 2 fall 2
  server o2 127.0.0.1:${O[2]} check inter 500 rise 2 fall 2
CFG
    haproxy -db -f "$W/h.cfg" >"$W/proxy.log" 2>&1 & ;;
  nginx)
    mkdir -p "$W/ng"
    cat >"$W/ng/n.conf" <<CFG
daemon off; master_process off; worker_processes 1; error_log $W/ng/err.log; pid $W/ng/pid;
events { worker_connections 4096; }
http { access_log off;
  upstream u { server 127.0.0.1:${O[0]} max_fails=1 fail_timeout=5s; server 127.0.0.1:${O[1]} max_fails=1 fail_timeout=5s; server 127.0.0.1:${O[2]} max_fails=1 fail_timeout=5s; keepalive 64; }
  server { listen 127.0.0.1:$P; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_next_upstream error timeout http_502; } } }
CFG
    nginx -p "$W/ng" -c "$W/ng/n.conf" >"$W/proxy.log" 2>&1 & ;;
  *) echo "unknown target $TARGET" >&2; exit 2 ;;
esac
PIDS+=($!)
wait_port "$P" || { echo "proxy did not start:"; tail "$W/proxy.log"; exit 1; }
sleep 2   # first health-check rounds

if [ "$STORM" = 1 ]; then
  python3 - "$P" <<'PY'
import asyncio, socket, struct, sys
port = int(sys.argv[1])
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /sink HTTP/1.1\r\nHost: bench\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await w.drain()
    return w
async def main():
    ws = await asyncio.gather(*[one() for _ in range(1000)])
    await asyncio.sleep(1)          # the uploads reach the origins, which read them
    for w in ws:                    # then every client resets its connection
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()
    await asyncio.sleep(1)
asyncio.run(main())
print("abort storm: 1000 uploads reset mid-body")
PY
fi

( sleep 10; kill -9 "${ORIGIN_PID[1]}"; echo "t=10s: origin o1 SIGKILLed" ;
  sleep 5; "$BIN" origin --listen "127.0.0.1:${O[1]}" --name o1 >/dev/null 2>&1 & echo $! >"$W/o1.pid"; echo "t=15s: origin o1 restarted" ) &
KILLER=$!
wrk -t2 -c50 -d"${DUR}s" "http://127.0.0.1:$P/" >"$W/wrk.out" 2>&1 || true
wait $KILLER || true
[ -f "$W/o1.pid" ] && PIDS+=("$(cat "$W/o1.pid")")
cat "$W/wrk.out"
total=$(awk '/requests in/ {print $1}' "$W/wrk.out")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$W/wrk.out"); non2xx=${non2xx:-0}
sockerr=$(awk -F'[ ,]+' '/Socket errors/ {s=0; for(i=1;i<=NF;i++) if ($i ~ /^[0-9]+$/) s+=$i; print s}' "$W/wrk.out"); sockerr=${sockerr:-0}
echo "RESULT target=$TARGET storm=$STORM requests=$total failed=$((non2xx + sockerr)) (non-2xx $non2xx, socket errors $sockerr)"
