# 100,000 distinct rate-limit keys against a running sidecar, as fast as 4 connections go;
# samples the sidecar's RSS and live bucket count each second. Usage: keyflood.py INBOUND ADMIN PID
import http.client, sys, time, json, threading
inbound, admin, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def keys():
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=5); c.request("GET", "/config_dump")
    return json.loads(c.getresponse().read())["policy"]["rateLimitKeys"]
print("before: rss_kb", rss(), "keys", keys(), flush=True)
N, T = 100_000, 4
sent = [0] * T
def worker(t):
    c = http.client.HTTPConnection("127.0.0.1", inbound, timeout=5); c.connect(); import socket; c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(t, N, T):
        c.request("GET", "/", headers={"x-api-key": f"key-{i}"}); r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        sent[t] += 1
start = time.time(); peak = 0
ths = [threading.Thread(target=worker, args=(t,)) for t in range(T)]
[t.start() for t in ths]
while any(t.is_alive() for t in ths):
    time.sleep(1); r = rss(); peak = max(peak, r)
    print(f"t={time.time()-start:5.1f}s sent={sum(sent)} rss_kb={r} keys={keys()}", flush=True)
print("done in", round(time.time() - start, 1), "s; peak rss_kb", peak, flush=True)
time.sleep(3)
print("after 3 s idle: rss_kb", rss(), "keys", keys(), flush=True)
