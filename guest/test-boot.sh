#!/usr/bin/env bash
# Boots the default guest image once, the way the platform does (same QEMU layout,
# TCG, qcow2 overlay on the base disk), and checks the guest contract:
#   - "nimbus-guest ready" on the console within 60 s,
#   - heartbeat lines on the second serial port,
#   - the exec channel on the third serial port (cat /data/hello.txt, exit codes),
#   - the static network configuration from the kernel command line (nimbus.ip=,
#     nimbus.gw=, nimbus.mtu=) on a virtio NIC of QEMU user networking, reachable from
#     the host through a port forward,
#   - memcheck (stale=0 after 3 s at 100 MiB/s; its self-test of a corrupted page),
#     dirty-mem and burn-cpu,
#   - ACPI power button (QMP system_powerdown) -> QEMU exits within 20 s,
#   - /data was unmounted cleanly (no ext4 journal recovery pending in the overlay).
# Exits non-zero on the first failure. Leaves nothing behind.
#
# Usage: guest/test-boot.sh [IMAGE_DIR]
#   IMAGE_DIR defaults to ${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/default; it is
#   built there first (guest/build.sh) when needed.
#   KEEP_TMP=1 keeps the temporary directory (logs) for inspection.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE_DIR=${1:-${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/default}

log() { echo "[guest/test-boot] $*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

"$HERE/build.sh" "$IMAGE_DIR"
IMAGE_DIR=$(cd "$IMAGE_DIR" && pwd)

TMP=$(mktemp -d /tmp/nimbus-guest-test.XXXXXX)
QEMU_PID=
cleanup() {
    # Never leave a QEMU behind, whatever failed.
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null || true
        sleep 0.5
        kill -9 "$QEMU_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

json_field() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
        "$IMAGE_DIR/image.json" "$1"
}
KERNEL=$IMAGE_DIR/$(json_field kernel)
INITRD=$IMAGE_DIR/$(json_field initrd)
DISK=$IMAGE_DIR/$(json_field disk)
CMDLINE=$(json_field cmdline)
READY=$(json_field ready_marker)
# Static network configuration, on a QEMU user-mode network (10.0.2.0/24, gateway
# 10.0.2.2). Not 10.0.2.15, the address its DHCP server hands out, so that only the
# static configuration can give the guest this address.
GUEST_IP=10.0.2.42
NET_ARGS="nimbus.ip=$GUEST_IP/24 nimbus.gw=10.0.2.2 nimbus.mtu=1400"
# A free TCP port on the host, forwarded to port 8080 of the guest.
FWD_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cd "$TMP"
qemu-img create -q -f qcow2 -F qcow2 -b "$DISK" overlay.qcow2 2G

START=$(date +%s.%N)
qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 1 -m 256 \
    -nodefaults -no-user-config -display none -vga none \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$CMDLINE $NET_ARGS" \
    -blockdev driver=file,filename=overlay.qcow2,node-name=disk0-file \
    -blockdev driver=qcow2,file=disk0-file,node-name=disk0 \
    -device virtio-blk-pci,drive=disk0,id=vda \
    -chardev socket,id=console,path=console.sock,server=on,wait=off,logfile=console.log \
    -serial chardev:console \
    -chardev socket,id=heartbeat,path=hb.sock,server=on,wait=off -serial chardev:heartbeat \
    -chardev socket,id=exec,path=exec.sock,server=on,wait=off -serial chardev:exec \
    -qmp unix:qmp.sock,server=on,wait=off \
    -nic "user,model=virtio-net-pci,mac=52:54:00:12:34:56,hostfwd=tcp:127.0.0.1:$FWD_PORT-$GUEST_IP:8080" \
    >qemu.out 2>&1 &
QEMU_PID=$!
log "qemu pid $QEMU_PID, tmp $TMP"

# The socket conversations are easier in Python (stdlib only).
if ! python3 - "$START" "$READY" "$QEMU_PID" "$GUEST_IP" "$FWD_PORT" <<'PY'; then
import base64, json, os, re, socket, sys, time

start, ready, qemu_pid = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])
guest_ip, fwd_port = sys.argv[4], int(sys.argv[5])

def say(msg):
    print(f"[guest/test-boot] {msg}", file=sys.stderr, flush=True)

def fail(msg):
    say(f"FAIL: {msg}")
    try:
        say("console.log:\n" + open("console.log", errors="replace").read()[-3000:])
    except OSError:
        pass
    sys.exit(1)

def alive():
    # QEMU is the shell's child, so once it exits it stays a zombie until the shell
    # reaps it: a zombie counts as exited.
    try:
        stat = open(f"/proc/{qemu_pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

# 1. Ready marker on the console, within 60 s.
deadline = time.monotonic() + 60
while True:
    try:
        log = open("console.log", errors="replace").read()
    except FileNotFoundError:
        log = ""
    if ready in log:
        break
    if not alive():
        fail("qemu exited before the guest was ready: " + open("qemu.out").read())
    if time.monotonic() > deadline:
        fail("no ready marker within 60 s")
    time.sleep(0.02)
say(f"ready after {time.time() - start:.2f} s")

def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s

# 2. Heartbeat: lines "hb <uptime> <counter>", at least every 100 ms.
hb = connect("hb.sock")
hb.settimeout(0.5)
buf = b""
t_end = time.monotonic() + 1.5
while time.monotonic() < t_end:
    try:
        data = hb.recv(4096)
    except socket.timeout:
        fail("heartbeat silent for 0.5 s")
    if not data:
        fail("heartbeat socket closed")
    buf += data
hb.close()
lines = buf.split(b"\n")[1:-1]  # the first and last may be partial
beats = []
for line in lines:
    m = re.fullmatch(rb"hb (\d+\.\d{2,}) (\d+)", line)
    if not m:
        fail(f"bad heartbeat line {line!r}")
    beats.append((float(m.group(1)), int(m.group(2))))
if len(beats) < 5:
    fail(f"only {len(beats)} heartbeats in 1.5 s")
for (u0, c0), (u1, c1) in zip(beats, beats[1:]):
    if c1 != c0 + 1 or u1 < u0:
        fail(f"heartbeat not monotonic: {beats}")
gap = max(u1 - u0 for (u0, _), (u1, _) in zip(beats, beats[1:]))
say(f"heartbeat ok: {len(beats)} beats in 1.5 s, largest gap {gap:.2f} s (guest clock)")

# 3. Exec channel.
ex = connect("exec.sock")
ex.settimeout(30)
exbuf = b""

def run(req_id, command):
    global exbuf
    ex.sendall(f"{req_id} {base64.b64encode(command.encode()).decode()}\n".encode())
    while b"\n" not in exbuf:
        try:
            data = ex.recv(65536)
        except socket.timeout:
            fail(f"no exec reply to {command!r} within 30 s")
        if not data:
            fail("exec socket closed")
        exbuf += data
    line, exbuf = exbuf.split(b"\n", 1)
    parts = line.decode().split(" ")
    if len(parts) != 4 or parts[0] != "NIMBUS-EXEC" or parts[1] != req_id:
        fail(f"bad exec reply {line[:200]!r}")
    out = b"" if parts[3] == "-" else base64.b64decode(parts[3])
    return int(parts[2]), out

rc, out = run("1", "cat /data/hello.txt")
if (rc, out) != (0, b"nimbus default image\n"):
    fail(f"cat /data/hello.txt gave rc={rc} out={out!r}")
say("exec ok: cat /data/hello.txt -> 'nimbus default image'")
rc, out = run("2", "exit 3")
if (rc, out) != (3, b""):
    fail(f"'exit 3' gave rc={rc} out={out!r}")
rc, out = run("x-3", "echo err >&2; seq 1 20000")
expected = b"err\n" + b"".join(b"%d\n" % i for i in range(1, 20001))
if rc != 0 or out != expected:
    fail(f"long output: rc={rc}, {len(out)} bytes, expected {len(expected)}")
say(f"exec ok: exit codes, stderr, {len(out)}-byte output on one line")
rc, out = run("4", "echo data > /data/written.txt && sync && cat /data/written.txt")
if (rc, out) != (0, b"data\n"):
    fail(f"write to /data gave rc={rc} out={out!r}")

# 4. Static network configuration: address, MTU and default route on eth0, no DHCP
# client, and the address reachable: the host connects through QEMU's port forward
# to the guest address and reads what a listener in the guest sends.
rc, out = run("net-1", "ip addr show eth0; ip route; ps")
text = out.decode(errors="replace")
if rc != 0:
    fail(f"ip addr/route gave rc={rc}: {text}")
for want in (f"inet {guest_ip}/24 brd 10.0.2.255", "mtu 1400", "default via 10.0.2.2 dev eth0"):
    if want not in text:
        fail(f"{want!r} missing from the guest's network configuration:\n{text}")
if "udhcpc" in text:
    fail(f"a DHCP client runs despite nimbus.ip=:\n{text}")
rc, out = run("net-2", "echo nimbus-net-ok | nc -l -p 8080 >/dev/null 2>&1 &")
deadline = time.monotonic() + 10
while True:
    # Until the guest listens, QEMU accepts the connection and closes it at once.
    with socket.create_connection(("127.0.0.1", fwd_port), timeout=5) as c:
        got = b""
        while (data := c.recv(100)):
            got += data
    if got == b"nimbus-net-ok\n":
        break
    if time.monotonic() > deadline:
        fail(f"no answer from {guest_ip}:8080 through the port forward (got {got!r})")
    time.sleep(0.2)
say(f"network ok: eth0 {guest_ip}/24 mtu 1400, default via 10.0.2.2, reachable from the host")

# 5. memcheck: 64 MiB checked at 100 MiB/s for 3 s without a stale page; its self-test
# (a flipped bit after the first pass, a lost write after the second) counts exactly 2.
def status(path):
    rc, out = run("st", f"cat {path}")
    m = re.fullmatch(rb"pages=(\d+) verified=(\d+) stale=(\d+) rounds=(\d+) rate_mib_s=([\d.]+)\n", out)
    if rc != 0 or not m:
        fail(f"bad memcheck status in {path}: rc={rc} {out!r}")
    return dict(zip(("pages", "verified", "stale", "rounds", "rate"),
                    (int(m[1]), int(m[2]), int(m[3]), int(m[4]), float(m[5]))))

rc, out = run("mc-1", "memcheck 64 100 /run/mc.status >/run/mc.err 2>&1 & echo $!")
mc_pid = out.decode().strip()
time.sleep(3)
st = status("/run/mc.status")
run("mc-2", f"kill {mc_pid}")
if st["pages"] != 16384 or st["verified"] == 0 or st["stale"] != 0:
    fail(f"memcheck 64 100: {st}")
say(f"memcheck ok: {st['verified']} pages verified in 3 s, stale=0, {st['rate']} MiB/s")
rc, out = run("mc-3", "memcheck --selftest-corrupt 4 0 /run/mc2.status >/run/mc2.err 2>&1 & echo $!")
mc_pid = out.decode().strip()
deadline = time.monotonic() + 30
while (st := status("/run/mc2.status"))["rounds"] < 3:
    if time.monotonic() > deadline:
        fail(f"memcheck --selftest-corrupt made no 3 passes in 30 s: {st}")
    time.sleep(0.5)
run("mc-4", f"kill {mc_pid}")
rc, err = run("mc-5", "cat /run/mc2.err")
if st["stale"] != 2 or b"lost write" not in err:
    fail(f"memcheck self-test: expected stale=2, got {st}; stderr {err!r}")
say(f"memcheck self-test ok: corrupted pages found, stale={st['stale']}")

# 6. The other load helpers end on time with exit code 0.
t0 = time.monotonic()
rc, out = run("dm", "dirty-mem 16 50 1 && cat /run/dirty-mem.*.status")
if rc != 0 or b" rate_mib_s=" not in out:
    fail(f"dirty-mem 16 50 1 gave rc={rc} out={out!r}")
rc, out = run("cpu", "burn-cpu 1")
if rc != 0:
    fail(f"burn-cpu 1 gave rc={rc} out={out!r}")
say(f"dirty-mem and burn-cpu ok ({time.monotonic() - t0:.1f} s)")
ex.close()

# 7. ACPI power button through QMP; QEMU must exit by itself within 20 s.
q = connect("qmp.sock")
qf = q.makefile("rwb")
json.loads(qf.readline())  # greeting
for cmd in ("qmp_capabilities", "system_powerdown"):
    qf.write(json.dumps({"execute": cmd}).encode() + b"\n")
    qf.flush()
    while True:
        msg = json.loads(qf.readline())
        if "return" in msg:
            break
        if "error" in msg:
            fail(f"QMP {cmd}: {msg}")
t0 = time.monotonic()
while alive() and time.monotonic() - t0 < 20:
    time.sleep(0.05)
if alive():
    fail("guest did not power off within 20 s of system_powerdown")
say(f"power off ok: qemu exited {time.monotonic() - t0:.2f} s after system_powerdown")
PY
    fail "guest checks failed"
fi
wait "$QEMU_PID" || true
QEMU_PID=

# The power-off must have unmounted /data: a journal still needing recovery would
# show up as the needs_recovery feature in the overlay's file system.
qemu-img convert -f qcow2 -O raw overlay.qcow2 check.raw
if dumpe2fs -h check.raw 2>/dev/null | grep -q needs_recovery; then
    fail "/data was not unmounted cleanly (ext4 needs_recovery set)"
fi
log "file system on the overlay is clean"
log "PASS"
