#!/usr/bin/env python3
"""Host drain benchmark: the time `nimbus host drain` takes to move every instance of a host,
beside the anchor measured in the same run: the same instances migrated one at a time
(N x the median single live migration), and the ratio.

A 2-host `nimbus up` cloud (network namespaces, shared storage when the binary has it, as
bench/migration.py sets up); N instances of flavor `small` (512 MiB, 1 vCPU, idle default
image) are created on host1 (host2 disabled meanwhile). Then:
  - anchor: one of them is live-migrated alone host1 -> host2 -> host1, `--runs` times
    (POST /v1/instances/NAME/migrate), the median single migration time is taken from the API
    call to its operation's end;
  - drain: POST /v1/hosts/host1/drain, timed from the call to its operation's end (the drain
    moves two at a time, largest first); every instance must then run on host2.

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/drain.py [--bin target/release/nimbus] [--instances 6] [--runs 2]
Takes ~N x 40 s to create the guests on a loaded 2-core TCG machine, plus the migrations.
"""
import argparse, os, shutil, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import Nimbus  # noqa: E402  (the same cloud set-up and clean-up)


def timed_op(api, method, path, body=None, timeout=600):
    t0 = time.monotonic()
    op = api.req(method, path, body)
    op, _ = api.wait_op(op["id"], timeout)
    return time.monotonic() - t0, op


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--instances", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2, help="single migrations (there and back) for the anchor")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-drain-")
    cloud = None
    t_start = time.monotonic()
    try:
        cloud = Nimbus(os.path.abspath(args.bin), work)
        cloud.wait_up()
        api = cloud.api
        src, dst = cloud.hosts[0], cloud.hosts[1]
        api.req("POST", f"/v1/hosts/{dst}/disable")
        names = [f"dr{i}" for i in range(1, args.instances + 1)]
        for n in names:
            cloud.create(n)
            print(f"  [{time.monotonic() - t_start:6.0f} s] {n} running", file=sys.stderr, flush=True)
        api.req("POST", f"/v1/hosts/{dst}/enable")
        if any(api.req("GET", f"/v1/instances/{n}")["host"] != src for n in names):
            raise RuntimeError(f"not every instance was placed on {src}")

        singles = []
        for i in range(args.runs):
            for to in (dst, src):
                secs, op = timed_op(api, "POST", f"/v1/instances/{names[0]}/migrate", {"to": to})
                if op["state"] != "succeeded":
                    raise RuntimeError(f"single migration to {to}: {op.get('error')}")
                singles.append(secs)
                print(f"  [{time.monotonic() - t_start:6.0f} s] single migration to {to}: {secs:.2f} s",
                      file=sys.stderr, flush=True)

        load = os.getloadavg()[0]
        drain_s, op = timed_op(api, "POST", f"/v1/hosts/{src}/drain")
        if op["state"] != "succeeded":
            raise RuntimeError(f"drain: {op.get('error')}")
        where = {n: api.req("GET", f"/v1/instances/{n}") for n in names}
        left = [n for n, i in where.items() if i["host"] != dst or i["state"] != "running"]
        if left:
            raise RuntimeError(f"drain left {left}")

        one = statistics.median(singles)
        anchor = one * len(names)
        print(f"host drain benchmark: {len(names)} idle `small` instances (512 MiB, 1 vCPU, TCG), "
              f"disks {'on shared storage' if cloud.shared else 'local (mirrored)'}; "
              f"{os.cpu_count()} host CPUs, load average before the drain {load:.2f}")
        print(f"  drain of {src} ({len(names)} instances):        {drain_s:7.2f} s")
        print(f"  anchor: {len(names)} x one migration alone (median {one:.2f} s of {len(singles)}): "
              f"{anchor:7.2f} s")
        print(f"  ratio drain / anchor:                      {drain_s / anchor:7.2f}")
        print(f"benchmark wall time: {time.monotonic() - t_start:.0f} s")
    finally:
        if cloud:
            cloud.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
