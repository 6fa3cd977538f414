#!/usr/bin/env python3
"""A DHCP client for bench/network.py's `--part dhcp`: DISCOVER, OFFER, REQUEST, ACK over a raw
packet socket, timed in this process (the time of the send to the time of the receive).

Run inside the client's network namespace (`ip netns exec NS bench/dhcp_client.py eth0 --runs N`);
prints one JSON object: per run the DISCOVER->OFFER, REQUEST->ACK and DISCOVER->ACK times in
seconds, and the address acknowledged. Every run uses its own transaction id, so an answer to
an earlier run (or another client) is never counted. The client takes no address: what it
measures is the server and the path to it, as a guest's first DISCOVER at boot sees them.
"""
import argparse, json, os, select, socket, struct, sys, time

ETH_P_IP = 0x0800
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def request_frame(mac, xid, kind, requested=None, server=None):
    """An Ethernet broadcast from 0.0.0.0:68 to 255.255.255.255:67 carrying a BOOTP request."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4),
                        bytes(4), bytes(4), mac + bytes(10), bytes(64), bytes(128))
    opts = MAGIC + bytes([53, 1, kind])
    if requested:
        opts += bytes([50, 4]) + requested
    if server:
        opts += bytes([54, 4]) + server
    opts += bytes([55, 4, 1, 3, 6, 15, 255])
    payload = bootp + opts
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + struct.pack("!H", ETH_P_IP) + ip + udp


def parse_reply(frame, xid):
    """(message type, yiaddr, server id) of a BOOTP reply with transaction `xid`, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 68:
        return None
    b = frame[udp + 8:]
    if len(b) < 240 or b[0] != 2 or struct.unpack("!I", b[4:8])[0] != xid or b[236:240] != MAGIC:
        return None
    kind, server, i = None, None, 240
    while i < len(b) and b[i] != 255:
        if b[i] == 0:
            i += 1
            continue
        if i + 1 >= len(b):
            break
        code, length = b[i], b[i + 1]
        value = b[i + 2:i + 2 + length]
        if code == 53 and length == 1:
            kind = value[0]
        elif code == 54 and length == 4:
            server = value
        i += 2 + length
    return kind, b[16:20], server


def wait_for(sock, xid, kinds, deadline):
    """The first reply of one of `kinds` to `xid` before `deadline`: (time received, parsed)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, None
        if not select.select([sock], [], [], left)[0]:
            continue
        frame = sock.recv(2048)
        got = time.monotonic()
        parsed = parse_reply(frame, xid)
        if parsed and parsed[0] in kinds:
            return got, parsed


def one_lease(sock, mac, xid, timeout):
    """One exchange; answers (discover->offer, request->ack, discover->ack, address)."""
    t0 = time.monotonic()
    sock.send(request_frame(mac, xid, DISCOVER))
    t_offer, offer = wait_for(sock, xid, {OFFER}, t0 + timeout)
    if offer is None:
        raise TimeoutError(f"no OFFER within {timeout} s")
    t1 = time.monotonic()
    sock.send(request_frame(mac, xid, REQUEST, requested=offer[1], server=offer[2]))
    t_ack, ack = wait_for(sock, xid, {ACK, NAK}, t1 + timeout)
    if ack is None:
        raise TimeoutError(f"no ACK within {timeout} s")
    if ack[0] != ACK:
        raise RuntimeError("the server answered NAK")
    return t_offer - t0, t_ack - t1, t_ack - t0, socket.inet_ntoa(ack[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((args.iface, 0))
    mac = sock.getsockname()[4][:6]
    runs, errors = [], []
    for n in range(args.runs):
        xid = (os.getpid() << 12 ^ n) & 0xFFFFFFFF
        try:
            runs.append(one_lease(sock, mac, xid, args.timeout))
        except (TimeoutError, RuntimeError) as e:
            errors.append(str(e))
        time.sleep(0.005)  # not a flood: a client at a time, as guests booting
    json.dump({"runs": runs, "errors": errors}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
