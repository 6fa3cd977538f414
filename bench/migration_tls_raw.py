#!/usr/bin/env python3
"""What TLS costs QEMU itself: one raw QEMU guest migrated back and forth on one host, every
other migration with `tls-creds-x509` on both ends (the way nimbus sets it up: ECDSA P-256
certificates of one CA, verify-peer on both ends, the target checking the source's
distinguished name through an `authz-list`, the source checking the target's name through
`tls-hostname`), interleaved so that both see the same machine load.

Each migration: a fresh target QEMU (`-incoming defer`, the argv of bench/migration.py), the
credentials loaded into both (timed: `object-add`), `migrate-incoming`, then `migrate` with
the parameters nimbus applies by default (downtime-limit 50 ms, max-bandwidth 1 TiB/s,
auto-converge). Figures, from QMP event timestamps (QEMU's clock) and arrival times:
  creds      object-add tls-creds-x509 on the target + on the source (ms)
  setup      `migrate` -> the source's MIGRATION `active` (the TLS handshake happens here)
  active     `active` -> the source's STOP (memory pre-copy)
  downtime   source STOP -> target RESUME
  total      `migrate` -> target RESUME
The source of the next migration is the target of this one, so every migration moves the
same guest (idle, 512 MiB, TCG).

Usage (as root): bench/migration_tls_raw.py [--runs 6]
"""
import argparse, importlib.util, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("migration_bench", os.path.join(HERE, "migration.py"))
mb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mb)

SOURCE_DN = "CN=src"
STRACE = os.environ.get("STRACE") == "1"
MULTIFD = 0


def make_certs(d):
    """A CA and a server + client certificate (ECDSA P-256, like the cloud CA's)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca-key.pem")
    run("req", "-x509", "-new", "-key", "ca-key.pem", "-subj", "/CN=bench CA", "-days", "1",
        "-out", "ca-cert.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for ep, cn in (("server", "dst"), ("client", "src")):
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{ep}-key.pem")
        run("req", "-new", "-key", f"{ep}-key.pem", "-subj", f"/CN={cn}", "-out", f"{ep}.csr")
        ext = os.path.join(d, f"{ep}.ext")
        usage = "serverAuth" if ep == "server" else "clientAuth"
        open(ext, "w").write(f"subjectAltName=DNS:{cn}\nextendedKeyUsage={usage}\n"
                             "keyUsage=critical,digitalSignature,keyEncipherment\n")
        run("x509", "-req", "-in", f"{ep}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", f"{ep}-cert.pem")
    # The agent gives QEMU the RFC 7919 group too (no DH generation when the object loads).
    tls_rs = open(os.path.join(HERE, "..", "crates", "agent", "src", "migration", "tls.rs")).read()
    body = tls_rs.split('const FFDHE2048_PEM: &str = "\\\n', 1)[1].split('";', 1)[0]
    open(os.path.join(d, "dh-params.pem"), "w").write(body.replace("\\n\\\n", "\n").replace("\\n", "\n"))


def load_creds(vm, d, endpoint):
    t = time.monotonic()
    vm.qmp.cmd("object-add", {"qom-type": "tls-creds-x509", "id": "tls0", "dir": d,
                              "endpoint": endpoint, "verify-peer": True})
    if endpoint == "server":
        vm.qmp.cmd("object-add", {"qom-type": "authz-list", "id": "authz0", "policy": "deny",
                                  "rules": [{"match": SOURCE_DN, "policy": "allow", "format": "exact"}]})
    return (time.monotonic() - t) * 1000


def migrate(src, work, disk, creds_dir, tls, n):
    dst = mb.RawVM(os.path.join(work, f"vm{n}"), disk, incoming=True)
    res = {"tls": tls, "creds_ms": 0.0}
    events = [{"capability": "events", "state": True}]
    caps = events + ([{"capability": "multifd", "state": True}] if MULTIFD else [])
    dst.qmp.cmd("migrate-set-capabilities", {"capabilities": caps})
    if MULTIFD:
        dst.qmp.cmd("migrate-set-parameters", {"multifd-channels": MULTIFD})
    if tls:
        res["creds_ms"] += load_creds(dst, creds_dir, "server")
        res["creds_ms"] += load_creds(src, creds_dir, "client")
        dst.qmp.cmd("migrate-set-parameters", {"tls-creds": "tls0", "tls-authz": "authz0"})
    else:
        for vm in (src, dst):
            for obj in ("tls0", "authz0"):
                try:
                    vm.qmp.cmd("object-del", {"id": obj})
                except RuntimeError:
                    pass
        dst.qmp.cmd("migrate-set-parameters", {"tls-creds": "", "tls-authz": ""})
    port = mb.free_port()
    dst.qmp.cmd("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
    src.qmp.cmd("migrate-set-capabilities",
                {"capabilities": caps + [{"capability": "auto-converge", "state": True}]})
    src.qmp.cmd("migrate-set-parameters", {**({"multifd-channels": MULTIFD} if MULTIFD else {}),
        "downtime-limit": 50, "max-bandwidth": 1 << 40,
        "tls-creds": "tls0" if tls else "", "tls-hostname": "dst" if tls else ""})
    n_ev = len(src.qmp.events)
    tracer = None
    if STRACE:
        out = os.path.join(work, f"strace-{n}-{'tls' if tls else 'plain'}")
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(src.proc.pid)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    t0 = time.monotonic()
    src.qmp.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    done = lambda e: (e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed")) \
        or e["event"] == "_EOF"
    ev = src.qmp.wait_event(lambda e: done(e) and e["_arrival"] >= t0, 60)
    if not ev or ev["data"].get("status") != "completed":
        raise RuntimeError(f"migration {n} ({'TLS' if tls else 'plain'}) did not complete: {ev}"
                           f" {src.qmp.cmd('query-migrate')}")
    resume = dst.qmp.wait_event(lambda e: e["event"] == "RESUME", 10)
    evs = src.qmp.events[n_ev:]
    first = lambda name, st=None: next((e for e in evs if e["event"] == name and
                                        (st is None or e["data"].get("status") == st)), None)
    active, stop = first("MIGRATION", "active"), first("STOP")
    # t0 on QEMU's clock: the `setup` event comes as `migrate` starts.
    setup = first("MIGRATION", "setup")
    res["setup_ms"] = (active["_qemu_ts"] - setup["_qemu_ts"]) * 1000
    res["active_ms"] = (stop["_qemu_ts"] - active["_qemu_ts"]) * 1000
    res["downtime_ms"] = (resume["_qemu_ts"] - stop["_qemu_ts"]) * 1000
    res["total_ms"] = (resume["_arrival"] - t0) * 1000
    res["bytes"] = src.qmp.cmd("query-migrate").get("ram", {}).get("transferred")
    if tracer:
        tracer.send_signal(2)
        tracer.wait()
        print(open(out).read()[:1500], file=sys.stderr)
    return dst, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6, help="migrations of each kind")
    ap.add_argument("--multifd", type=int, default=0, help="multifd channels (0: off)")
    args = ap.parse_args()
    global MULTIFD
    MULTIFD = args.multifd
    work = tempfile.mkdtemp(prefix="nimbus-tls-raw-")
    creds = os.path.join(work, "creds")
    os.makedirs(creds)
    make_certs(creds)
    manifest = mb.json.load(open(os.path.join(mb.IMAGE_DIR, "image.json")))
    disk = os.path.join(work, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    os.path.join(mb.IMAGE_DIR, manifest["disk"]), disk, "1G"], check=True)
    vm = None
    results = []
    try:
        vm = mb.RawVM(os.path.join(work, "vm0"), disk)
        vm.wait_ready()
        time.sleep(2)  # past the guest's start-up writes: an idle guest
        for n in range(1, 2 * args.runs + 1):
            tls = n % 2 == 1
            dst, res = migrate(vm, work, disk, creds, tls, n)
            vm.kill()
            vm = dst
            results.append(res)
            print(f"run {n}: {'TLS  ' if tls else 'plain'} " +
                  " ".join(f"{k} {v:.0f}" for k, v in res.items() if k != "tls" and v is not None),
                  file=sys.stderr)
    finally:
        if vm:
            vm.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"raw QEMU, idle {mb.MEM_MIB} MiB guest, {args.runs} migrations each, interleaved "
          f"(load average {os.getloadavg()[0]:.1f}); median (min):")
    for key in ("creds_ms", "setup_ms", "active_ms", "downtime_ms", "total_ms"):
        t = [r[key] for r in results if r["tls"]]
        p = [r[key] for r in results if not r["tls"]]
        mt, mp = statistics.median(t), statistics.median(p)
        ratio = f" = {mt / mp:.2f}x" if mp > 0 else ""
        print(f"  {key:12s} TLS {mt:7.1f} ({min(t):.1f})  plain {mp:7.1f} ({min(p):.1f}){ratio}")


if __name__ == "__main__":
    main()
