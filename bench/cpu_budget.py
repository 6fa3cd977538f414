"""One machine per controller, emulated on one machine (bench/control_plane.py --part creates).

What the creates benchmark tests is that the control plane has no global serialisation (no
in-process lock, no hot row), so that throughput grows with controllers when each controller
is its own machine. On a 2-core machine several controller processes share the same CPUs, so
a second one adds work, not room. Here each controller process gets a cgroup of its own with
the same CPU budget (a fraction of one core: cgroup v2 `cpu.max`, or the v1 cpu controller's
CFS quota on hosts in hybrid mode) and a high weight (so that other work on the machine does
not take its budget away); PostgreSQL, the agents and the client stay outside, unlimited. It
is a STAND-IN for separate machines: the figure shows controller-side scaling, not
PostgreSQL's.

The cgroups are made under `nimbus-bench-cp-<pid>/` and removed at the end (their processes
moved back to the root first, if any is still alive)."""
import os

# A short CFS period: a process over its quota is frozen for the rest of the period, and a
# controller frozen inside a transaction holds its row locks meanwhile (a host's row during
# a placement claim); with the default 100 ms period that is up to 70 ms at a time, which no
# separate machine does. 10 ms keeps such freezes as short as a busy machine's time slices.
PERIOD_US = 10_000
# The unbudgeted group of what stands for the other machines.
SHIELD = "others"


def _v2_root():
    root = "/sys/fs/cgroup"
    try:
        if "cpu" in open(os.path.join(root, "cgroup.controllers")).read().split():
            return root
    except OSError:
        pass
    return None


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def describe(cores):
    """The budget, as the output states it."""
    kind = "cgroup v2 cpu.max" if _v2_root() else "cgroup v1 cpu.cfs_quota_us"
    return f"{cores:.2f} core each ({kind} {int(cores * PERIOD_US)}/{PERIOD_US} us, high weight)"


class ControllerBudgets:
    """Cgroups with one CPU budget each, one per controller process."""

    def __init__(self, cores):
        if not 0 < cores <= 8:
            raise ValueError("the CPU budget per controller is a number of cores in (0, 8]")
        self.cores = cores
        self.v2 = _v2_root()
        root = self.v2 or "/sys/fs/cgroup/cpu"
        if not os.path.exists(os.path.join(root, "cgroup.procs")):
            raise RuntimeError("no cgroup cpu controller (v2 `cpu` or the v1 cpu hierarchy) to budget controllers with")
        self.root = root
        self.base = os.path.join(root, f"nimbus-bench-cp-{os.getpid()}")
        os.makedirs(self.base, exist_ok=True)
        if self.v2:
            _write(os.path.join(self.base, "cgroup.subtree_control"), "+cpu")
        self.groups = {}

    def place(self, name, pid):
        """Moves process `pid` (all its threads) into a budgeted cgroup of its own."""
        d = os.path.join(self.base, name)
        os.makedirs(d, exist_ok=True)
        # Recorded first, so that `remove` removes it even when the process is gone.
        self.groups[name] = d
        quota = int(self.cores * PERIOD_US)
        if self.v2:
            _write(os.path.join(d, "cpu.max"), f"{quota} {PERIOD_US}")
            _write(os.path.join(d, "cpu.weight"), 10000)
        else:
            _write(os.path.join(d, "cpu.cfs_period_us"), PERIOD_US)
            _write(os.path.join(d, "cpu.cfs_quota_us"), quota)
            _write(os.path.join(d, "cpu.shares"), 262144)
        _write(os.path.join(d, "cgroup.procs"), pid)

    def shield(self, name, pids):
        """Moves `pids` into a cgroup with a high weight and no limit: what stands for the
        other machines (PostgreSQL, the hosts, the client) is not starved by other work on
        this machine while the controllers are budgeted."""
        d = os.path.join(self.base, name)
        os.makedirs(d, exist_ok=True)
        self.groups[name] = d
        if self.v2:
            _write(os.path.join(d, "cpu.max"), f"max {PERIOD_US}")
            _write(os.path.join(d, "cpu.weight"), 10000)
        else:
            _write(os.path.join(d, "cpu.shares"), 262144)
        for pid in pids:
            try:
                _write(os.path.join(d, "cgroup.procs"), pid)
            except OSError:
                pass  # it exited meanwhile

    def throttling(self):
        """Per cgroup: (throttled periods, periods) so far, from cpu.stat."""
        out = {}
        for name, d in self.groups.items():
            if name == SHIELD:
                continue
            fields = {}
            for line in open(os.path.join(d, "cpu.stat")):
                k, _, v = line.partition(" ")
                fields[k] = int(v)
            out[name] = (fields.get("nr_throttled", 0), fields.get("nr_periods", 0))
        return out

    def remove(self):
        """Moves what is left back to the root and removes the cgroups."""
        for d in list(self.groups.values()) + [self.base]:
            try:
                for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                    try:
                        _write(os.path.join(self.root, "cgroup.procs"), pid)
                    except OSError:
                        pass  # it exited meanwhile
                os.rmdir(d)
            except OSError:
                pass
        self.groups = {}

