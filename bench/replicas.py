#!/usr/bin/env python3
"""Controller replica figures (issue 14/12): the copy of a second snapshot's replica between
controllers, and the receipt of a first replica into a controller's store.

- Copy (`bench_copy_a_second_snapshot` in crates/controller/tests/replica_copies.rs, three
  controllers over one PostgreSQL, mutual TLS on loopback): a 512 MiB guest's memory (65,536
  chunks of 8 KiB), the second snapshot replacing 5% of the first's chunks; the copier holds
  the first. Now: it asks for the chunks and layers it lacks. Anchor, same run: a third
  controller in the same state sent the whole set, as the route did before.
- Receive (`bench_receive_a_first_replica` in crates/controller/tests/replica_figures.rs):
  the frames of a first replica of the same size received into an empty store; wall time and
  the files the store holds. The anchor (the one-file-per-chunk layout) cannot run in the
  same build: run this script on a checkout before the packs commit and pass its JSON with
  --receive-before FILE (docs/ha.md gives the figures of both).

Usage (as root; builds the controller's tests in the worktree's debug profile):
  bench/replicas.py [--runs 3] [--receive-before FILE] [--json FILE]
"""
import argparse, json, os, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def harness(test_file, name, runs, env=None):
    """Runs an ignored harness of the controller's tests; answers its BENCH-OUTPUT JSON."""
    env = dict(os.environ, NIMBUS_BENCH_RUNS=str(runs), **(env or {}))
    out = subprocess.run(["cargo", "test", "-q", "-p", "nimbus-controller", "--test", test_file,
                          "--", "--ignored", "--exact", name, "--nocapture"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    parts = out.stdout.split("BENCH-OUTPUT")
    if out.returncode != 0 or len(parts) < 3:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(parts[1])


def median(rows, *path):
    vals = []
    for r in rows:
        for p in path:
            r = r[p]
        vals.append(r)
    return statistics.median(vals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--receive-before", help="JSON of the receive figures before packs")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    url = subprocess.run(["bash", os.path.join(ROOT, "scripts", "ci-postgres.sh")],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    copy = harness("replica_copies", "bench_copy_a_second_snapshot", args.runs,
                   {"NIMBUS_TEST_POSTGRES_URL": url})
    now_b, before_b = median(copy, "now", "bytes"), median(copy, "before", "bytes")
    now_t, before_t = median(copy, "now", "ms"), median(copy, "before", "ms")
    print(f"copy of a second snapshot (5% new chunks), median of {args.runs}: "
          f"{now_b / 2**20:.1f} MiB in {now_t:.0f} ms; whole set (before) "
          f"{before_b / 2**20:.1f} MiB in {before_t:.0f} ms; ratio bytes {now_b / before_b:.3f}, "
          f"time {now_t / before_t:.3f}")
    receive = harness("replica_figures", "bench_receive_a_first_replica", args.runs)
    r_t, r_f = median(receive, "ms"), median(receive, "files")
    line = f"receive of a first replica (512 MiB), median of {args.runs}: {r_t:.0f} ms, {r_f} files"
    if args.receive_before:
        before = json.load(open(args.receive_before))
        b_t, b_f = median(before, "ms"), median(before, "files")
        line += f"; one file per chunk (before) {b_t:.0f} ms, {b_f} files; ratio time " \
                f"{r_t / b_t:.2f}, files {r_f / b_f:.5f}"
    print(line)
    if args.json:
        json.dump({"copy": copy, "receive": receive}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
