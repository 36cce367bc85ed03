#!/usr/bin/env python3
"""Subscribers that stop reading, beside a `tether-bench broadcast` run (docs/benchmarks.md).

    bench/stuck_readers.py --stuck 50 --expect 500 --pid "$(bench/peers/tether.sh pid)" \
        --seconds 45 [--topic bench] [--tcp 127.0.0.1:7400] [--api 127.0.0.1:7480]

Opens `--stuck` raw TCP subscribers of the topic (binary protocol, users `stuck-<n>`, default
socket buffers), each reading until its first publication and never again. Every half second
it samples the topic's subscriber count on the node (`GET /v1/apps/demo/topics/{topic}`), the
kernel's TCP memory (`/proc/net/sockstat`, `TCP ... mem` in pages: both ends on loopback), the
server sockets' send queues (`ss -tm`, skmem `w`) and the server's RSS, and at
the end prints when the first and the last stuck subscriber were closed (the count falling from
`--expect`), counted from the first publication a stuck subscriber saw, and the peaks.

Stdlib only. The app `demo` and its secret are bench/tether.toml's.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import time
import urllib.request

APP = "demo"
SECRET = b"bench-secret-0123456789abcdef"
API_KEY = "bench-api-key-0123456789abcdef"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(user: str) -> str:
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": user, "exp": now + 86400, "iat": now, "app": APP}
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(SECRET, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def frame(op: int, rid: int, body: bytes) -> bytes:
    return struct.pack(">IBBHI", 8 + len(body), 1, op, 0, rid) + body


def read_frame(sock: socket.socket, buf: bytearray):
    """The next frame's (op, body), reading as needed."""
    while True:
        if len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) >= 4 + n:
                op = buf[5]
                body = bytes(buf[12 : 4 + n])
                del buf[: 4 + n]
                return op, body
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        buf.extend(chunk)


def open_stuck(addr, topic: str, n: int) -> socket.socket:
    sock = socket.create_connection(addr, timeout=10)
    user = f"stuck-{n}"
    # connect: version, device, heartbeat_ms (120 s: the heartbeat does not close it first),
    # bindings [(app, token, last_seq absent)].
    connect = bytes([1]) + s(f"d{n}") + struct.pack(">I", 120_000)
    connect += struct.pack(">H", 1) + s(APP) + s(token(user)) + bytes([0])
    sock.sendall(frame(1, 1, connect))
    buf = bytearray()
    op, body = read_frame(sock, buf)
    if op != 2:
        raise RuntimeError(f"stuck-{n}: expected connected, got op {op}: {body!r}")
    sock.sendall(frame(11, 2, s(APP) + s(topic) + bytes([0])))
    op, body = read_frame(sock, buf)
    if op != 12:
        raise RuntimeError(f"stuck-{n}: expected subscribed, got op {op}: {body!r}")
    sock.setblocking(False)
    return sock, buf


def subscribers(api: str, topic: str) -> int:
    req = urllib.request.Request(
        f"http://{api}/v1/apps/{APP}/topics/{topic}",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(json.load(r)["subscribers"])


def sockstat_mem_kib() -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * page // 1024
    return 0


def server_queued_kib(port: str):
    """The server side's kernel send queues (`ss` skmem `w`, sk_wmem_queued): total, largest."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    queued = [int(m) for m in re.findall(r"skmem:\([^)]*?,w(\d+)", out)]
    return sum(queued) // 1024, (max(queued) if queued else 0) // 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stuck", type=int, default=50)
    p.add_argument("--expect", type=int, required=True, help="subscribers with the stuck ones")
    p.add_argument("--pid", type=int, required=True, help="the server's pid")
    p.add_argument("--seconds", type=float, default=45)
    p.add_argument("--topic", default="bench")
    p.add_argument("--tcp", default="127.0.0.1:7400")
    p.add_argument("--api", default="127.0.0.1:7480")
    a = p.parse_args()
    host, port = a.tcp.rsplit(":", 1)
    stuck = [open_stuck((host, int(port)), a.topic, n) for n in range(a.stuck)]
    print(f"{a.stuck} stuck subscribers open; waiting for publications", flush=True)
    reading = set(range(a.stuck))
    first_pub = None
    first_close = last_close = None
    peak_mem = peak_rss = peak_queued = peak_one = 0
    base_mem = sockstat_mem_kib()
    end = time.monotonic() + a.seconds
    next_sample = 0.0
    while time.monotonic() < end:
        # Read until a subscriber's first publication, then never again.
        for i in list(reading):
            sock, buf = stuck[i]
            try:
                op, _ = read_frame(sock, buf)
            except (BlockingIOError, InterruptedError):
                continue
            if op == 15:
                reading.discard(i)
                if first_pub is None:
                    first_pub = time.monotonic()
        now = time.monotonic()
        if now < next_sample:
            time.sleep(0.01)
            continue
        next_sample = now + 0.5
        count = subscribers(a.api, a.topic)
        mem, rss = sockstat_mem_kib(), rss_kib(a.pid)
        queued, one = server_queued_kib(port)
        peak_mem, peak_rss = max(peak_mem, mem), max(peak_rss, rss)
        peak_queued, peak_one = max(peak_queued, queued), max(peak_one, one)
        t = now - first_pub if first_pub else 0.0
        # Stuck subscribers still on the topic; below the readers' count, the readers are
        # leaving (the run is over) and the count says nothing more about the stuck ones.
        readers = a.expect - a.stuck
        if first_pub and count >= readers:
            if count < a.expect and first_close is None:
                first_close = t
            if count == readers and last_close is None:
                last_close = t
        print(f"t={t:6.1f}s subscribers={count} sockstat_mem={mem} KiB "
            f"server_send_queues={queued} KiB (largest {one}) rss={rss} KiB", flush=True)
    fmt = lambda t: "never" if t is None else f"{t:.1f} s"
    print(
        f"RESULT stuck={a.stuck} first_close={fmt(first_close)} last_close={fmt(last_close)} "
        f"sockstat_mem_before={base_mem} KiB peak_sockstat_mem={peak_mem} KiB "
        f"peak_server_send_queues={peak_queued} KiB (largest socket {peak_one} KiB) "
        f"peak_rss={peak_rss} KiB"
    )


if __name__ == "__main__":
    main()
