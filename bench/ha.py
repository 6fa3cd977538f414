#!/usr/bin/env python3
"""HA restart benchmark (issue 14, part 4): from the death of a whole host to the HA guest
running on the other host, for an instance restarted from its disk on shared storage and for
one with a local disk restarted from its latest snapshot replicated to the controller, in the
same run; and the replication of an idle guest's first and second snapshot (time from the end
of `snapshot create` to `replicated_at`, bytes sent).

Two 2-host `nimbus up` clouds one after the other (bench/migration.py's set-up): with
`--shared-storage`, then with local disks. In each, one `small` idle default guest with
`--ha restart`; (local disks: two snapshots, each waited for until replicated); then its host
is killed: every QEMU of the host's state directory killed by pid, its agent frozen (SIGSTOP:
`nimbus up` would revive a killed one; a frozen one is silent like a dead machine). Timed from
the kill to the instance `running` on the other host (the restart operation ends once the
guest is ready). The anchors: the goal of 60 s and Proxmox HA's documented ~120 s; most of
either figure is the 30 s down timeout (docs/hosts.md).

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/ha.py [--bin target/release/nimbus]
"""
import argparse, os, shutil, signal, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import Nimbus  # noqa: E402  (the same cloud set-up and clean-up)


def kill_host(cloud, host):
    """Kills the host's QEMUs by pid and freezes its agent; answers the agent's pid."""
    hdir = os.path.join(cloud.data, "hosts", host)
    agent = int(open(os.path.join(hdir, "agent.pid")).read().strip())
    os.kill(agent, signal.SIGSTOP)
    vms = os.path.join(hdir, "vms")
    for vm in os.listdir(vms) if os.path.isdir(vms) else []:
        try:
            os.kill(int(open(os.path.join(vms, vm, "qemu.pid")).read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    return agent


def wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


def snapshot_replicated(api, inst, name):
    op = api.req("POST", "/v1/snapshots", {"instance": inst, "name": name})
    op, _ = api.wait_op(op["id"], 300)
    if op["state"] != "succeeded":
        raise RuntimeError(f"snapshot {name}: {op.get('error')}")
    t0 = time.monotonic()
    snap = wait(lambda: (s := api.req("GET", f"/v1/snapshots/{name}"))["replicated_at"] and s,
                120, f"{name} replicated")
    return time.monotonic() - t0, snap


def restart_time(cloud, name):
    api = cloud.api
    dead = api.req("GET", f"/v1/instances/{name}")["host"]
    t0 = time.monotonic()
    agent = kill_host(cloud, dead)
    try:
        inst = wait(lambda: (i := api.req("GET", f"/v1/instances/{name}"))["state"] == "running"
                    and i["host"] != dead and i, 240, f"{name} running elsewhere")
        return time.monotonic() - t0, inst
    finally:
        os.kill(agent, signal.SIGCONT)


def run(binary, shared):
    work = tempfile.mkdtemp(prefix="nimbus-bench-ha-")
    # The guests' confined QEMU (another user) must reach the hosts' dirs below it.
    os.chmod(work, 0o755)
    cloud = None
    try:
        cloud = Nimbus(binary, work, shared=shared)
        cloud.wait_up()
        api = cloud.api
        op = api.req("POST", "/v1/instances", {"name": "ha1", "flavor": "small", "image": "default",
                                               "ha": "restart"})
        op, _ = api.wait_op(op["id"], 300)
        if op["state"] != "succeeded":
            raise RuntimeError(f"create: {op.get('error')}")
        out = {}
        if not shared:
            out["first"] = snapshot_replicated(api, "ha1", "ha1-s1")
            out["second"] = snapshot_replicated(api, "ha1", "ha1-s2")
        out["restart"] = restart_time(cloud, "ha1")
        print(f"  [{'shared storage' if shared else 'local disks'}] done", file=sys.stderr, flush=True)
        return out
    finally:
        if cloud:
            cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    shared = run(binary, True)
    local = run(binary, False)
    mib = 1 << 20
    for k in ("first", "second"):
        secs, snap = local[k]
        print(f"replication of the {k} snapshot: {secs:.1f} s after create, "
              f"{snap['replica_bytes'] / mib:.1f} MiB sent (snapshot stores {snap['stored_bytes'] / mib:.1f} MiB)")
    first, second = local["first"][1]["replica_bytes"], local["second"][1]["replica_bytes"]
    if first:
        print(f"second / first replicated bytes: {second / first:.1%}")
    s, l = shared["restart"][0], local["restart"][0]
    print(f"HA restart, host death to guest running elsewhere: from a replicated snapshot {l:.1f} s, "
          f"from shared storage {s:.1f} s (ratio {l / s:.2f}); goal 60 s, Proxmox ~120 s "
          f"(ratio {l / 120:.2f})")
    print(f"  reason: {local['restart'][1].get('reason')}")


if __name__ == "__main__":
    main()
