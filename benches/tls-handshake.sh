#!/usr/bin/env bash
# tls-handshake.sh: TLS termination cost of a proxy against HAProxy on the same machine, in the
# same run: full handshakes/s (ECDSA P-256 and RSA-2048), resumed handshakes/s, and HTTPS
# keep-alive req/s, each with the proxy's CPU microseconds per handshake / request.
#
# Method (as ../shared/bench/compare.sh): everything on 127.0.0.1; a fresh proxy process per
# measured run; the proxy pinned alone to core PROXY_CPU, the load tools and the origin (one
# nginx worker, `200 "ok\n"`) to core LOAD_CPU; the proxy's CPU is read from /proc/PID/stat
# (utime+stime of its process tree) before and after the run, so CPU us per handshake/request
# stays meaningful even when the load core, not the proxy, is the bottleneck. Every load run
# stops by itself (-time / -D) with a `timeout` backstop; every process started is stopped by
# its PID on exit, Ctrl-C included. Rounds are the outer loop and the target order rotates, so
# drift falls on every target alike; ratios are taken within a round, then the median.
#
# Scenarios (each a new TLS 1.3 connection per HTTP request unless keep-alive):
#   full-ecdsa   openssl s_time -new  (full handshakes, ECDSA P-256 certificate)
#   full-rsa     openssl s_time -new  (full handshakes, RSA-2048 certificate)
#   resumed      openssl s_time -reuse (session resumption, ECDSA certificate)
#   keepalive    h2load --h1 over HTTPS keep-alive (ECDSA certificate), GET / -> 3 bytes
# s_time runs S_TIME_PROCS processes at once (sequential handshakes each) and fetches GET /
# on each connection (-www /), which also makes it read the TLS 1.3 session tickets.
#
# usage: benches/tls-handshake.sh [-r ROUNDS] [-d SECONDS] [-s SCENARIOS] [-t TARGETS] [--no-pin]
#   -r  rounds (default 1)            -d  seconds per measured run (default 5)
#   -s  comma list of scenarios above (default all)
#   -t  comma list: haproxy,candidate (default haproxy, plus candidate when CANDIDATE_CMD is set)
# Candidate: CANDIDATE_CMD, one command line, run in the foreground (not daemonized), stopped
# with SIGTERM; placeholders (also exported as BENCH_* env vars):
#   {config}  a fulcrum TOML: one http listener with [listener.tls] on {port}, pool "origins"
#   {port}    where to serve HTTPS         {backend}  the origin, 127.0.0.1:PORT
#   {cert} {key}  the PEM certificate and key of the scenario (ECDSA or RSA)
#   {haproxy_config}  an HAProxy config for {port}: CANDIDATE_CMD='haproxy -db -f {haproxy_config}'
#                     is an A/A run (HAProxy against itself) that shows this machine's noise
# e.g. CANDIDATE_NAME=fulcrum CANDIDATE_CMD="$PWD/target/release/fulcrum run --config {config}" \
#        benches/tls-handshake.sh -r 3
# Needs: haproxy nginx nghttp2-client (h2load) openssl python3 util-linux (taskset), as root or
# a user who may run them (apt-get install -y haproxy nginx nghttp2-client).
set -euo pipefail

ROUNDS=1 DURATION=5 SCENARIOS=full-ecdsa,full-rsa,resumed,keepalive TARGETS= PIN=1
while [ $# -gt 0 ]; do
  case $1 in
    -r) ROUNDS=$2; shift 2 ;;
    -d) DURATION=$2; shift 2 ;;
    -s) SCENARIOS=$2; shift 2 ;;
    -t) TARGETS=$2; shift 2 ;;
    --no-pin) PIN=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "tls-handshake.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
CANDIDATE_CMD=${CANDIDATE_CMD:-} CANDIDATE_NAME=${CANDIDATE_NAME:-candidate}
[ -n "$TARGETS" ] || { TARGETS=haproxy; [ -n "$CANDIDATE_CMD" ] && TARGETS+=,candidate; }
PROXY_CPU=${BENCH_PROXY_CPU:-0} LOAD_CPU=${BENCH_LOAD_CPU:-1}
S_TIME_PROCS=${S_TIME_PROCS:-4} H2LOAD_CONNS=${H2LOAD_CONNS:-50}
BASE=${BENCH_PORT_BASE:-18400}
ORIGIN_PORT=$((BASE + 101)) HAPROXY_PORT=$((BASE + 201)) CAND_PORT=$((BASE + 221))
CLK_TCK=$(getconf CLK_TCK)

die() { echo "tls-handshake.sh: $*" >&2; exit 2; }
for c in haproxy nginx h2load openssl python3 taskset timeout; do
  command -v "$c" >/dev/null || die "needs $c (apt-get install -y haproxy nginx nghttp2-client openssl)"
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "-r and -d take positive integers"
for p in $ORIGIN_PORT $HAPROXY_PORT $CAND_PORT; do
  ss -Hltn "sport = :$p" | grep -q . && die "port $p is in use (set BENCH_PORT_BASE)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

W=$(mktemp -d /tmp/bench-tls.XXXXXX)
mkdir -p "$W/log" "$W/tmp"
chmod 755 "$W"
STARTED=()
tree_pids() { local p=$1 c; [ -d "/proc/$p" ] || return 0; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done; }
running() { [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stop_pid() {  # TERM a process we started and its children, KILL after 5 s
  # start_bg backgrounds a shell function, so the PID is a subshell and the program runs as
  # its child: the child must get the TERM too, or it only ever sees the KILL (a candidate
  # never drains, and an instrumented build never writes its profile).
  local p=$1 kids i k alive
  [ -d "/proc/$p" ] || { wait "$p" 2>/dev/null || true; return 0; }
  kids=$(tree_pids "$p" | tail -n +2 | tr '\n' ' ')
  for k in $kids; do kill -TERM "$k" 2>/dev/null || true; done
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive=0; for k in "$p" $kids; do running "$k" && alive=1; done
    [ $alive = 1 ] || break; sleep 0.1
  done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
  local keep=() x; for x in "${STARTED[@]}"; do [ "$x" != "$p" ] && keep+=("$x"); done; STARTED=("${keep[@]}")
}
cleanup() { local p; for p in "${STARTED[@]}"; do stop_pid "$p"; done; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

on_cpu() { local cpu=$1; shift; if [ "$PIN" = 1 ]; then taskset -c "$cpu" "$@"; else "$@"; fi; }
start_bg() { local cpu=$1 log=$2; shift 2; on_cpu "$cpu" "$@" >"$log" 2>&1 & LAST_PID=$!; STARTED+=("$LAST_PID"); }
wait_port() { local i; for ((i = 0; i < 200; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; [ -d "/proc/$2" ] || return 1; sleep 0.05; done; return 1; }
cpu_ticks() { local t=0 p s; for p in $(tree_pids "$1"); do s=$(cat "/proc/$p/stat" 2>/dev/null) || continue; s=${s##*) }; set -- $s; t=$((t + ${12} + ${13})); done; echo $t; }

# ---------------------------------------------------------------- certificates and configs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench.example \
  -addext subjectAltName=DNS:bench.example -keyout "$W/ecdsa.key" -out "$W/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=bench.example \
  -addext subjectAltName=DNS:bench.example -keyout "$W/rsa.key" -out "$W/rsa.pem" 2>/dev/null
for k in ecdsa rsa; do cat "$W/$k.pem" "$W/$k.key" >"$W/$k.bundle.pem"; done

cat >"$W/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/origin.pid;
error_log $W/log/origin.error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $W/tmp/cb; proxy_temp_path $W/tmp/p; fastcgi_temp_path $W/tmp/f;
    uwsgi_temp_path $W/tmp/u; scgi_temp_path $W/tmp/s;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        location = / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF

haproxy_cfg() {  # PORT CERTKIND OUT: one thread, TLS 1.2+ with tickets and a session cache
  # (HAProxy's defaults, as fulcrum's), ALPN h2/http1.1, keep-alive to the origin.
  cat >"$3" <<EOF
global
    nbthread 1
    maxconn 8000
    tune.ssl.cachesize 20000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    maxconn 8000
frontend fe
    bind 127.0.0.1:$1 ssl crt $W/$2.bundle.pem alpn h2,http/1.1 backlog 4096
    default_backend be
backend be
    http-reuse always
    server o1 127.0.0.1:$ORIGIN_PORT
EOF
}

candidate_toml() {  # CERTKIND OUT
  cat >"$2" <<EOF
[runtime]
worker_threads = 1

[admin]
enabled = false

[[listener]]
name = "bench_https"
bind = "127.0.0.1:$CAND_PORT"
protocol = "http"
pool = "origins"

[listener.tls]
certificates = [ { cert = "$W/$1.pem", key = "$W/$1.key" } ]

[[pool]]
name = "origins"
servers = [ { addr = "127.0.0.1:$ORIGIN_PORT" } ]

[pool.health]
kind = "none"
EOF
}

for k in ecdsa rsa; do
  haproxy_cfg "$HAPROXY_PORT" $k "$W/haproxy-$k.cfg"
  haproxy_cfg "$CAND_PORT" $k "$W/haproxy-cand-$k.cfg"
  haproxy -c -q -f "$W/haproxy-$k.cfg" || die "haproxy-$k.cfg invalid"
  candidate_toml $k "$W/candidate-$k.toml"
done

start_bg "$LOAD_CPU" "$W/log/origin.log" nginx -p "$W" -c "$W/origin.conf"
ORIGIN_PID=$LAST_PID
wait_port "$ORIGIN_PORT" "$ORIGIN_PID" || die "origin did not listen on $ORIGIN_PORT"

start_target() {  # TARGET CERTKIND -> PROXY_PID, TPORT
  local t=$1 k=$2 cmd
  case $t in
    haproxy) TPORT=$HAPROXY_PORT
      start_bg "$PROXY_CPU" "$W/log/haproxy.log" haproxy -db -f "$W/haproxy-$k.cfg" ;;
    candidate) TPORT=$CAND_PORT
      cmd=${CANDIDATE_CMD//\{config\}/$W/candidate-$k.toml}
      cmd=${cmd//\{haproxy_config\}/$W/haproxy-cand-$k.cfg}
      cmd=${cmd//\{port\}/$CAND_PORT}; cmd=${cmd//\{backend\}/127.0.0.1:$ORIGIN_PORT}
      cmd=${cmd//\{cert\}/$W/$k.pem}; cmd=${cmd//\{key\}/$W/$k.key}
      BENCH_CONFIG=$W/candidate-$k.toml BENCH_PORT=$CAND_PORT BENCH_BACKEND=127.0.0.1:$ORIGIN_PORT \
        BENCH_CERT=$W/$k.pem BENCH_KEY=$W/$k.key \
        start_bg "$PROXY_CPU" "$W/log/candidate.log" bash -c "exec $cmd" ;;
    *) die "unknown target $t" ;;
  esac
  PROXY_PID=$LAST_PID
  if ! wait_port "$TPORT" "$PROXY_PID"; then
    echo "tls-handshake.sh: $t did not listen on $TPORT; its log:" >&2
    tail -n 15 "$W/log/$t.log" >&2 || true
    stop_pid "$PROXY_PID"; return 1
  fi
  # Sanity: one HTTPS request must come back 200 "ok\n".
  # A few tries: right after start-up the first connection is sometimes refused here.
  local ok= i
  for ((i = 0; i < 5; i++)); do
    timeout 20 h2load -n 1 -c 1 --h1 "https://127.0.0.1:$TPORT/" >"$W/sanity.out" 2>&1 || true
    ok=$(awk '/^status codes:/ {print $3}' "$W/sanity.out")
    [ "$ok" = 1 ] && break
    sleep 0.3
  done
  if [ "$ok" != 1 ]; then
    echo "tls-handshake.sh: $t failed the HTTPS sanity request (GET / over TLS -> 2xx):" >&2
    head -n 12 "$W/sanity.out" >&2
    stop_pid "$PROXY_PID"; return 1
  fi
}

# One measured load run against port $1 for scenario $2; prints "COUNT WALL_SECONDS".
load() {
  local port=$1 sc=$2 i out=$W/load.out
  : >"$out"
  case $sc in
    full-*|resumed)
      local mode=-new; [ "$sc" = resumed ] && mode=-reuse
      local pids=() t0 t1
      rm -f "$W"/stime.*
      t0=$(date +%s.%N)
      for ((i = 0; i < S_TIME_PROCS; i++)); do
        on_cpu "$LOAD_CPU" timeout -k 5 $((DURATION + 30)) openssl s_time -connect "127.0.0.1:$port" \
          $mode -time "$DURATION" -www / >"$W/stime.$i" 2>&1 &
        pids+=($!)
      done
      for i in "${pids[@]}"; do wait "$i" || true; done
      t1=$(date +%s.%N)
      # Each prints "N connections in T real seconds, ..." (T in whole seconds: the wall clock
      # around all of them is used instead).
      cat "$W"/stime.* | awk -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        '/connections in [0-9]+ real seconds/ { n += $1 } END { printf "%d %s\n", n, w }' ;;
    keepalive)
      on_cpu "$LOAD_CPU" timeout -k 5 $((DURATION + 30)) h2load --h1 -t 1 -c "$H2LOAD_CONNS" -D "$DURATION" \
        "https://127.0.0.1:$port/" >"$out" 2>&1 || true
      awk '/^finished in/ { gsub(",", "", $3); t = $3 + 0 } /^requests:/ { n = $8 } END { printf "%d %s\n", n, (t ? t : 1) }' "$out" ;;
  esac
}

IFS=, read -ra SCEN <<<"$SCENARIOS"; IFS=, read -ra TGT <<<"$TARGETS"
RES=$W/results.txt; : >"$RES"
echo "== benches/tls-handshake.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cpus, $(haproxy -v | sed -n 1p | cut -d' ' -f1-3)"
echo "   rounds=$ROUNDS duration=${DURATION}s s_time procs=$S_TIME_PROCS h2load conns=$H2LOAD_CONNS pin=$PIN (proxy cpu$PROXY_CPU, load+origin cpu$LOAD_CPU)"
[ -n "$CANDIDATE_CMD" ] && echo "   candidate '$CANDIDATE_NAME': $CANDIDATE_CMD"
for ((r = 1; r <= ROUNDS; r++)); do
  for sc in "${SCEN[@]}"; do
    case $sc in full-ecdsa|full-rsa|resumed|keepalive) ;; *) die "unknown scenario $sc" ;; esac
    kind=ecdsa; [ "$sc" = full-rsa ] && kind=rsa
    n=${#TGT[@]}
    for ((k = 0; k < n; k++)); do
      t=${TGT[$(((k + r - 1) % n))]}
      label=$t; [ "$t" = candidate ] && label=$CANDIDATE_NAME
      if ! start_target "$t" $kind; then echo "$r $sc $label FAILED" >>"$RES"; continue; fi
      on_cpu "$LOAD_CPU" timeout 10 openssl s_time -connect "127.0.0.1:$TPORT" -new -time 1 >/dev/null 2>&1 || true  # warm-up
      c0=$(cpu_ticks "$PROXY_PID")
      read -r count wall < <(load "$TPORT" "$sc")
      c1=$(cpu_ticks "$PROXY_PID")
      stop_pid "$PROXY_PID"
      echo "$r $sc $label $count $wall $((c1 - c0))" >>"$RES"
      awk -v r="$r" -v sc="$sc" -v t="$label" -v n="$count" -v w="$wall" -v c=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {
        printf "   [r%d] %-11s %-10s %9.0f /s  proxy cpu %3.0f%%  %7.1f us each\n", r, sc, t, n / w, 100 * c / hz / w, (n ? 1e6 * c / hz / n : 0) }'
    done
  done
done
stop_pid "$ORIGIN_PID"

echo
python3 - "$RES" "$CLK_TCK" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
hz = float(sys.argv[2])
runs = {}
for row in rows:
    if row[3] == "FAILED":
        runs.setdefault((row[1], row[2]), []).append(None); continue
    r, sc, t, n, w, c = int(row[0]), row[1], row[2], int(row[3]), float(row[4]), int(row[5])
    runs.setdefault((sc, t), []).append((r, n / w, 1e6 * c / hz / n if n else float("nan")))
scen = list(dict.fromkeys(k[0] for k in runs)); tgts = list(dict.fromkeys(k[1] for k in runs))
what = {"full-ecdsa": "full handshakes/s, ECDSA P-256", "full-rsa": "full handshakes/s, RSA-2048",
        "resumed": "resumed handshakes/s", "keepalive": "HTTPS keep-alive req/s"}
print(f"| scenario | target | per second (median) | CPU us each | /s vs haproxy | CPU vs haproxy |")
print("|---|---|---|---|---|---|")
for sc in scen:
    hap = {r: (rate, cpu) for r, rate, cpu in (x for x in runs.get((sc, "haproxy"), []) if x)}
    for t in tgts:
        ok = [x for x in runs.get((sc, t), []) if x]
        if not ok:
            print(f"| {what.get(sc, sc)} | {t} | failed | | | |"); continue
        rate = st.median(x[1] for x in ok); cpu = st.median(x[2] for x in ok)
        rr = [x[1] / hap[x[0]][0] for x in ok if x[0] in hap and hap[x[0]][0]]
        cr = [x[2] / hap[x[0]][1] for x in ok if x[0] in hap and hap[x[0]][1]]
        f = lambda v: f"{st.median(v):.2f}" if v else "-"
        print(f"| {what.get(sc, sc)} | {t} | {rate:,.0f} | {cpu:.1f} | {f(rr)} | {f(cr)} |")
PY
