#!/usr/bin/env python3
"""Boot with QEMU confinement versus without, in the same run (issue 11: goal < 50 ms more).

Each run boots the default guest twice, interleaved so both see the same machine load, with
the argv nimbus uses (TCG, 1 vCPU / 256 MiB, qcow2 overlay on the default image, the three
serial ports, QMP, the seccomp sandbox), timed from launch until `nimbus-guest ready` is in
the console log (polled every 5 ms):
  - plain: QEMU as root (`elevateprivileges=deny`), in the caller's cgroup;
  - confined: what the agent does (crates/agent/src/confine): the VM directory given to a VM
    user (chown, 0700/0600), `-run-with user=UID:GID`, a cgroup of its own with cpu, memory
    and pids limits (v2, or v1 on hybrid hosts), QEMU moved into it right after launch.
The confined figure includes the chown and cgroup writes (done inside the timed span).

With `--until qmp` the span ends when QEMU's monitor greets (the machine is set up and QEMU
has dropped privileges), without the guest's boot and its noise: the start-up cost alone.

Usage (as root): bench/confinement.py [--runs 5] [--until ready|qmp]
"""
import argparse, os, socket, statistics, subprocess, tempfile, time

from boot import guest_argv
VM_UID = 1_000_000_000 + 4242
VM_GID = 1_000_000_000
SANDBOX = "on,obsolete=deny,elevateprivileges={},spawn=deny,resourcecontrol=deny"


def cgroup_dirs(name):
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return {"/sys/fs/cgroup/nimbus-bench/" + name: [("cpu.weight", "100"), ("memory.max", str(528 << 20)), ("pids.max", "512")]}
    return {
        f"/sys/fs/cgroup/cpu/nimbus-bench/{name}": [("cpu.shares", "1024")],
        f"/sys/fs/cgroup/memory/nimbus-bench/{name}": [("memory.limit_in_bytes", str(528 << 20))],
        f"/sys/fs/cgroup/pids/nimbus-bench/{name}": [("pids.max", "512")],
    }


def qmp_greets(path):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
            return b"QMP" in s.recv(4096)
    except OSError:
        return False


def boot(work, confined, n, until):
    d = tempfile.mkdtemp(dir=work)
    argv = guest_argv(d)
    cgroups = cgroup_dirs(f"vm{n}")
    t0 = time.monotonic()
    if confined:
        for root, _, files in os.walk(d):
            os.chown(root, VM_UID, VM_GID)
            os.chmod(root, 0o700)
            for f in files:
                os.chown(os.path.join(root, f), VM_UID, VM_GID)
                os.chmod(os.path.join(root, f), 0o600)
        argv += ["-run-with", f"user={VM_UID}:{VM_GID}", "-sandbox", SANDBOX.format("allow")]
    else:
        argv += ["-sandbox", SANDBOX.format("deny")]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if confined:
        for cg, settings in cgroups.items():
            os.makedirs(cg, exist_ok=True)
            for f, v in settings:
                open(os.path.join(cg, f), "w").write(v)
            open(os.path.join(cg, "cgroup.procs"), "w").write(str(p.pid))
    log = os.path.join(d, "console.log")
    try:
        while time.monotonic() - t0 < 90:
            if until == "qmp" and qmp_greets(os.path.join(d, "qmp.sock")):
                return time.monotonic() - t0
            if until == "ready" and os.path.exists(log) and b"nimbus-guest ready" in open(log, "rb").read():
                return time.monotonic() - t0
            time.sleep(0.005)
        raise RuntimeError("the guest did not become ready in 90 s")
    finally:
        p.kill()
        p.wait()
        for cg in cgroups:
            if os.path.isdir(cg):
                os.rmdir(cg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--until", choices=["ready", "qmp"], default="ready")
    args = ap.parse_args()
    plain, confined = [], []
    with tempfile.TemporaryDirectory(prefix="nimbus-bench-") as work:
        os.chmod(work, 0o755)
        for n in range(args.runs):
            plain.append(boot(work, False, 2 * n, args.until))
            confined.append(boot(work, True, 2 * n + 1, args.until))
    until = "`nimbus-guest ready`" if args.until == "ready" else "QMP greeting"
    print(f"runs: {args.runs} (interleaved), TCG, 1 vCPU / 256 MiB, default image, launch to {until}")
    for name, xs in (("plain (root)", plain), ("confined", confined)):
        print(f"{name:14s} min {min(xs):.3f} s  median {statistics.median(xs):.3f} s  all {' '.join(f'{x:.2f}' for x in xs)}")
    print(f"confined - plain: median {1000 * (statistics.median(confined) - statistics.median(plain)):+.0f} ms, "
          f"min {1000 * (min(confined) - min(plain)):+.0f} ms; ratio (median) "
          f"{statistics.median(confined) / statistics.median(plain):.3f}x")


if __name__ == "__main__":
    main()
