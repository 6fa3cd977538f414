#!/usr/bin/env python3
"""A peer for bench/network.py's `--part migration`: opens N TCP connections to an echo server
(the guest's `nc -ll -e cat`), sends a tick on each every 50 ms and times the echoes.

Runs (in the namespace it is started in) until its stdin closes (at most --max seconds), then
prints one JSON object: per connection the longest silence between two echoes received (s),
the ticks sent and echoed, whether it is alive (an echo in the last second, no error, no
EOF) and its error if any. Connections are opened before the first tick; one that cannot be
opened fails the run (the bench then says so).
"""
import argparse, json, select, socket, sys, threading, time

TICK = b"tick\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--period", type=float, default=0.05)
    ap.add_argument("--max", type=float, default=600.0)
    args = ap.parse_args()
    conns = []
    for _ in range(args.count):
        s = socket.create_connection((args.address, args.port), timeout=10)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append({"sock": s, "last": None, "gap": 0.0, "gap_end": None, "sent": 0, "echoed": 0,
                      "error": None})
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    start = time.monotonic()
    for c in conns:
        c["last"] = start
    next_tick = start
    while not stop.is_set() and time.monotonic() - start < args.max:
        now = time.monotonic()
        if now >= next_tick:
            for c in conns:
                if c["error"] is None:
                    try:
                        c["sock"].send(TICK)
                        c["sent"] += 1
                    except BlockingIOError:
                        pass  # a full send buffer while the path is down: the tick waits
                    except OSError as e:
                        c["error"] = f"send: {e}"
            next_tick += args.period
        live = [c["sock"] for c in conns if c["error"] is None]
        ready = select.select(live, [], [], max(0.0, next_tick - time.monotonic()))[0] if live else []
        got = time.monotonic()
        for c in conns:
            if c["sock"] in ready:
                try:
                    data = c["sock"].recv(65536)
                except OSError as e:
                    c["error"] = f"recv: {e}"
                    continue
                if not data:
                    c["error"] = "closed by the peer"
                    continue
                c["echoed"] += data.count(b"\n")
                if got - c["last"] > c["gap"]:
                    c["gap"], c["gap_end"] = got - c["last"], time.time()
                c["last"] = got
    end = time.monotonic()
    out = []
    for c in conns:
        # The silence still running at the end counts too.
        gap = max(c["gap"], end - c["last"])
        out.append({"gap": gap, "gap_end": c["gap_end"], "sent": c["sent"], "echoed": c["echoed"], "error": c["error"],
                    "alive": c["error"] is None and end - c["last"] < 1.0})
        c["sock"].close()
    json.dump({"seconds": end - start, "connections": out}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
