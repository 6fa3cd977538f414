#!/usr/bin/env python3
"""Live migration benchmark: nimbus versus raw QEMU (defaults and hand-tuned), same guest, same run.

For each workload (idle, and a guest dirtying 20, 100 and 400 MiB/s of a 256 MiB buffer with
`memcheck --no-verify 256 RATE`) and each run, interleaved so that all variants see the
same machine load:

  - nimbus: an instance of flavor `small` (512 MiB, 1 vCPU) of a 2-host `nimbus up` cloud
    (network namespaces, as root) is migrated to the other host through the API
    (POST /v1/instances/NAME/migrate); the figures come from the migration record
    (GET /v1/migrations/ID: total_ms, downtime_ms, guest_pause_ms, transferred_bytes) and the
    per-step timings of its operation; converged = the operation succeeded.
  - raw QEMU, defaults: the same guest launched by hand with the argv nimbus uses (as
    bench/boot.py), 512 MiB, TCG; a target with the same argv plus `-incoming defer` on the same
    overlay file (shared storage, one host), `migrate-incoming tcp:127.0.0.1:PORT`, then just
    `migrate` (only the `events` capability is set, which changes nothing but lets us see the
    MIGRATION event).
  - raw QEMU, hand-tuned: downtime-limit 50 ms, max-bandwidth 1 TiB/s, multifd with 2 channels
    (capability on both sides), auto-converge.
  - optional (--raw-nimbus-policy): raw QEMU with the policy nimbus applies by default
    (downtime-limit 50 ms, max-bandwidth 1 TiB/s, auto-converge, no multifd), which separates
    what nimbus's choice of parameters costs from what its orchestration costs.

Raw metrics: total = `migrate` command to the target's RESUME event (also shown: from launching
the target QEMU); downtime = target RESUME - source STOP (QMP event timestamps); guest-visible
pause = largest gap between consecutive heartbeat lines (timestamped on arrival, source then
target); bytes = query-migrate ram.transferred once completed. Each migration gets 60 s, then
`migrate_cancel` (nimbus: operation cancel) and converged = no.

TLS cost (--tls): a second 2-host cloud whose agents run with `--insecure-migration`
(NIMBUS_INSECURE_MIGRATION=true) gets an identical instance (same image, flavor, workload);
its runs interleave with the first cloud's, whose migrations use TLS (the default: memory
stream and NBD disk mirror). Printed: total time, downtime, pause, bytes of both, and the
ratios TLS / plain (goal: total <= 1.15x, downtime unchanged). --local-disks makes the disks
local to each host so the NBD mirror is measured too; --no-raw skips the raw QEMU variants.

Block migration (--local-disks --disk-mib N): before the first run, each cloud's guest writes
N MiB of random data (incompressible, no zero blocks the mirror could skip) to a file on its
disk (/data), so every migration's NBD mirror carries at least that much real disk data
through the tunnel (TLS) or QEMU's plain NBD (--insecure-migration); after the runs the file's
checksum is compared with the one taken at write time. Printed like the TLS rows, plus the
disk bytes each migration mirrors (the guest's top disk layer, measured on the host).

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/migration.py [--bin target/release/nimbus] [--runs 3] [--rates 0,20,100,400]
                     [--raw-nimbus-policy] [--timeout 60] [--json FILE] [--no-nimbus]
                     [--tls] [--local-disks [--disk-mib 256]] [--no-raw]
NIMBUS_BENCH_NET=NAME names the first cloud's bridge/namespaces (default nbm; the plain one is nbp).
Takes ~7 minutes with 3 runs (most of it the raw defaults timing out at 400 MiB/s), ~8 with
--raw-nimbus-policy. Per-run lines go to stderr, the tables to stdout.
"""
import argparse, base64, datetime, json, os, queue, re, shutil, signal, socket, statistics, subprocess
import http.client, ssl, sys, tempfile, threading, time, urllib.parse

IMAGE_DIR = os.path.join(os.environ.get("NIMBUS_IMAGE_CACHE", "/var/cache/nimbus"), "images", "default")
MEM_MIB = 512
WORK_MIB = 256
TIMEOUT_S = 60.0
HB_INTERVAL_MS = 50
NET_NAME = os.environ.get("NIMBUS_BENCH_NET", "nbm")  # another name when another benchmark holds nbm
NET_INDEXES = range(240, 250)  # 10.249.X.0/24 of the hosts' network: the first one not in use
MIB = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect_unix(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def workload_cmd(rate):
    return f"memcheck --no-verify {WORK_MIB} {rate} </dev/null >/dev/null 2>&1 &"


# ---------------------------------------------------------------------------------------------
# Raw QEMU


class QMP:
    """Minimal synchronous QMP client; a reader thread collects events with their timestamps."""

    def __init__(self, path):
        self.sock = connect_unix(path)
        self.file = self.sock.makefile("rb")
        self.replies = queue.Queue()
        self.events = []
        self.cond = threading.Condition()
        json.loads(self.file.readline())  # greeting
        threading.Thread(target=self._read, daemon=True).start()
        self.cmd("qmp_capabilities")

    def _read(self):
        try:
            for line in self.file:
                self._handle(line)
        except OSError:
            pass  # QEMU was killed
        with self.cond:
            self.events.append({"event": "_EOF", "_arrival": time.monotonic()})
            self.cond.notify_all()

    def _handle(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if "event" in msg:
            ts = msg.get("timestamp", {})
            msg["_qemu_ts"] = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
            msg["_arrival"] = time.monotonic()
            with self.cond:
                self.events.append(msg)
                self.cond.notify_all()
        else:
            self.replies.put(msg)

    def cmd(self, name, args=None, timeout=30):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        reply = self.replies.get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def wait_event(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Heartbeat:
    """Timestamps every heartbeat line (time.monotonic()) as it arrives."""

    def __init__(self, path):
        self.sock = connect_unix(path)
        self.arrivals = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"hb "):
                    self.arrivals.append(now)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Exec:
    """The guest's exec channel (guest/README.md): `<id> <b64 cmd>` -> `NIMBUS-EXEC id code b64`."""

    def __init__(self, path):
        self.sock = connect_unix(path)
        self.file = self.sock.makefile("rb")
        self.n = 0

    def run(self, cmd, timeout=30):
        self.n += 1
        self.sock.settimeout(timeout)
        self.sock.sendall(f"{self.n} {base64.b64encode(cmd.encode()).decode()}\n".encode())
        while True:
            line = self.file.readline().decode(errors="replace").strip()
            if not line:
                raise RuntimeError("exec channel closed")
            parts = line.split(" ")
            if len(parts) == 4 and parts[0] == "NIMBUS-EXEC" and parts[1] == str(self.n):
                out = "" if parts[3] == "-" else base64.b64decode(parts[3]).decode(errors="replace")
                return int(parts[2]), out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_argv(d, disk, incoming=False):
    manifest = json.load(open(os.path.join(IMAGE_DIR, "image.json")))
    path = lambda k: os.path.join(IMAGE_DIR, manifest[k])
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
            "-m", str(MEM_MIB), "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-kernel", path("kernel"), "-initrd", path("initrd"), "-append", manifest["cmdline"],
            "-blockdev", f"driver=file,filename={disk},node-name=disk0-file",
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
            "-device", "virtio-blk-pci,drive=disk0,id=vda",
            "-chardev", f"socket,id=console,path={d}/console.sock,server=on,wait=off,logfile={d}/console.log",
            "-serial", "chardev:console",
            "-chardev", f"socket,id=heartbeat,path={d}/hb.sock,server=on,wait=off", "-serial", "chardev:heartbeat",
            "-chardev", f"socket,id=exec,path={d}/exec.sock,server=on,wait=off", "-serial", "chardev:exec",
            "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off", "-nic", "none"]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


class RawVM:
    def __init__(self, d, disk, incoming=False):
        os.makedirs(d, exist_ok=True)
        self.d = d
        self.proc = subprocess.Popen(raw_argv(d, disk, incoming), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "stderr"), "w"))
        self.qmp = self.hb = self.exec = None
        try:
            self.qmp = QMP(os.path.join(d, "qmp.sock"))
            self.hb = Heartbeat(os.path.join(d, "hb.sock"))
        except Exception:
            self.kill()
            raise

    def wait_ready(self, timeout=60):
        log = os.path.join(self.d, "console.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(log) and b"nimbus-guest ready" in open(log, "rb").read():
                self.exec = Exec(os.path.join(self.d, "exec.sock"))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"raw QEMU guest not ready: {open(os.path.join(self.d, 'stderr')).read()[-500:]}")

    def kill(self):
        for c in (self.qmp, self.hb, self.exec):
            if c:
                c.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_workload(run_cmd, rate):
    """Starts the dirtier through `run_cmd(cmd) -> (code, output)`; returns the measured rate."""
    if rate == 0:
        return 0.0
    code, out = run_cmd("rm -f /run/memcheck.status; " + workload_cmd(rate))
    if code != 0:
        raise RuntimeError(f"workload: {out}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, out = run_cmd("cat /run/memcheck.status 2>/dev/null")
        if code == 0 and "pages=" in out:
            break
        time.sleep(0.3)
    else:
        raise RuntimeError("memcheck did not start")
    time.sleep(1.5)  # steady state: past the initial fill, at RATE
    code, out = run_cmd("cat /run/memcheck.status")
    m = re.search(r"rate_mib_s=([0-9.]+)", out)
    return float(m.group(1)) if m else float("nan")


def raw_run(work, variant, rate):
    d = tempfile.mkdtemp(dir=work, prefix=f"raw-{variant}-")
    disk = os.path.join(d, "disk.qcow2")
    manifest = json.load(open(os.path.join(IMAGE_DIR, "image.json")))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    os.path.join(IMAGE_DIR, manifest["disk"]), disk, "1G"], check=True)
    src = dst = None
    try:
        src = RawVM(os.path.join(d, "src"), disk)
        src.wait_ready()
        measured = start_workload(src.exec.run, rate)
        tuned = variant in ("tuned", "policy")
        multifd = variant == "tuned"
        t_launch = time.monotonic()
        dst = RawVM(os.path.join(d, "dst"), disk, incoming=True)
        port = free_port()
        dst_caps = [{"capability": "events", "state": True}]
        if multifd:
            dst_caps.append({"capability": "multifd", "state": True})
        dst.qmp.cmd("migrate-set-capabilities", {"capabilities": dst_caps})
        if multifd:
            dst.qmp.cmd("migrate-set-parameters", {"multifd-channels": 2})
        dst.qmp.cmd("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        src_caps = [{"capability": "events", "state": True}]
        if tuned:
            src_caps.append({"capability": "auto-converge", "state": True})
            params = {"downtime-limit": 50, "max-bandwidth": 1 << 40}
            if multifd:
                src_caps.append({"capability": "multifd", "state": True})
                params["multifd-channels"] = 2
            src.qmp.cmd("migrate-set-capabilities", {"capabilities": src_caps})
            src.qmp.cmd("migrate-set-parameters", params)
        else:
            src.qmp.cmd("migrate-set-capabilities", {"capabilities": src_caps})
        n_src_events = len(src.qmp.events)
        t0 = time.monotonic()
        src.qmp.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        final = lambda e: (e["event"] == "MIGRATION" and e["data"]["status"] in ("completed", "failed", "cancelled")
                           and e["_arrival"] >= t0) or e["event"] == "_EOF"
        ev = src.qmp.wait_event(final, TIMEOUT_S)
        converged = ev is not None and ev["event"] == "MIGRATION" and ev["data"]["status"] == "completed"
        info = src.qmp.cmd("query-migrate")
        if ev is None:
            src.qmp.cmd("migrate_cancel")  # the figures were read just before
            src.qmp.wait_event(final, 30)
        for _ in range(40):  # `completed` may come before the statistics are filled
            if info.get("ram") or info.get("status") not in ("completed",):
                break
            time.sleep(0.05)
            info = src.qmp.cmd("query-migrate")
        res = {"converged": converged, "measured_rate": measured,
               "bytes": info.get("ram", {}).get("transferred"),
               "qemu_downtime_ms": info.get("downtime")}
        if not converged:
            res.update(total=time.monotonic() - t0)
            return res
        resume = dst.qmp.wait_event(lambda e: e["event"] == "RESUME", 10)
        stops = [e for e in src.qmp.events[n_src_events:] if e["event"] == "STOP"]
        t_end = resume["_arrival"] if resume else time.monotonic()
        res["total"] = t_end - t0
        res["total_with_launch"] = t_end - t_launch
        if resume and stops:
            res["downtime_ms"] = (resume["_qemu_ts"] - stops[-1]["_qemu_ts"]) * 1000
        # Guest-visible pause: heartbeats until the target has beaten for a while.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not [t for t in dst.hb.arrivals if t > t_end + 0.3]:
            time.sleep(0.05)
        before = [t for t in src.hb.arrivals if t < t0]
        seq = before[-1:] + [t for t in src.hb.arrivals if t >= t0] + list(dst.hb.arrivals)
        seq = [t for t in seq if t <= t_end + 0.3 or t == seq[-1]]
        res["pause_ms"] = max((b - a for a, b in zip(seq, seq[1:])), default=float("nan")) * 1000
        if not dst.hb.arrivals:
            res["pause_ms"] = float("nan")
        return res
    finally:
        for vm in (dst, src):
            if vm:
                vm.kill()
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# nimbus


class Api:
    """A client of the REST API that keeps its connection (one per thread), as the CLI does:
    a TLS handshake per request would add milliseconds to every figure measured through it."""

    def __init__(self, base, token, cafile):
        self.base, self.token = base, token
        # The controller serves HTTPS with a certificate of the cloud's own CA.
        self.tls = ssl.create_default_context(cafile=cafile)
        self.local = threading.local()

    def _conn(self, timeout):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            u = urllib.parse.urlsplit(self.base)
            conn = http.client.HTTPSConnection(u.hostname, u.port, context=self.tls, timeout=timeout)
            self.local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def req(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, ssl.SSLError):
                # A kept connection the server closed: once more on a new one.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw.decode(errors='replace')}")
        return json.loads(raw) if raw else None

    def wait_op(self, op_id, timeout, cancel_after=None, poll=0.1):
        """Waits for the operation's end with the API's long poll (`wait_secs`); `poll` is
        the least time between two reads that answered unchanged (an older controller)."""
        t0 = time.monotonic()
        cancelled, last = False, None
        while True:
            asked = time.monotonic()
            wait = max(1, min(10, int(timeout - (asked - t0))))
            if cancel_after and not cancelled:
                wait = max(1, min(wait, int(cancel_after)))
            op = self.req("GET", f"/v1/operations/{op_id}?wait_secs={wait}", timeout=wait + 30)
            if op["state"] in ("succeeded", "failed", "cancelled"):
                return op, cancelled
            if cancel_after and not cancelled and time.monotonic() - t0 > cancel_after:
                self.req("POST", f"/v1/operations/{op_id}/cancel")
                cancelled = True
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"operation {op_id} still {op['state']} after {timeout} s")
            if op == last:
                time.sleep(max(0.0, poll - (time.monotonic() - asked)))
            last = op

    def exec(self, name, cmd):
        out = self.req("POST", f"/v1/instances/{name}/exec", {"command": cmd, "timeout_secs": 30})
        return out["exit_code"], out["output"]


def parse_ts(s):
    # RFC 3339 with up to nanoseconds; fromisoformat wants at most microseconds.
    s = re.sub(r"(\.\d{6})\d+", r"\1", s.replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(s)


def step_ms(op):
    out = {}
    for s in op.get("steps", []):
        if s.get("started_at") and s.get("finished_at"):
            out[s["name"]] = (parse_ts(s["finished_at"]) - parse_ts(s["started_at"])).total_seconds() * 1000
    if op.get("steps") and op["steps"][0].get("started_at"):
        out["(queue: created->first step)"] = (parse_ts(op["steps"][0]["started_at"]) -
                                               parse_ts(op["created_at"])).total_seconds() * 1000
        last = max((parse_ts(s["finished_at"]) for s in op["steps"] if s.get("finished_at")), default=None)
        if last:
            out["(created->last step done)"] = (last - parse_ts(op["created_at"])).total_seconds() * 1000
    return out


class Nimbus:
    def __init__(self, binary, work, shared=None, net_name=NET_NAME, insecure_migration=False, avoid=()):
        self.bin, self.work, self.net = binary, work, net_name
        os.makedirs(work, exist_ok=True)
        self.data = os.path.join(work, "data")
        self.port = port = free_port()
        help_text = subprocess.run([binary, "up", "--help"], capture_output=True, text=True).stdout
        # Shared storage when the binary has it, unless the caller says (False: local disks).
        self.shared = "--shared-storage" in help_text if shared is None else shared
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if subprocess.run(["ip", "link", "show", f"{self.net}-br"], capture_output=True).returncode == 0:
            raise RuntimeError(f"bridge {self.net}-br exists already: another run of this benchmark?")
        self.index = index = next(i for i in NET_INDEXES if f" 10.249.{i}." not in used and i not in avoid)
        argv = [binary, "up", "--data-dir", self.data, "--hosts", "2", "--listen", f"127.0.0.1:{port}",
                "--net-name", self.net, "--net-index", str(index)]
        if self.shared:
            argv.append("--shared-storage")
        # The agents `nimbus up` starts inherit it: plain TCP migrations (benchmarks only).
        env = dict(os.environ, NIMBUS_INSECURE_MIGRATION="true" if insecure_migration else "false")
        self.log = os.path.join(work, "up.log")
        self.up = subprocess.Popen(argv, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        self.api = None

    def wait_up(self):
        deadline = time.time() + 180
        token_file = os.path.join(self.data, "admin.token")
        while time.time() < deadline:
            if self.up.poll() is not None:
                raise RuntimeError(f"nimbus up exited: {self.log_tail()}")
            if os.path.exists(token_file):
                self.api = Api(f"https://127.0.0.1:{self.port}", open(token_file).read().strip(),
                               os.path.join(self.data, "ca.crt"))
                try:
                    hosts = self.api.req("GET", "/v1/hosts")
                    if len(hosts) >= 2:
                        self.hosts = sorted(h["name"] for h in hosts)
                        return
                except Exception:
                    pass
            time.sleep(0.3)
        raise RuntimeError(f"cloud did not come up: {self.log_tail()}")

    def log_tail(self, n=30):
        try:
            return "".join(open(self.log).readlines()[-n:])
        except OSError:
            return ""

    def create(self, name):
        op = self.api.req("POST", "/v1/instances", {"name": name, "flavor": "small", "image": "default"})
        op, _ = self.api.wait_op(op["id"], 240)
        if op["state"] != "succeeded":
            raise RuntimeError(f"create {name}: {op.get('error')}\n{self.log_tail()}")
        inst = self.api.req("GET", f"/v1/instances/{name}")
        if inst["state"] != "running":
            raise RuntimeError(f"instance {name} is {inst['state']}")
        return inst

    def fill_disk(self, name, mib, chunk_mib=16):
        """Writes `mib` MiB of random data to /data/blob in the guest (in chunks: each exec is
        bounded), synced; answers its checksum."""
        for i in range(0, mib, chunk_mib):
            n = min(chunk_mib, mib - i)
            code, out = self.api.exec(name, f"dd if=/dev/urandom of=/data/blob bs=1M count={n} seek={i} "
                                            f"conv=notrunc 2>&1 && sync")
            if code != 0:
                raise RuntimeError(f"filling the disk of {name}: {out}")
        return self.disk_checksum(name)

    def disk_checksum(self, name):
        code, out = self.api.exec(name, "sync && md5sum /data/blob && ls -l /data/blob")
        if code != 0:
            raise RuntimeError(f"checksum of {name}'s /data/blob: {out}")
        return out.split()[0]

    def disk_bytes(self, name):
        """Bytes the guest's disk occupies on its host (allocated blocks of the instance's
        disk.qcow2 under this cloud's data dir): what its mirror copies, at least."""
        inst = self.api.req("GET", f"/v1/instances/{name}")
        for root, dirs, files in os.walk(self.data):
            if os.path.basename(root) == inst["id"] and "disk.qcow2" in files and inst["host"] in root:
                return os.stat(os.path.realpath(os.path.join(root, "disk.qcow2"))).st_blocks * 512
        return None

    def run(self, name, rate):
        inst = self.api.req("GET", f"/v1/instances/{name}")
        target = next(h for h in self.hosts if h != inst["host"])
        disk = self.disk_bytes(name) if not self.shared else None
        measured = start_workload(lambda c: self.api.exec(name, c), rate)
        op = self.api.req("POST", f"/v1/instances/{name}/migrate", {"to": target})
        op, cancelled = self.api.wait_op(op["id"], TIMEOUT_S + 180, cancel_after=TIMEOUT_S)
        m = self.api.req("GET", f"/v1/migrations/{op['id']}")
        st = m["stats"]
        res = {"converged": op["state"] == "succeeded", "measured_rate": measured,
               "total": st["total_ms"] / 1000, "downtime_ms": st.get("downtime_ms"),
               "pause_ms": st.get("guest_pause_ms"), "bytes": st.get("transferred_bytes"),
               "rounds": st.get("rounds"), "escalations": st.get("escalations") or [],
               "disk_transfer": st.get("disk_transfer"), "steps": step_ms(op), "op_id": op["id"],
               "from": inst["host"], "to": target, "state": op["state"], "error": op.get("error"),
               "cancelled_by_bench": cancelled, "disk_bytes": disk}
        if rate:
            self.api.exec(name, "killall memcheck; true")
        return res

    def operation_show(self, op_id):
        env = dict(os.environ, NIMBUS_API=self.api.base, NIMBUS_TOKEN=self.api.token,
                   NIMBUS_CA_CERT=os.path.join(self.data, "ca.crt"))
        r = subprocess.run([self.bin, "operation", "show", op_id], env=env, capture_output=True, text=True)
        return (r.stdout + r.stderr).rstrip()

    def close(self):
        try:
            if self.api:
                for i in self.api.req("GET", "/v1/instances"):
                    try:
                        op = self.api.req("DELETE", f"/v1/instances/{i['name']}")
                        if op and "id" in op:
                            self.api.wait_op(op["id"], 120)
                    except Exception as e:
                        print(f"cleanup: delete {i['name']}: {e}", file=sys.stderr)
        except Exception as e:
            print(f"cleanup: {e}", file=sys.stderr)
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
        # Any QEMU left behind under our data dir (by PID, never by name).
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("qemu-system") and self.data in cmd:
                print(f"cleanup: killing leftover QEMU {pid}", file=sys.stderr)
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        for i in (1, 2):
            subprocess.run(["ip", "netns", "del", f"{self.net}-host{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{self.net}-br"], capture_output=True)


# ---------------------------------------------------------------------------------------------
# Report


def fmt(xs, scale=1.0, digits=0):
    xs = [x * scale for x in xs if x is not None and x == x]
    if not xs:
        return "-"
    return f"{min(xs):.{digits}f} / {statistics.median(xs):.{digits}f}"


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


VARIANT_NAMES = {"nimbus": "nimbus", "default": "raw default", "tuned": "raw tuned",
                 "policy": "raw, nimbus policy", "plain": "nimbus, no TLS"}


def report_tls(results):
    """TLS (the default) against --insecure-migration, same run: medians and ratios."""
    conv = {v: [r for r in results[v] if r["converged"]] for v in ("nimbus", "plain")}
    parts = []
    for key, name, unit in (("total", "total time", "s"), ("downtime_ms", "downtime", "ms"),
                            ("pause_ms", "guest pause", "ms"), ("bytes", "bytes sent", "MiB"),
                            ("disk_bytes", "disk mirrored (at least)", "MiB")):
        scale = 1 / MIB if unit == "MiB" else 1
        t = med([r.get(key) for r in conv["nimbus"]])
        p = med([r.get(key) for r in conv["plain"]])
        t, p = (None if t is None else t * scale), (None if p is None else p * scale)
        fmt_v = (lambda x: "-" if x is None else f"{x:.2f}" if unit == "s" else f"{x:.0f}")
        parts.append(f"{name} TLS {fmt_v(t)} {unit} / plain {fmt_v(p)} {unit} = {ratio(t, p)}")
    print("TLS vs plain TCP (medians of converged runs, same run): " + "; ".join(parts))
    for v in ("nimbus", "plain"):
        steps = {}
        for r in conv[v]:
            for k, ms in r.get("steps", {}).items():
                steps.setdefault(k, []).append(ms)
        print(f"  {VARIANT_NAMES[v]} steps (ms, min / median): "
              + ", ".join(f"{k} {fmt(ms)}" for k, ms in steps.items()))
    t = med([r.get("total") for r in conv["nimbus"]])
    p = med([r.get("total") for r in conv["plain"]])
    dt = med([r.get("downtime_ms") for r in conv["nimbus"]])
    dp = med([r.get("downtime_ms") for r in conv["plain"]])
    goals = [(f"total TLS <= 1.15x plain ({ratio(t, p)})", t is not None and p and t <= 1.15 * p),
             (f"downtime unchanged (median TLS {dt} ms, plain {dp} ms; within 10 ms)",
              dt is not None and dp is not None and dt <= dp + 10)]
    print("TLS goals: " + "; ".join(f"{g}: {'yes' if ok else 'NO'}" for g, ok in goals))


def report(rate, results, idle_bytes, runs):
    label = "idle" if rate == 0 else f"dirtying {rate} MiB/s ({WORK_MIB} MiB buffer)"
    print(f"\n=== workload: {label}; {runs} runs; figures are min / median (converged runs only, "
          f"except bytes/total of timed-out runs, which count in the timeout column) ===")
    variants = [(VARIANT_NAMES[v], v) for v in results]
    print(f"{'metric':34s}" + "".join(f"{n:>22s}" for n, _ in variants))

    def row(name, key, scale=1.0, digits=0, conv_only=True):
        cells = []
        for _, v in variants:
            rs = [r for r in results[v] if r.get("converged") or not conv_only]
            cells.append(fmt([r.get(key) for r in rs], scale, digits))
        print(f"{name:34s}" + "".join(f"{c:>22s}" for c in cells))

    conv = [f"{sum(r['converged'] for r in results[v])}/{len(results[v])}" for _, v in variants]
    print(f"{'converged':34s}" + "".join(f"{c:>22s}" for c in conv))
    row("total time (s)", "total", 1, 2)
    row("total time, all runs (s)", "total", 1, 2, conv_only=False)
    row("  raw: incl. target QEMU launch (s)", "total_with_launch", 1, 2)
    row("downtime STOP->RESUME (ms)", "downtime_ms", 1, 0)
    row("  QEMU's own downtime figure (ms)", "qemu_downtime_ms", 1, 0)
    row("guest-visible pause (ms)", "pause_ms", 1, 0)
    row("bytes sent (MiB)", "bytes", 1 / MIB, 0)
    row("bytes sent, all runs (MiB)", "bytes", 1 / MIB, 0, conv_only=False)
    row("dirty rate measured in guest", "measured_rate", 1, 0, conv_only=False)
    row("nimbus pre-copy rounds", "rounds", 1, 0)
    if "plain" in results:
        report_tls(results)
    if "tuned" not in results:
        return
    if "policy" in results:
        for k, name in (("total", "total time"), ("bytes", "bytes sent")):
            p = med([r.get(k) for r in results["policy"] if r["converged"]])
            t = med([r.get(k) for r in results["tuned"] if r["converged"]])
            n = med([r.get(k) for r in results.get("nimbus", []) if r["converged"]])
            print(f"ratio {name} (median): raw nimbus-policy/raw-tuned {ratio(p, t)}, nimbus/raw nimbus-policy "
                  f"{ratio(n, p)}")
    if "nimbus" not in results:
        return
    n = {k: med([r.get(k) for r in results["nimbus"] if r["converged"]]) for k in ("total", "bytes")}
    for k, name in (("total", "total time"), ("bytes", "bytes sent")):
        t = med([r.get(k) for r in results["tuned"] if r["converged"]])
        d = med([r.get(k) for r in results["default"] if r["converged"]])
        if d is None and results["default"] and n[k] is not None:
            dd = med([r.get(k) for r in results["default"]])
            rd = f"< {n[k] / dd:.2f}x (raw default never converged; ratio to its {TIMEOUT_S:.0f} s timeout figure)"
        else:
            rd = ratio(n[k], d) + ("" if all(r["converged"] for r in results["default"])
                                   else " (raw default: converged runs only)")
        print(f"ratio {name} (median): nimbus/raw-tuned {ratio(n[k], t)}, nimbus/raw-default {rd}")
    tl = med([r.get("total_with_launch") for r in results["tuned"] if r["converged"]])
    tr = med([r["steps"].get("transfer") for r in results["nimbus"] if r["converged"] and "transfer" in r["steps"]])
    t = med([r.get("total") for r in results["tuned"] if r["converged"]])
    print(f"ratio total time (median), like for like: nimbus total / raw tuned incl. target launch "
          f"{ratio(n['total'], tl)}; nimbus transfer step / raw tuned migrate->RESUME "
          f"{ratio(tr / 1000 if tr else None, t)}")
    steps = {}
    for r in results["nimbus"]:
        for k, v in r.get("steps", {}).items():
            steps.setdefault(k, []).append(v)
    if steps:
        print("nimbus operation steps (ms, min / median): " +
              ", ".join(f"{k} {fmt(v)}" for k, v in steps.items()))
    for r in results["nimbus"]:
        extra = f" escalations: {r['escalations']}" if r["escalations"] else ""
        err = f" error: {r['error']}" if r.get("error") else ""
        print(f"  nimbus run {r['from']}->{r['to']}: {r['state']}, disk {r['disk_transfer']}, "
              f"rounds {r['rounds']}, op {r['op_id']}{extra}{err}")
    # Goals of the issue.
    nr = [r for r in results["nimbus"] if r["converged"]]
    goals = []
    goals.append(("converged 100%", len(nr) == len(results["nimbus"])))
    t = med([r.get("total") for r in results["tuned"] if r["converged"]])
    if n["total"] is not None and t:
        goals.append((f"total <= 1.2x raw tuned ({n['total'] / t:.2f}x)", n["total"] <= 1.2 * t))
    if rate <= 100:
        dmax = max((r["downtime_ms"] for r in nr if r.get("downtime_ms") is not None), default=None)
        goals.append((f"downtime < 20 ms (max {dmax} ms)", dmax is not None and dmax < 20))
    pmax = max((r["pause_ms"] for r in nr if r.get("pause_ms") is not None), default=None)
    goals.append((f"pause <= {HB_INTERVAL_MS + 50} ms (max {pmax} ms)", pmax is not None and pmax <= HB_INTERVAL_MS + 50))
    if idle_bytes and nr:
        budgets = []
        for r in nr:
            transfer_s = r["steps"].get("transfer", r["total"] * 1000) / 1000
            dirtied = (r["measured_rate"] or 0) * MIB * transfer_s
            budgets.append(r["bytes"] / (idle_bytes + (WORK_MIB * MIB if rate else 0) + dirtied))
        goals.append((f"bytes <= 1.2x (non-zero memory + dirtied during transfer step) (max {max(budgets):.2f}x; "
                      f"non-zero memory estimated as the idle nimbus median {idle_bytes / MIB:.0f} MiB"
                      + (f" + {WORK_MIB} MiB buffer" if rate else "") + ")", max(budgets) <= 1.2))
    print("goals: " + "; ".join(f"{g}: {'yes' if ok else 'NO'}" for g, ok in goals))


def main():
    global TIMEOUT_S
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rates", default="0,20,100,400", help="MiB/s, 0 = idle")
    ap.add_argument("--no-nimbus", action="store_true", help="raw QEMU only (debugging)")
    ap.add_argument("--raw-nimbus-policy", action="store_true",
                    help="add a raw QEMU variant with nimbus's default policy (50 ms, uncapped, auto-converge, "
                         "no multifd), to tell the policy's share from the platform's")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per migration before cancelling")
    ap.add_argument("--json", help="also write every run's figures to this file")
    ap.add_argument("--tls", action="store_true",
                    help="add a second cloud with --insecure-migration: TLS (default) vs plain TCP, same run")
    ap.add_argument("--local-disks", action="store_true",
                    help="disks local to each host (mirrored over NBD) instead of shared storage")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw QEMU variants")
    ap.add_argument("--disk-mib", type=int, default=0,
                    help="with --local-disks: MiB of random data each guest writes to its disk first, "
                         "so the mirror carries real disk data")
    args = ap.parse_args()
    if args.disk_mib and not args.local_disks:
        ap.error("--disk-mib needs --local-disks (shared storage mirrors nothing)")
    rates = [int(x) for x in args.rates.split(",")]
    TIMEOUT_S = args.timeout
    variants = ([] if args.no_nimbus else ["nimbus"]) + (["plain"] if args.tls and not args.no_nimbus else []) + (
        [] if args.no_raw else ["default", "tuned"] + (["policy"] if args.raw_nimbus_policy else []))
    work = tempfile.mkdtemp(prefix="nimbus-bench-mig-")
    cloud = plain = None
    shared = False if args.local_disks else None
    t_start = time.monotonic()
    try:
        if not args.no_nimbus:
            cloud = Nimbus(os.path.abspath(args.bin), work, shared=shared)
            cloud.wait_up()
            cloud.create("mig1")
        sums = {}
        if "plain" in variants:
            # Started once the first cloud has its addresses: it picks the next free network.
            # A directory of its own, as short as the first (QEMU's socket paths: < 108 bytes).
            plain_work = tempfile.mkdtemp(prefix="nimbus-bench-mig-")
            plain = Nimbus(os.path.abspath(args.bin), plain_work, shared=shared,
                           net_name="nbp", insecure_migration=True, avoid=(cloud.index,))
            plain.wait_up()
            plain.create("mig1")
        if args.disk_mib:
            for name, c in (("nimbus", cloud), ("plain", plain)):
                if c:
                    t0 = time.monotonic()
                    sums[name] = c.fill_disk("mig1", args.disk_mib)
                    print(f"  {name}: {args.disk_mib} MiB of random data written to the guest's disk in "
                          f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        qv = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        print(f"live migration benchmark: {qv}; TCG, 1 vCPU, {MEM_MIB} MiB guest (default image), loopback; "
              f"{os.cpu_count()} host CPUs, load average at start {os.getloadavg()[0]:.2f}")
        if cloud:
            print(f"nimbus: `nimbus up --hosts 2` (netns), disks: "
                  + ("shared storage (--shared-storage)" if cloud.shared else
                     "local per host, mirrored to the target over NBD during migration")
                  + "; raw QEMU: one overlay file shared by source and target")
        if plain:
            print("TLS: `nimbus` migrates over TLS (the default); `nimbus, no TLS` is a second cloud whose "
                  "agents run with --insecure-migration")
        all_results = {}
        idle_bytes = None
        for rate in rates:
            results = {v: [] for v in variants}
            for i in range(args.runs):
                order = variants[i % len(variants):] + variants[:i % len(variants)]
                for v in order:
                    if v in ("nimbus", "plain"):
                        try:
                            r = (cloud if v == "nimbus" else plain).run("mig1", rate)
                        except RuntimeError as e:  # e.g. the workload did not start on a loaded machine
                            r = {"converged": False, "error": str(e), "escalations": [], "steps": {},
                                 "rounds": None, "disk_transfer": None, "from": "-", "to": "-",
                                 "state": "not run", "op_id": "-"}
                    else:
                        r = raw_run(work, v, rate)
                    results[v].append(r)
                    print(f"  [{time.monotonic() - t_start:6.0f} s] rate {rate} run {i + 1} {v}: "
                          f"converged={r['converged']} total={r.get('total', float('nan')):.2f}s "
                          f"downtime={r.get('downtime_ms')} pause={r.get('pause_ms')} "
                          f"bytes={(r.get('bytes') or 0) / MIB:.0f}MiB"
                          + (f" disk={r['disk_bytes'] / MIB:.0f}MiB" if r.get("disk_bytes") else "")
                          + (f" error={r.get('error')}" if r.get("error") else ""), file=sys.stderr, flush=True)
            if rate == 0 and results.get("nimbus"):
                idle_bytes = med([r["bytes"] for r in results["nimbus"] if r["converged"]])
            all_results[rate] = results
            report(rate, results, idle_bytes, args.runs)
            if results.get("nimbus"):
                last = results["nimbus"][-1]
                print(f"`nimbus operation show` of the last nimbus run ({last['from']}->{last['to']}):")
                print("    " + cloud.operation_show(last["op_id"]).replace("\n", "\n    "))
            sys.stdout.flush()
        for name, c in (("nimbus", cloud), ("plain", plain)):
            if c and name in sums:
                after = c.disk_checksum("mig1")
                print(f"{VARIANT_NAMES[name]}: the {args.disk_mib} MiB written before the runs "
                      + ("are intact after every migration (md5 " + after + ")" if after == sums[name]
                         else f"CHANGED: md5 {sums[name]} before, {after} after"))
        print(f"\nbenchmark wall time: {time.monotonic() - t_start:.0f} s, load average at end "
              f"{os.getloadavg()[0]:.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(all_results, f, indent=1, default=str)
    finally:
        if plain:
            plain.close()
            shutil.rmtree(plain.work, ignore_errors=True)
        if cloud:
            cloud.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
