#!/usr/bin/env python3
"""Scaling benchmark: how fast a scaling group follows its load, beside its window and cooldown.

One all-in-one cloud (2 hosts), one group (tiny flavor, min 1, max 2, target CPU 50%), then:
  - load start -> scale-out decision: the group's desired size rises (the moving average of
    CPU use over the window has to pass the target first);
  - load start -> new instance ready: a second member is `running` (its guest printed
    `nimbus-guest ready`);
  - load end -> scale-in decision, and -> the extra member gone.
The anchor printed beside them is what the configuration implies: a decision comes at the
latest one window plus one autoscaler tick (3 s) after the load changes (the window then holds
only the new level); the new instance is ready a boot later (its create operation, measured in
the same run). The cooldown of the scale-out is let pass before the load ends, so the scale-in
figure measures the window alone.

With --record FILE it also writes the first member's QEMU CPU time (from /proc, as the agent
reads it) every second, as JSON [[seconds, cpu_ms], ...]: the recorded series the policy's
unit tests replay (crates/controller/src/app/scaling/tests.rs).

Usage (as root, after `cargo build --release -p nimbus-cli`):
  bench/scaling.py [--bin target/release/nimbus] [--window 20] [--cooldown 20] [--record FILE]
"""
import argparse, glob, json, os, shutil, signal, subprocess, sys, tempfile, threading, time
from datetime import datetime

from boot import free_port


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/nimbus")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--cooldown", type=int, default=20)
    ap.add_argument("--record", help="write the first member's CPU time series (JSON) here")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nimbus-bench-scaling-")
    data = os.path.join(work, "data")
    port = free_port()
    env = dict(os.environ, NIMBUS_API=f"https://127.0.0.1:{port}", NIMBUS_CA_CERT=os.path.join(data, "ca.crt"))
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--hosts", "2", "--listen", f"127.0.0.1:{port}",
                           "--net-name", "nscale", "--net-index", "249"],
                          stdout=open(os.path.join(work, "up.log"), "w"), stderr=subprocess.STDOUT)

    def cli(*a, check=True):
        r = subprocess.run([args.bin, *a], env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"nimbus {' '.join(a)} failed: {r.stderr}")
        return r.stdout

    def group():
        return json.loads(cli("group", "show", "bench", "-o", "json"))

    def wait(what, pred, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            g = group()
            if pred(g):
                return time.monotonic(), g
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    running = lambda g: [m for m in g["instances"] if m["state"] == "running"]
    try:
        token_file = os.path.join(data, "admin.token")
        deadline = time.time() + 180
        while time.time() < deadline:
            if os.path.exists(token_file):
                env["NIMBUS_TOKEN"] = open(token_file).read().strip()
                r = subprocess.run([args.bin, "host", "list", "-o", "json"], env=env, capture_output=True)
                if r.returncode == 0 and len(json.loads(r.stdout or b"[]")) == 2:
                    break
            time.sleep(0.3)
        else:
            sys.exit("cloud did not come up")
        cli("group", "create", "bench", "--flavor", "tiny", "--image", "default", "--min", "1", "--max", "2",
            "--target-cpu", "50", "--window-secs", str(args.window), "--cooldown-secs", str(args.cooldown))
        _, g = wait("the first member", lambda g: len(running(g)) == 1 and g["cpu_percent"] is not None)
        first = running(g)[0]["name"]
        idle = g["cpu_percent"]
        series, stop = [], threading.Event()
        if args.record:
            inst = json.loads(cli("instance", "show", first, "-o", "json"))
            pidfile = glob.glob(os.path.join(data, "hosts", "*", "vms", inst["id"], "qemu.pid"))[0]
            qemu = int(open(pidfile).read())
            hz = os.sysconf("SC_CLK_TCK")
            t_rec = time.monotonic()

            def record():
                while not stop.is_set() and os.path.exists(f"/proc/{qemu}"):
                    fields = open(f"/proc/{qemu}/stat").read().rsplit(")", 1)[1].split()
                    series.append([round(time.monotonic() - t_rec, 2), (int(fields[11]) + int(fields[12])) * 1000 // hz])
                    stop.wait(1.0)

            threading.Thread(target=record, daemon=True).start()
            time.sleep(20)

        t_load = time.monotonic()
        cli("instance", "exec", first, "--", "burn-cpu 3600 </dev/null >/dev/null 2>&1 &")
        t_decide_out, g = wait("the scale-out decision", lambda g: g["desired"] == 2)
        busy = g["cpu_percent"]
        reason_out = next(e["message"] for e in g["events"] if e["kind"] == "scale_out")
        t_ready, g = wait("the new member to be ready", lambda g: len(running(g)) == 2)
        second = next(m["name"] for m in running(g) if m["name"] != first)
        ops = json.loads(cli("operation", "list", "-o", "json"))
        create = next(o for o in ops if o["kind"] == "instance_create" and o["target_name"] == second)
        boot = parse_time(create["updated_at"]) - parse_time(create["created_at"])
        shown = cli("group", "show", "bench")

        # Let the cooldown of the scale-out pass before the load ends, so the scale-in
        # measures the window alone.
        time.sleep(max(0, args.cooldown - (time.monotonic() - t_decide_out)))
        t_end = time.monotonic()
        cli("instance", "exec", first, "--", "killall burn-cpu", check=False)
        t_decide_in, g = wait("the scale-in decision", lambda g: g["desired"] == 1)
        reason_in = next(e["message"] for e in g["events"] if e["kind"] == "scale_in")
        t_gone, g = wait("the extra member to be gone", lambda g: len(g["instances"]) == 1)
        if args.record:
            time.sleep(10)
            stop.set()
            json.dump({"load_start_s": round(t_load - t_rec, 2), "load_end_s": round(t_end - t_rec, 2),
                       "series": series}, open(args.record, "w"))

        print(f"`nimbus group show bench` once the new member was ready:\n{shown}")
        print(f"group: tiny flavor (1 vCPU, TCG), min 1, max 2, target CPU 50%, "
              f"window {args.window} s, cooldown {args.cooldown} s, autoscaler tick 3 s")
        print(f"CPU: idle {idle:.0f}%, under load {busy:.0f}% (group average at the scale-out decision)")
        print(f"load start -> scale-out decision   {t_decide_out - t_load:6.1f} s   ({reason_out})")
        print(f"load start -> new instance ready   {t_ready - t_load:6.1f} s   "
              f"(of which the new member's create->ready: {boot:.1f} s)")
        print(f"load end   -> scale-in decision    {t_decide_in - t_end:6.1f} s   ({reason_in})")
        print(f"load end   -> instance deleted     {t_gone - t_end:6.1f} s")
        bound = args.window + 3
        print(f"anchor: once the load changes, a decision comes at the latest one window plus one tick later "
              f"({bound} s: the window then holds only the new level), earlier when the average crosses the "
              f"threshold sooner; measured {t_decide_out - t_load:.1f} s and {t_decide_in - t_end:.1f} s = "
              f"{(t_decide_out - t_load) / bound:.2f}x and {(t_decide_in - t_end) / bound:.2f}x of it; "
              f"the new instance is ready a boot ({boot:.1f} s) after the decision")
    except Exception:
        print("--- nimbus up log (tail) ---\n" + "".join(open(os.path.join(work, "up.log")).readlines()[-40:]))
        raise
    finally:
        try:
            cli("group", "delete", "bench", "--wait", check=False)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=30)
            for h in (1, 2):
                subprocess.run(["ip", "netns", "del", f"nscale-host{h}"], capture_output=True)
            subprocess.run(["ip", "link", "del", "nscale-br"], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
