#!/usr/bin/env python3
"""fulcrum beside HAProxy and nginx, on this machine, in one run.

Three measures:

  benches/compare.py load [options]          wrk through each proxy; req/s, p99, CPU per request
                                             (and the kernel's part of it), peak RSS and the
                                             RSS held halfway through the measured run, medians
                                             over interleaved rounds (each round starting with
                                             the next target), with ratios to HAProxy and nginx.
  benches/compare.py instructions [options]  user-space instructions per request under valgrind's
                                             callgrind: the A/B figure for hot-path changes, since
                                             it does not move with machine noise.
  benches/compare.py kernel [options]        what each proxy asks of the kernel per request under
                                             load: system calls by name, context switches, page
                                             faults, wake-ups (perf stat; needs root or a low
                                             perf_event_paranoid).

Everything listens on 127.0.0.1. Every process started is stopped on exit, every load run is
bounded by wrk's duration (or h2load's request count). The origins are one nginx worker on three
ports, tuned to be as cheap as nginx can be, as the shared harness runs them (`--origin fulcrum`
runs three `fulcrum origin` processes instead), the same for every proxy.

Load: by default the proxy is pinned to core 0 with one worker (HAProxy `nbthread 1`, nginx one
worker process), and wrk and the origins share core 1. `--unpinned` runs the way most people do:
no pinning, two workers each, wrk with two threads. The fulcrum variants switch features on
one at a time: `fulcrum+log` (access log to a file), `fulcrum+ratelimit` (a limit no client
reaches, so every request pays for the check), `fulcrum+routes` (100 routes, the request served
by the last). `haproxy+log` and `nginx+log` log every request too, for comparison with
`fulcrum+log`: HAProxy to standard output (sent to a file), nginx to a file with a 64 KiB
buffer. HAProxy checks its servers every 2 s like fulcrum does; nginx has no active checks.
fulcrum adds X-Forwarded-For, -Proto, -Host and X-Request-ID to each request (and returns the
request id); HAProxy and nginx add nothing unless `--same-headers` asks them to add the same,
so that the origins (which share the load core with wrk) parse the same requests behind all.
`haproxy-b` is a second HAProxy, the same binary and config as `haproxy` on a port of its own,
measured in the same rounds: a control. Its ratios to HAProxy are what the harness reads when
two proxies are the same, so they show how far a figure moves by chance alone.

Scenarios are MODE-BODY-cCONNECTIONS: `http` and `tcp` run wrk; `h2` (not in the default set,
e.g. `--scenarios h2-small-c20`) runs h2load with h2 clients without TLS, 100 streams open on
each connection, p99 taken from h2load's per-request log. BODY `small` is a 3-byte
response, `16k` 16 KiB, and `close` a small response with `Connection: close`: a new client
connection for every request (`http-close-c50`, `tcp-close-c50`; not in the default set).
`postNk` (`http-post1k-c50`, `http-post16k-c50`; not in the default set) sends each request
as a POST with an N KiB body, head and body in one write, and gets the small response;
`chunkNk` the same body sent chunked (`Transfer-Encoding: chunked`, 4 KiB chunks).
Behind every proxy the servers speak HTTP/1.1 (HAProxy `bind ... proto h2`, nginx
`listen ... http2`). `instructions` takes the same modes (`--modes http,tcp,h2`; h2 with 10
streams open on each of 10 connections), and `--post BYTES` for requests with a body.

Needs wrk, haproxy, nginx (with the stream module) and, for `instructions` and the h2
scenarios, h2load (valgrind for `instructions`, perf for `kernel`). Debian: apt-get install
wrk haproxy nginx libnginx-mod-stream valgrind nghttp2-client linux-perf.
"""

import argparse
import atexit
import collections
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FULCRUM_BIN runs another build (an A/B against a saved binary, say). The target
# `fulcrum-base` runs the build at FULCRUM_BASE_BIN beside `fulcrum` in the same rounds,
# with the same config: an A/B of two builds, interleaved.
FULCRUM = os.environ.get("FULCRUM_BIN") or os.path.join(ROOT, "target", "release", "fulcrum")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SCENARIOS = ["http-small-c50", "http-small-c200", "http-16k-c50", "tcp-small-c50"]
TARGETS = ["haproxy", "nginx", "fulcrum", "fulcrum+log", "fulcrum+ratelimit", "fulcrum+routes"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=15.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {limit}s")


class Procs:
    """Started processes, stopped (TERM, then KILL) by stop() or on exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, cpu=None, log=None):
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        out = open(log, "ab") if log else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p, grace=5):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.remove(p)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)


def cpu_split(pid):
    """(user, system) CPU of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_used(pids, before=None):
    """(user, system) seconds of `pids` so far, or since `before` (an earlier reading)."""
    now = [sum(x) for x in zip(*(cpu_split(p) for p in pids))] or [0.0, 0.0]
    return now if before is None else [a - b for a, b in zip(now, before)]


def cpu_fields(user_sys, total):
    """A run's CPU per request: the whole, and the kernel's part of it (system time: the
    system calls, TCP on loopback, the wake-ups), which is the same work for every proxy."""
    user, system = user_sys
    n = max(total, 1)
    return {"us_per_req": (user + system) * 1e6 / n, "sys_us_per_req": system * 1e6 / n}


def rss_mib(pids, field="VmHWM"):
    """The peak RSS of the processes `pids`, summed, in MiB (`field="VmRSS"`: their RSS
    now)."""
    return sum(proc_status(pid, field, float("nan")) / 1024 for pid in pids)


def proc_status(pid, field, missing=0):
    """The number after `field:` in /proc/PID/status (kB for the memory fields), or
    `missing`."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return missing


def run_measured(cmd, pids, duration):
    """Runs the measured load `cmd` (it lasts `duration` seconds) and returns its output and
    the proxy's RSS halfway through: what it holds while serving, where the peak may be a
    moment (the warm-up's connections replaced by the measured run's at once)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=duration / 2)
        held = float("nan")
    except subprocess.TimeoutExpired:
        held = rss_mib(pids, "VmRSS")
    out, err = p.communicate()
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, cmd, out, err)
    return out, held


def proxy_pid(p):
    """The proxy itself when started under taskset (taskset execs, so it is the same pid)."""
    return p.pid


# ---------------------------------------------------------------------------------------------
# configurations


def fulcrum_config(work, variant, mode, port, origins, workers):
    # h2: the same HTTP listener; it tells h2's preface from HTTP/1 by itself.
    mode = "http" if mode == "h2" else mode
    admin = free_port()
    servers = ", ".join(f'{{ addr = "127.0.0.1:{o}" }}' for o in origins)
    extra, routes, top = "", "", ""
    if variant == "fulcrum+log":
        top = f'[access_log]\nenabled = true\npath = "{work}/access.log"\n'
    if variant == "fulcrum+ratelimit":
        extra = "[listener.rate_limit]\nrate = 100000000\nburst = 100000000\n"
    if variant == "fulcrum+routes" and mode == "http":
        parts = []
        for i in range(99):
            if i % 3 == 0:
                m = f'host = ["site{i}.example.com", "*.site{i}.example.org"]'
            elif i % 3 == 1:
                m = f'path_prefix = "/service-{i}/"'
            else:
                m = f'path_regex = "^/user/{i}/[0-9]+$"'
            parts.append(f'[[listener.route]]\nname = "r{i}"\n{m}\npool = "bench"\n')
        parts.append('[[listener.route]]\nname = "last"\npath_prefix = "/"\npool = "bench"\n')
        routes = "\n".join(parts)
    return f"""{top}
[runtime]
worker_threads = {workers}

[admin]
bind = "127.0.0.1:{admin}"

[[listener]]
name = "bench"
bind = "127.0.0.1:{port}"
protocol = "{mode}"
pool = "bench"
{extra}
{routes}

[[pool]]
name = "bench"
servers = [ {servers} ]

[pool.health]
kind = "tcp"
interval = "2s"
"""


# What fulcrum adds to every proxied HTTP request by default (X-Forwarded-For, -Proto and
# -Host, and a request id, which it also returns to the client), asked of HAProxy and nginx
# with --same-headers, so that the origins parse the same requests behind all three.
HAPROXY_SAME_HEADERS = """  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  unique-id-format %[uuid()]
  unique-id-header X-Request-ID
  http-response set-header X-Request-ID %[unique-id]
"""
NGINX_SAME_HEADERS = (
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
    "proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; "
    "proxy_set_header X-Request-ID $request_id; add_header X-Request-ID $request_id; "
)


def haproxy_config(mode, port, origins, workers, same_headers=False, log=False):
    # h2: clients speak h2 without TLS (prior knowledge); the servers HTTP/1.1, as for fulcrum.
    proto = " proto h2" if mode == "h2" else ""
    mode = "http" if mode == "h2" else mode
    servers = "\n".join(f"  server s{i} 127.0.0.1:{o} check inter 2s" for i, o in enumerate(origins))
    http = "  option http-keep-alive\n" if mode == "http" else ""
    front = HAPROXY_SAME_HEADERS if mode == "http" and same_headers else ""
    # haproxy+log: a line per request (per connection on L4) to standard output, which the
    # harness sends to a file: HAProxy's way of logging without a syslog daemon.
    glog = "  log stdout format raw local0\n" if log else ""
    dlog = f"  log global\n  option {mode}log\n" if log else ""
    return f"""global
  nbthread {workers}
  maxconn 8000
{glog}defaults
  mode {mode}
{dlog}  timeout connect 5s
  timeout client 60s
  timeout server 60s
{http}frontend f
  bind 127.0.0.1:{port}{proto}
{front}  default_backend b
backend b
  balance roundrobin
{servers}
"""


def nginx_config(work, mode, port, origins, workers, same_headers=False, log=False):
    # h2: `listen ... http2` takes h2 without TLS (prior knowledge); the servers HTTP/1.1.
    listen = f"127.0.0.1:{port} http2" if mode == "h2" else f"127.0.0.1:{port}"
    # nginx ends a connection after 1,000 requests by default; h2load does not reconnect.
    # (wrk does: HTTP/1 keeps the default.)
    keep = "keepalive_requests 1000000; " if mode == "h2" else ""
    # With h2 clients thousands of requests are in flight at once: cache as many server
    # connections, rather than opening and closing most of them per request.
    idle = 2048 if mode == "h2" else 64
    mode = "http" if mode == "h2" else mode
    ups = " ".join(f"server 127.0.0.1:{o};" for o in origins)
    if mode == "http":
        extra = NGINX_SAME_HEADERS if same_headers else ""
        # nginx+log: the combined format to a file, buffered the way nginx advises under load.
        access = f"{work}/nginx-access.log combined buffer=64k flush=1s" if log else "off"
        block = (
            # A request body is read whole before it goes on (nginx's default); held in
            # memory up to 64 KiB rather than in a temporary file past 8 KiB (`post16k`).
            f"http {{ access_log {access}; {keep}client_body_buffer_size 64k; "
            f"upstream u {{ {ups} keepalive {idle}; }} "
            f"server {{ listen {listen}; location / {{ proxy_pass http://u; "
            f'proxy_http_version 1.1; proxy_set_header Connection ""; {extra}}} }} }}'
        )
    else:
        block = f"stream {{ upstream u {{ {ups} }} server {{ listen 127.0.0.1:{port}; proxy_pass u; }} }}"
    module = f"load_module {STREAM_MODULE};" if os.path.exists(STREAM_MODULE) else ""
    return (
        f"{module}\ndaemon off; master_process {'on' if workers > 1 else 'off'}; "
        f"worker_processes {workers}; error_log {work}/nginx.err; pid {work}/nginx.pid;\n"
        f"events {{ worker_connections 8000; }}\n{block}\n"
    )


def origin_nginx_config(work, origins):
    """One nginx worker serving every origin port, as cheap as nginx can be (the shared
    harness's origin): `/` answers "ok\\n", `/bytes/16384` a 16 KiB file by sendfile, and
    every answer names its port in X-Origin."""
    os.makedirs(f"{work}/www/bytes", exist_ok=True)
    with open(f"{work}/www/bytes/16384", "wb") as f:
        f.write(bytes(i % 251 for i in range(16384)))
    listens = " ".join(f"listen 127.0.0.1:{o} backlog=4096;" for o in origins)
    return (
        f"daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 65536; "
        f"error_log {work}/origin.err warn; pid {work}/origin.pid;\n"
        f"events {{ worker_connections 16384; multi_accept on; }}\n"
        f"http {{ access_log off; server_tokens off; default_type application/octet-stream; "
        f"sendfile on; tcp_nopush on; tcp_nodelay on; etag off; keepalive_timeout 300s; "
        f"keepalive_requests 100000000; open_file_cache max=64 inactive=300s; "
        f"open_file_cache_valid 300s; server {{ {listens} root {work}/www; "
        f"add_header X-Origin $server_port always; "
        f'location = / {{ default_type text/plain; return 200 "ok\\n"; }} location / {{ }} }} }}\n'
    )


def process_tree(pid):
    """`pid` and its descendants (an nginx master and its worker), as far as /proc tells."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


# The origins' processes (an nginx master and its worker, or one process per origin), for
# the load side's CPU.
ORIGIN_PIDS = []


def start_origins(procs, work, kind, cpu, n=3):
    """`n` origins (on `cpu`, if given): one nginx worker on `n` ports (`nginx`, as the
    shared harness runs them), `n` `fulcrum origin` processes (`fulcrum`), or `n` of the
    shared harness's Python servers (`python`, which write a response's head and body
    apart)."""
    origins = [free_port() for _ in range(n)]
    ORIGIN_PIDS.clear()
    if kind == "nginx":
        path = f"{work}/origin.conf"
        with open(path, "w") as f:
            f.write(origin_nginx_config(work, origins))
        p = procs.start(["nginx", "-p", work, "-c", path], cpu, f"{work}/origin.log")
        for o in origins:
            wait_port(o, p)
        ORIGIN_PIDS[:] = process_tree(p.pid)
    else:
        for i, o in enumerate(origins):
            if kind == "python":
                cmd = [sys.executable, "-c", PYTHON_ORIGIN, str(o)]
            else:
                cmd = [FULCRUM, "origin", "--listen", f"127.0.0.1:{o}", "--name", f"o{i}"]
            p = procs.start(cmd, cpu)
            wait_port(o, p)
            ORIGIN_PIDS.append(p.pid)
    return origins


def fulcrum_target(target):
    """The binary and the config variant of a fulcrum target: `fulcrum`, `fulcrum+log`, ...;
    `fulcrum-base`, `fulcrum-base+log`, ... run the build at FULCRUM_BASE_BIN."""
    if not target.startswith("fulcrum-base"):
        return FULCRUM, target
    binary = os.environ.get("FULCRUM_BASE_BIN")
    if not binary:
        raise SystemExit(f"the target {target} needs FULCRUM_BASE_BIN")
    return binary, target.replace("fulcrum-base", "fulcrum", 1)


def start_target(procs, work, target, mode, origins, cpu, workers, same_headers=False):
    """Starts `target` for `mode`; returns (process, port). The port is one that was free a
    moment before; if a connection's local port took it in between (the proxy exits saying
    the address is in use), the target is started again on another one."""
    for attempt in range(3):
        log = f"{work}/{target}.log"
        start = os.path.getsize(log) if os.path.exists(log) else 0
        try:
            return start_target_once(procs, work, target, mode, origins, cpu, workers, same_headers)
        except RuntimeError as e:
            said = ""
            if os.path.exists(log):
                with open(log, "rb") as f:
                    f.seek(start)
                    said = f.read().decode(errors="replace")
            if "in use" not in said or attempt == 2:
                raise RuntimeError(f"{target}: {e}" + (f"; it said: {said.strip()[-500:]}" if said else "")) from None
            print(f"{target}: its port was taken before it bound it; again on another", file=sys.stderr)


def start_target_once(procs, work, target, mode, origins, cpu, workers, same_headers):
    port = free_port()
    if target.startswith("fulcrum"):
        path = f"{work}/{target}.{mode}.toml"
        binary, variant = fulcrum_target(target)
        with open(path, "w") as f:
            f.write(fulcrum_config(work, variant, mode, port, origins, workers))
        p = procs.start([binary, "run", "--config", path, "--log-level", "warn"], cpu, f"{work}/{target}.log")
    elif target in ("haproxy", "haproxy+log", "haproxy-b"):
        path = f"{work}/{target}.{mode}.cfg"
        with open(path, "w") as f:
            f.write(haproxy_config(mode, port, origins, workers, same_headers, target.endswith("+log")))
        p = procs.start(["haproxy", "-db", "-f", path], cpu, f"{work}/{target}.log")
    elif target in ("nginx", "nginx+log"):
        path = f"{work}/{target}.{mode}.conf"
        with open(path, "w") as f:
            f.write(nginx_config(work, mode, port, origins, workers, same_headers, target.endswith("+log")))
        p = procs.start(["nginx", "-p", work, "-c", path], cpu, f"{work}/{target}.log")
    else:
        raise SystemExit(f"unknown target {target}")
    try:
        wait_port(port, p)
    except RuntimeError:
        procs.stop(p)
        raise
    time.sleep(0.3)
    return p, port


def measured_pids(p):
    """The proxy and, for nginx with a master, its workers."""
    pids = [proxy_pid(p)]
    try:
        out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout
        pids += [int(x) for x in out.split()]
    except FileNotFoundError:
        pass
    return pids


# ---------------------------------------------------------------------------------------------
# load


# What a load tool's run gave: req/s, requests answered, latency percentiles (ms), errors.
Load = collections.namedtuple("Load", "rps total p99 p50 errors")

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_percentile(out, q):
    """The latency at percentile `q` (50, 99...) of wrk's `--latency` table, in ms."""
    m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else float("nan")


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(x) for x in m.groups()) if m else 0
    return Load(rps, total, wrk_percentile(out, 99), wrk_percentile(out, 50), errors)


# h2 scenarios: streams each h2 client connection keeps open (HAProxy's default limit per
# connection is 100, nginx's 128).
H2_STREAMS = 100


# What a desktop browser sends with a plain page request on HTTP/1.1, besides Host: every
# request carries `Connection: keep-alive`, which a proxy must read and remove (RFC 9110
# §7.6.1).
BROWSER_HEADERS = [
    "Connection: keep-alive",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
]


def parse_h2load(out, log):
    """An h2load run's `Load` (the percentiles from its per-request log)."""
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    total, errors = int(m.group(2)), int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors += int(m.group(3)) + int(m.group(4)) if m else 0
    took = []
    with open(log) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3 and cols[1] != "-1":
                took.append(int(cols[2]))
    took.sort()

    def at(q):
        return took[min(len(took) - 1, int(len(took) * q))] / 1000.0 if took else float("nan")
    return Load(rps, total, at(0.99), at(0.50), errors)


def measured(load, cpu, held, pids):
    """One run's figures: the load tool's (a `Load`), the proxy's CPU over the run, the RSS
    it held halfway through, and its peak RSS read now."""
    # The kernel moves its high-water mark lazily, so a sample taken during the run can
    # read a little above it (12.5 against 12.4 MiB): the peak is at least the sample.
    peak = max(rss_mib(pids), held)
    return {"rps": load.rps, "p99_ms": load.p99, "p50_ms": load.p50, **cpu_fields(cpu, load.total),
            "rss_mib": peak, "rss_held_mib": held, "errors": load.errors, "requests": load.total}


def scenario_path(body):
    """The path a scenario's BODY asks for: 16 KiB, or the origin's 3-byte answer."""
    return "/bytes/16384" if body == "16k" else "/"


# wrk's script for each `postNk` body, written on first use and removed when the run ends.
POST_SCRIPTS = {}


def wrk_args(body):
    """wrk's extra arguments for a scenario's BODY: `close` asks for a small response on a
    connection of its own, and wrk reconnects after each; `postN` (`post1k`, `post16k`)
    sends each request as a POST with a body of N KiB (a wrk script written once per run),
    answered by the origin's small `ok`."""
    if body == "close":
        return ["-H", "Connection: close"]
    m = re.fullmatch(r"(post|chunk)(\d+)k", body)
    if m and body in POST_SCRIPTS:
        return ["-s", POST_SCRIPTS[body]]
    if m:
        size = int(m.group(2)) * 1024
        fd, script = tempfile.mkstemp(prefix=f"fulcrum-wrk-{body}-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            if m.group(1) == "post":
                f.write('wrk.method = "POST"\n'
                        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                        f'wrk.body = string.rep("x", {size})\n')
            else:
                # wrk adds a Content-Length to any body it is given, so the chunked request
                # is written whole, once, and handed out as it is for every request.
                f.write(f'local size, left, parts = {size}, {size}, {{}}\n'
                        'while left > 0 do\n'
                        '  local n = math.min(left, 4096)\n'
                        '  parts[#parts + 1] = string.format("%x\\r\\n", n) .. string.rep("x", n) .. "\\r\\n"\n'
                        '  left = left - n\n'
                        'end\n'
                        'local req = "POST / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"\n'
                        '  .. "Content-Type: application/octet-stream\\r\\n"\n'
                        '  .. "Transfer-Encoding: chunked\\r\\n\\r\\n" .. table.concat(parts) .. "0\\r\\n\\r\\n"\n'
                        'request = function() return req end\n')
        atexit.register(os.remove, script)
        POST_SCRIPTS[body] = script
        return ["-s", script]
    return []


def run_load(args, mode, body, conns, port, pids, load_cpu, wrk_threads):
    path = scenario_path(body)
    url = f"http://127.0.0.1:{port}{path}"
    if mode == "h2":
        return run_h2load(args, conns, url, pids, load_cpu, wrk_threads)
    wrk = ["wrk", f"-t{wrk_threads}", f"-c{conns}", "--timeout", "5s", "--latency"]
    wrk += wrk_args(body)
    if load_cpu is not None:
        wrk = ["taskset", "-c", str(load_cpu)] + wrk
    if args.warmup:
        subprocess.run(wrk + [f"-d{args.warmup}s", url], capture_output=True, check=True)
    before, side = cpu_used(pids), load_side()
    out, held = run_measured(wrk + [f"-d{args.duration}s", url], pids, args.duration)
    cpu = cpu_used(pids, before)
    r = measured(parse_wrk(out), cpu, held, pids)
    return {**r, **load_side(side, r["requests"])}


def load_side(before=None, requests=0):
    """The load's side: the origin's processes and the load tool (wrk or h2load, the one
    child reaped in between). Read before a run (no arguments), it returns the counts so
    far; with `before`, the run's per request: µs of the origin's and of the load tool's
    CPU, and how often they blocked (voluntary context switches). Pinned, both share core
    1, so what the proxy's way of sending costs them shows here."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = (sum(cpu_used(ORIGIN_PIDS)), kids.ru_utime + kids.ru_stime,
           sum(proc_status(p, "voluntary_ctxt_switches") for p in ORIGIN_PIDS) + kids.ru_nvcsw)
    if before is None:
        return now
    n = max(requests, 1)
    return {"origin_us_per_req": (now[0] - before[0]) * 1e6 / n,
            "client_us_per_req": (now[1] - before[1]) * 1e6 / n,
            "other_sleeps_per_req": (now[2] - before[2]) / n}


def run_h2load(args, conns, url, pids, load_cpu, threads):
    """h2 without TLS: `conns` connections of H2_STREAMS streams each, for --duration."""
    h2 = ["h2load", "-c", str(conns), "-m", str(H2_STREAMS), "-t", str(threads)]
    if load_cpu is not None:
        h2 = ["taskset", "-c", str(load_cpu)] + h2
    if args.warmup:
        subprocess.run(h2 + ["-D", str(args.warmup), url], capture_output=True, check=True)
    with tempfile.NamedTemporaryFile(prefix="fulcrum-h2load-", suffix=".log") as log:
        before, side = cpu_used(pids), load_side()
        out, held = run_measured(h2 + ["-D", str(args.duration), "--log-file", log.name, url],
                                 pids, args.duration)
        cpu = cpu_used(pids, before)
        parsed = parse_h2load(out, log.name)
    r = measured(parsed, cpu, held, pids)
    return {**r, **load_side(side, r["requests"])}


def load(args):
    need = ["wrk", "haproxy", "nginx"] + (["taskset"] if not args.unpinned else [])
    need += ["h2load"] if any(sc.startswith("h2-") for sc in args.scenarios) else []
    for c in need:
        if not shutil.which(c):
            raise SystemExit(f"compare.py: needs {c}")
    workers = worker_count(args)
    proxy_cpu, load_cpu = (None, None) if args.unpinned else (0, 1)
    wrk_threads = 2 if args.unpinned else 1
    procs = Procs()
    work = tempfile.mkdtemp(prefix="fulcrum-bench-")
    results = {}
    try:
        origins = start_origins(procs, work, args.origin, load_cpu)
        for rnd in range(args.rounds):
            for scen in args.scenarios:
                mode, body, c = scen.split("-")
                conns = int(c[1:])
                # Each round starts with the next target: a fixed order would give one
                # target the same place (first after a scenario change) in every round.
                shift = rnd % len(args.targets)
                for target in args.targets[shift:] + args.targets[:shift]:
                    if target == "fulcrum+routes" and mode == "tcp":
                        continue
                    p, port = start_target(procs, work, target, mode, origins, proxy_cpu, workers,
                                           args.same_headers)
                    try:
                        r = run_load(args, mode, body, conns, port, measured_pids(p), load_cpu, wrk_threads)
                    finally:
                        procs.stop(p)
                    results.setdefault(scen, {}).setdefault(target, []).append(r)
                    print(f"round {rnd + 1} {scen:16} {target:18} {r['rps']:>10.0f} req/s "
                          f"p99 {r['p99_ms']:.2f} ms {r['us_per_req']:.2f} us/req "
                          f"(kernel {r['sys_us_per_req']:.2f}) "
                          f"rss {r['rss_mib']:.1f} MiB (held {r['rss_held_mib']:.1f}) "
                          f"errors {r['errors']}", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    table = report(results, args)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": results}, f, indent=1)


def worker_count(args):
    """Workers per proxy: --workers, else 2 unpinned and 1 pinned."""
    return args.workers or (2 if args.unpinned else 1)


def report(results, args):
    keys = [("rps", "req/s", "{:.0f}"), ("p99_ms", "p99 ms", "{:.2f}"),
            ("us_per_req", "µs/req", "{:.2f}"), ("rss_mib", "RSS MiB", "{:.1f}"),
            ("rss_held_mib", "held RSS MiB", "{:.1f}")]
    workers = worker_count(args)
    lines = [f"{'unpinned' if args.unpinned else 'proxy pinned to core 0'}, {workers} worker{'s' if workers > 1 else ''} each; "
             f"{args.rounds} rounds x {args.duration}s; medians; ratios are to HAProxy / nginx"
             + ("; HAProxy and nginx add fulcrum's forwarding headers and request id"
                if getattr(args, "same_headers", False) else ""), "",
             "| scenario | proxy | req/s | p99 ms | µs/req | peak RSS MiB | held RSS MiB | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for scen, by_target in results.items():
        med = {t: {k: statistics.median(r[k] for r in runs) for k, _, _ in keys}
               for t, runs in by_target.items()}
        for t, runs in by_target.items():
            cells = []
            for k, _, fmt in keys:
                v = fmt.format(med[t][k])
                if t not in ("haproxy", "nginx"):
                    ratios = [med[t][k] / med[b][k] for b in ("haproxy", "nginx") if b in med and med[b][k]]
                    v += " (" + " / ".join(f"{x:.2f}×" for x in ratios) + ")"
                cells.append(v)
            errors = sum(r["errors"] for r in runs)
            lines.append(f"| {scen} | {t} | " + " | ".join(cells) + f" | {errors} |")
    # The machine's speed drifts during a run, and each proxy's median can come from a
    # different round. Each round runs every proxy back to back, so a ratio taken within a
    # round compares like with like; their median is the steadier figure.
    paired = []
    for scen, by_target in results.items():
        base = by_target.get("haproxy")
        if not base:
            continue
        for t, runs in by_target.items():
            if t in ("haproxy", "nginx"):
                continue
            cells = []
            for k, _, _ in keys:
                rs = [r[k] / b[k] for r, b in zip(runs, base) if b[k]]
                # Rounds where the target is at least level with HAProxy: more req/s, or
                # less of the rest. On a noisy machine the count says more than the median.
                ahead = sum(1 for x in rs if (x >= 1.0 if k == "rps" else x <= 1.0))
                cells.append(f"{statistics.median(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f}; {ahead}/{len(rs)})"
                             if rs else "-")
            paired.append(f"| {scen} | {t} | " + " | ".join(cells) + " |")
    if paired:
        lines += ["", "Median of the per-round ratios to HAProxy (lowest–highest round; rounds in which "
                  "it was level with HAProxy or ahead):", "",
                  "| scenario | proxy | req/s | p99 | µs/req | peak RSS | held RSS |",
                  "|---|---|---|---|---|---|---|"] + paired
    lines += cpu_split_report(results)
    lines += load_side_report(results)
    lines += tail_report(results)
    return "\n".join(lines)


def each_target(results, has):
    """(scenario, target, its runs, HAProxy's runs) for every target whose runs all have
    what a table needs (`has(run)`); HAProxy's runs are None unless they all have it too,
    and then the table gives no ratios."""
    for scen, by_target in results.items():
        base = by_target.get("haproxy")
        if base and not all(has(b) for b in base):
            base = None
        for t, runs in by_target.items():
            if all(has(r) for r in runs):
                yield scen, t, runs, base


def load_side_report(results):
    """What each proxy's traffic costs the other side: the origin's and the load tool's CPU
    per request (medians), their sum's median per-round ratio to HAProxy's, and how busy
    the proxy and the other side were (CPU per request times req/s, in cores: pinned, the
    proxy has core 0 and the other side core 1, and the one at 99-100 % is what caps
    req/s and so, under a fixed number of connections, the median latency)."""
    def both(r):
        return r["origin_us_per_req"] + r["client_us_per_req"]

    def busy(r, us):
        return f"{statistics.median(us(x) * x['rps'] / 1e4 for x in r):.0f} %"

    rows = []
    for scen, t, runs, base in each_target(results, lambda r: "origin_us_per_req" in r):
        ratio = median_ratio(runs, base, both) if base and t != "haproxy" else "-"
        rows.append(f"| {scen} | {t} | {busy(runs, lambda r: r['us_per_req'])} | "
                    f"{statistics.median(r['origin_us_per_req'] for r in runs):.2f} | "
                    f"{statistics.median(r['client_us_per_req'] for r in runs):.2f} | "
                    f"{statistics.median(both(r) for r in runs):.2f} | {ratio} | "
                    f"{busy(runs, both)} | "
                    f"{statistics.median(r['other_sleeps_per_req'] for r in runs):.3f} |")
    if not rows:
        return []
    return ["", "The other side: how busy the proxy was; the origin's and the load tool's CPU per "
            "request (µs, medians over the rounds), the median per-round ratio of their sum to "
            "the same behind HAProxy, how busy they were (pinned, they share core 1; the "
            "side at 98-100 % caps req/s), and how often per request they blocked waiting "
            "(voluntary context switches):", "",
            "| scenario | proxy | proxy busy | origin µs/req | load tool µs/req | both | ratio | other side busy | its sleeps/req |",
            "|---|---|---|---|---|---|---|---|---|"] + rows


def median_ratio(runs, base, f, g=None):
    """The median over the rounds of `f(run)` over `g(HAProxy's run)` (`g` defaults to `f`),
    formatted, or "-" if there is none."""
    g = g or f
    rs = [f(r) / g(b) for r, b in zip(runs, base) if g(b) > 0]
    return f"{statistics.median(rs):.2f}×" if rs else "-"


def tail_report(results):
    """The shape of each proxy's latency: its median, its p99, and p99 over the median.
    Under a closed-loop load (a fixed number of connections, each waiting for its answer)
    a proxy that serves fewer requests a second makes every request wait longer, so its
    p99 rises with its median; p99 over the median is what is left, how uneven its
    service is. A p99 ratio to HAProxy is the median's ratio times this one's. p99 minus
    the median is the same unevenness in milliseconds: a proxy with a lower median shows a
    higher p99/p50 for the same absolute wait of its slowest requests."""
    def shape(r):
        return r["p99_ms"] / r["p50_ms"]

    def excess(r):
        return r["p99_ms"] - r["p50_ms"]

    rows = []
    for scen, t, runs, base in each_target(results, lambda r: r.get("p50_ms", 0) > 0):
        ratios = ["-", "-", "-", "-"]
        if base and t != "haproxy":
            ratios = [median_ratio(runs, base, lambda r: r["p99_ms"]),
                      median_ratio(runs, base, lambda r: r["p50_ms"]), median_ratio(runs, base, shape),
                      median_ratio(runs, base, excess)]
        rows.append(f"| {scen} | {t} | {statistics.median(r['p50_ms'] for r in runs):.2f} | "
                    f"{statistics.median(r['p99_ms'] for r in runs):.2f} | "
                    f"{statistics.median(shape(r) for r in runs):.2f} | " + " | ".join(ratios) + " |")
    if not rows:
        return []
    return ["", "Latency: the median and p99 (ms), p99 over the median (medians over the rounds); "
            "then the median per-round ratios to HAProxy of the p99, of the median, of p99 "
            "over the median, and of p99 minus the median:", "",
            "| scenario | proxy | p50 ms | p99 ms | p99/p50 | p99 | p50 | p99/p50 | p99−p50 |",
            "|---|---|---|---|---|---|---|---|---|"] + rows


def cpu_split_report(results):
    """Where each proxy's CPU per request goes: the kernel's part (system time) and its own
    (user time), medians over the rounds, and per-round ratios to HAProxy's. The kernel's
    part is the same system calls and TCP segments for every proxy, so no proxy's own code
    can take it away: `floor`, its kernel part over HAProxy's whole CPU per request, is the
    lowest µs/req ratio it could reach if its own code cost nothing."""
    def user(r):
        return r["us_per_req"] - r["sys_us_per_req"]

    rows = []
    for scen, t, runs, base in each_target(results, lambda r: "sys_us_per_req" in r):
        total = statistics.median(r["us_per_req"] for r in runs)
        sys_us = statistics.median(r["sys_us_per_req"] for r in runs)
        user_us = statistics.median(user(r) for r in runs)
        ratios = ["-", "-", "-"]
        if base and t != "haproxy":
            ratios = [median_ratio(runs, base, lambda r: r["sys_us_per_req"]),
                      median_ratio(runs, base, user),
                      median_ratio(runs, base, lambda r: r["sys_us_per_req"], lambda b: b["us_per_req"])]
        share = sys_us / total if total else float("nan")
        rows.append(f"| {scen} | {t} | {total:.2f} | {sys_us:.2f} ({share:.0%}) | {user_us:.2f} | "
                    + " | ".join(ratios) + " |")
    if not rows:
        return []
    return ["", "CPU per request, the kernel's part and the proxy's own (medians; then the median "
            "per-round ratios to HAProxy: kernel to kernel, user to user, and the floor, this "
            "proxy's kernel part over HAProxy's whole µs/req):", "",
            "| scenario | proxy | µs/req | kernel µs/req | user µs/req | kernel | user | floor |",
            "|---|---|---|---|---|---|---|---|"] + rows


# ---------------------------------------------------------------------------------------------
# instructions


# The shared harness's callgrind origin (../shared/bench/callgrind.sh): Python's http.server,
# which sends a response's head and its body in two writes, with Nagle's algorithm on.
PYTHON_ORIGIN = """
import sys, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True; allow_reuse_address = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


# `instructions --modes h2`: streams each h2 client connection keeps open.
H2_INSTRUCTION_STREAMS = 10


def chunked_posts(port, n, conns, size, chunk):
    """`n` POSTs of `size` bytes sent chunked, `chunk` bytes to a chunk, head and every chunk in
    one write, one at a time on each of `conns` connections (h2load sends no chunked bodies).
    Every response must be a 200."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                    for c in (b"x" * min(chunk, size - i) for i in range(0, size, chunk)))
    req = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           + body + b"0\r\n\r\n")
    failed = []

    def client(count):
        s, buf = socket.create_connection(("127.0.0.1", port), timeout=30), b""
        try:
            for _ in range(count):
                s.sendall(req)
                while b"\r\n\r\n" not in buf:
                    more = s.recv(65536)
                    if not more:
                        failed.append("closed")
                        return
                    buf += more
                head, _, buf = buf.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    failed.append(head[:80])
                    return
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                want = int(m.group(1)) if m else 0
                while len(buf) < want:
                    buf += s.recv(65536)
                buf = buf[want:]
                if re.search(rb"(?i)\r\nconnection: *close", head):
                    # nginx ends a connection after 1,000 requests: go on on a new one.
                    s.close()
                    s, buf = socket.create_connection(("127.0.0.1", port), timeout=30), b""
        finally:
            s.close()

    share = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]
    threads = [threading.Thread(target=client, args=(k,)) for k in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError(f"chunked POSTs failed: {failed[:3]}")


def instructions(args):
    if args.chunked and not args.post:
        raise SystemExit("compare.py instructions: --chunked needs --post BYTES")
    if args.ll and not args.cache_sim:
        raise SystemExit("compare.py instructions: --ll sizes the simulated cache; add --cache-sim")
    for c in (["h2load", "haproxy", "nginx"] + ([] if args.native else ["valgrind"])):
        if not shutil.which(c):
            raise SystemExit(f"compare.py: needs {c}")
    procs = Procs()
    work = tempfile.mkdtemp(prefix="fulcrum-callgrind-")
    rows = []
    try:
        # One origin, as the shared harness's callgrind.sh has; --servers N puts N in the pool,
        # as `load` does with three (a pool of more than one server lets a request be retried).
        origins = start_origins(procs, work, args.origin, None, args.servers)

        def count(target, mode, n):
            port = free_port()
            if target.startswith("fulcrum"):
                binary, variant = fulcrum_target(target)
                path = f"{work}/f.toml"
                with open(path, "w") as f:
                    f.write(fulcrum_config(work, variant, mode, port, origins, 1).replace(
                        'kind = "tcp"\ninterval = "2s"', 'kind = "none"'))
                cmd = [binary, "run", "--config", path, "--log-level", "warn"]
            elif target == "haproxy":
                path = f"{work}/h.cfg"
                with open(path, "w") as f:
                    f.write(haproxy_config(mode, port, origins, 1).replace(" check inter 2s", ""))
                cmd = ["haproxy", "-db", "-f", path]
            elif target == "nginx":
                path = f"{work}/n.conf"
                with open(path, "w") as f:
                    f.write(nginx_config(work, mode, port, origins, 1))
                cmd = ["nginx", "-p", work, "-c", path]
            else:
                raise SystemExit(f"compare.py instructions: unknown target {target}")
            out = f"{work}/cg.out.%p"
            if args.native:
                v = procs.start(cmd, log=f"{work}/native.log")
            else:
                sim = ["--cache-sim=yes"] if args.cache_sim else []
                if args.cache_sim and args.ll:
                    # The last level as the given size (16-way, 64-byte lines): the core's own
                    # L2 rather than the shared L3 callgrind would take from the machine.
                    sim.append(f"--LL={args.ll},16,64")
                v = procs.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + sim + cmd,
                                log=f"{work}/valgrind.log")
            wait_port(port, v, 60)
            # h2: the same 10 connections as h2 clients without TLS, 10 streams open on each.
            client = ["-m", str(H2_INSTRUCTION_STREAMS)] if mode == "h2" else ["--h1"]
            if args.close:
                # h2load opens a new connection for the next request when the server
                # closes one: each request pays for a connection, through the proxy too.
                client += ["-H", "Connection: close"]
            if args.browser and mode != "tcp":
                for h in BROWSER_HEADERS:
                    client += ["-H", h]
            if args.post:
                # Each request a POST with a body of --post bytes (h2load sends a file's).
                body = os.path.join(work, "post-body")
                with open(body, "wb") as f:
                    f.write(b"x" * args.post)
                client += ["-d", body]
            if args.chunked:
                chunked_posts(port, n, args.connections, args.post, args.chunked)
            else:
                r = subprocess.run(["h2load"] + client + ["-n", str(n), "-c", str(args.connections),
                                    f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
                if f"{n} succeeded" not in r.stdout:
                    raise RuntimeError(f"{target} {mode}: not every request succeeded:\n{r.stdout[-600:]}")
            # Under valgrind a process writes its counts as it exits, which can take longer
            # than a plain process's stop: killed before that, it leaves none.
            procs.stop(v, grace=5 if args.native else 60)
            if args.native:
                return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", r.stdout).group(1))
            # Each event's total over the output files (one per process): Ir, the
            # instructions, and with --cache-sim the cache events (I1mr, D1mr, ...).
            total = {}
            for name in os.listdir(work):
                if name.startswith("cg.out."):
                    events = []
                    with open(os.path.join(work, name)) as f:
                        for line in f:
                            if line.startswith("events:"):
                                events = line.split()[1:]
                            elif line.startswith("summary:"):
                                for e, x in zip(events, line.split()[1:]):
                                    total[e] = total.get(e, 0) + int(x)
                    if args.keep:
                        os.makedirs(args.keep, exist_ok=True)
                        shutil.move(os.path.join(work, name),
                                    os.path.join(args.keep, f"{target}.{mode}.{n}.{name[len('cg.out.'):]}"))
                    else:
                        os.remove(os.path.join(work, name))
            if "Ir" not in total:
                raise RuntimeError(f"{target} {mode}: callgrind wrote no counts (the process ended "
                                   "before it could write them)")
            return total

        for mode in args.modes:
            for target in args.targets:
                if args.native:
                    rps = count(target, mode, args.low)
                    rows.append((target, mode, rps))
                    print(f"{target:8} {mode:5} {rps:>10.0f} req/s", file=sys.stderr)
                    continue
                lo, hi = count(target, mode, args.low), count(target, mode, args.high)
                per = {e: (hi[e] - lo.get(e, 0)) / (args.high - args.low) for e in hi}
                if args.cache_sim:
                    per["LL"] = per["ILmr"] + per["DLmr"] + per["DLmw"]
                rows.append((target, mode, per))
                print(f"{target:8} {mode:5} {per['Ir']:>10.0f} instructions/request"
                      + (f", {per['I1mr']:.0f} I1 and {per['D1mr']:.0f} D1 read misses, "
                         f"{per['LL']:.0f} last-level misses" if args.cache_sim else ""), file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    if args.native:
        print("| proxy | mode | req/s (10 connections, one request at a time on each) |\n|---|---|---|")
        for t, m, rps in rows:
            print(f"| {t} | {m} | {rps:.0f} |")
        return
    # Columns after the instructions: (heading, event), the cache events with --cache-sim.
    extra = [("I1 misses", "I1mr"), ("D1 read misses", "D1mr"), ("last-level misses", "LL")] \
        if args.cache_sim else []
    print("| proxy | mode | instructions per request |" + "".join(f" {h} |" for h, _ in extra)
          + "\n|---|---|---|" + "---|" * len(extra))
    for t, m, per in rows:
        print(f"| {t} | {m} | {per['Ir'] / 1000:.1f}k |" + "".join(f" {per[e]:.0f} |" for _, e in extra))


# ---------------------------------------------------------------------------------------------
# kernel

# What `kernel` counts besides the system calls: (perf event, heading).
KERNEL_EVENTS = [("context-switches", "context switches"), ("page-faults", "page faults"),
                 ("sched:sched_waking", "wake-ups it makes"), ("irq:softirq_entry", "softirqs")]


def kernel(args):
    """What each proxy asks of the kernel per request under load: every system call it makes
    (perf's syscall tracepoints), its context switches and page faults, the wake-ups it
    makes of other tasks, and the softirqs run in its context (loopback delivers a segment
    to its receiver's socket in the sender's softirq). Pinned as `load` is; one run each."""
    if not shutil.which("perf"):
        raise SystemExit("compare.py: needs perf (linux-perf)")
    probe = subprocess.run(["perf", "stat", "-e", "syscalls:sys_enter_read", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit("compare.py kernel: perf cannot read the syscall tracepoints here "
                         "(run as root, or lower /proc/sys/kernel/perf_event_paranoid)")
    procs = Procs()
    work = tempfile.mkdtemp(prefix="fulcrum-kernel-")
    rows = {}
    try:
        origins = start_origins(procs, work, args.origin, 1)
        for scen in args.scenarios:
            mode, body, c = scen.split("-")
            path = scenario_path(body)
            for target in args.targets:
                p, port = start_target(procs, work, target, mode, origins, 0, 1)
                try:
                    pids = measured_pids(p)
                    wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{c[1:]}", "--timeout", "5s"]
                    wrk += wrk_args(body)
                    url = f"http://127.0.0.1:{port}{path}"
                    subprocess.run(wrk + ["-d2s", url], capture_output=True, check=True)
                    events = "syscalls:sys_enter_*," + ",".join(e for e, _ in KERNEL_EVENTS)
                    # perf counts for a little longer than wrk runs: the proxy is idle then.
                    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)),
                                             "--", "sleep", str(args.duration + 1)],
                                            stderr=subprocess.PIPE, text=True)
                    time.sleep(0.3)
                    out = subprocess.run(wrk + [f"-d{args.duration}s", url], capture_output=True, text=True,
                                         check=True).stdout
                    total = parse_wrk(out).total
                    counts = {}
                    for line in perf.communicate()[1].splitlines():
                        f = line.split(",")
                        if len(f) > 2 and re.fullmatch(r"[\d.]+", f[0]):
                            counts[f[2]] = float(f[0]) / max(total, 1)
                finally:
                    procs.stop(p)
                rows[(scen, target)] = counts
                print(f"{scen:16} {target:18} {total} requests", file=sys.stderr)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    calls = sorted({e for c in rows.values() for e, v in c.items()
                    if e.startswith("syscalls:") and v >= 0.001})
    heads = [e.split("sys_enter_")[1] for e in calls] + [h for _, h in KERNEL_EVENTS]
    print("Per request (perf stat, one run each; system calls made at least once per 1,000 "
          "requests):\n")
    print("| scenario | proxy | " + " | ".join(heads) + " |\n|---|---|" + "---|" * len(heads))
    for (scen, target), c in rows.items():
        print(f"| {scen} | {target} | " + " | ".join(f"{c.get(e, 0):.3f}" for e in calls + [e for e, _ in KERNEL_EVENTS])
              + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-build", action="store_true", help="use target/release/fulcrum as it is")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("load", help="wrk through each proxy, side by side")
    lo.add_argument("--rounds", type=int, default=5)
    lo.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    lo.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    lo.add_argument("--scenarios", type=lambda s: s.split(","), default=SCENARIOS)
    lo.add_argument("--targets", type=lambda s: s.split(","), default=TARGETS)
    lo.add_argument("--unpinned", action="store_true", help="no pinning, 2 workers each")
    lo.add_argument("--workers", type=int, help="worker threads (processes for nginx) for every proxy "
                    "(default: 1 pinned, 2 unpinned)")
    lo.add_argument("--same-headers", action="store_true",
                    help="HAProxy and nginx add the forwarding headers and request id fulcrum adds")
    lo.add_argument("--origin", choices=["nginx", "fulcrum"], default="nginx",
                    help="what serves behind the proxies: one nginx worker, as cheap as it can be "
                    "(the default), or three `fulcrum origin` processes")
    lo.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke test")
    lo.add_argument("--json", help="write every run to this file")
    ins = sub.add_parser("instructions", help="instructions per request under callgrind")
    ins.add_argument("--targets", type=lambda s: s.split(","), default=["fulcrum", "haproxy", "nginx"])
    ins.add_argument("--modes", type=lambda s: s.split(","), default=["http", "tcp"],
                     help="http and tcp: HTTP/1.1 clients, one request at a time on each of 10 "
                     "connections; h2: h2 clients without TLS, 10 streams open on each")
    ins.add_argument("--connections", type=int, default=10,
                     help="client connections (default 10): with --cache-sim and --ll, 200 shows "
                     "what each request touches that a busy core no longer holds in its cache")
    ins.add_argument("--servers", type=int, default=1,
                     help="origins in the pool (default 1, as the shared harness has; `load` runs "
                     "3): with more than one, fulcrum keeps what it needs to retry a request "
                     "elsewhere")
    ins.add_argument("--low", type=int, default=2000)
    ins.add_argument("--high", type=int, default=12000)
    ins.add_argument("--origin", choices=["fulcrum", "python", "nginx"], default="fulcrum",
                     help="one `fulcrum origin` (head and body in one write, the default), "
                     "the shared harness's Python server (head and body in two writes), or "
                     "the load harness's nginx worker (with --servers 3: what `load` runs)")
    ins.add_argument("--keep", metavar="DIR", help="keep callgrind's output files in DIR, named "
                     "TARGET.MODE.REQUESTS.PID (read them with callgrind_annotate)")
    ins.add_argument("--cache-sim", action="store_true",
                     help="also simulate the caches (valgrind --cache-sim=yes): instruction-cache, "
                     "data-cache and last-level misses per request; slower")
    ins.add_argument("--ll", type=int, metavar="BYTES",
                     help="with --cache-sim: simulate a last-level cache of BYTES (say 1048576, "
                     "this machine's L2 per core) instead of the machine's last level")
    ins.add_argument("--chunked", type=int, metavar="BYTES", default=0,
                     help="with --post: send each body chunked (Transfer-Encoding: chunked), BYTES "
                     "to a chunk, from a small Python client (HTTP/1.1, one request at a time on "
                     "each connection; --modes http)")
    ins.add_argument("--close", action="store_true",
                     help="every request on a connection of its own (`Connection: close`; with "
                     "--modes http,tcp): what accepting, serving and closing a connection costs")
    ins.add_argument("--browser", action="store_true",
                     help="requests with the header lines a browser sends on HTTP/1.1 "
                     "(`Connection: keep-alive`, User-Agent, Accept, Accept-Language, "
                     "Accept-Encoding) instead of h2load's three")
    ins.add_argument("--post", type=int, metavar="BYTES", default=0,
                     help="every request a POST with a body of BYTES; with --origin nginx, which "
                     "reads the body (`fulcrum origin` answers `/` without reading it)")
    ins.add_argument("--native", action="store_true",
                     help="no valgrind: run the same --low requests at full speed and print req/s "
                     "(behind the Python origin this shows what its two writes cost in waiting)")
    ke = sub.add_parser("kernel", help="system calls, context switches, page faults and wake-ups "
                        "per request under load (perf)")
    ke.add_argument("--targets", type=lambda s: s.split(","), default=["fulcrum", "haproxy", "nginx"])
    ke.add_argument("--scenarios", type=lambda s: s.split(","), default=["http-small-c50", "tcp-small-c50"])
    ke.add_argument("--duration", type=int, default=5, help="seconds of load counted")
    ke.add_argument("--origin", choices=["nginx", "fulcrum"], default="nginx")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fulcrum"], cwd=ROOT, check=True)
    if args.cmd == "load":
        if args.quick:
            args.rounds, args.duration, args.warmup = 1, 3, 1
        load(args)
    elif args.cmd == "kernel":
        kernel(args)
    else:
        instructions(args)


if __name__ == "__main__":
    main()
