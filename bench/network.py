#!/usr/bin/env python3
"""Network benchmark, in parts (`--part`, repeatable; default all):
- rules: security-group rule updates on a host, with 1, 100 and 1,000 ports (below);
- dhcp: DISCOVER to ACK on a port of a nimbus network against dnsmasq (bench/network_dhcp.py);
- migration: the gap 20 TCP connections see across a live migration (bench/network_migration.py);
- throughput: guest to guest across hosts, private and floating, against a flat bridge
  (bench/network_throughput.py).

Part rules:

A one-host cloud (`nimbus up`, no guest: the rules name the ports' taps, which need not exist)
gets, straight on its agent's API (`PUT /agent/v1/firewall`, as the controller's
`firewall_sync` sends it; the bench holds the cloud's CA key, as the operator does), the
firewall of N ports: each port in a group with an SSH rule from anywhere, a rule from the
group's members (a set of N addresses) and all egress. Each round changes one rule (port 22 <->
2222) so every apply is a real change; the figure is the time of the call, which returns once
the agent's one nftables transaction is in force (the agent compares with what it applied
last and sends only the difference: here the one chain the N ports share). The first apply at
each size (which adds the new ports: their chains, map entries and set elements) is shown
apart ("add ports"); the agent's very first apply after its start rebuilds everything.
The anchor, measured in the same run: a plain `nft -f` of exactly the rules the agent left
(`nft list table inet nimbus_sg` and `table bridge nimbus`, replaced in one file) into a scratch
network namespace.
Not included: the controller's sync period (`firewall_sync` looks every 0.5 s), which adds up
to 0.5 s between the API call of a user and the agent's apply.

Usage (as root, after `cargo build --release -p nimbus-cli`; part dhcp builds its harness, a
test of crates/agent, with cargo):
  bench/network.py [--part rules|dhcp|migration|throughput] [--bin target/release/nimbus] [--runs 10]
                   [--ports 1,100,1000] [--dhcp-runs 500]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, uuid
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agent_restart import controller_tls, free_port  # noqa: E402 (one way to act as the controller)
import network_dhcp, network_migration, network_throughput  # noqa: E402

NET_NAME, NET_INDEX = "nbnet", 252
HOST_NS = f"{NET_NAME}-host1"
AGENT_URL = f"https://10.249.{NET_INDEX}.11:7701"
VNI = 4201


def firewall(ports, ssh_port):
    rule = lambda d, proto, lo, remote: {"direction": d, "protocol": proto, "port_min": lo,
                                         "port_max": lo, "remote": remote}
    rules = [rule("ingress", "tcp", ssh_port, {"cidr": "0.0.0.0/0"}),
             rule("ingress", "any", None, {"group": "web"}),
             rule("egress", "any", None, {"cidr": "0.0.0.0/0"})]
    # Distinct in their first 10 hex digits, which name the tap.
    ids = [str(uuid.UUID(int=(i + 1) << 88)) for i in range(ports)]
    return {"ports": [{"instance_id": i, "nic": 0, "vni": VNI, "rules": rules} for i in ids],
            "groups": [{"vni": VNI, "group": "web",
                        "addresses": [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(ports)]}],
            "floating": [], "names": []}


def put_firewall(tls, body):
    req = urllib.request.Request(f"{AGENT_URL}/agent/v1/firewall", data=json.dumps(body).encode(),
                                 method="PUT", headers={"content-type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60, context=tls) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"the agent refused the rules: {e.code} {e.read().decode(errors='replace')}") from e
    elapsed = time.monotonic() - t0
    if not answer.get("enforced") or answer.get("ports") != len(body["ports"]):
        raise RuntimeError(f"the agent did not enforce the rules: {answer}")
    return elapsed


def nft(ns, *args, stdin=None):
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, text=True,
                          capture_output=True, check=True).stdout


def anchor(work, runs):
    """Times `nft -f` of the agent's current tables (replaced each time) in a scratch netns."""
    text = nft(HOST_NS, "list", "table", "bridge", "nimbus") + nft(HOST_NS, "list", "table", "inet", "nimbus_sg")
    path = os.path.join(work, "rules.nft")
    with open(path, "w") as f:
        f.write("table bridge nimbus\ndelete table bridge nimbus\n"
                "table inet nimbus_sg\ndelete table inet nimbus_sg\n" + text)
    scratch = f"{NET_NAME}-anchor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            nft(scratch, "-f", path)
            times.append(time.monotonic() - t0)
        return times, sum(1 for line in text.splitlines() if line.strip())
    finally:
        subprocess.run(["ip", "netns", "del", scratch], capture_output=True)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def wait_for_cloud(binary, env, data):
    deadline = time.time() + 120
    while time.time() < deadline:
        token_file = os.path.join(data, "admin.token")
        if os.path.exists(token_file):
            env["NIMBUS_TOKEN"] = open(token_file).read().strip()
            r = subprocess.run([binary, "host", "list", "-o", "json"], env=env, capture_output=True)
            if r.returncode == 0 and json.loads(r.stdout or b"[]"):
                return
        time.sleep(0.3)
    sys.exit("cloud did not come up")


def rules_part(args):
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    data = os.path.join(work, "data")
    port = free_port()
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{port}", NIMBUS_CA_CERT=os.path.join(data, "ca.crt"))
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", "1", "--listen", f"127.0.0.1:{port}",
                           "--net-name", NET_NAME, "--net-index", str(NET_INDEX)], env=env,
                          stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)
    try:
        wait_for_cloud(args.bin, env, data)
        tls = controller_tls(data, work)
        print(f"runs per size: {args.runs}; load average before: {os.getloadavg()[0]:.1f}")
        print(f"{'ports':>6} {'add ports':>10} {'agent p50':>10} {'agent p99':>10} {'nft -f p50':>11} "
              f"{'nft -f p99':>11} {'rules':>7} {'ratio p99':>9}")
        for n in (int(x) for x in args.ports.split(",")):
            added = put_firewall(tls, firewall(n, 22))
            agent = [put_firewall(tls, firewall(n, 22 if r % 2 else 2222)) for r in range(args.runs)]
            plain, lines = anchor(work, args.runs)
            print(f"{n:>6} {added * 1000:>8.1f}ms {pct(agent, 50) * 1000:>8.1f}ms {pct(agent, 99) * 1000:>8.1f}ms "
                  f"{pct(plain, 50) * 1000:>9.1f}ms {pct(plain, 99) * 1000:>9.1f}ms {lines:>7} "
                  f"{pct(agent, 99) / pct(plain, 99):>8.2f}x")
        put_firewall(tls, firewall(0, 22) | {"groups": []})
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", HOST_NS], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{NET_NAME}-br"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["rules", "dhcp", "migration", "throughput"], action="append",
                    help="which measurement (repeatable; default: all)")
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--runs", type=int, default=10, help="rule updates per size")
    ap.add_argument("--ports", default="1,100,1000")
    ap.add_argument("--dhcp-runs", type=int, default=500, help="DHCP exchanges per server")
    args = ap.parse_args()
    for part in args.part or ["rules", "dhcp", "migration", "throughput"]:
        if part == "rules":
            rules_part(args)
        elif part == "dhcp":
            network_dhcp.run(args, pct)
        elif part == "migration":
            network_migration.run(args, pct)
        elif part == "throughput":
            network_throughput.run(args, pct)


if __name__ == "__main__":
    main()
