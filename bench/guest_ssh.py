"""Create-to-SSH-login timing of the Debian image (guest/build-debian.sh), for real_guest.py.

Two ways to boot the same qcow2 with a NoCloud seed and the same key, one at a time:
  - raw QEMU by hand: an overlay on the image, a CIDATA seed made with mkfs.vfat + mcopy, the
    VM started with the options nimbus gives its VMs (q35, TCG or KVM as probed, -cpu max,
    1 vCPU, 512 MiB, virtio disks by -blockdev, virtio NIC without option ROM, the console on
    a serial socket with a log file), SSH through QEMU's user network (hostfwd);
  - nimbus: `instance create` (no --wait), SSH to the guest's address from a client
    namespace plugged into its network's bridge on its host (what crates/test-utils'
    NetClient does), port 22 opened in the default security group.
Both are timed from the command to the first `ssh ... true` that succeeds (once sshd's banner
answers, probed every 0.25 s: boot_phases.wait_ssh), with the boot's phases on the way (boot_phases.Phases).
"""
import json, os, subprocess, time

import boot_phases

SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3"]
FINAL_MESSAGE = "nimbus-guest ready: cloud-init finished after $UPTIME s"


def debian_image():
    cache = os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus")
    d = os.path.join(cache, "images", "debian-12")
    try:
        manifest = json.load(open(os.path.join(d, "image.json")))
    except OSError as e:
        raise SystemExit(f"no Debian image in {d} ({e}): run guest/build-debian.sh")
    return os.path.join(d, manifest["disk"])


def make_seed(d, pubkey):
    files = {
        "meta-data": json.dumps({"instance-id": f"raw-{os.getpid()}-{time.time_ns()}", "local-hostname": "raw1",
                                 "public-keys": [pubkey]}),
        "user-data": "#cloud-config\n{}\n",
        "vendor-data": "#cloud-config\n" + json.dumps({"final_message": FINAL_MESSAGE}) + "\n",
    }
    seed = os.path.join(d, "seed.img")
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", seed, "1024"], check=True, capture_output=True)
    for name, text in files.items():
        src = os.path.join(d, name)
        open(src, "w").write(text)
        subprocess.run(["mcopy", "-i", seed, src, f"::{name}"], check=True, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    return seed


def accel():
    """What nimbus would use: KVM when it can boot a guest here (the agent's probe), else TCG."""
    try:
        cache = os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus")
        return json.load(open(os.path.join(cache, "accel-probe.json"))).get("accelerator", "tcg")
    except (OSError, ValueError):
        return "tcg"


def raw_qemu_to_ssh(image, key, work, port):
    """Seconds from the command to the first SSH login, and the boot's phases."""
    d = os.path.join(work, f"raw-{port}")
    os.makedirs(d)
    overlay = os.path.join(d, "disk.qcow2")
    seed = make_seed(d, open(key + ".pub").read().strip())
    console = os.path.join(d, "console.log")
    vm = None
    t0 = time.monotonic()
    phases = boot_phases.Phases(t0, lambda: console, lambda: vm.pid if vm else None)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", overlay, "2G"], check=True)
    drives = []
    for node, path, fmt, dev in (("disk0", overlay, "qcow2", "vda"), ("seed0", seed, "raw", "vdb")):
        drives += ["-blockdev", f"driver=file,filename={path},node-name={node}-file",
                   "-blockdev", f"driver={fmt},file={node}-file,node-name={node}",
                   "-device", f"virtio-blk-pci,drive={node},id={dev}"]
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", accel(), "-cpu", "max", "-smp", "1", "-m", "512",
         "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", *drives,
         "-chardev", f"socket,id=console,path={d}/console.sock,server=on,wait=off,logfile={console},logappend=on",
         "-serial", "chardev:console",
         "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0,romfile="],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "qemu.err"), "w"))
    try:
        ssh = ["ssh", "-i", key, "-p", str(port), *SSH_OPTS, "debian@127.0.0.1"]
        boot_phases.wait_ssh(ssh, "127.0.0.1", port)
        took = time.monotonic() - t0
        phases.mark("ssh", t0 + took)
        phases.mark_cpu()
        at = phases.stop()
        return took, at, boot_phases.guest_view(ssh)
    finally:
        phases.stop()
        vm.kill()
        vm.wait()


class NetClient:
    """A namespace plugged into tenant network `vni`'s bridge in a host namespace, with host
    address 9 of the network (reserved by the controller, never an instance's)."""

    def __init__(self, host_netns, vni, guest_cidr):
        ip, prefix = guest_cidr.split("/")
        mask = (0xFFFFFFFF << (32 - int(prefix))) & 0xFFFFFFFF
        n = (int.from_bytes(bytes(map(int, ip.split("."))), "big") & mask) + 9
        addr = ".".join(str(b) for b in n.to_bytes(4, "big"))
        self.ns = f"nimbus-bnc-{os.getpid()}"
        outer, inner = f"bc{os.getpid()}x", f"bc{os.getpid()}y"
        for argv in (["ip", "netns", "add", self.ns],
                     ["ip", "link", "add", outer, "netns", host_netns, "type", "veth", "peer", "name", inner,
                      "netns", self.ns],
                     ["ip", "-n", host_netns, "link", "set", outer, "master", f"nb{vni}", "up"],
                     ["ip", "-n", self.ns, "addr", "add", f"{addr}/{prefix}", "dev", inner],
                     ["ip", "-n", self.ns, "link", "set", inner, "up"]):
            subprocess.run(argv, check=True, capture_output=True)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
