#!/usr/bin/env python3
"""Boot benchmark: `nimbus instance create --wait` versus raw QEMU, in the same run.

Measures, for N repetitions (interleaved so both see the same machine load):
  - raw QEMU: launch qemu-system-x86_64 by hand with the argv nimbus uses (same kernel,
    initrd, cmdline, qcow2 overlay on the default image, TCG) until `nimbus-guest ready`
    appears in the console log (polled every 5 ms);
  - nimbus: wall time of `nimbus instance create bN --flavor tiny --image default --wait`,
    which returns when the guest printed the same line (through API, operation, scheduler,
    agent, qemu-img overlay, QEMU launch, ready detection);
and the idle resident memory of the controller (`nimbus up`) and of one agent.

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/boot.py [--bin target/release/nimbus] [--runs 5]
"""
import argparse, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

IMAGE_DIR = os.path.join(os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus"), "images", "default")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_ports(n):
    """The first of `n` consecutive ports free on every address now, below the kernel's
    ephemeral range: a port picked by `free_port` is in that range, and so are the local
    ports of outgoing connections (to PostgreSQL, to agents), which the kernel hands out
    meanwhile; a port next to it (another controller's: `nimbus up --controllers K` listens
    on the next ports) is taken by one often enough to make that controller exit at start."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(10_000, max(low - n, 10_001))
        if all(_bindable(p) for p in range(first, first + n)):
            return first
    raise RuntimeError(f"no {n} consecutive free ports found between 10000 and {low}")


def _bindable(port):
    """Whether a listener could bind `port` on every address (as a controller does: with
    SO_REUSEADDR, so only listeners and connections using the port count)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def guest_argv(d):
    """The argv nimbus gives QEMU for the default guest whose overlay disk is in `d`."""
    manifest = json.load(open(os.path.join(IMAGE_DIR, "image.json")))
    path = lambda k: os.path.join(IMAGE_DIR, manifest[k])
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", path("disk"),
                    os.path.join(d, "disk.qcow2"), "1G"], check=True)
    return ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
            "-m", "256", "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-kernel", path("kernel"), "-initrd", path("initrd"), "-append", manifest["cmdline"],
            "-blockdev", f"driver=file,filename={d}/disk.qcow2,node-name=disk0-file",
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
            "-device", "virtio-blk-pci,drive=disk0,id=vda",
            "-chardev", f"socket,id=console,path={d}/console.sock,server=on,wait=off,logfile={d}/console.log",
            "-serial", "chardev:console",
            "-chardev", f"socket,id=heartbeat,path={d}/hb.sock,server=on,wait=off", "-serial", "chardev:heartbeat",
            "-chardev", f"socket,id=exec,path={d}/exec.sock,server=on,wait=off", "-serial", "chardev:exec",
            "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off", "-nic", "none"]


def raw_qemu_boot(work):
    d = tempfile.mkdtemp(dir=work)
    t0 = time.monotonic()
    argv = guest_argv(d)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = os.path.join(d, "console.log")
    try:
        while time.monotonic() - t0 < 60:
            if os.path.exists(log) and b"nimbus-guest ready" in open(log, "rb").read():
                return time.monotonic() - t0
            time.sleep(0.005)
        raise RuntimeError("raw QEMU guest did not become ready in 60 s")
    finally:
        p.kill()
        p.wait()


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    data = os.path.join(work, "data")
    port = free_port()
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{port}", NIMBUS_CA_CERT=os.path.join(data, "ca.crt"))
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", "1", "--listen", f"127.0.0.1:{port}",
                           "--net-name", "nbench", "--net-index", "250"],
                          stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)
    try:
        token_file = os.path.join(data, "admin.token")
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(token_file):
                env["NIMBUS_TOKEN"] = open(token_file).read().strip()
                r = subprocess.run([args.bin, "host", "list", "-o", "json"], env=env, capture_output=True)
                if r.returncode == 0 and json.loads(r.stdout or b"[]"):
                    break
            time.sleep(0.3)
        else:
            sys.exit("cloud did not come up")
        raw, cloud = [], []
        for i in range(args.runs):
            raw.append(raw_qemu_boot(work))
            t0 = time.monotonic()
            subprocess.run([args.bin, "instance", "create", f"b{i}", "--flavor", "tiny", "--image", "default", "--wait"],
                           env=env, check=True, capture_output=True)
            cloud.append(time.monotonic() - t0)
            subprocess.run([args.bin, "instance", "delete", f"b{i}", "--wait"], env=env, check=True, capture_output=True)
        time.sleep(5)
        agent_pid = int(open(os.path.join(data, "hosts", "host1", "agent.pid")).read())
        print(f"runs: {args.runs} (interleaved), TCG, 1 vCPU / 256 MiB, default image")
        for name, xs in (("raw QEMU", raw), ("nimbus create --wait", cloud)):
            print(f"{name:22s} min {min(xs):.3f} s  median {statistics.median(xs):.3f} s  all {' '.join(f'{x:.2f}' for x in xs)}")
        print(f"ratio (median)         {statistics.median(cloud) / statistics.median(raw):.3f}x, "
              f"overhead {1000 * (statistics.median(cloud) - statistics.median(raw)):.0f} ms")
        print(f"ratio (min)            {min(cloud) / min(raw):.3f}x, overhead {1000 * (min(cloud) - min(raw)):.0f} ms")
        print(f"idle RSS: controller (nimbus up) {rss_mib(up.pid):.1f} MiB, agent {rss_mib(agent_pid):.1f} MiB")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", "nbench-host1"], capture_output=True)
        subprocess.run(["ip", "link", "del", "nbench-br"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
