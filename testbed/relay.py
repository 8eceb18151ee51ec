"""QEMU ``guestfwd ... cmd:`` helper: one guest connection on stdin/stdout, relayed to the
metadata simulator on the host's loopback and nowhere else.

QEMU spawns it once per guest connection to 169.254.169.254:80; the port is the only thing
the caller chooses, so guest traffic cannot be pointed off this machine.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

LOOPBACK = "127.0.0.1"
BLOCK = 65536


def relay(port: int, guest_in: int = 0, guest_out: int = 1) -> None:
    """Pump bytes both ways until the simulator closes; half-close when the guest does."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as upstream:
        upstream.settimeout(None)
        selector = selectors.DefaultSelector()
        selector.register(guest_in, selectors.EVENT_READ, "guest")
        selector.register(upstream, selectors.EVENT_READ, "upstream")
        while True:
            for key, _ in selector.select():
                if key.data == "guest":
                    data = os.read(guest_in, BLOCK)
                    if not data:
                        selector.unregister(guest_in)
                        upstream.shutdown(socket.SHUT_WR)
                    else:
                        upstream.sendall(data)
                    continue
                data = upstream.recv(BLOCK)
                if not data:
                    return
                _write_all(guest_out, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit() or not 0 < int(argv[1]) < 65536:
        print("usage: relay.py PORT  (relays stdin/stdout to 127.0.0.1:PORT)", file=sys.stderr)
        return 2
    try:
        relay(int(argv[1]))
    except OSError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
