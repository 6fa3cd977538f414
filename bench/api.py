#!/usr/bin/env python3
"""API benchmark: `GET /v1/instances` paged with 10,000 instances in a SQLite store, against
the full listing at 1,000 and 10,000 in the same run, and the cost of token authentication
against an unauthenticated anchor.

What it does:
  1. starts `nimbus controller` alone (no agents, `--network none`) on a fresh data dir with
     embedded SQLite, and waits for /healthz;
  2. inserts instance rows of project `default` (the admin token's) plus as many of another
     project `noise` (so the project filter has work to do) directly with SQL, in one
     transaction, with the columns and formats the store writes (see
     crates/store/src/instances.rs): no VMs run, the controller reads the rows like any
     others. First 1,000 (+1,000), measured; then up to --instances (+as many), measured;
  3. measures over one keep-alive HTTP connection per client:
       - the full listing, as before paging (one answer with every row): at 1,000 rows it is
         one page of `?limit=1000`; at 10,000 rows (more than the largest page) it is what a
         client now does to list everything: follow 10 pages of 1,000 (the time of all
         of them). With --anchor-bin (a build from before paging) the same rows are also
         listed by that binary's unpaged `GET /v1/instances`, in the same run;
       - one page of the default size (100 rows): the first page, and pages taken at random
         from the whole listing (through their `page_token`), p50/p99; the ratio to the full
         listing is what paging saves each request;
       - GET /v1/flavors (token) against GET /healthz (no token): both run the same
         flavor query, so the difference of their latencies is what authentication adds.
Timings include this Python client's own overhead (~0.1 ms per request); anchors pay it too.

Usage (after `cargo build --release -p nimbus-cli`):
  bench/api.py [--bin target/release/nimbus] [--anchor-bin OLD] [--instances 10000]
               [--requests 1000] [--clients 4] [--seconds 5]
"""
import argparse, http.client, os, random, socket, sqlite3, statistics, subprocess, sys, tempfile, threading, time, uuid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def now_text():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def insert_instances(db, project, n, first=0):
    con = sqlite3.connect(db, timeout=30)
    with con:
        con.execute("INSERT OR IGNORE INTO projects (name, description, created_at) VALUES (?, NULL, ?)",
                    (project, now_text()))
        rows = []
        for i in range(first, first + n):
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
        return self.get_page(path)[:2]

    def get_page(self, path):
        """Time, body and `next-page-token` of one GET."""
        t0 = time.perf_counter()
        self.c.request("GET", path, headers=self.headers)
        r = self.c.getresponse()
        body = r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
        return dt, body, r.getheader("next-page-token")

    def follow(self, path, limit):
        """Every page of `path`: (total time, pages, rows, the page tokens)."""
        total, rows, tokens, token = 0.0, 0, [], None
        while True:
            q = f"{path}?limit={limit}" + (f"&page_token={token}" if token else "")
            dt, body, token = self.get_page(q)
            total += dt
            rows += body.count(b'"id"')
            if token is None:
                return total, len(tokens) + 1, rows, tokens
            tokens.append(token)


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


def start_controller(binary, work):
    """A controller on a fresh data dir: (process, port, admin token, database path)."""
    port = free_port()
    log = open(os.path.join(work, "controller.log"), "w")
    proc = subprocess.Popen([binary, "controller", "--data-dir", work, "--listen", f"127.0.0.1:{port}",
                             "--network", "none"], stdout=log, stderr=log, env={**os.environ, "NIMBUS_LOG": "warn"})
    deadline = time.monotonic() + 30
    while True:
        try:
            Conn(port, None).get("/healthz")
            break
        except (OSError, RuntimeError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                sys.exit(f"controller did not start; see {work}/controller.log")
            time.sleep(0.1)
    token = open(os.path.join(work, "admin.token")).read().strip()
    return proc, port, token, os.path.join(work, "nimbus.db")


def full_listing(port, token, rows, n):
    """Latencies (ms) of listing all `rows` instances: one `?limit=1000` page when they fit
    in it, else every page of 1,000."""
    c = Conn(port, token)
    times = []
    for _ in range(n + 5):
        total, _, listed, _ = c.follow("/v1/instances", 1000)
        assert listed == rows, f"listed {listed} instances, expected {rows}"
        times.append(total * 1000)
    return times[5:]


def pages(port, token, rows, n):
    """Latencies (ms) of the first page of 100, and of pages of 100 picked at random."""
    c = Conn(port, token)
    _, count, listed, tokens = c.follow("/v1/instances", 100)
    assert listed == rows and count == -(-rows // 100), f"{listed} rows in {count} pages"
    first = [c.get("/v1/instances?limit=100")[0] * 1000 for _ in range(n)]
    rnd = random.Random(7)
    anywhere = [c.get(f"/v1/instances?limit=100&page_token={rnd.choice(tokens)}")[0] * 1000
                for _ in range(n)]
    return first, anywhere


def unpaged(binary, rows, n):
    """Latencies (ms) of the unpaged `GET /v1/instances` of a build from before paging, with
    the same rows; None without such a build."""
    if not binary:
        return None
    work = tempfile.mkdtemp(prefix="nimbus-bench-api-anchor-")
    proc, port, token, db = start_controller(binary, work)
    try:
        insert_instances(db, "default", rows)
        insert_instances(db, "noise", rows)
        return latencies(port, token, "/v1/instances", n, warmup=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ratio_line(name, paged, anchor):
    return (f"{name:<34} p50 {statistics.median(anchor) / statistics.median(paged):6.1f}x   "
            f"p99 {pct(anchor, 99) / pct(paged, 99):6.1f}x  faster per request")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--anchor-bin", help="a nimbus build from before paging (unpaged listing)")
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="nimbus-bench-api-")
    proc, port, token, db = start_controller(args.bin, work)
    try:
        small = min(1000, args.instances)
        insert_instances(db, "default", small)
        insert_instances(db, "noise", small)
        print(f"nimbus API benchmark: SQLite store, rows inserted directly (no VMs), each project's "
              f"instances beside as many of another project; {os.cpu_count()} CPUs, {args.bin}")
        n_full = max(20, args.requests // 20)
        n_page = max(100, args.requests // 2)
        full_small = full_listing(port, token, small, n_full * 5)
        first_small, any_small = pages(port, token, small, n_page)
        old_small = unpaged(args.anchor_bin, small, n_full * 5)

        insert_instances(db, "default", args.instances - small, first=small)
        insert_instances(db, "noise", args.instances - small, first=small)
        full_big = full_listing(port, token, args.instances, n_full)
        first_big, any_big = pages(port, token, args.instances, n_page)
        old_big = unpaged(args.anchor_bin, args.instances, n_full)

        big = f"{args.instances:,}"
        print(line(f"full listing, {small:,} (1 answer)", full_small))
        if old_small:
            print(line(f"  unpaged build, {small:,}", old_small))
        print(line(f"page of 100 of {small:,}: first", first_small))
        print(line(f"page of 100 of {small:,}: any", any_small))
        print(line(f"full listing, {big} ({-(-args.instances // 1000)} pages)", full_big))
        if old_big:
            print(line(f"  unpaged build, {big}", old_big))
        print(line(f"page of 100 of {big}: first", first_big))
        print(line(f"page of 100 of {big}: any", any_big))
        print(ratio_line(f"page vs full listing, {small:,}", any_small, full_small))
        print(ratio_line(f"page vs full listing, {big}", any_big, full_big))
        if old_small and old_big:
            print(ratio_line(f"page vs unpaged build, {small:,}", any_small, old_small))
            print(ratio_line(f"page vs unpaged build, {big}", any_big, old_big))
        print(f"{'page at ' + big + ' vs at ' + f'{small:,}':<34} p99 {pct(any_big, 99) / pct(any_small, 99):6.2f}x  "
              f"(1.0: a page costs the same however many rows there are)")
        rate = throughput(port, token, "/v1/instances", args.clients, args.seconds)
        print(f"{'  pages/s, ' + str(args.clients) + ' clients':<34} {rate:8.1f} req/s")

        anchor = latencies(port, None, "/healthz", args.requests)
        authed = latencies(port, token, "/v1/flavors", args.requests)
        print(line("GET /healthz (no auth, anchor)", anchor))
        print(line("GET /v1/flavors (bearer token)", authed))
        cost50 = statistics.median(authed) - statistics.median(anchor)
        cost99 = pct(authed, 99) - pct(anchor, 99)
        print(f"{'auth cost (token - anchor)':<34} p50 {cost50:7.3f} ms   p99 {cost99:7.3f} ms   "
              f"ratio p50 {statistics.median(authed) / statistics.median(anchor):.2f}x")
        ok_page = max(pct(first_big, 99), pct(any_big, 99)) < 20
        ok_auth = cost50 < 1
        print(f"goals: page p99 < 20 ms at {big}: {'yes' if ok_page else 'NO'}; "
              f"auth adds < 1 ms: {'yes' if ok_auth else 'NO'}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
