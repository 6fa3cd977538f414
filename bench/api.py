#!/usr/bin/env python3
"""API benchmark: `GET /v1/instances` with 1,000 instances in a SQLite store, and the cost of
token authentication, measured against an unauthenticated anchor in the same run.

What it does:
  1. starts `nimbus controller` alone (no agents, `--network none`) on a fresh data dir with
     embedded SQLite, and waits for /healthz;
  2. inserts 1,000 instance rows of project `default` (the admin token's) plus 1,000 of
     another project `noise` (so the project filter has work to do) directly with SQL, in
     one transaction, with the columns and formats the store writes (see
     crates/store/src/instances.rs); the controller reads them like any other rows;
  3. measures over one keep-alive HTTP connection per client:
       - GET /v1/instances (admin token): sequential latency p50/p99, then throughput with
         --clients concurrent clients;
       - GET /v1/flavors (token) against GET /healthz (no token): both run the same
         flavor query, so the difference of their latencies is what authentication adds
         (SHA-256 of the token, one indexed lookup, the throttle check, role and project
         resolution).
Timings include this Python client's own overhead (~0.1 ms per request); the anchor pays it too.

Usage (after `cargo build --release -p nimbus-cli`):
  bench/api.py [--bin target/release/nimbus] [--requests 1000] [--clients 4] [--seconds 5]
"""
import argparse, http.client, os, socket, sqlite3, statistics, subprocess, sys, tempfile, threading, time, uuid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def now_text():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def insert_instances(db, project, n):
    con = sqlite3.connect(db, timeout=30)
    with con:
        con.execute("INSERT OR IGNORE INTO projects (name, description, created_at) VALUES (?, NULL, ?)",
                    (project, now_text()))
        rows = []
        for i in range(n):
            ts = now_text()
            rows.append((str(uuid.uuid4()), project, f"vm{i}", "small", "default", 1, 512, 2, "host1",
                         "running", None, None, 1, 0, ts, ts, None, None))
        con.executemany(
            "INSERT INTO instances (id, project, name, flavor, image, vcpus, memory_mib, disk_gib, host, "
            "state, reason, operation_id, generation, agent_generation, created_at, updated_at, ip, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.close()


class Conn:
    def __init__(self, port, token):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path):
        t0 = time.perf_counter()
        self.c.request("GET", path, headers=self.headers)
        r = self.c.getresponse()
        body = r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
        return dt, body


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latencies(port, token, path, n, warmup=50):
    c = Conn(port, token)
    for _ in range(warmup):
        c.get(path)
    return [c.get(path)[0] * 1000 for _ in range(n)]


def throughput(port, token, path, clients, seconds):
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def run(i):
        c = Conn(port, token)
        while time.monotonic() < stop:
            c.get(path)
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def line(name, xs):
    return f"{name:<34} p50 {statistics.median(xs):7.3f} ms   p99 {pct(xs, 99):7.3f} ms   mean {statistics.mean(xs):7.3f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="nimbus-bench-api-")
    port = free_port()
    log = open(os.path.join(work, "controller.log"), "w")
    proc = subprocess.Popen([args.bin, "controller", "--data-dir", work, "--listen", f"127.0.0.1:{port}",
                             "--network", "none"], stdout=log, stderr=log, env={**os.environ, "NIMBUS_LOG": "warn"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                Conn(port, None).get("/healthz")
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit(f"controller did not start; see {work}/controller.log")
                time.sleep(0.1)
        token = open(os.path.join(work, "admin.token")).read().strip()
        db = os.path.join(work, "nimbus.db")
        insert_instances(db, "default", args.instances)
        insert_instances(db, "noise", args.instances)
        _, body = Conn(port, token).get("/v1/instances")
        listed = body.count(b'"id"')
        assert listed == args.instances, f"listed {listed} instances, expected {args.instances}"

        print(f"nimbus API benchmark: SQLite store, {args.instances} instances listed "
              f"(+{args.instances} of another project), {os.cpu_count()} CPUs, release build {args.bin}")
        lst = latencies(port, token, "/v1/instances", max(100, args.requests // 5))
        print(line("GET /v1/instances (1000 rows)", lst) + f"   body {len(body) // 1024} KiB")
        rate = throughput(port, token, "/v1/instances", args.clients, args.seconds)
        print(f"{'  throughput, ' + str(args.clients) + ' clients':<34} {rate:8.1f} req/s")

        anchor = latencies(port, None, "/healthz", args.requests)
        authed = latencies(port, token, "/v1/flavors", args.requests)
        print(line("GET /healthz (no auth, anchor)", anchor))
        print(line("GET /v1/flavors (bearer token)", authed))
        cost50 = statistics.median(authed) - statistics.median(anchor)
        cost99 = pct(authed, 99) - pct(anchor, 99)
        print(f"{'auth cost (token - anchor)':<34} p50 {cost50:7.3f} ms   p99 {cost99:7.3f} ms   "
              f"ratio p50 {statistics.median(authed) / statistics.median(anchor):.2f}x")
        r_anchor = throughput(port, None, "/healthz", args.clients, args.seconds)
        r_auth = throughput(port, token, "/v1/flavors", args.clients, args.seconds)
        print(f"{'  throughput anchor / token':<34} {r_anchor:8.1f} / {r_auth:8.1f} req/s")
        ok_list = pct(lst, 99) < 20
        ok_auth = cost50 < 1
        print(f"goals: list p99 < 20 ms: {'yes' if ok_list else 'NO'}; auth adds < 1 ms: {'yes' if ok_auth else 'NO'}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
