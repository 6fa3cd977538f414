#!/usr/bin/env python3
"""Real-guest benchmark (issue 13):

  - upload throughput: `nimbus image upload` of an N MiB raw disk (the CLI hashes it, streams
    it; the controller hashes, writes, inspects, stores it by digest) against the anchor
    `sha256sum F && cp F <same file system as the controller's data dir>`, interleaved, same
    run; goal: at least 0.8x the anchor's throughput;
  - first use on a host (the agent fetches the image, checks its digest, caches it) against a
    cache hit (the agent re-hashes its cached copy), as `instance create --wait` wall time of
    an image that halts in its boot sector (`--no-ready-marker`: running once QEMU runs).

  - create-to-SSH-login of the Debian image (guest/build-debian.sh): `instance create` to
    the first SSH login with the instance's key, against raw QEMU booting the same image with
    a NoCloud seed made by hand (bench/guest_ssh.py), one boot at a time, interleaved; the
    first nimbus boot on a host without the image (fetch + verify included) apart from the
    ones on a host that has it cached.

Usage (as root, after `cargo build --release -p nimbus-cli` and guest/build-debian.sh):
  bench/real_guest.py [--bin target/release/nimbus] [--mib 512] [--runs 3] [--ssh-runs 2]
  [--skip-upload]
"""
import argparse, hashlib, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import NET_NAME, Nimbus  # noqa: E402
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
    os.sync()
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
    """`instance create` to the first SSH login; answers (seconds, host)."""
    t0 = time.monotonic()
    op = json.loads(cli_out(cloud, "instance", "create", name, "--flavor", "small", "--image", "debian-12",
                            "--key", "bench", "-o", "json"))
    deadline = t0 + 600
    while True:
        inst = cloud.api.req("GET", f"/v1/instances/{name}")
        if inst["state"] == "error":
            raise RuntimeError(f"{name}: {inst.get('reason')}\n{cloud.log_tail()}")
        bridge_up = inst.get("host") and inst.get("ip") and subprocess.run(
            ["ip", "-n", f"{NET_NAME}-{inst['host']}", "link", "show", f"nb{cloud.vni}"],
            capture_output=True).returncode == 0
        if bridge_up:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} has no host, address or bridge after 600 s")
        time.sleep(0.2)
    client = guest_ssh.NetClient(f"{NET_NAME}-{inst['host']}", cloud.vni, inst["ip"])
    try:
        ip = inst["ip"].split("/")[0]
        guest_ssh.wait_ssh(["ip", "netns", "exec", client.ns, "ssh", "-i", key, *guest_ssh.SSH_OPTS, f"debian@{ip}"])
        took = time.monotonic() - t0
    finally:
        client.close()
    cloud.api.wait_op(op["id"], 600)  # sshd is up before cloud-init is done: then it can go
    cli_out(cloud, "instance", "delete", name, "--wait")
    return took, inst["host"]


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
    raw, first, cached = [], None, []
    for i in range(runs + 1):
        if i < runs:
            raw.append(guest_ssh.raw_qemu_to_ssh(image, key, work, 22200 + i))
        took, host = nimbus_to_ssh(cloud, f"deb{i}", key)
        # Placement prefers a host that holds the image: after the first, each is a cache hit.
        print(f"nimbus deb{i} on {host}: {took:.1f} s", file=sys.stderr)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ssh-runs", type=int, default=2)
    ap.add_argument("--skip-upload", action="store_true", help="only the create-to-SSH part")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    cloud = Nimbus(os.path.abspath(args.bin), work)
    try:
        cloud.wait_up()
        if not args.skip_upload:
            upload_and_cache(cloud, work, args)
        create_to_ssh(cloud, work, args.ssh_runs)
    finally:
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def upload_and_cache(cloud, work, args):
    disk = os.path.join(work, "disk.raw")
    make_disk(disk, args.mib)
    size = os.path.getsize(disk)
    ups, anchors = [], []
    for i in range(args.runs):
        anchors.append(anchor(disk, cloud.data))
        ups.append(cli(cloud, "image", "upload", f"u{i}", "--file", disk, "--no-ready-marker"))
        if i:
            cli(cloud, "image", "delete", f"u{i}")
    rate = lambda t: size / MIB / t
    print(f"upload of a {size / MIB:.0f} MiB raw disk, {args.runs} runs interleaved")
    for name, xs in (("sha256sum + cp", anchors), ("nimbus image upload", ups)):
        print(f"{name:22s} median {statistics.median(xs):.2f} s = {rate(statistics.median(xs)):.0f} MiB/s"
              f"  all {' '.join(f'{x:.2f}' for x in xs)}")
    print(f"throughput ratio       {statistics.median(anchors) / statistics.median(ups):.2f}x the anchor (goal >= 0.8x)")

    miss = cli(cloud, "instance", "create", "miss", "--flavor", "tiny", "--image", "u0", "--wait")
    hit = cli(cloud, "instance", "create", "hit", "--flavor", "tiny", "--image", "u0", "--wait")
    print(f"create --wait, image not on the host (fetch + verify)  {miss:.2f} s")
    print(f"create --wait, image cached (re-hash)                   {hit:.2f} s")
    print(f"cache miss / hit       {miss / hit:.2f}x")
    for vm in ("miss", "hit"):
        cli(cloud, "instance", "delete", vm, "--wait")


if __name__ == "__main__":
    main()
