"""Part 1 of bench/control_plane.py: instance creates per second with 1, 2 and 3 controllers
on one PostgreSQL (see that file's docstring). The agents run the VM runtime stand-in
(`nimbus agent --fake-vms`): VMs are records, no QEMU runs."""
import glob, json, os, shutil, signal, ssl, subprocess, tempfile, threading, time
import http.client
from datetime import datetime

from boot import free_port

STAND_IN = ("VM runtime: STAND-IN (`nimbus agent --fake-vms`, NIMBUS_BENCHMARK=1): VMs are "
            "records, no QEMU; measured: API, store, placement, operations, leases, agent API over mTLS")


class Api:
    """One keep-alive HTTPS connection to one controller, with the admin token."""

    def __init__(self, url, ca, token):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=ca)
        self.c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.c.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        r = self.c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
        return json.loads(data) if data else None


def start_cloud(args, work, db_url, controllers, port):
    data = os.path.join(work, "data")
    env = dict(os.environ, NIMBUS_CA_CERT=os.path.join(data, "ca.crt"), NIMBUS_DATA_DIR=data,
               NIMBUS_BENCHMARK="1", NIMBUS_FAKE_VMS="true", NIMBUS_ACCEL="tcg")
    env.pop("NIMBUS_API", None)
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", str(args.hosts),
                           "--listen", f"127.0.0.1:{port}", "--controllers", str(controllers),
                           "--database-url", db_url, "--cpu-ratio", "64", "--ram-ratio", "4",
                           "--net-name", "ncc", "--net-index", "247"],
                          env=env, stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)
    return up, data


def wait_ready(new_api, controllers, hosts, work):
    deadline = time.monotonic() + 180
    last = None
    while time.monotonic() < deadline:
        try:
            api = new_api()
            live = api.call("GET", "/v1/controllers")
            listed = api.call("GET", "/v1/hosts")
            live = live.get("items", live) if isinstance(live, dict) else live
            listed = listed.get("items", listed) if isinstance(listed, dict) else listed
            if len(live) >= controllers and len([h for h in listed if h.get("state", "up") == "up"]) >= hosts:
                return
        except (RuntimeError, OSError, http.client.HTTPException, json.JSONDecodeError) as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"the cloud did not come up ({last}); see {work}/up.log")


def parse_time(t):
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def wait_ops(api, ids, limit_s=600):
    """Waits until every operation ended; answers their views."""
    views, pending = {}, list(ids)
    deadline = time.monotonic() + limit_s
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} creates did not end within {limit_s} s")
        still = []
        for op in pending:
            v = api.call("GET", f"/v1/operations/{op}")
            if v["state"] in ("running", "unwinding"):
                still.append(op)
            else:
                views[op] = v
        pending = still
        if pending:
            time.sleep(0.2)
    return views


def claim_retries(work):
    logs = [os.path.join(work, "up.log")] + glob.glob(os.path.join(work, "data", "controllers", "*", "controller.log"))
    n = 0
    for path in logs:
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if "claim lost; choosing again" in line)
    return n


def one_count(args, psql, controllers):
    work = tempfile.mkdtemp(prefix="nimbus-bench-creates-")
    port = free_port()
    db = f"nimbus_bench_cr_{os.getpid()}_{controllers}"
    psql(args.postgres, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(args.postgres, f"CREATE DATABASE {db}")
    db_url = args.postgres.rsplit("/", 1)[0] + "/" + db
    urls = [f"https://127.0.0.1:{port + i}" for i in range(controllers)]
    up, data = start_cloud(args, work, db_url, controllers, port)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(data, "admin.token")):
            if time.monotonic() > deadline or up.poll() is not None:
                raise RuntimeError(f"nimbus up did not start; see {work}/up.log")
            time.sleep(0.2)
        time.sleep(0.5)
        token = open(os.path.join(data, "admin.token")).read().strip()
        ca = os.path.join(data, "ca.crt")
        wait_ready(lambda: Api(urls[0], ca, token), controllers, args.hosts, work)
        # Warm-up: one create through each controller (connections, caches, first plan).
        warm = [Api(u, ca, token).call("POST", "/v1/instances", {"name": f"warm{i}", "flavor": "tiny", "image": "default"})["id"]
                for i, u in enumerate(urls)]
        failed = [v for v in wait_ops(Api(urls[0], ca, token), warm).values() if v["state"] != "succeeded"]
        if failed:
            raise RuntimeError(f"warm-up create failed: {failed[0].get('error')}; see {work}/up.log")
        retries_before = claim_retries(work)
        ops, errors, lock = [], [], threading.Lock()
        names = iter(range(args.creates))

        def client(k):
            apis = {}
            while True:
                with lock:
                    i = next(names, None)
                if i is None:
                    return
                url = urls[i % controllers]
                try:
                    api = apis.setdefault(url, Api(url, ca, token))
                    op = api.call("POST", "/v1/instances", {"name": f"c{i}", "flavor": "tiny", "image": "default"})
                    with lock:
                        ops.append(op["id"])
                except Exception as e:  # noqa: BLE001 (reported, and the run fails)
                    with lock:
                        errors.append(str(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.monotonic() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} creates refused, e.g. {errors[0]}")
        views = wait_ops(Api(urls[0], ca, token), ops).values()
        bad = [v for v in views if v["state"] != "succeeded"]
        if bad:
            raise RuntimeError(f"{len(bad)} creates did not succeed, e.g. {bad[0].get('error')}; see {work}")
        start = min(parse_time(v["created_at"]) for v in views)
        end = max(parse_time(v["updated_at"]) for v in views)
        latencies = sorted(parse_time(v["updated_at"]) - parse_time(v["created_at"]) for v in views)
        retries = claim_retries(work) - retries_before
        return {
            "controllers": controllers, "rate": len(views) / (end - start), "span_s": end - start,
            "send_s": sent, "retries": retries, "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        }
    finally:
        stop_cloud(up, lambda: psql(args.postgres, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                   "ncc", args.hosts, work)


def stop_cloud(up, drop_db, net_name, hosts, work):
    """Stops `nimbus up`, drops its database, removes its host network and work dir."""
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(30)
    except subprocess.TimeoutExpired:
        up.kill()
    drop_db()
    # `nimbus up` leaves its host network for its next start: this run's goes.
    for h in range(1, hosts + 1):
        subprocess.run(["ip", "netns", "del", f"{net_name}-host{h}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{net_name}-br"], capture_output=True)
    if os.environ.get("NIMBUS_BENCH_KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)


def creates_part(args, psql):
    print(STAND_IN, flush=True)
    print(f"creates: {args.creates} per run (flavor tiny), {args.clients} client threads, "
          f"{args.hosts} hosts, one PostgreSQL, binary {args.bin}", flush=True)
    results = {}
    for k in (1, 2, 3):
        r = one_count(args, psql, k)
        results[k] = r
        print(f"  {k} controller(s): {r['rate']:.1f} creates/s  ({args.creates} in {r['span_s']:.2f} s; "
              f"accept-to-done p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms; "
              f"conflict retries {r['retries']} = {100 * r['retries'] / args.creates:.1f}%)", flush=True)
    one = results[1]["rate"]
    for k, goal in ((2, 1.7), (3, 2.4)):
        ratio = results[k]["rate"] / one
        print(f"  ratio {k}/1 controllers: {ratio:.2f}x   goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'}")
    worst = max(r["retries"] / args.creates for r in results.values())
    print(f"  conflict retries: at most {100 * worst:.1f}%   goal < 5%: {'met' if worst < 0.05 else 'NOT met'}")
    return results
