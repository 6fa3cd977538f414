"""`bench/network.py --part throughput`: TCP throughput and ping RTT from one guest to another
across hosts, through nimbus's network and to the other's floating IP, against the same two
guests on a flat bridge, in the same run.

A 2-host `nimbus up` cloud (bench/migration.py's `Nimbus`, TCG guests of the default image):
`srv` serves a 128 MiB file from tmpfs with busybox `httpd`, `cli` (on the other host) fetches
it with busybox `wget` (timed by busybox `time`, in the guest) and pings `srv` (20 pings,
0.2 s apart; busybox `ping`'s average). Paths:
- private: cli -> tap -> port security, security groups -> bridge -> VXLAN -> the other host
  -> bridge -> security groups -> srv;
- floating: cli -> its host's router (masquerade) -> the uplink -> srv's host's router (1:1
  NAT) -> srv.
Anchor (flat): then the two guests' taps are moved (QEMU keeps them open) into two scratch
namespaces, each with a plain Linux bridge, joined by a veth pair: no nftables, no conntrack
zone, no VXLAN, the same guests and MTU; then back onto their network's bridges. The three paths are measured in turn, in CYCLES
cycles (private, floating, flat; again...), so that the machine's load at each moment and the
guests' warm-up weigh on every path alike; each path's figure is the median over the cycles.
Each measurement is the median of 5 fetches after one warm-up fetch; busybox `time` counts in
10 ms steps, so a fetch lasts at least ~0.5 s (128 MiB) to keep that step under 2%.
Under TCG the guests' emulated CPUs are the bottleneck (virtio-net and TCP in the emulator):
the figures say how much nimbus's datapath costs on top of that, not what it can carry with
KVM.
"""
import json, os, re, shutil, statistics, subprocess, tempfile

from migration import Nimbus
from real_guest import cli_out as cli

FILE_MIB = 128
PORT = 8080
ROUNDS = 5
CYCLES = 3


def guest(cloud, name, cmd):
    code, out = cloud.api.exec(name, cmd)
    if code != 0:
        raise RuntimeError(f"{name}: `{cmd}` exited {code}: {out}")
    return out


def fetch_mbit(cloud, address):
    """Median Mbit/s of ROUNDS fetches of the file by `cli` from `address`, after one fetch
    that is not counted (the first fetch of a path ran up to 0.3x slower: caches, ARP, conntrack)."""
    rates = []
    for i in range(ROUNDS + 1):
        out = guest(cloud, "cli", f"time timeout 25 wget -q -O /dev/null http://{address}:{PORT}/big 2>&1")
        m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
        if not m:
            raise RuntimeError(f"no time in: {out}")
        seconds = int(m.group(1)) * 60 + float(m.group(2))
        if i > 0:
            rates.append(FILE_MIB * 8 * 1.048576 / max(seconds, 0.01))
    return statistics.median(rates)


def ping_ms(cloud, address):
    out = guest(cloud, "cli", f"ping -c 20 -i 0.2 -q {address}")
    m = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    if not m or " 0% packet loss" not in out:
        raise RuntimeError(f"ping {address}: {out}")
    return float(m.group(1))


def measure(cloud, address):
    """The figures of the path to `address`, once `cli` reaches it (a moved tap takes a moment)."""
    for _ in range(10):
        if cloud.api.exec("cli", f"ping -c 1 -W 1 {address}")[0] == 0:
            break
    else:
        raise RuntimeError(f"cli does not reach {address}")
    return {"mbit": fetch_mbit(cloud, address), "rtt": ping_ms(cloud, address)}


def sh(*args):
    subprocess.run(list(args), check=True, capture_output=True, text=True)


def flatten(cloud, taps, hosts):
    """Moves each guest's tap (host namespace -> tap) into a scratch namespace with a plain
    bridge; the two bridges are joined by a veth pair. Answers the namespaces made."""
    tag = f"nbf{os.getpid() % 100_000}"
    made = []
    for i, (host, tap) in enumerate(zip(hosts, taps)):
        ns = f"{tag}-{i}"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
        sh("ip", "-n", f"{cloud.net}-{host}", "link", "set", tap, "netns", ns)
        sh("ip", "-n", ns, "link", "set", tap, "master", "br0", "up")
    sh("ip", "-n", made[0], "link", "add", "lnk", "mtu", "1450", "type", "veth", "peer", "name", "lnk",
       "netns", made[1])
    for ns in made:
        sh("ip", "-n", ns, "link", "set", "lnk", "master", "br0", "up")
    return made


def unflatten(cloud, taps, hosts, flat, vni):
    """Puts the taps back on their network's bridge in their hosts (their rules follow the name)."""
    for ns, host, tap in zip(flat, hosts, taps):
        sh("ip", "-n", ns, "link", "set", tap, "netns", f"{cloud.net}-{host}")
        sh("ip", "-n", f"{cloud.net}-{host}", "link", "set", tap, "master", f"nb{vni}", "up")


def run(args, pct):
    work = tempfile.mkdtemp(prefix="nimbus-bench-nettp-")
    cloud = Nimbus(os.path.abspath(args.bin), work, net_name="nbt")
    flat = []
    try:
        cloud.wait_up()
        for proto, port in (("tcp", str(PORT)), ("icmp", None)):
            cli(cloud, "secgroup", "rule", "add", "default", "--ingress", "--proto", proto,
                *(["--port", port] if port else []), "--cidr", "0.0.0.0/0")
        srv, client = cloud.create("srv"), cloud.create("cli")
        if srv["host"] == client["host"]:
            other = next(h for h in cloud.hosts if h != srv["host"])
            cli(cloud, "instance", "migrate", "cli", "--to", other, "--wait")
            client = cloud.api.req("GET", "/v1/instances/cli")
        guest(cloud, "srv", f"dd if=/dev/zero of=/tmp/big bs=1M count={FILE_MIB} 2>/dev/null; "
                            f"httpd -p {PORT} -h /tmp")
        floating = json.loads(cli(cloud, "ip", "allocate", "-o", "json"))["address"]
        cli(cloud, "ip", "attach", floating, "srv")
        private = srv["ip"].split("/")[0]
        load = os.getloadavg()[0]
        taps = ["nt" + i["id"].replace("-", "")[:10] for i in (srv, client)]
        hosts = [srv["host"], client["host"]]
        vni = json.loads(cli(cloud, "network", "show", "default", "-o", "json"))["vni"]
        results = {"private": [], "floating": [], "flat": []}
        for _ in range(CYCLES):
            results["private"].append(measure(cloud, private))
            results["floating"].append(measure(cloud, floating))
            flat = flatten(cloud, taps, hosts)
            results["flat"].append(measure(cloud, private))
            unflatten(cloud, taps, hosts, flat, vni)
            for ns in flat:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            flat = []
        report(results, srv["host"], client["host"], load)
    finally:
        for ns in flat:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def report(cycles, srv_host, cli_host, load):
    results = {name: {"mbit": statistics.median(r["mbit"] for r in rs),
                      "rtt": statistics.median(r["rtt"] for r in rs),
                      "each": " ".join(f"{r['mbit']:.0f}" for r in rs)}
               for name, rs in cycles.items()}
    print(f"\nThroughput and RTT: guest 'cli' on {cli_host} fetches {FILE_MIB} MiB from 'srv' on {srv_host} "
          f"(busybox wget/httpd, median of {ROUNDS} per measurement, {CYCLES} cycles of the paths in turn), "
          f"20 pings; TCG guests; load average before: {load:.1f}")
    flat = results["flat"]
    print(f"{'path':>9} {'Mbit/s':>8} {'ratio':>6} {'ping avg':>9} {'ratio':>6}  each cycle (Mbit/s)")
    for name, r in results.items():
        print(f"{name:>9} {r['mbit']:>8.1f} {r['mbit'] / flat['mbit']:>5.2f}x {r['rtt']:>7.2f}ms "
              f"{r['rtt'] / flat['rtt']:>5.2f}x  {r['each']}")
    print("goal: throughput at least 0.9x of the flat bridge (ratio column of Mbit/s)")
