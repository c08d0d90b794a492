#!/usr/bin/env python3
"""Slow clients against a running proxy: N slowloris connections (a request head dripped one
byte per second), N slow-body uploads (a declared 1 MB body dripped one byte per second) and
one normal client sending GETs back to back. Reports how many slow connections were cut, how
long each took to be cut, and what the normal client saw. Bounded: every connection gives up
after --limit seconds, and the run ends when all slow connections are done.

usage: slow_clients.py HOST:PORT [-n 1000] [--limit 120] [--path /] [--body-path /sink]
"""
import argparse
import asyncio
import statistics
import time


async def drip(host, port, head, limit, results, kind):
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError as e:
        results.append((kind, "connect-failed", 0.0, str(e)))
        return
    w.write(head)
    await w.drain()

    async def writer():
        while True:
            await asyncio.sleep(1)
            w.write(b"a")
            await w.drain()

    wt = asyncio.create_task(writer())
    got = b""
    outcome = "open-at-limit"
    try:
        got = await asyncio.wait_for(r.read(), timeout=limit)
        outcome = "cut"
    except asyncio.TimeoutError:
        pass
    except (ConnectionError, OSError):
        outcome = "cut"
    wt.cancel()
    try:
        await wt
    except BaseException:
        pass
    w.close()
    status = got.split(b"\r\n", 1)[0].decode(errors="replace") if got else "(no answer)"
    results.append((kind, outcome, time.monotonic() - t0, status))


async def normal(host, port, path, stop, tally):
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection(host, port)
            while not stop.is_set():
                w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
                tally["ok" if head.startswith(b"HTTP/1.1 200") else "failed"] += 1
            w.close()
        except Exception:
            tally["failed"] += 1
            await asyncio.sleep(0.05)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--limit", type=float, default=120)
    ap.add_argument("--path", default="/")
    ap.add_argument("--body-path", default="/sink", help="where slow bodies go (an origin that reads them)")
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    results, tally, stop = [], {"ok": 0, "failed": 0}, asyncio.Event()
    nt = asyncio.create_task(normal(host, port, a.path, stop, tally))
    loris = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Drip: "
    body = f"POST {a.body_path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000000\r\n\r\n".encode()
    t0 = time.monotonic()
    tasks = []
    for i in range(a.n):
        tasks.append(asyncio.create_task(drip(host, port, loris, a.limit, results, "slowloris")))
        tasks.append(asyncio.create_task(drip(host, port, body, a.limit, results, "slow-body")))
    await asyncio.gather(*tasks)
    stop.set()
    await nt
    print(f"run: {time.monotonic() - t0:.1f} s; normal client: {tally['ok']} ok, {tally['failed']} failed")
    for kind in ("slowloris", "slow-body"):
        rs = [x for x in results if x[0] == kind]
        cut = [x[2] for x in rs if x[1] == "cut"]
        statuses = {}
        for x in rs:
            statuses[x[3]] = statuses.get(x[3], 0) + 1
        line = f"{kind}: {len(cut)}/{len(rs)} cut"
        if cut:
            line += f"; time to cut median {statistics.median(cut):.1f} s, max {max(cut):.1f} s"
        print(line + f"; answers {statuses}")


asyncio.run(main())
