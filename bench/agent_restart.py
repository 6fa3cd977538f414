#!/usr/bin/env python3
"""Agent restart benchmark: how long a host's agent is gone after `kill -9`.

A one-host cloud (`nimbus up`, accelerator probed, not forced) runs one tiny guest. For N
rounds, interleaved so both see the same machine load, the agent is killed with SIGKILL and
the time until the restarted agent serves its API again (GET /vms lists the guest, adopted,
with its QEMU unchanged) is measured:
  - cached:   the restart takes the accelerator from <state dir>/accel-probe.json (nimbus now);
  - re-probe: the cache is deleted first, so the agent boots its KVM probe guest again, as every
    start did before the cache (the anchor). On a host whose /dev/kvm cannot boot a kernel the
    probe runs to its 30 s timeout.
Also prints the `startup_ms` the agents logged.

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/agent_restart.py [--bin target/release/nimbus] [--runs 3]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time
import ssl, urllib.request

NET_NAME, NET_INDEX = "nbrst", 251
AGENT_URL = f"https://10.249.{NET_INDEX}.11:7701"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def controller_tls(data, work):
    """A TLS context presenting a controller certificate signed with the cloud's CA (the
    agent API answers the controller only): the bench acts as the operator, who holds the
    CA key."""
    key, csr, crt, ext = (os.path.join(work, f"bench-controller.{e}") for e in ("key", "csr", "crt", "ext"))
    ca_crt, ca_key = os.path.join(data, "ca.crt"), os.path.join(data, "ca.key")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-subj", "/O=nimbus/OU=controller/CN=nimbus-controller", "-out", csr],
                   check=True, capture_output=True)
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=clientAuth,serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-set_serial",
                    str(int.from_bytes(os.urandom(8), "big")), "-days", "1", "-extfile", ext, "-out", crt],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=ca_crt)
    ctx.load_cert_chain(crt, key)
    return ctx


def agent_vms(tls):
    req = urllib.request.Request(f"{AGENT_URL}/agent/v1/vms")
    with urllib.request.urlopen(req, timeout=2, context=tls) as r:
        return json.load(r)


def restart_once(host_dir, tls, qemu_pid, drop_cache):
    if drop_cache:
        os.remove(os.path.join(host_dir, "accel-probe.json"))
    pid = int(open(os.path.join(host_dir, "agent.pid")).read())
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() - t0 < 120:
        try:
            new_pid = int(open(os.path.join(host_dir, "agent.pid")).read())
            if new_pid != pid and agent_vms(tls):
                elapsed = time.monotonic() - t0
                os.kill(qemu_pid, 0)  # the guest's QEMU ran through the restart
                return elapsed
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError("the agent did not come back within 120 s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    data = os.path.join(work, "data")
    host_dir = os.path.join(data, "hosts", "host1")
    port = free_port()
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{port}", NIMBUS_CA_CERT=os.path.join(data, "ca.crt"))
    env.pop("NIMBUS_ACCEL", None)
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", "1", "--listen", f"127.0.0.1:{port}",
                           "--net-name", NET_NAME, "--net-index", str(NET_INDEX)], env=env,
                          stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)
    qemu_pid = None
    try:
        t0 = time.monotonic()
        deadline = time.time() + 120
        while time.time() < deadline:
            token_file = os.path.join(data, "admin.token")
            if os.path.exists(token_file):
                env["NIMBUS_TOKEN"] = open(token_file).read().strip()
                r = subprocess.run([args.bin, "host", "list", "-o", "json"], env=env, capture_output=True)
                if r.returncode == 0 and json.loads(r.stdout or b"[]"):
                    break
            time.sleep(0.3)
        else:
            sys.exit("cloud did not come up")
        first_start = time.monotonic() - t0
        subprocess.run([args.bin, "instance", "create", "r1", "--flavor", "tiny", "--image", "default", "--wait"],
                       env=env, check=True, capture_output=True)
        vm_dir = os.path.join(host_dir, "vms")
        qemu_pid = int(open(os.path.join(vm_dir, os.listdir(vm_dir)[0], "qemu.pid")).read())
        tls = controller_tls(data, work)
        cached, probed = [], []
        for _ in range(args.runs):
            cached.append(restart_once(host_dir, tls, qemu_pid, drop_cache=False))
            probed.append(restart_once(host_dir, tls, qemu_pid, drop_cache=True))
        log = open(os.path.join(host_dir, "agent.log"), errors="replace").read()
        startup = [int(m) for m in re.findall(r"startup_ms\S*?=\S*?(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", log))]
        accel = json.load(open(os.path.join(host_dir, "accel-probe.json")))
        print(f"runs: {args.runs} (interleaved), accelerator {accel['accelerator']} ({accel['detail']})")
        print(f"first start of the cloud (probe included): {first_start:.2f} s")
        for name, xs in (("restart, cached probe", cached), ("restart, re-probe (anchor)", probed)):
            print(f"{name:27s} min {min(xs):.3f} s  median {statistics.median(xs):.3f} s  all {' '.join(f'{x:.2f}' for x in xs)}")
        print(f"ratio (median)              {statistics.median(cached) / statistics.median(probed):.4f}x")
        print(f"agent startup_ms logged: {startup}")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        if qemu_pid:
            try:
                os.kill(qemu_pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", f"{NET_NAME}-host1"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{NET_NAME}-br"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
