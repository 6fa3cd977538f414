"""The controller processes of `nimbus up --controllers K` (bench/creates.py and the takeover
part of bench/control_plane.py): the PID of each, whether it is still the process that was
started, and, when one is gone, a report with its log instead of a Python trace.

Controller 1 runs inside the `nimbus up` process (its log is `nimbus up`'s); controllers
2..K are children of it, each with `<data>/controllers/ctlN/controller.pid` and
`controller.log`. `nimbus up` restarts one that exits (and logs "controller exited;
restarting it"): between an exit and the restart, the pid file names a process that is gone,
and after it, a new one that did not run the whole measurement."""
import os, re

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ControllerGone(RuntimeError):
    """A controller process that is not (or no longer) running, with its log's last lines."""

    def __init__(self, name, pid, what, work):
        self.name, self.pid = name, pid
        log = log_path(work, name)
        which = f"controller {name}" + (f" (pid {pid})" if pid else "")
        super().__init__(f"{which} {what}\n{_report(log, name, work)}")


def log_path(work, name):
    if name == "ctl1":
        return os.path.join(work, "up.log")
    return os.path.join(work, "data", "controllers", name, "controller.log")


def _tail(path, lines):
    try:
        with open(path, errors="replace") as f:
            text = [ANSI.sub("", line.rstrip()) for line in f]
    except OSError as e:
        return [f"(cannot read it: {e})"]
    return text[-lines:]


def _report(log, name, work):
    out = [f"  last lines of {log}:"] + ["    " + line[:400] for line in _tail(log, 12)]
    restarts = [line for line in _tail(os.path.join(work, "up.log"), 10_000)
                if "exited; restarting" in line and f"name={name}" in line]
    if restarts:
        out.append(f"  `nimbus up` restarted {name} {len(restarts)} time(s), last: {restarts[-1][:300]}")
    return "\n".join(out)


def check_started(up, work):
    """Raises ControllerGone when `nimbus up` ended or restarted a controller that exited (at
    start: a busy port, a database it could not use), so that waiting for the cloud stops at
    once with the reason."""
    if up.poll() is not None:
        raise ControllerGone("ctl1", up.pid, f"exited (`nimbus up` ended with status {up.returncode})", work)
    for line in _tail(os.path.join(work, "up.log"), 10_000):
        if "controller exited; restarting" in line:
            name = re.search(r"name=(\S+)", line)
            name = name.group(1) if name else "?"
            raise ControllerGone(name, None, "exited at its start", work)


def running(pid, word):
    """Whether `pid` is a live (not zombie) process whose command line has `word`."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return state != "Z" and word.encode() in cmdline


def running_pid(work, name):
    """The PID of extra controller `name` (ctl2...), checked to be a running controller
    (ControllerGone otherwise, with its log)."""
    pid_file = os.path.join(work, "data", "controllers", name, "controller.pid")
    try:
        pid = int(open(pid_file).read())
    except (OSError, ValueError) as e:
        raise ControllerGone(name, None, f"has no pid file ({e})", work) from None
    if not running(pid, "controller"):
        raise ControllerGone(name, pid, "is not running", work)
    return pid


def controller_pids(up, work, controllers):
    """PIDs of controllers 1..K, each checked to be a running controller (ControllerGone
    otherwise, with its log)."""
    pids = {"ctl1": up.pid}
    for i in range(2, controllers + 1):
        pids[f"ctl{i}"] = running_pid(work, f"ctl{i}")
    check_running(up, work, pids)
    return pids


def check_running(up, work, pids):
    """Raises ControllerGone for the first controller of `pids` that is not running any
    more, or was replaced by a restart (its pid file names another process)."""
    if up.poll() is not None:
        raise ControllerGone("ctl1", up.pid, f"exited (`nimbus up` ended with status {up.returncode})", work)
    for name, pid in pids.items():
        if name == "ctl1":
            continue
        if not running(pid, "controller"):
            raise ControllerGone(name, pid, "is not running", work)
        pid_file = os.path.join(work, "data", "controllers", name, "controller.pid")
        try:
            now = int(open(pid_file).read())
        except (OSError, ValueError):
            now = None
        if now != pid:
            raise ControllerGone(name, pid, f"was replaced by a restart (pid file: {now})", work)
