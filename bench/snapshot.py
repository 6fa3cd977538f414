#!/usr/bin/env python3
"""Checkpoint benchmark: nimbus snapshots versus QEMU's own, same guest, same run.

For each workload (idle, a guest dirtying 100 MiB/s of a 256 MiB buffer with
`memcheck --no-verify 256 100`, and with `--rates disk` a guest writing 4 KiB to its disk
with fsync in a loop) and each run, interleaved so that all variants see the same
machine load, on a 512 MiB, 1 vCPU TCG guest (flavor `small`):

  - nimbus: `POST /v1/snapshots` of a running instance of a `nimbus up` cloud, twice, 3 s
    apart; VM pause, stored bytes and memory bytes from the snapshot records; total = from the
    request to the operation's end (API, operation engine and all); guest-visible pause =
    largest gap between heartbeat lines in the agent's heartbeat log around the snapshot.
    Then `POST /v1/snapshots/FIRST/restore`: to running = request to operation end (as the
    client sees it, polling every 100 ms), to first heartbeat = the operation's wait before its
    restore step plus the agent's measure from that request to the guest's first heartbeat.
  - raw QEMU savevm: the same guest launched by hand with nimbus's argv (as bench/boot.py),
    `snapshot-save` (internal qcow2 snapshot with vmstate) twice, 3 s apart; VM pause =
    STOP->RESUME events; bytes = growth of the qcow2 file; `snapshot-load` of the first, to
    running and to first heartbeat.
  - raw QEMU background snapshot: `migrate` to a file with the `background-snapshot`
    capability (what nimbus builds on), pause and bytes of the file; no restore.

With --migration instead: live migration of an idle instance with a tree of 3 snapshots
(which move with it: frozen disk layers, manifests, the memory chunks the target lacks)
against the same migration of an instance without snapshots, alternated in the same cloud
(local disks, or shared storage with --shared: then only chunks move); total and downtime from
the migration records, medians and their ratio (goal: at most 1.5x the time, downtime
unchanged).

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/snapshot.py [--bin target/release/nimbus] [--runs 3] [--rates 0,100[,disk]] [--json FILE]
  bench/snapshot.py --migration [--shared] [--runs 3] [--logs DIR]
Per-run lines go to stderr, the tables to stdout.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import Nimbus, RawVM, fmt, med, parse_ts, ratio, start_workload, step_ms  # noqa: E402

GAP_S = 3.0
POLL_S = 0.01
MIB = 1 << 20


def heartbeat_times(path):
    """Host arrival times (seconds) of the heartbeat lines in an agent heartbeat log."""
    out = []
    try:
        for line in open(path, errors="replace"):
            ms = line.split(" ", 1)[0]
            if ms.isdigit():
                out.append(int(ms) / 1000)
    except OSError:
        pass
    return out


def largest_gap(times, start, end):
    window = [t for t in times if start - 1 <= t <= end + 1]
    return max((b - a for a, b in zip(window, window[1:])), default=float("nan")) * 1000


DISK_WRITER = ("(i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/data/w.$((i % 64)) bs=4k count=1 "
               "conv=fsync 2>/dev/null; done) </dev/null >/dev/null 2>&1 &")


def start(run_cmd, workload):
    """Starts `workload` (a memory dirtying rate in MiB/s, or "disk") in the guest."""
    if workload == "disk":
        code, out = run_cmd(DISK_WRITER)
        if code != 0:
            raise RuntimeError(f"disk writer: {out}")
        time.sleep(1)
        return None
    return start_workload(run_cmd, workload)


def nimbus_run(cloud, rate, run):
    name = f"snap{rate}r{run}"
    inst = cloud.create(name)
    vm_dir = os.path.join(cloud.data, "hosts", inst["host"], "vms", inst["id"])
    hb_log = os.path.join(vm_dir, "heartbeat.log")
    measured = start(lambda c: cloud.api.exec(name, c), rate)
    res = {"variant": "nimbus", "rate": rate, "measured_rate": measured}
    for i in (1, 2):
        t0 = time.time()
        op = cloud.api.req("POST", "/v1/snapshots", {"instance": name, "name": f"{name}-s{i}"})
        # The API's long poll answers as soon as the operation ends (the raw QEMU variants
        # poll query-migrate every 10 ms, so they may see their end up to 10 ms late).
        op, _ = cloud.api.wait_op(op["id"], 300, poll=POLL_S)
        t1 = time.time()
        if op["state"] != "succeeded":
            raise RuntimeError(f"snapshot: {op.get('error')}")
        # Where the time went: the host's own measure, and each step of the operation.
        take = next(s for s in op["steps"] if s["name"] == "take")
        res[f"host_s_{i}"] = (take.get("output") or {}).get("total_ms", float("nan")) / 1000
        # Taken again, stopping first, when the guest wrote to its disk after QEMU's pause.
        res[f"undone_{i}"] = (take.get("output") or {}).get("attempts_undone", 0)
        res[f"steps_ms_{i}"] = {k: round(v, 1) for k, v in step_ms(op).items()}
        snap = cloud.api.req("GET", f"/v1/snapshots/{name}-s{i}")
        time.sleep(0.5)
        res[f"pause_ms_{i}"] = snap["vm_pause_ms"]
        res[f"total_s_{i}"] = t1 - t0
        res[f"bytes_{i}"] = snap["stored_bytes"]
        res[f"guest_pause_ms_{i}"] = largest_gap(heartbeat_times(hb_log), t0, t1)
        if i == 1:
            time.sleep(GAP_S)
    t0 = time.time()
    op = cloud.api.req("POST", f"/v1/snapshots/{name}-s1/restore", {})
    op, _ = cloud.api.wait_op(op["id"], 300)
    t1 = time.time()
    if op["state"] != "succeeded":
        raise RuntimeError(f"restore: {op.get('error')}")
    res["restore_running_s"] = t1 - t0
    # The agent measures its restore from the request it got to the first heartbeat; add
    # how long the operation took to reach it (the heartbeat log cannot tell the new guest's
    # first beat from the old one's last).
    step = next(s for s in op["steps"] if s["name"] == "restore")
    queued = (parse_ts(step["started_at"]) - parse_ts(op["created_at"])).total_seconds()
    first = (step.get("output") or {}).get("first_heartbeat_ms")
    res["restore_heartbeat_s"] = queued + first / 1000 if first is not None else float("nan")
    op = cloud.api.req("DELETE", f"/v1/instances/{name}")
    cloud.api.wait_op(op["id"], 120)
    return res


def events_pause_ms(qmp, since):
    stops = [e for e in qmp.events if e.get("event") == "STOP" and e["_arrival"] >= since]
    resumes = [e for e in qmp.events if e.get("event") == "RESUME" and e["_arrival"] >= since]
    if not stops or not resumes:
        return float("nan")
    return (resumes[0]["_qemu_ts"] - stops[0]["_qemu_ts"]) * 1000


def wait_job(vm, job, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = {j["id"]: j for j in vm.qmp.cmd("query-jobs")}
        j = jobs.get(job)
        if j and j["status"] == "concluded":
            vm.qmp.cmd("job-dismiss", {"id": job})
            if j.get("error"):
                raise RuntimeError(f"{job}: {j['error']}")
            return
        time.sleep(0.01)
    raise RuntimeError(f"{job} timed out")


def raw_run(work, rate, run, variant):
    d = tempfile.mkdtemp(prefix=f"{variant}-", dir=work)
    disk = os.path.join(d, "disk.qcow2")
    manifest = json.load(open(os.path.join(os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus"),
                                           "images", "default", "image.json")))
    base = os.path.join(os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus"), "images", "default",
                        manifest["disk"])
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk], check=True)
    vm = RawVM(os.path.join(d, "vm"), disk)
    res = {"variant": variant, "rate": rate}
    try:
        vm.wait_ready()
        res["measured_rate"] = start(vm.exec.run, rate)
        if variant == "bgsnap":
            vm.qmp.cmd("migrate-set-capabilities",
                       {"capabilities": [{"capability": "background-snapshot", "state": True}]})
        for i in (1, 2):
            size0 = os.stat(disk).st_blocks * 512
            t0 = time.monotonic()
            since = time.monotonic()
            if variant == "savevm":
                vm.qmp.cmd("snapshot-save", {"job-id": f"save{i}", "tag": f"s{i}", "vmstate": "disk0",
                                             "devices": ["disk0"]})
                wait_job(vm, f"save{i}")
                res[f"bytes_{i}"] = os.stat(disk).st_blocks * 512 - size0
            else:
                out = os.path.join(d, f"mem{i}")
                vm.qmp.cmd("migrate", {"uri": f"file:{out}"})
                while vm.qmp.cmd("query-migrate").get("status") not in ("completed", "failed"):
                    time.sleep(POLL_S)
                res[f"bytes_{i}"] = os.stat(out).st_blocks * 512
            t1 = time.monotonic()
            res[f"total_s_{i}"] = t1 - t0
            res[f"pause_ms_{i}"] = events_pause_ms(vm.qmp, since)
            time.sleep(0.5)
            res[f"guest_pause_ms_{i}"] = largest_gap(vm.hb.arrivals, t0, t1)
            if i == 1:
                time.sleep(GAP_S)
        if variant == "savevm":
            t0 = time.monotonic()
            vm.qmp.cmd("snapshot-load", {"job-id": "load", "tag": "s1", "vmstate": "disk0", "devices": ["disk0"]})
            wait_job(vm, "load")
            res["restore_running_s"] = time.monotonic() - t0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not [t for t in vm.hb.arrivals if t > t0]:
                time.sleep(0.005)
            after = [t for t in vm.hb.arrivals if t > t0]
            res["restore_heartbeat_s"] = (after[0] - t0) if after else float("nan")
        return res
    finally:
        vm.kill()
        shutil.rmtree(d, ignore_errors=True)


NAMES = {"nimbus": "nimbus", "savevm": "raw savevm", "bgsnap": "raw bg snapshot"}


def report(rate, results):
    label = {0: "idle", "disk": "writing 4 KiB to its disk, fsync, in a loop"}.get(rate, f"dirtying {rate} MiB/s")
    rates = [r.get("measured_rate") for r in results if r.get("measured_rate")]
    print(f"\n## {label}" + (f" (measured {med(rates):.0f} MiB/s)" if rates else ""))
    print("min / median of the runs")
    rows = [("VM pause 1st (ms)", "pause_ms_1", 1, 1), ("VM pause 2nd (ms)", "pause_ms_2", 1, 1),
            ("guest pause 1st (ms)", "guest_pause_ms_1", 1, 0),
            ("total 1st (s)", "total_s_1", 1, 2), ("total 2nd (s)", "total_s_2", 1, 2),
            ("of which on the host 1st (s)", "host_s_1", 1, 2), ("of which on the host 2nd (s)", "host_s_2", 1, 2),
            ("taken again 1st", "undone_1", 1, 0), ("taken again 2nd", "undone_2", 1, 0),
            ("stored 1st (MiB)", "bytes_1", 1 / MIB, 1), ("stored 2nd (MiB)", "bytes_2", 1 / MIB, 1),
            ("restore to running (s)", "restore_running_s", 1, 2),
            ("restore to heartbeat (s)", "restore_heartbeat_s", 1, 2)]
    variants = [v for v in NAMES if any(r["variant"] == v for r in results)]
    print("| metric | " + " | ".join(NAMES[v] for v in variants) + " | nimbus / savevm | nimbus / bg snapshot |")
    print("|---" * (len(variants) + 3) + "|")
    for title, key, scale, digits in rows:
        cells, meds = [], {}
        for v in variants:
            xs = [r.get(key) for r in results if r["variant"] == v]
            cells.append(fmt(xs, scale, digits))
            meds[v] = med([x for x in xs if x is not None])
        print(f"| {title} | " + " | ".join(cells) + f" | {ratio(meds.get('nimbus'), meds.get('savevm'))} | "
              f"{ratio(meds.get('nimbus'), meds.get('bgsnap'))} |")
    for v in variants:
        a = med([r.get("bytes_1") for r in results if r["variant"] == v])
        b = med([r.get("bytes_2") for r in results if r["variant"] == v])
        if a and b:
            print(f"{NAMES[v]}: 2nd snapshot stores {100 * b / a:.1f}% of the 1st")


def migrate_once(cloud, name):
    """Migrates `name` to the other host; answers its migration record's figures."""
    inst = cloud.api.req("GET", f"/v1/instances/{name}")
    target = next(h for h in cloud.hosts if h != inst["host"])
    t0 = time.time()
    op = cloud.api.req("POST", f"/v1/instances/{name}/migrate", {"to": target})
    op, _ = cloud.api.wait_op(op["id"], 600)
    wall = time.time() - t0
    if op["state"] != "succeeded":
        raise RuntimeError(f"migrate {name}: {op.get('error')}")
    st = cloud.api.req("GET", f"/v1/migrations/{op['id']}")["stats"]
    # The layers go before the target starts (prepare_target), the manifests and memory
    # chunks beside the memory transfer (transfer).
    copied = {s["name"]: (s.get("output") or {}).get("snapshots") for s in op["steps"]
              if s["name"] in ("prepare_target", "transfer")}
    return {"total_s": st["total_ms"] / 1000, "wall_s": wall, "downtime_ms": st.get("downtime_ms"),
            "snapshots": copied, "disk_transfer": st.get("disk_transfer"), "steps_ms": step_ms(op)}


def migration_bench(args):
    work = tempfile.mkdtemp(prefix="nimbus-bench-snapmig-")
    # Confined QEMUs (a user per VM) open new disk layers by path: they must reach them.
    os.chmod(work, 0o755)
    cloud = Nimbus(os.path.abspath(args.bin), work, shared=args.shared)
    rows = {"with 3 snapshots": [], "without": []}
    try:
        cloud.wait_up()
        cloud.create("plain")
        cloud.create("tree")
        for i in (1, 2, 3):
            cloud.api.exec("tree", f"echo {i} > /data/mark && sync")
            op = cloud.api.req("POST", "/v1/snapshots", {"instance": "tree", "name": f"tree-s{i}"})
            op, _ = cloud.api.wait_op(op["id"], 300)
            if op["state"] != "succeeded":
                raise RuntimeError(f"snapshot: {op.get('error')}")
        for run in range(args.runs):
            for label, name in (("without", "plain"), ("with 3 snapshots", "tree")):
                r = migrate_once(cloud, name)
                r.update({"variant": label, "run": run})
                print(json.dumps(r), file=sys.stderr)
                rows[label].append(r)
        storage = "shared storage" if cloud.shared else "local disks"
        print(f"\n## live migration of an idle 512 MiB guest, {storage}, {args.runs} runs (min / median)")
        print("| metric | with 3 snapshots | without | with / without |")
        print("|---|---|---|---|")
        for title, key, digits in (("total (s)", "total_s", 2), ("downtime (ms)", "downtime_ms", 0)):
            a = [r[key] for r in rows["with 3 snapshots"]]
            b = [r[key] for r in rows["without"]]
            print(f"| {title} | {fmt(a, 1, digits)} | {fmt(b, 1, digits)} | {ratio(med(a), med(b))} |")
        # Where the difference is: each step of the operation (median, ms).
        steps = sorted({k for r in rows["with 3 snapshots"] + rows["without"] for k in r["steps_ms"]})
        print("\n| step (median ms) | with 3 snapshots | without |")
        print("|---|---|---|")
        for step in steps:
            a = med([r["steps_ms"].get(step) for r in rows["with 3 snapshots"]])
            b = med([r["steps_ms"].get(step) for r in rows["without"]])
            print(f"| {step} | {a if a is None else round(a)} | {b if b is None else round(b)} |")
        # The snapshot copy's own time per part (controller: inventory and missing chunks,
        # then the stream from the source through the target's checks).
        print("\n| snapshot copy (median ms) | inventory | stream |")
        print("|---|---|---|")
        for step, part in (("prepare_target", "layers"), ("transfer", "manifests and chunks")):
            ms = [((r["snapshots"] or {}).get(step) or {}).get("ms") or {} for r in rows["with 3 snapshots"]]
            print(f"| {part} ({step}) | {med([m.get('inventory') for m in ms if m])} | "
                  f"{med([m.get('stream') for m in ms if m])} |")
        if args.json:
            json.dump(rows, open(args.json, "w"), indent=1)
    finally:
        cloud.close()
        if args.logs:
            keep_logs(cloud.data, args.logs)
            shutil.copy(cloud.log, args.logs)  # `nimbus up`'s own, with the controller's
        shutil.rmtree(work, ignore_errors=True)


def keep_logs(data, dest):
    """Copies the cloud's logs (controller, agents) to `dest` before the work dir goes."""
    for root, _, files in os.walk(data):
        for f in files:
            if f.endswith(".log"):
                rel = os.path.relpath(os.path.join(root, f), data)
                os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                shutil.copy(os.path.join(root, f), os.path.join(dest, rel))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", default="0,100")
    ap.add_argument("--json")
    ap.add_argument("--migration", action="store_true", help="migration with 3 snapshots vs without")
    ap.add_argument("--shared", action="store_true", help="with --migration: shared storage")
    ap.add_argument("--logs", help="with --migration: keep the cloud's logs in this directory")
    args = ap.parse_args()
    if args.migration:
        return migration_bench(args)
    work = tempfile.mkdtemp(prefix="nimbus-bench-snap-")
    os.chmod(work, 0o755)  # confined QEMUs open new disk layers by path
    cloud = Nimbus(os.path.abspath(args.bin), work)
    results = []
    try:
        cloud.wait_up()
        for rate in [int(r) if r.isdigit() else r for r in args.rates.split(",")]:
            for run in range(args.runs):
                for variant in ("nimbus", "savevm", "bgsnap"):
                    r = nimbus_run(cloud, rate, run) if variant == "nimbus" else raw_run(work, rate, run, variant)
                    print(json.dumps(r), file=sys.stderr)
                    results.append(r)
        for rate in sorted({r["rate"] for r in results}, key=str):
            report(rate, [r for r in results if r["rate"] == rate])
        if args.json:
            json.dump(results, open(args.json, "w"), indent=1)
    finally:
        cloud.close()
        print_host_phases(cloud.data)
        shutil.rmtree(work, ignore_errors=True)


def print_host_phases(data):
    """The agents' own account of each snapshot (phases from the request, and the pause)."""
    hosts = os.path.join(data, "hosts")
    for host in sorted(os.listdir(hosts)) if os.path.isdir(hosts) else []:
        try:
            for line in open(os.path.join(hosts, host, "agent.log"), errors="replace"):
                if any(k in line for k in ("snapshot phases", "snapshot pause", "chunking phases", "disk frozen after", "wrote to its disk after")):
                    print(line.rstrip(), file=sys.stderr)
        except OSError:
            pass


if __name__ == "__main__":
    main()
