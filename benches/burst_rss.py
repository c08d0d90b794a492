#!/usr/bin/env python3
"""What a burst of large responses leaves behind in fulcrum: RSS (VmRSS) at idle, one second
after a burst of CONNECTIONS wrk connections fetching 16 KiB responses for SECONDS, and one
second after short responses on the same pool. Idle server connections stay pooled for
`upstream_idle` (4 s), so the second figure includes what they hold.

usage: benches/burst_rss.py [--connections 600] [--seconds 3] [BINARY ...]

Each BINARY (default: target/release/fulcrum) runs in turn, pinned to core 0 with one worker,
in front of the nginx origin `compare.py load` uses (three ports, one nginx worker) with wrk
on core 1, as `compare.py load` runs them. Needs wrk and nginx. Loopback only; every process
is stopped on exit.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=600)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("binaries", nargs="*", default=[compare.FULCRUM])
    args = ap.parse_args()
    if not 1 <= args.connections <= 10000 or not 1 <= args.seconds <= 60:
        raise SystemExit("burst_rss.py: --connections 1..10000, --seconds 1..60")
    procs = compare.Procs()
    work = tempfile.mkdtemp(prefix="fulcrum-burst-")
    try:
        origins = compare.start_origins(procs, work, "nginx", 1)
        for binary in args.binaries:
            compare.FULCRUM = binary
            p, port = compare.start_target(procs, work, "fulcrum", "http", origins, 0, 1)
            pid = compare.proxy_pid(p)
            wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--timeout", "5s"]

            def rss_after(path, seconds):
                subprocess.run(wrk + [f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"],
                               capture_output=True, check=True)
                time.sleep(1.0)
                return compare.rss_mib([pid], "VmRSS")

            idle = compare.rss_mib([pid], "VmRSS")
            large = rss_after("/bytes/16384", args.seconds)
            short = rss_after("/", max(1, args.seconds - 1))
            print(f"{binary}: idle {idle:.1f} MiB; 1 s after {args.connections} connections of "
                  f"16 KiB responses {large:.1f}; after short ones {short:.1f}")
            procs.stop(p)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
