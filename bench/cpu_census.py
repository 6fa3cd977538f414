"""Where the CPU of a benchmark run goes (bench/creates.py), from /proc: each controller, each
agent, PostgreSQL's processes (postmaster and backends), the benchmark's client (this
process and the `psql` it runs), and the whole machine, so that what is left is the other
work on the machine (other engineers' builds and tests): the load the figure was taken in.

PostgreSQL's share is its server processes (postmaster, WAL writer, checkpointer...) and the
backends of the benchmark's database (their process title names it): the server on this
machine is shared, and other databases' backends (other engineers' tests) are other work. A
backend that ends during the run takes its CPU with it (the controllers keep their pooled
connections, so few do); one that starts during the run counts from zero."""
import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """CPU time (user + system) process `pid` used so far, from /proc (0 once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def postgres_pids(database=None):
    """The PostgreSQL server's processes on this machine (postmaster and backends); with
    `database`, only the server's own processes and the backends of that database."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if open(f"/proc/{d}/comm").read().strip() != "postgres":
                    continue
                title = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            # A client backend's title: "postgres: CLUSTER: USER DATABASE HOST(PORT) STATE".
            client = "(" in title
            if database is None or not client or f" {database} " in title:
                pids.append(int(d))
    return pids


def machine_seconds():
    """CPU time every CPU of the machine spent busy so far (not idle, not waiting on I/O)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def client_seconds():
    """CPU time of this process and of its children that ended (`psql`)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Census:
    """CPU seconds per part between `__init__` and `stop`: `parts` maps a label (ctl1,
    host1...) to a PID; PostgreSQL (for `database`), the client and the machine are added."""

    def __init__(self, parts, database):
        self.parts, self.database = dict(parts), database
        self.before = {label: cpu_seconds(pid) for label, pid in self.parts.items()}
        self.pg_before = {pid: cpu_seconds(pid) for pid in postgres_pids(database)}
        self.client_before = client_seconds()
        self.machine_before = machine_seconds()
        self.wall_before = os.times().elapsed

    def stop(self):
        """{label: seconds} with `postgres`, `client`, `machine` (all CPUs) and `other`
        (the machine minus every part: work that is not the benchmark's), and `wall`."""
        out = {label: cpu_seconds(pid) - self.before[label] for label, pid in self.parts.items()}
        out["postgres"] = sum(cpu_seconds(pid) - self.pg_before.get(pid, 0.0) for pid in postgres_pids(self.database))
        out["client"] = client_seconds() - self.client_before
        out["machine"] = machine_seconds() - self.machine_before
        out["wall"] = os.times().elapsed - self.wall_before
        ours = sum(v for k, v in out.items() if k not in ("machine", "wall"))
        out["other"] = max(0.0, out["machine"] - ours)
        return out
