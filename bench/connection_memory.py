#!/usr/bin/env python3
"""bench/connection_memory.py: what one idle connection costs a sidecar, by kind (issue 16).

Starts one sidecar (`threads: 1`, memory guard off, long header and idle timeouts) and a small
HTTP/1.1 app behind it, opens N connections of each kind and holds them, and reports the
sidecar's heap (`palisade_memory_heap_bytes`) and resident memory per connection. The kinds:
nothing sent after the connection opened (or only HTTP/2's preface), and HTTP/1.1 kept alive
after one request was answered (the outbound one through the sidecar's own inbound port, so
over one pooled mTLS connection). Loopback only; bounded by N.

Usage: bench/connection_memory.py [--palisade target/release/palisade] [--connections 500]
"""
import argparse
import asyncio
import os
import re
import ssl
import subprocess
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORTS = dict(inbound=29006, outbound=29001, admin=29000, app=29080)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def heap():
    text = urllib.request.urlopen(f"http://127.0.0.1:{PORTS['admin']}/metrics", timeout=5).read().decode()
    return float(re.search(r"^palisade_memory_heap_bytes (\S+)", text, re.M).group(1))


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


async def answered(reader):
    """Reads one HTTP/1.1 answer with a content-length body; fails unless it is a 200."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    await reader.readexactly(length)


def rss_kib(pid):
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--palisade", default="target/release/palisade")
    ap.add_argument("--connections", type=int, default=500)
    a = ap.parse_args()
    binary = os.path.abspath(a.palisade)
    d = tempfile.mkdtemp(prefix="palisade-connmem-")
    run = lambda *args: subprocess.run([binary, *args], check=True, stdout=subprocess.DEVNULL)
    run("ca", "init", "--trust-domain", "demo.local", "--out", f"{d}/ca")
    for name in ["server", "client"]:
        run("ca", "issue", "--ca", f"{d}/ca", "--spiffe-id", f"spiffe://demo.local/ns/demo/sa/{name}", "--out", f"{d}/{name}")
    p = PORTS
    open(f"{d}/sidecar.yaml", "w").write(f"""identity: {{files: {{cert: {d}/server/tls.crt, key: {d}/server/tls.key, trustBundle: {d}/server/ca.crt}}}}
trustDomain: demo.local
inbound: {{listen: "127.0.0.1:{p['inbound']}", app: "127.0.0.1:{p['app']}", mtls: STRICT}}
outbound: {{listen: "127.0.0.1:{p['outbound']}", destinations: [{{authority: self.demo, address: "127.0.0.1:{p['inbound']}", identity: "spiffe://demo.local/ns/demo/sa/server"}}]}}
admin: {{listen: "127.0.0.1:{p['admin']}"}}
threads: 1
limits: {{headerTimeout: 600s, idleTimeout: 600s, maxMemoryBytes: 0}}
telemetry: {{accessLog: false}}
""")
    app = ThreadingHTTPServer(("127.0.0.1", p["app"]), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    sidecar = subprocess.Popen([binary, "sidecar", "--config", f"{d}/sidecar.yaml"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{d}/sidecar.log", "w"))
    try:
        for _ in range(100):
            try:
                heap()
                break
            except Exception:
                await asyncio.sleep(0.1)

        def tls(alpn):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(f"{d}/client/ca.crt")
            ctx.load_cert_chain(f"{d}/client/tls.crt", f"{d}/client/tls.key")
            ctx.check_hostname = False
            ctx.set_alpn_protocols([alpn])
            return ctx

        async def connect(port, ctx=None, first=b""):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            w.write(first)
            await w.drain()
            return r, w

        async def after_one_request(port, ctx=None):
            r, w = await connect(port, ctx, b"GET / HTTP/1.1\r\nhost: self.demo\r\n\r\n")
            await answered(r)
            return r, w

        kinds = [
            ("plaintext to the outbound port", lambda: connect(p["outbound"])),
            ("mTLS, HTTP/1.1", lambda: connect(p["inbound"], tls("http/1.1"))),
            ("mTLS, HTTP/2 preface and SETTINGS", lambda: connect(p["inbound"], tls("h2"), PREFACE)),
            ("TCP to the inbound port, TLS handshake not begun", lambda: connect(p["inbound"])),
            ("plaintext to the outbound port, kept alive after one answer", lambda: after_one_request(p["outbound"])),
            ("mTLS, HTTP/1.1, kept alive after one answer", lambda: after_one_request(p["inbound"], tls("http/1.1"))),
        ]
        print("| idle connection | heap per connection | RSS per connection |")
        print("| --- | ---: | ---: |")
        for name, make in kinds:
            await asyncio.sleep(0.5)
            h0, r0 = heap(), rss_kib(sidecar.pid)
            conns = [await make() for _ in range(a.connections)]
            await asyncio.sleep(1.0)
            h1, r1 = heap(), rss_kib(sidecar.pid)
            print(f"| {name} | {(h1 - h0) / a.connections / 1024:.1f} KiB | {(r1 - r0) / a.connections:.1f} KiB |")
            for _, w in conns:
                w.close()
    finally:
        sidecar.terminate()
        sidecar.wait()
        app.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
