"""`bench/network.py --part dhcp`: DHCP DISCOVER to ACK on a port of a nimbus network, against
dnsmasq serving the same lease on a bridge of the same shape, measured in the same run.

nimbus: the agent's own code (`HostNetwork::plug`, via the ignored harness
`bench_dhcp_client_on_a_port` of crates/agent/tests/dhcp.rs) makes a network's segment on a
host namespace (bridge, VXLAN device, router, the port's port-security chain, the network's
DHCP responder) and plugs a VM's port; the VM's tap is replaced by a veth (same name, so the
port's rules apply) to a "guest" namespace with the VM's MAC. The client (bench/dhcp_client.py,
raw packet socket, timed in the client) runs there: the path of a guest's DHCP through port
security and the bridge to the responder thread. No QEMU (a TCG guest's own client would time
the emulator, not the server).
Anchor: dnsmasq (static lease for the same MAC and address, same options asked) on a bridge
in a scratch namespace with the same client on a veth port: no rules on the port.
"""
import json, os, shutil, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = os.path.join(ROOT, "bench", "dhcp_client.py")
MAC, ADDRESS, GATEWAY = "52:54:0a:28:00:0a", "10.40.0.10", "10.40.0.1"  # the harness's VM


def nimbus_runs(runs):
    """The client's runs against nimbus's responder (the agent test harness)."""
    env = dict(os.environ, NIMBUS_BENCH_DHCP_CLIENT=f"python3 {CLIENT} --runs {runs}")
    out = subprocess.run(["cargo", "test", "-q", "-p", "nimbus-agent", "--test", "dhcp", "--",
                          "--ignored", "--exact", "bench_dhcp_client_on_a_port", "--nocapture"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    parts = out.stdout.split("BENCH-OUTPUT")
    if out.returncode != 0 or len(parts) < 3:
        raise RuntimeError(f"the nimbus DHCP harness failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(parts[1])


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


def dnsmasq_runs(runs):
    """The same client against dnsmasq on a plain bridge in a scratch namespace."""
    tag = f"nbd{os.getpid() % 100_000}"
    server, client = f"{tag}-srv", f"{tag}-cli"
    work = tempfile.mkdtemp(prefix="nimbus-bench-dhcp-")
    dnsmasq = None
    try:
        for ns in (server, client):
            sh("ip", "netns", "add", ns)
        ins = lambda ns, *a: sh("ip", "netns", "exec", ns, *a)
        ins(server, "ip", "link", "add", "br0", "type", "bridge")
        ins(server, "ip", "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        ins(server, "ip", "link", "add", "port0", "type", "veth", "peer", "name", "eth0", "netns", client)
        ins(server, "ip", "link", "set", "port0", "mtu", "1450", "master", "br0", "up")
        ins(server, "ip", "link", "set", "br0", "up")
        ins(client, "ip", "link", "set", "eth0", "address", MAC, "mtu", "1450", "up")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", server, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--interface=br0", "--bind-interfaces", "--user=root",
             f"--dhcp-range={ADDRESS},{ADDRESS},255.255.255.0,24h", f"--dhcp-host={MAC},{ADDRESS}",
             f"--dhcp-option=3,{GATEWAY}", f"--dhcp-option=6,{GATEWAY}", "--dhcp-option=15,net.internal",
             f"--dhcp-leasefile={work}/leases", f"--pid-file={work}/pid", "--log-facility=/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        if dnsmasq.poll() is not None:
            raise RuntimeError(f"dnsmasq did not start: {dnsmasq.stderr.read().decode()}")
        # Bring-up settles (the bridge's port forwards after it is up) before the timed runs.
        time.sleep(1.0)
        out = sh("ip", "netns", "exec", client, "python3", CLIENT, "--runs", str(runs), "eth0", timeout=1200)
        return json.loads(out.stdout)
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
        for ns in (client, server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(args, pct):
    """Prints nimbus's and dnsmasq's DISCOVER->OFFER, REQUEST->ACK and DISCOVER->ACK."""
    print(f"DHCP: {args.dhcp_runs} DISCOVER..ACK exchanges each, client bench/dhcp_client.py (raw "
          f"socket); load average before: {os.getloadavg()[0]:.1f}")
    results = {"nimbus": nimbus_runs(args.dhcp_runs), "dnsmasq": dnsmasq_runs(args.dhcp_runs)}
    print(f"{'server':>8} {'ok':>5} {'offer p50':>10} {'ack p50':>9} {'DISC..ACK p50':>14} "
          f"{'p99':>9} {'max':>9}")
    p99 = {}
    for name, r in results.items():
        runs = r["runs"]
        if not runs or any(a != ADDRESS for *_, a in runs):
            raise RuntimeError(f"{name}: no lease or a wrong address: {r}")
        ms = lambda i, p: pct([x[i] for x in runs], p) * 1000
        p99[name] = ms(2, 99)
        print(f"{name:>8} {len(runs):>5} {ms(0, 50):>8.2f}ms {ms(1, 50):>7.2f}ms {ms(2, 50):>12.2f}ms "
              f"{p99[name]:>7.2f}ms {ms(2, 100):>7.2f}ms" + (f"  errors: {r['errors'][:3]}" if r["errors"] else ""))
    print(f"ratio DISCOVER..ACK p99 nimbus/dnsmasq: {p99['nimbus'] / p99['dnsmasq']:.2f}x (goal: nimbus p99 < 50 ms)")
