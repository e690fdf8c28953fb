"""Measure: how long a refused loopback connect takes, after the server closed first (issue 21).

The month's transcript differed between two runs of one seed because a
refused connect, normally refused inside the ``connect`` call, is sometimes
refused 8-35 ms later, and the virtual-time loop used to jump after 50 ms of
waiting for it. This script shows when: a listener takes ``--closes``
connections and closes each one first from its own side (as the simulator does
on a drop or a restart, leaving its side in TIME_WAIT for 60 s of wall clock),
or from the client's side; then it stops listening, and ``--connects``
non-blocking connects to its port are timed until the kernel refuses them.

Run::

    uv run python benchmarks/slow_refusals.py
"""

from __future__ import annotations

import argparse
import select
import socket
import time


def measure(server_first: bool, closes: int, connects: int) -> list[float]:
    """Close ``closes`` connections, time ``connects`` refused ones; return the slow ones, ms."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=100)
    port = listener.getsockname()[1]
    for _ in range(closes):
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        first, second = (accepted, client) if server_first else (client, accepted)
        first.close()
        second.recv(1)  # the FIN has arrived: the other side closes second
        second.close()
    listener.close()
    slow = []
    for _ in range(connects):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        poller = select.epoll()
        poller.register(sock.fileno(), select.EPOLLOUT)
        if not poller.poll(0):  # not refused within the connect call
            t0 = time.perf_counter()
            poller.poll(5.0)
            slow.append(1e3 * (time.perf_counter() - t0))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0  # refused
        poller.close()
        sock.close()
    return slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--closes", type=int, default=300)
    ap.add_argument("--connects", type=int, default=3000)
    args = ap.parse_args()
    for server_first in (True, False):
        slow = measure(server_first, args.closes, args.connects)
        who = "server" if server_first else "client"
        worst = f", slowest {max(slow):.1f} ms" if slow else ""
        print(f"{args.closes} connections closed by the {who} first: {len(slow)} of "
              f"{args.connects} refused connects not refused at once{worst}")


if __name__ == "__main__":
    main()
