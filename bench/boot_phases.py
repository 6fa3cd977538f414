"""Where a boot's time goes, seen from the outside, for real_guest.py: the same marks for a
VM that nimbus started and one started by hand, each relative to the command that asked for it.

  - qemu:   the QEMU process' start time (/proc/PID/stat, 10 ms ticks on the monotonic clock);
  - kernel: the guest kernel's first line ("Linux version") on the serial console, i.e.
            firmware and boot loader are done;
  - init:   systemd's first line (userspace started);
  - ci:     cloud-init's first stage ran ("Cloud-init v. ... running 'init-local'");
  - ssh:    the first SSH login (wait_ssh: sshd's banner probed every 0.25 s, then ssh);
  - cpu:    CPU seconds QEMU used up to then (not a time from the command).
The console marks are polled every 0.1 s. Also: what else the machine was running
(machine_load), since the machine is shared.
"""
import ctypes, os, re, socket, subprocess, threading, time

MARKS = (("kernel", re.compile(rb"Linux version ")),
         ("init", re.compile(rb"systemd\[1\]|Welcome to ")),
         ("ci", re.compile(rb"Cloud-init v\. [^\n]* running 'init-local'")))
TICK = os.sysconf("SC_CLK_TCK")
LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def proc_start(pid):
    """A process' start time on time.monotonic()'s clock (CLOCK_MONOTONIC: since boot)."""
    return int(proc_stat(pid)[19]) / TICK


def proc_cpu(pid):
    """CPU seconds a process (all its threads) used so far, user + system."""
    f = proc_stat(pid)
    return (int(f[11]) + int(f[12])) / TICK


def cmdlines():
    """(pid, command line) of every process."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            yield int(pid), open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue


def qemu_pid(needle):
    """The PID of the QEMU process whose command line contains `needle`, or None."""
    return next((pid for pid, cmd in cmdlines() if cmd.startswith(b"qemu-system") and needle.encode() in cmd), None)


class Phases:
    """Polls, in a thread, for the marks of one boot; `console()` answers the console log's
    path once known (None before), `pid()` QEMU's PID (None before)."""

    def __init__(self, t0, console, pid):
        self.t0, self.console, self.pid = t0, console, pid
        self.at = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        path, offset, tail = None, 0, b""
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if "qemu" not in self.at:
                pid = self.pid()
                if pid:
                    try:
                        self.at["qemu"] = proc_start(pid) - self.t0
                    except OSError:
                        pass
            path = path or self.console()
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                text = tail + chunk
                for name, rx in MARKS:
                    if name not in self.at and rx.search(text):
                        self.at[name] = now - self.t0
                tail = text[-200:]
            time.sleep(0.1)

    def mark(self, name, t):
        self.at[name] = t - self.t0

    def mark_cpu(self):
        """Records the CPU seconds QEMU has used so far as `cpu` (the guest's work, whatever
        share of the machine it got: wall time on a shared machine is mostly waiting)."""
        pid = self.pid()
        if pid:
            try:
                self.at["cpu"] = proc_cpu(pid)
            except OSError:
                pass

    def stop(self):
        self.stop_flag.set()
        self.thread.join()
        return dict(self.at)


def _banner(addr, port):
    """Whether an SSH server answers at addr:port with its banner (1 s to connect and say it)."""
    try:
        with socket.create_connection((addr, port), timeout=1) as c:
            c.settimeout(1)
            return c.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _in_netns(netns, fn):
    """fn() run in a thread that entered network namespace `netns` (setns is per thread)."""
    out = {}

    def run():
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
        finally:
            os.close(fd)
        out["v"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out.get("v", False)


def wait_ssh(argv, addr, port=22, netns=None, timeout=600, every=0.25):
    """Seconds until `argv + ['true']` succeeds. sshd's banner is probed every `every` s (in
    `netns` if given) and ssh is run once it answers: an address that does not answer ARP
    yet (ssh would wait for its ConnectTimeout) and a port forwarding that accepts at once
    are both seen within `every` s of sshd, and the guest gets one handshake at a time."""
    t0 = time.monotonic()
    probe = (lambda: _in_netns(netns, lambda: _banner(addr, port))) if netns else (lambda: _banner(addr, port))
    while time.monotonic() - t0 < timeout:
        if probe():
            try:
                if subprocess.run(argv + ["true"], capture_output=True, timeout=60).returncode == 0:
                    return time.monotonic() - t0
            except subprocess.TimeoutExpired:
                pass
        time.sleep(every)
    raise RuntimeError(f"no SSH login within {timeout} s: {' '.join(argv)}")


UNITS = ("cloud-init-local", "networking", "cloud-init", "ssh", "cloud-config", "cloud-final")


def guest_view(argv):
    """What the guest says of its own boot at login: its uptime, and when each unit on the way
    to sshd started and became active (s since the kernel started; `-`: not yet)."""
    script = "cut -d' ' -f1 /proc/uptime; for u in %s; do echo $u $(systemctl show -P InactiveExitTimestampMonotonic " \
             "$u.service) $(systemctl show -P ActiveEnterTimestampMonotonic $u.service); done" % " ".join(UNITS)
    r = subprocess.run(argv + [script], capture_output=True, text=True, timeout=60)
    lines = r.stdout.split("\n")
    out = [f"uptime {lines[0].strip()}"] if lines and lines[0].strip() else []
    sec = lambda us: f"{int(us) / 1e6:.1f}" if us.isdigit() and int(us) else "-"
    for l in lines[1:]:
        parts = l.split()
        if len(parts) == 3:
            out.append(f"{parts[0]} {sec(parts[1])}-{sec(parts[2])}")
    return "; ".join(out) or r.stderr.strip()


def machine_load():
    """The 1-minute load and what runs besides us: QEMU processes and compilers."""
    qemus = rustcs = 0
    for _, cmd in cmdlines():
        name = os.path.basename(cmd.split(b"\0", 1)[0])
        qemus += name.startswith(b"qemu-system")
        rustcs += name in (b"rustc", b"cc1", b"ld", b"cc")
    return f"load {os.getloadavg()[0]:.1f}, {qemus} QEMU, {rustcs} compilers"


def line(name, at, order=("accept", "qemu", "kernel", "init", "ci", "ssh", "cpu")):
    marks = "  ".join(f"{k} {at[k]:5.1f}" for k in order if k in at)
    return f"{name:10s} {marks}"
