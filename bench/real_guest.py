#!/usr/bin/env python3
"""Real-guest benchmark (issue 13), the parts measurable without a distribution image:

  - upload throughput: `nimbus image upload` of an N MiB raw disk (the CLI hashes it, streams
    it; the controller hashes, writes, inspects, stores it by digest) against the anchor
    `sha256sum F && cp F <same file system as the controller's data dir>`, interleaved, same
    run; goal: at least 0.8x the anchor's throughput;
  - first use on a host (the agent fetches the image, checks its digest, caches it) against a
    cache hit (the agent re-hashes its cached copy), as `instance create --wait` wall time of
    an image that halts in its boot sector (`--no-ready-marker`: running once QEMU runs).

Create-to-SSH against raw QEMU with a hand-made NoCloud seed needs the Debian image that
`guest/build-debian.sh` is to build; it is not measured here yet (says so when run).

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/real_guest.py [--bin target/release/nimbus] [--mib 512] [--runs 3]
"""
import argparse, hashlib, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from migration import Nimbus  # noqa: E402

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


def cli(cloud, *args):
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{cloud.port}", NIMBUS_TOKEN=cloud.api.token,
               NIMBUS_CA_CERT=os.path.join(cloud.data, "ca.crt"))
    t0 = time.monotonic()
    r = subprocess.run([cloud.bin, *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nimbus {' '.join(args)}: {r.stderr}\n{cloud.log_tail()}")
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    cloud = Nimbus(os.path.abspath(args.bin), work)
    try:
        cloud.wait_up()
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
        print("create-to-SSH vs raw QEMU + NoCloud seed: not measured (needs guest/build-debian.sh)")
    finally:
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
