#!/usr/bin/env python3
"""Watches who answers ARP for an address on a bridge, until stopped.

Every 100 ms it broadcasts "who-has IP tell HOST_IP" on IFACE and prints one line per
probe: "probe N MILLIS MAC[,MAC…]" with every distinct MAC that replied within the window
("-" for none). Unsolicited ARP naming IP as sender (gratuitous ARP) is printed as
"garp MILLIS MAC".
    checks/arp-watch.py IFACE IP HOST_IP
"""
import socket
import struct
import sys
import time

iface, ip, host_ip = sys.argv[1], sys.argv[2], sys.argv[3]
ETH_P_ARP = 0x0806
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
s.bind((iface, ETH_P_ARP))
s.settimeout(0.01)
my_mac = s.getsockname()[4]
target = socket.inet_aton(ip)
me = socket.inet_aton(host_ip)


def mac_text(b):
    return ":".join(f"{x:02x}" for x in b)


request = (b"\xff" * 6 + my_mac + struct.pack("!H", ETH_P_ARP)
           + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
           + my_mac + me + b"\x00" * 6 + target)
n = 0
while True:
    n += 1
    s.send(request)
    deadline = time.monotonic() + 0.1
    seen = []
    while time.monotonic() < deadline:
        try:
            frame = s.recv(128)
        except socket.timeout:
            continue
        if len(frame) < 42:
            continue
        op = struct.unpack("!H", frame[20:22])[0]
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if spa != target or sha == my_mac:
            continue
        if op == 2 and tpa == me:
            if mac_text(sha) not in seen:
                seen.append(mac_text(sha))
        else:
            print(f"garp {int(time.time() * 1000)} {mac_text(sha)}", flush=True)
    print(f"probe {n} {int(time.time() * 1000)} {','.join(seen) or '-'}", flush=True)
