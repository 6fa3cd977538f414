"""`bench/network.py --part migration`: the connectivity gap a peer sees while a guest live-migrates,
and how many of its 20 open TCP connections survive.

A 2-host `nimbus up` cloud (bench/migration.py's `Nimbus`, TCG guests of the default image):
guest `mig` (the one that moves) and guest `stay` (it keeps the network's segment on its
host), both on the project's default network; port 7000 opened in the default group; `mig`
runs an echo server (`nc -ll -p 7000 -e cat`) and gets a floating IP. Two peers
(bench/tcp_ticker.py), each with 10 connections and a tick every 50 ms on each:
- private: a namespace plugged into the network's bridge on `stay`'s host (bench/guest_ssh.py's
  `NetClient`, address 9 of the network), to `mig`'s private address;
- floating: the machine's root namespace, to `mig`'s floating IP (through the routers).
`mig` migrates to the other host (POST /v1/instances/mig/migrate) while the ticks run; the
gap of a connection is its longest silence between two echoes.
Anchor, same migration: the guest's own pause (the migration record's `guest_pause_ms`, the
longest silence of the guest's heartbeat across the move; `downtime_ms`, QEMU's source stop
to target resume, beside it): the part of the gap the network cannot remove.
"""
import json, os, subprocess, sys, tempfile, time, shutil

import guest_ssh
from migration import Nimbus
from real_guest import cli_out as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKER = os.path.join(ROOT, "bench", "tcp_ticker.py")
PORT = 7000
PER_PEER = 10


def start_peer(prefix, address):
    return subprocess.Popen([*prefix, "python3", TICKER, address, str(PORT), "--count", str(PER_PEER)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_peer(name, peer):
    out, err = peer.communicate("", timeout=60)
    if peer.returncode != 0:
        raise RuntimeError(f"peer {name} failed: {err[-2000:]}")
    return json.loads(out)


def wait_echo_server(cloud, ns_prefix, address, deadline=60):
    """Until a connection to the guest's port is answered (the server runs, the rule is in)."""
    probe = "import socket; s=socket.create_connection(('%s', %d), timeout=2); s.sendall(b'x\\n'); " \
            "s.settimeout(2); assert s.recv(8)" % (address, PORT)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if subprocess.run([*ns_prefix, "python3", "-c", probe], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no echo from {address}:{PORT} after {deadline} s\n{cloud.log_tail()}")


def setup(cloud):
    cli(cloud, "secgroup", "rule", "add", "default", "--ingress", "--proto", "tcp", "--port", str(PORT),
        "--cidr", "0.0.0.0/0")
    stay, mig = cloud.create("stay"), cloud.create("mig")
    code, out = cloud.api.exec("mig", f"setsid nc -ll -p {PORT} -e /bin/cat </dev/null >/dev/null 2>&1 & echo ok")
    if code != 0:
        raise RuntimeError(f"echo server in the guest: {out}")
    floating = json.loads(cli(cloud, "ip", "allocate", "-o", "json"))["address"]
    cli(cloud, "ip", "attach", floating, "mig")
    vni = json.loads(cli(cloud, "network", "show", "default", "-o", "json"))["vni"]
    client = guest_ssh.NetClient(f"{cloud.net}-{stay['host']}", vni, mig["ip"])
    return mig, stay, floating, client


def run(args, pct):
    work = tempfile.mkdtemp(prefix="nimbus-bench-netmig-")
    cloud = Nimbus(os.path.abspath(args.bin), work, net_name="nbg")
    client = None
    try:
        cloud.wait_up()
        mig, stay, floating, client = setup(cloud)
        private = mig["ip"].split("/")[0]
        in_client = ["ip", "netns", "exec", client.ns]
        wait_echo_server(cloud, in_client, private)
        wait_echo_server(cloud, [], floating)
        target = next(h for h in cloud.hosts if h != mig["host"])
        load = os.getloadavg()[0]
        peers = {"private": start_peer(in_client, private), "floating": start_peer([], floating)}
        time.sleep(3)
        asked = time.time()
        op = cloud.api.req("POST", "/v1/instances/mig/migrate", {"to": target})
        op, _ = cloud.api.wait_op(op["id"], 600)
        done = time.time()
        time.sleep(3)
        results = {name: finish_peer(name, p) for name, p in peers.items()}
        if op["state"] != "succeeded":
            raise RuntimeError(f"the migration failed: {op.get('error')}\n{cloud.log_tail()}")
        stats = cloud.api.req("GET", f"/v1/migrations/{op['id']}")["stats"]
        report(results, stats, mig["host"], target, stay["host"], load, pct)
        for name, r in results.items():
            spans = [(c["gap_end"] - c["gap"] - asked, c["gap_end"] - asked)
                     for c in r["connections"] if c["gap_end"]]
            if spans:
                print(f"{name}: the longest silences began {min(a for a, _ in spans):.2f}..{max(a for a, _ in spans):.2f} s "
                      f"and ended {min(b for _, b in spans):.2f}..{max(b for _, b in spans):.2f} s after the "
                      f"migrate call (which returned after {done - asked:.2f} s)")
    finally:
        if client:
            client.close()
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)


def report(results, stats, source, target, stay_host, load, pct):
    print(f"\nMigration gap: guest 'mig' (TCG, flavor small) {source} -> {target}, peer namespace on "
          f"{stay_host}; {PER_PEER} connections per peer, a tick every 50 ms; load average before: {load:.1f}")
    print(f"{'peer':>9} {'alive':>6} {'gap p50':>9} {'gap p99':>9} {'gap max':>9} {'ticks':>7} {'echoed':>7}")
    gaps, alive, total = [], 0, 0
    for name, r in results.items():
        conns = r["connections"]
        g = [c["gap"] for c in conns]
        gaps += g
        alive += sum(c["alive"] for c in conns)
        total += len(conns)
        errors = sorted({c["error"] for c in conns if c["error"]})
        print(f"{name:>9} {sum(c['alive'] for c in conns):>3}/{len(conns):<2} {pct(g, 50) * 1000:>7.0f}ms "
              f"{pct(g, 99) * 1000:>7.0f}ms {max(g) * 1000:>7.0f}ms {sum(c['sent'] for c in conns):>7} "
              f"{sum(c['echoed'] for c in conns):>7}" + (f"  errors: {errors}" if errors else ""))
    downtime, pause = stats.get("downtime_ms"), stats.get("guest_pause_ms")
    print(f"all: {alive}/{total} connections alive after the move (goal: 100%); gap p99 "
          f"{pct(gaps, 99) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms (goal: < 1 s)")
    if pause:
        print(f"anchor: the guest's own pause across the move (heartbeat) {pause} ms, QEMU downtime "
              f"{downtime} ms; ratio gap max / guest pause: {max(gaps) * 1000 / pause:.2f}x "
              f"(migration total {stats.get('total_ms')} ms)")
    else:
        print(f"anchor: the migration record has no guest pause figure: {stats}", file=sys.stderr)
