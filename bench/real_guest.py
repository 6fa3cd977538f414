#!/usr/bin/env python3
"""Real-guest benchmark (issue 13):

  - upload throughput: `nimbus image upload` of an N MiB raw disk and of the Debian image
    (guest/build-debian.sh's qcow2) (the CLI hashes it, streams
    it; the controller hashes, writes, inspects, stores it by digest) against the anchor
    `sha256sum F && cp F <same file system as the controller's data dir> && sync <the copy>`, interleaved, same
    run; goal: at least 0.8x the anchor's throughput;
  - first use on a host (the agent fetches the image, checks its digest, caches it) against a
    cache hit (the agent uses its cached copy, hashed again only when its file changed), as
    `instance create --wait` wall time of an image that halts in its boot sector
    (`--no-ready-marker`: running once QEMU runs);
  - `--cache-only`: only creates of an N MiB image already on the host (after the create that
    fetched it and the next, which may hash it once more), interleaved with creates of a
    1 MiB image already there (whose check costs nothing: the anchor), on one host.

  - create-to-SSH-login of the Debian image (guest/build-debian.sh): `instance create` to
    the first SSH login with the instance's key, against raw QEMU booting the same image with
    a NoCloud seed made by hand (bench/guest_ssh.py), one boot at a time, interleaved; the
    first nimbus boot on a host without the image (fetch + verify included) apart from the
    ones on a host that has it cached; each boot's phases (bench/boot_phases.py: API
    accepted, QEMU started, kernel, systemd, cloud-init, SSH; QEMU's CPU seconds to SSH;
    the guest's own unit timings) and the machine's load beside each run.

Usage (as root, after `cargo build --release -p nimbus-cli` and guest/build-debian.sh):
  bench/real_guest.py [--bin target/release/nimbus] [--mib 1024] [--runs 3] [--ssh-runs 2]
  [--skip-upload] [--skip-ssh] [--cache-only]
"""
import argparse, glob, hashlib, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import NET_NAME, Nimbus, step_ms  # noqa: E402
import boot_phases  # noqa: E402
import guest_ssh  # noqa: E402

MIB = 1 << 20


def make_disk(path, mib):
    """A raw disk whose boot sector halts (cli; hlt) and whose content does not compress."""
    with open(path, "wb") as f:
        boot = bytearray(512)
        boot[:4] = b"\xfa\xf4\xeb\xfd"
        boot[510:512] = b"\x55\xaa"
        f.write(boot)
        seed = hashlib.sha256(b"nimbus").digest()
        block = (seed * (MIB // len(seed)))
        for i in range(mib):
            f.write(block if i else block[512:])
        f.write(bytes(512))


def anchor(src, dst_dir):
    t0 = time.monotonic()
    subprocess.run(["sha256sum", src], check=True, capture_output=True)
    dst = os.path.join(dst_dir, "copy.raw")
    subprocess.run(["cp", src, dst], check=True)
    # This file's data on disk, as the controller fsyncs its copy (os.sync() would also
    # flush whatever the rest of the machine has written).
    subprocess.run(["sync", dst], check=True)
    took = time.monotonic() - t0
    os.remove(dst)
    return took


def cli_out(cloud, *args):
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{cloud.port}", NIMBUS_TOKEN=cloud.api.token,
               NIMBUS_CA_CERT=os.path.join(cloud.data, "ca.crt"))
    r = subprocess.run([cloud.bin, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nimbus {' '.join(args)}: {r.stderr}\n{cloud.log_tail()}")
    return r.stdout


def cli(cloud, *args):
    t0 = time.monotonic()
    cli_out(cloud, *args)
    return time.monotonic() - t0


def nimbus_to_ssh(cloud, name, key):
    """`instance create` to the first SSH login; answers (seconds, host, phases, guest's view)."""
    found = {}

    def console():
        if "id" in found and "console" not in found:
            hits = glob.glob(os.path.join(cloud.data, "**", "vms", found["id"], "console.log"), recursive=True)
            if hits:
                found["console"] = hits[0]
        return found.get("console")

    t0 = time.monotonic()
    phases = boot_phases.Phases(t0, console, lambda: "id" in found and boot_phases.qemu_pid(found["id"]))
    try:
        op = json.loads(cli_out(cloud, "instance", "create", name, "--flavor", "small", "--image", "debian-12",
                                "--key", "bench", "-o", "json"))
        phases.mark("accept", time.monotonic())
        deadline = t0 + 600
        while True:
            inst = cloud.api.req("GET", f"/v1/instances/{name}")
            found["id"] = inst["id"]
            if inst["state"] == "error":
                raise RuntimeError(f"{name}: {inst.get('reason')}\n{cloud.log_tail()}")
            bridge_up = inst.get("host") and inst.get("ip") and subprocess.run(
                ["ip", "-n", f"{cloud.net}-{inst['host']}", "link", "show", f"nb{cloud.vni}"],
                capture_output=True).returncode == 0
            if bridge_up:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} has no host, address or bridge after 600 s")
            time.sleep(0.2)
        client = guest_ssh.NetClient(f"{cloud.net}-{inst['host']}", cloud.vni, inst["ip"])
        try:
            ip = inst["ip"].split("/")[0]
            ssh = ["ip", "netns", "exec", client.ns, "ssh", "-i", key, *guest_ssh.SSH_OPTS, f"debian@{ip}"]
            boot_phases.wait_ssh(ssh, ip, netns=client.ns)
            took = time.monotonic() - t0
            phases.mark("ssh", t0 + took)
            phases.mark_cpu()
            view = boot_phases.guest_view(ssh)
        finally:
            client.close()
    finally:
        at = phases.stop()
    done, _ = cloud.api.wait_op(op["id"], 600)  # sshd is up before cloud-init is done: then it can go
    steps = step_ms(done)
    cli_out(cloud, "instance", "delete", name, "--wait")
    return took, inst["host"], at, view, steps


def create_to_ssh(cloud, work, runs):
    image = guest_ssh.debian_image()
    key = os.path.join(work, "bench.pem")
    open(key, "w").write(cli_out(cloud, "keypair", "create", "bench"))
    os.chmod(key, 0o600)
    pub = subprocess.run(["ssh-keygen", "-y", "-f", key], check=True, capture_output=True, text=True).stdout
    open(key + ".pub", "w").write(pub)
    cli_out(cloud, "image", "upload", "debian-12", "--file", image, "--wait")
    cli_out(cloud, "secgroup", "rule", "add", "default", "--ingress", "--proto", "tcp", "--port", "22",
            "--cidr", "0.0.0.0/0")
    cloud.vni = json.loads(cli_out(cloud, "network", "show", "default", "-o", "json"))["vni"]
    raw, first, cached, timelines = [], None, [], []
    for i in range(runs + 1):
        if i < runs:
            load = boot_phases.machine_load()
            took, at, view = guest_ssh.raw_qemu_to_ssh(image, key, work, 22200 + i)
            raw.append(took)
            timelines.append((f"raw{i}", at, load, view))
            print(f"raw QEMU {i}: {took:.1f} s ({load})", file=sys.stderr)
        load = boot_phases.machine_load()
        took, host, at, view, steps = nimbus_to_ssh(cloud, f"deb{i}", key)
        timelines.append((f"deb{i}", at, load, view))
        # Placement prefers a host that holds the image: after the first, each is a cache hit.
        print(f"nimbus deb{i} on {host}: {took:.1f} s ({load}); steps (ms) {steps}", file=sys.stderr)
        if first is None:
            first = (took, host)
        else:
            cached.append(took)
    med = statistics.median
    print(f"\ncreate to SSH login, Debian 12 image ({os.path.getsize(image) / MIB:.0f} MiB qcow2), "
          f"{guest_ssh.accel()}, 1 vCPU, 512 MiB, one boot at a time")
    print(f"raw QEMU + NoCloud seed  median {med(raw):.1f} s  all {' '.join(f'{x:.1f}' for x in raw)}")
    print(f"nimbus, image cached     median {med(cached):.1f} s  all {' '.join(f'{x:.1f}' for x in cached)}")
    print(f"nimbus, first on {first[1]} (fetch + verify) {first[0]:.1f} s")
    print(f"overhead (cached)        {med(cached) / med(raw):.2f}x raw QEMU (goal: under 1.10x)")
    print(f"first boot on a host     {first[0] / med(raw):.2f}x raw QEMU")
    print_phases(timelines)


def print_phases(timelines):
    """Each boot's marks (s from the command) and the median of each phase, raw against nimbus
    (cached runs): command -> QEMU started -> kernel's first line -> SSH login."""
    print("\nphases, s from the command (accept: API answered; qemu: process started; kernel, init, ci:"
          " first console line of the kernel, systemd, cloud-init; ssh: first login)")
    for name, at, load, view in timelines:
        print(f"{boot_phases.line(name, at)}   [{load}]")
    spans = (("command -> accept", None, "accept"), ("command -> QEMU", None, "qemu"),
             ("QEMU -> kernel", "qemu", "kernel"), ("kernel -> SSH", "kernel", "ssh"), ("total", None, "ssh"),
             ("QEMU CPU s to SSH", None, "cpu"))
    groups = {"raw": [at for n, at, _, _ in timelines if n.startswith("raw")],
              "nimbus": [at for n, at, _, _ in timelines if n.startswith("deb") and n != "deb0"]}
    print(f"{'median phase':18s} {'raw':>7s} {'nimbus':>7s} {'ratio':>6s}")
    for label, a, b in spans:
        vals = {}
        for g, ats in groups.items():
            xs = [at[b] - (at[a] if a else 0) for at in ats if b in at and (a is None or a in at)]
            vals[g] = statistics.median(xs) if xs else None
        r, n = vals["raw"], vals["nimbus"]
        ratio = f"{n / r:.2f}" if r and n else "-"
        fmt = lambda v: f"{v:7.1f}" if v is not None else "      -"
        print(f"{label:18s} {fmt(r)} {fmt(n)} {ratio:>6s}")
    print("\nthe guest at its first login (uptime s; systemd-analyze critical-chain ssh.service):")
    for name, _, _, view in timelines:
        print(f"--- {name}\n{view}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ssh-runs", type=int, default=2)
    ap.add_argument("--skip-upload", action="store_true", help="only the create-to-SSH part")
    ap.add_argument("--skip-ssh", action="store_true", help="only the upload and cache part")
    ap.add_argument("--cache-only", action="store_true", help="only creates from a cached image")
    ap.add_argument("--net-name", default=NET_NAME, help="prefix of the cloud's namespaces and bridge")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    cloud = Nimbus(os.path.abspath(args.bin), work, net_name=args.net_name)
    try:
        cloud.wait_up()
        if args.cache_only:
            cached_creates(cloud, work, args)
        elif not args.skip_upload:
            upload_and_cache(cloud, work, args)
        if not args.skip_ssh and not args.cache_only:
            create_to_ssh(cloud, work, args.ssh_runs)
    finally:
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def measure_upload(cloud, path, prefix, runs, what, keep_first=False):
    """`image upload` of `path` against `sha256sum` + `cp` + sync of it, interleaved."""
    size = os.path.getsize(path)
    ups, anchors = [], []
    for i in range(runs):
        load = boot_phases.machine_load()
        anchors.append(anchor(path, cloud.data))
        ups.append(cli(cloud, "image", "upload", f"{prefix}{i}", "--file", path, "--no-ready-marker"))
        print(f"upload {prefix}{i}: anchor {anchors[-1]:.2f} s, nimbus {ups[-1]:.2f} s ({load})", file=sys.stderr)
        if i or not keep_first:
            cli(cloud, "image", "delete", f"{prefix}{i}")
    rate = lambda t: size / MIB / t
    print(f"upload of {what}, {runs} runs interleaved")
    for name, xs in (("sha256sum + cp", anchors), ("nimbus image upload", ups)):
        print(f"{name:22s} median {statistics.median(xs):.2f} s = {rate(statistics.median(xs)):.0f} MiB/s"
              f"  all {' '.join(f'{x:.2f}' for x in xs)}")
    print(f"throughput ratio       {statistics.median(anchors) / statistics.median(ups):.2f}x the anchor (goal >= 0.8x)")


def upload_and_cache(cloud, work, args):
    disk = os.path.join(work, "disk.raw")
    make_disk(disk, args.mib)
    measure_upload(cloud, disk, "u", args.runs, f"a {os.path.getsize(disk) / MIB:.0f} MiB raw disk", keep_first=True)
    deb = guest_ssh.debian_image()
    measure_upload(cloud, deb, "udeb", args.runs, f"the Debian image ({os.path.getsize(deb) / MIB:.0f} MiB qcow2)")

    miss = cli(cloud, "instance", "create", "miss", "--flavor", "small", "--image", "u0", "--wait")
    hit = cli(cloud, "instance", "create", "hit", "--flavor", "small", "--image", "u0", "--wait")
    print(f"create --wait, image not on the host (fetch + verify)  {miss:.2f} s")
    print(f"create --wait, image cached (re-hash)                   {hit:.2f} s")
    print(f"cache miss / hit       {miss / hit:.2f}x")
    for vm in ("miss", "hit"):
        cli(cloud, "instance", "delete", vm, "--wait")


def cached_creates(cloud, work, args):
    """`create --wait` of an N MiB image cached on the host against a cached 1 MiB image."""
    for name, mib in (("big", args.mib), ("small", 1)):
        path = os.path.join(work, f"{name}.raw")
        make_disk(path, mib)
        cli(cloud, "image", "upload", name, "--file", path, "--no-ready-marker")
    for other in cloud.hosts[1:]:
        cli(cloud, "host", "disable", other)
    create = lambda vm, image: cli(cloud, "instance", "create", vm, "--flavor", "small", "--image", image, "--wait")
    delete = lambda vm: cli(cloud, "instance", "delete", vm, "--wait")
    miss = create("miss", "big")
    create("miss-small", "small")
    first = create("reuse", "big")
    for vm in ("miss", "miss-small", "reuse"):
        delete(vm)
    big, small = [], []
    for i in range(args.runs):
        load = boot_phases.machine_load()
        big.append(create(f"big{i}", "big"))
        small.append(create(f"small{i}", "small"))
        print(f"run {i}: {args.mib} MiB {big[-1]:.2f} s, 1 MiB {small[-1]:.2f} s ({load})", file=sys.stderr)
        delete(f"big{i}")
        delete(f"small{i}")
    print(f"create --wait, {args.mib} MiB image not on the host (fetch + verify)  {miss:.2f} s")
    print(f"create --wait, first reuse after the fetch                  {first:.2f} s")
    print(f"create --wait, {args.mib} MiB image cached, median           {statistics.median(big):.2f} s"
          f"  all {' '.join(f'{x:.2f}' for x in big)}")
    print(f"anchor: 1 MiB image cached, median                       {statistics.median(small):.2f} s"
          f"  all {' '.join(f'{x:.2f}' for x in small)}")
    print(f"cached {args.mib} MiB / cached 1 MiB  {statistics.median(big) / statistics.median(small):.2f}x")


if __name__ == "__main__":
    main()
