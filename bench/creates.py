"""Part 1 of bench/control_plane.py: instance creates per second with 1, 2 and 3 controllers
on one PostgreSQL (see that file's docstring). The agents run the VM runtime stand-in
(`nimbus agent --fake-vms`): VMs are records, no QEMU runs. Each controller process runs
under the same CPU budget in a cgroup of its own (bench/cpu_budget.py: a stand-in for one
machine per controller), unless --controller-cpu 0."""
import glob, json, os, shutil, signal, ssl, statistics, subprocess, tempfile, threading, time
import http.client
from datetime import datetime

from boot import free_ports
from controller_procs import ControllerGone, check_running, check_started, controller_pids
from cpu_budget import SHIELD, ControllerBudgets, describe as describe_budget
from cpu_census import Census, postgres_pids

STAND_IN = ("VM runtime: STAND-IN (`nimbus agent --fake-vms`, NIMBUS_BENCHMARK=1): VMs are "
            "records, no QEMU; measured: API, store, placement, operations, leases, agent API over mTLS")


class Api:
    """One keep-alive HTTPS connection to one controller, with the admin token."""

    def __init__(self, url, ca, token, timeout=60):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=ca)
        self.c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.c.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        r = self.c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:300]!r}")
        if "json" not in r.getheader("Content-Type", ""):
            return data.decode(errors="replace")
        return json.loads(data) if data else None


def start_cloud(args, work, db_url, controllers, port):
    data = os.path.join(work, "data")
    env = dict(os.environ, NIMBUS_CA_CERT=os.path.join(data, "ca.crt"), NIMBUS_DATA_DIR=data,
               NIMBUS_BENCHMARK="1", NIMBUS_FAKE_VMS="true", NIMBUS_ACCEL="tcg")
    env.pop("NIMBUS_API", None)
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", str(args.hosts),
                           "--listen", f"127.0.0.1:{port}", "--controllers", str(controllers),
                           "--database-url", db_url,
                           # Records only: the hosts offer room for every create of the run
                           # (the stand-in writes nothing; at ratio 1 the hosts' free disk
                           # bounded a run to about a hundred 1-GiB instances).
                           "--cpu-ratio", "1024", "--ram-ratio", "16", "--disk-ratio", "256",
                           "--net-name", "ncc", "--net-index", "247"],
                          env=env, stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)
    return up, data


def wait_ready(new_api, urls, hosts, up, work):
    """Waits until every controller answers at its own URL, as many are live, and the hosts
    are up; stops at once when a controller exited (ControllerGone, with its log)."""
    deadline = time.monotonic() + 180
    last = None
    while time.monotonic() < deadline:
        check_started(up, work)
        try:
            for url in urls:
                new_api(url).call("GET", "/healthz")
            api = new_api(urls[0])
            live = api.call("GET", "/v1/controllers")
            listed = api.call("GET", "/v1/hosts")
            live = live.get("items", live) if isinstance(live, dict) else live
            listed = listed.get("items", listed) if isinstance(listed, dict) else listed
            if len(live) >= len(urls) and len([h for h in listed if h.get("state", "up") == "up"]) >= hosts:
                return
        except (RuntimeError, OSError, http.client.HTTPException, json.JSONDecodeError) as e:
            last = e
        time.sleep(0.5)
    raise RuntimeError(f"the cloud did not come up ({last}); see {work}/up.log")


def parse_time(t):
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def wait_ops(api, ids, limit_s=600):
    """Waits until every operation ended; answers their views (through the API: for the
    warm-up only, the measured creates are waited for in the database)."""
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


MEASURED = "kind = 'instance_create' AND target_name LIKE 'c%'"


class Psql:
    """One `psql` session kept open for the polling: a new connection per poll costs the
    PostgreSQL being measured a backend start and a password hash each time."""

    def __init__(self, url):
        self.p = subprocess.Popen(["psql", url, "-qAtF|"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)

    def rows(self, sql):
        self.p.stdin.write(sql.rstrip(";") + ";\n\\echo __end__\n")
        self.p.stdin.flush()
        out = []
        for line in self.p.stdout:
            line = line.rstrip("\n")
            if line == "__end__":
                return [r.split("|") for r in out if r]
            out.append(line)
        raise RuntimeError("psql ended while the creates were waited for")

    def close(self):
        self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def wait_measured(db_url, n, limit_s=900):
    """Waits, reading the database (no load on the controllers), until the `n` measured creates
    ended; answers (state, created_at, updated_at) of each."""
    deadline = time.monotonic() + limit_s
    session = Psql(db_url)
    try:
        while True:
            ended = session.rows(f"SELECT COUNT(*) FROM operations WHERE {MEASURED} "
                                 "AND state NOT IN ('running', 'unwinding')")
            if ended and int(ended[0][0]) >= n:
                return session.rows(f"SELECT state, created_at, updated_at FROM operations WHERE {MEASURED}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the creates did not end within {limit_s} s")
            time.sleep(0.25)
    finally:
        session.close()


def claim_retries(work):
    logs = [os.path.join(work, "up.log")] + glob.glob(os.path.join(work, "data", "controllers", "*", "controller.log"))
    n = 0
    for path in logs:
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if "claim lost; choosing again" in line)
    return n


def make_projects(api, n):
    """`n` projects (tenants) the creates are spread over, without quota limits: a project's
    quota and addresses are checked under its own row lock, so one tenant's creates are
    serialised by design; the benchmark measures a cloud's creates from many tenants."""
    names = [f"bench{j}" for j in range(n)]
    unlimited = {k: None for k in ("instances", "vcpus", "memory_mib", "disk_gib", "snapshots", "image_mib", "floating_ips")}
    for name in names:
        api.call("POST", "/v1/projects", {"name": name})
        api.call("PUT", f"/v1/projects/{name}/quota", unlimited)
    return names


def agent_pids(data, hosts):
    """PIDs of the agents host1..N (each `ip netns exec` replaced by the agent itself)."""
    return {f"host{i}": int(open(os.path.join(data, "hosts", f"host{i}", "agent.pid")).read())
            for i in range(1, hosts + 1)}


def place(budgets, pids, work):
    """Each controller into its CPU budget; one that is gone meanwhile is reported with its
    log (ControllerGone), not as a failed write to cgroup.procs."""
    for name, pid in pids.items():
        try:
            budgets.place(name, pid)
        except ProcessLookupError:
            raise ControllerGone(name, pid, "exited before it was put in its CPU budget", work) from None


def one_count(args, psql, controllers, r):
    work = tempfile.mkdtemp(prefix="nimbus-bench-creates-")
    port = free_ports(controllers)
    db = f"nimbus_bench_cr_{os.getpid()}_{controllers}_{r}"
    psql(args.postgres, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    psql(args.postgres, f"CREATE DATABASE {db}")
    db_url = args.postgres.rsplit("/", 1)[0] + "/" + db
    urls = [f"https://127.0.0.1:{port + i}" for i in range(controllers)]
    budgets = ControllerBudgets(args.controller_cpu) if args.controller_cpu > 0 else None
    if budgets:
        # This client, and through it `nimbus up` and its agents (children), and PostgreSQL
        # if asked: unbudgeted, at a high weight; the controllers are moved out below.
        budgets.shield(SHIELD, [os.getpid()] + (postgres_pids() if args.shield_postgres else []))
    up, data = start_cloud(args, work, db_url, controllers, port)
    failed = True
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(data, "admin.token")):
            if time.monotonic() > deadline or up.poll() is not None:
                raise RuntimeError(f"nimbus up did not start; see {work}/up.log")
            time.sleep(0.2)
        time.sleep(0.5)
        token = open(os.path.join(data, "admin.token")).read().strip()
        ca = os.path.join(data, "ca.crt")
        wait_ready(lambda url: Api(url, ca, token, timeout=5), urls, args.hosts, up, work)
        projects = make_projects(Api(urls[0], ca, token), args.projects)
        pids = controller_pids(up, work, controllers)
        if budgets:
            place(budgets, pids, work)
        # Warm-up: one create through each controller (connections, caches, first plan).
        warm = [Api(u, ca, token).call("POST", "/v1/instances", {"name": f"warm{i}", "flavor": "tiny", "image": "default"})["id"]
                for i, u in enumerate(urls)]
        failed = [v for v in wait_ops(Api(urls[0], ca, token), warm).values() if v["state"] != "succeeded"]
        if failed:
            raise RuntimeError(f"warm-up create failed: {failed[0].get('error')}; see {work}/up.log")
        retries_before = claim_retries(work)
        census = Census({**pids, **agent_pids(data, args.hosts)}, db)
        throttled_before = budgets.throttling() if budgets else {}
        errors, lock = [], threading.Lock()
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
                    api.call("POST", f"/v1/instances?project={projects[i % len(projects)]}",
                             {"name": f"c{i}", "flavor": "tiny", "image": "default"})
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
        rows = wait_measured(db_url, args.creates)
        cpu = census.stop()
        # A controller restarted meanwhile did not run the whole count: its figure is void.
        check_running(up, work, pids)
        throttled = {}
        if budgets:
            after = budgets.throttling()
            throttled = {n: (after[n][0] - throttled_before[n][0], after[n][1] - throttled_before[n][1]) for n in after}
        bad = [row for row in rows if row[0] != "succeeded"]
        if bad:
            raise RuntimeError(f"{len(bad)} creates did not succeed (e.g. {bad[0][0]}); see {work}")
        start = min(parse_time(row[1]) for row in rows)
        end = max(parse_time(row[2]) for row in rows)
        latencies = sorted(parse_time(row[2]) - parse_time(row[1]) for row in rows)
        retries = claim_retries(work) - retries_before
        failed = False
        return {
            "controllers": controllers, "rate": len(rows) / (end - start), "span_s": end - start,
            "send_s": sent, "retries": retries, "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "cpu_s": cpu, "throttled": throttled,
        }
    finally:
        # A failed count keeps its logs for the reader (the error names them).
        stop_cloud(up, lambda: psql(args.postgres, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                   "ncc", args.hosts, work, keep=failed)
        if budgets:
            budgets.remove()


def stop_cloud(up, drop_db, net_name, hosts, work, keep=False):
    """Stops `nimbus up`, drops its database, removes its host network and (unless `keep` or
    NIMBUS_BENCH_KEEP=1) its work dir."""
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
    if keep or os.environ.get("NIMBUS_BENCH_KEEP") == "1":
        print(f"  (logs kept in {work})", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


def describe(r, n):
    """One run: the rate, latencies, retries, throttling, and where the CPU went (per create
    and as cores over the run)."""
    cpu, wall = r["cpu_s"], max(r["cpu_s"]["wall"], 1e-9)
    ctl = {k: v for k, v in cpu.items() if k.startswith("ctl")}
    agents = sum(v for k, v in cpu.items() if k.startswith("host"))
    ms = lambda s: f"{1000 * s / n:.1f}"  # noqa: E731 (per create)
    thr = ", ".join(f"{k} {100 * t / max(p, 1):.0f}%" for k, (t, p) in sorted(r["throttled"].items()))
    return (f"{r['rate']:.1f} creates/s ({r['span_s']:.2f} s, sent in {r['send_s']:.2f} s; accept-to-done p50 {r['p50_s'] * 1000:.0f} ms, "
            f"p99 {r['p99_s'] * 1000:.0f} ms; conflict retries {r['retries']}"
            + (f"; periods throttled: {thr}" if thr else "")
            + f"; CPU ms per create: controllers {ms(sum(ctl.values()))} ("
            + ", ".join(f"{k} {ms(v)}" for k, v in sorted(ctl.items()))
            + f"), agents {ms(agents)}, PostgreSQL {ms(cpu['postgres'])}, client {ms(cpu['client'])}; "
            f"machine busy {cpu['machine'] / wall:.2f} of {os.cpu_count()} cores, other work {cpu['other'] / wall:.2f})")


def limits(runs, k, args):
    """The two ceilings of a count, from the CPU its runs used per create (medians): what
    the controllers' budgets allow, and what this machine's cores allow once the shared parts
    (PostgreSQL, the agents, the client) and the controllers are paid for. The lower one is
    what the figure can measure."""
    def per_create(pred):
        return statistics.median(sum(c for n, c in r["cpu_s"].items() if pred(n)) / args.creates for r in runs)
    ctl = per_create(lambda n: n.startswith("ctl"))
    shared = per_create(lambda n: n.startswith("host") or n in ("postgres", "client"))
    cores = os.cpu_count()
    budgets = k * args.controller_cpu / ctl if args.controller_cpu > 0 else float("inf")
    machine = cores / (ctl + shared)
    bound = (" -> the MACHINE, not the controllers' budgets, bounds this count: lower --controller-cpu"
             if machine < budgets else "")
    return (f"CPU per create: controllers {1000 * ctl:.1f} ms, shared parts {1000 * shared:.1f} ms; ceilings: "
            f"controller budgets {budgets:.0f}/s, this machine's {cores} cores {machine:.0f}/s "
            f"(shared parts alone {cores / shared:.0f}/s), before any other work on it{bound}")


def counted(args, psql, k, r):
    """One count's run, tried again once (on new ports) when it fails: the failure (a
    controller that died, with its log) is printed, not raised, so every round runs."""
    for attempt in (1, 2):
        try:
            return one_count(args, psql, k, r)
        except (RuntimeError, OSError) as e:  # ControllerGone is a RuntimeError
            again = "; trying it again" if attempt == 1 else "; no figure for it"
            print(f"  round {r}, {k} controller(s): FAILED: {e}{again}", flush=True)
    return None


def creates_part(args, psql):
    print(STAND_IN, flush=True)
    if args.controller_cpu > 0:
        print("CONTROLLER MACHINES: STAND-IN (bench/cpu_budget.py): each controller process in a cgroup of its "
              f"own, {describe_budget(args.controller_cpu)}; the agents, this client"
              + (" and PostgreSQL" if args.shield_postgres else "")
              + " unbudgeted at a high weight (not starved by other work on the machine)"
              + ("" if args.shield_postgres else "; PostgreSQL as it runs")
              + ": the figure shows controller-side scaling, not PostgreSQL's", flush=True)
    else:
        print("controllers unbudgeted (--controller-cpu 0): they share this machine's CPUs", flush=True)
    print(f"creates: {args.creates} per run (flavor tiny) spread over {args.projects} projects, {args.clients} client threads, "
          f"{args.hosts} hosts, one PostgreSQL, {args.rounds} round(s), binary {args.bin}; "
          f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    runs = {1: [], 2: [], 3: []}
    for r in range(1, args.rounds + 1):
        for k in (1, 2, 3):
            res = counted(args, psql, k, r)
            if res:
                runs[k].append(res)
                print(f"  round {r}, {k} controller(s): {describe(res, args.creates)}; load {os.getloadavg()[0]:.1f}", flush=True)
    rate = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items() if v}
    for k in (1, 2, 3):
        if k in rate:
            print(f"  {k} controller(s): median {rate[k]:.1f} creates/s over {len(runs[k])} round(s)")
        else:
            print(f"  {k} controller(s): no complete run")
    for k, goal in ((2, 1.7), (3, 2.4)):
        if k in rate and 1 in rate:
            ratio = rate[k] / rate[1]
            print(f"  ratio {k}/1 controllers (medians): {ratio:.2f}x   goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'}")
    for k, v in runs.items():
        if v:
            print(f"  {k} controller(s): {limits(v, k, args)}")
    done = [x for v in runs.values() for x in v]
    if done:
        worst = max(x["retries"] / args.creates for x in done)
        print(f"  conflict retries: at most {100 * worst:.1f}%   goal < 5%: {'met' if worst < 0.05 else 'NOT met'}")
    return runs
