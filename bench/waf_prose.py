#!/usr/bin/env python3
"""bench/waf_prose.py: WAF false positives on ordinary technical text.

Posts every paragraph of this repository's README, ARCHITECTURE and docs/*.md as a JSON string,
and a dozen prose and markdown strings outside testers found refused, to a sidecar with the WAF in
BLOCK at paranoia 1; prints how many were blocked (403). Loopback only; ports BASE..BASE+80.

    python3 bench/waf_prose.py <palisade binary> [BASE, default 26100]
"""
import json, os, re, subprocess, sys, tempfile, time, urllib.request, glob
binary = os.path.abspath(sys.argv[1])
base = int(sys.argv[2]) if len(sys.argv) > 2 else 26100
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp(prefix="palisade-waf-prose.")
subprocess.run([binary, "ca", "init", "--out", f"{work}/ca"], check=True, capture_output=True)
subprocess.run([binary, "ca", "issue", "--ca", f"{work}/ca", "--spiffe-id", "spiffe://cluster.local/ns/shop/sa/orders", "--out", f"{work}/orders"], check=True, capture_output=True)
open(f"{work}/waf.yaml", "w").write("apiVersion: palisade.dev/v1alpha1\nkind: SecurityPolicy\nmetadata: {name: waf, namespace: shop}\nspec:\n  mtls: PERMISSIVE\n  authorization: {default: ALLOW}\n  inputValidation: {maxBodyBytes: 1048576, waf: {mode: BLOCK, paranoia: 1}}\n")
open(f"{work}/s.yaml", "w").write(f"""identity: {{files: {{cert: {work}/orders/tls.crt, key: {work}/orders/tls.key, trustBundle: {work}/orders/ca.crt}}}}
inbound: {{listen: "127.0.0.1:{base+6}", app: "127.0.0.1:{base+80}"}}
outbound: {{listen: "127.0.0.1:{base+1}"}}
admin: {{listen: "127.0.0.1:{base}"}}
workload: {{namespace: shop, serviceAccount: orders}}
policy: {{files: [{work}/waf.yaml]}}
telemetry: {{accessLog: false, events: {{sink: "file:{work}/ev.jsonl"}}}}
""")
app = subprocess.Popen([sys.executable, "-c", f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(s):
        s.rfile.read(int(s.headers.get('content-length', 0))); s.send_response(200); s.send_header('content-length','2'); s.end_headers(); s.wfile.write(b'ok')
    def log_message(s,*a): pass
http.server.ThreadingHTTPServer(('127.0.0.1',{base+80}),H).serve_forever()"""])
side = subprocess.Popen([binary, "sidecar", "--config", f"{work}/s.yaml"], stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{base}/ready", timeout=1); break
    except Exception: time.sleep(0.1)
paras = []
for f in sorted(glob.glob(f"{repo}/docs/*.md")) + [f"{repo}/README.md", f"{repo}/ARCHITECTURE.md"]:
    for p in re.split(r"\n\s*\n", open(f).read()):
        if 20 < len(p) < 20000: paras.append(p)
prose = ["Use `HEAD` requests", "Run `make` first", "Curl up with a good book", "wget is a command line tool",
         "Fixed, see:\n```python\nprint(1)\n```", "| a | b |\n| yes | no |", "fields=id,name,friends{id,name}",
         "*.{jpg,png}", "Colors: {red,green}", "Server answered\nHTTP/1.1 500 Internal Server Error", "O'Brien", "Mom's recipes"]
def post(text):
    body = json.dumps({"comment": text}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{base+6}/comments", data=body, headers={"content-type": "application/json"})
    try: return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as e: return e.code
docs = [post(p) for p in paras]
pr = [post(p) for p in prose]
print(f"{os.path.basename(binary)}: docs paragraphs blocked {sum(c == 403 for c in docs)}/{len(docs)}; prose strings blocked {sum(c == 403 for c in pr)}/{len(pr)} {[p for p, c in zip(prose, pr) if c == 403]}")
side.terminate(); app.terminate(); side.wait(); app.wait()
subprocess.run(["rm", "-rf", work])
