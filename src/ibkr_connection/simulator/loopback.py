"""The account a virtual-time loop keeps of its own loopback I/O still under way.

:class:`Loopback` counts the bytes written between sockets of one event loop
(both ends are transports of the loop: a client and a server it serves) and
read back, and knows the loop's connects to loopback addresses, so that
:class:`~ibkr_connection.simulator.month.VirtualTimeLoop` never jumps its
clock while the kernel still holds something of its own (issue 21).
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import ipaddress
import selectors
import socket
import sys
import termios
from collections.abc import Mapping
from typing import Any


def waits_to_write(selector: selectors.BaseSelector) -> bool:
    """True if a socket waits to be writable: a connect in progress or a full buffer."""
    # The selector's own fd -> key dict when it has one (CPython's selectors do):
    # get_map() wraps it in a Mapping whose iteration costs a call per key, and
    # this runs before every jump, about a million times a month (issue 21).
    keys = getattr(selector, "_fd_to_key", None)
    if keys is None:
        keys = selector.get_map()
    # A plain loop, not any() over a generator: this runs before every jump.
    for key in keys.values():  # noqa: SIM110
        if key.events & _WRITE:
            return True
    return False


_WRITE = selectors.EVENT_WRITE


_Address = tuple[Any, ...]


class _Pipe:
    """One direction of a loopback connection between two sockets of one loop.

    ``sent`` counts what the sending socket handed to the kernel, ``seen`` what
    the receiving socket read back; a connection still to be accepted counts
    one unit, its FIN (or reset) one more. While ``sent > seen`` something is
    owed to ``fd``: the accepting end until accepted (the listening socket
    until then), whose readability says the bytes arrived.
    """

    __slots__ = ("fd", "fin", "seen", "sent")

    def __init__(self, sent: int, fd: int) -> None:
        self.sent = sent
        self.seen = 0
        self.fin = 0
        self.fd = fd


class _End:
    """One socket of an in-process connection: what it sends, what it reads."""

    __slots__ = ("connecting", "fd", "inp", "key", "out")

    def __init__(self, key: tuple[_Address, _Address], fd: int, listener: int | None) -> None:
        self.key = key
        self.fd = fd
        self.connecting = listener is not None
        # The connecting end owes the accepting end the connection itself (its
        # last ACK can be in flight too): one unit, seen on the accept; until
        # then the listening socket is the one that turns readable.
        self.out = _Pipe(1, listener) if listener is not None else _Pipe(0, -1)
        self.inp: _Pipe | None = None


class Loopback:
    """The loop's account of loopback I/O between its own sockets still under way.

    A loopback write is usually readable by the peer when ``send`` returns: the
    kernel delivers it within the system call (the receive half runs as a
    softirq on the way out of it). Usually is not always: when softirq work
    piles up, Linux's ``__do_softirq`` stops after ~2 ms or 10 rounds and hands
    the rest to ``ksoftirqd``, and for that moment the bytes are nowhere a
    poll can see (not seen in the month's runs, see benchmarks/README.md, but
    possible). A loop that jumps its clock then would land their answer at a
    virtual time that depends on the machine's load. So every socket of a
    transport connected to a server of the same loop is counted, both ways,
    and :meth:`in_flight` says when bytes are owed; :meth:`writing` says when a
    socket waiting to be writable will be so by loopback I/O alone.

    The counting is a subclass of :class:`socket.socket` set on the socket
    (its ``__class__``: the layout is the same): one Python call more per
    ``send`` and ``recv``, no system call. Sockets to the outside are not
    counted: nothing of theirs is known to be on its way.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        # The selector's own fd -> key dict (CPython's selectors have one), read
        # live; else its map, a slower view of the same.
        keys = getattr(selector, "_fd_to_key", None)
        self.keys: Mapping[Any, selectors.SelectorKey] = (
            keys if keys is not None else selector.get_map())
        self.selector = selector
        #: Pipes whose receiver is known: the ones a jump must wait for.
        self.pipes: set[_Pipe] = set()
        self.ends: dict[socket.socket, _End] = {}
        self.by_fd: dict[int, _End] = {}
        #: Sockets connecting to a loopback address (sock_connect in progress).
        self.connecting: set[int] = set()
        self.by_key: dict[tuple[_Address, _Address], _End] = {}
        #: Listening address -> its socket's fd.
        self.listening: dict[_Address, int] = {}
        self.counted = _counting_socket(self)

    # -- tracking -----------------------------------------------------------------------
    def listen(self, sock: socket.socket) -> None:
        """A server of the loop listens on ``sock``."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                self.listening[sock.getsockname()[:2]] = sock.fileno()

    def unlisten(self, sock: socket.socket) -> None:
        """The server stops listening on ``sock``: what it had not accepted never will be."""
        with contextlib.suppress(OSError):
            fd = self.listening.pop(sock.getsockname()[:2], None)
            if fd is not None:
                for pipe in [pipe for pipe in self.pipes if pipe.fd == fd]:
                    self.pipes.discard(pipe)

    def _listener(self, address: _Address) -> int | None:
        fd = self.listening.get(address)
        if fd is None and len(address) == 2:
            fd = self.listening.get(("0.0.0.0", address[1])) or self.listening.get(
                ("::", address[1]))
        return fd

    def track(self, sock: socket.socket) -> None:
        """Count ``sock`` if it connects the loop to itself (called for each new transport)."""
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                   socket.AF_INET6):
            return
        try:
            me, peer = sock.getsockname()[:2], sock.getpeername()[:2]
        except OSError:
            return
        listener = self._listener(peer)
        if listener is None and self._listener(me) is None:
            return  # neither end is a server of this loop
        end = _End((me, peer), sock.fileno(), listener)
        other = self.by_key.get((peer, me))
        if other is not None:
            self._pair(end, other)
        elif listener is not None:
            self.pipes.add(end.out)  # owed to the listener until accepted
        self.by_key[end.key] = end
        self.by_fd[end.fd] = end
        self.ends[sock] = end
        sock.__class__ = self.counted

    def _pair(self, end: _End, other: _End) -> None:
        end.inp, other.inp = other.out, end.out
        end.out.fd, other.out.fd = other.fd, end.fd
        # Whichever came second, the connection is accepted now.
        (end if end.connecting else other).out.seen += 1
        self.pipes.add(end.out)
        self.pipes.add(other.out)

    def closed(self, sock: socket.socket) -> None:
        """``sock`` closes: its FIN is owed to the peer, and nobody reads its side again."""
        end = self.ends.pop(sock, None)
        if end is None:
            return
        if self.by_key.get(end.key) is end:
            del self.by_key[end.key]
        if self.by_fd.get(end.fd) is end:
            del self.by_fd[end.fd]
        if not end.out.fin:
            end.out.fin = 1
            end.out.sent += 1
        if end.inp is None:
            # Never accepted: it may never be (a server closing): do not wait for it.
            self.pipes.discard(end.out)
        else:
            self.pipes.discard(end.inp)

    def reset(self, sock: socket.socket) -> None:
        """Reading ``sock`` failed (a reset): nothing more comes from its peer."""
        end = self.ends.get(sock)
        if end is not None and end.inp is not None:
            self.pipes.discard(end.inp)

    # -- the question -------------------------------------------------------------------
    def in_flight(self) -> bool:
        """True if bytes written between two sockets of the loop are not readable yet.

        Asked after a poll found nothing ready: a receiver the selector watches
        would have been ready had its bytes arrived.
        """
        # A plain loop, not any() over a generator: this runs before each jump.
        for pipe in self.pipes:  # noqa: SIM110
            if pipe.sent > pipe.seen and self._owed(pipe):
                return True
        return False

    def _owed(self, pipe: _Pipe) -> bool:
        key = self.keys.get(pipe.fd)
        if key is not None and key.events & selectors.EVENT_READ:
            return True
        # The receiver's reading is paused (or it is closing): compare with what
        # its kernel buffer holds. A FIN cannot be seen this way; it counts as there.
        try:
            queued = int.from_bytes(fcntl.ioctl(pipe.fd, termios.FIONREAD, bytes(4)),
                                    sys.byteorder, signed=True)
        except OSError:
            return False
        return pipe.sent - pipe.seen - pipe.fin > queued

    def writing(self) -> bool:
        """True if a socket waiting to be writable will be so by loopback I/O alone.

        A connect to a loopback address is answered by the kernel (usually in
        the ``connect`` call itself; but a SYN that meets a TIME_WAIT socket
        the gateway's own close left on its port is refused only 8-35 ms
        later, measured here). A full send buffer towards a reader of the loop
        empties as that reader reads (the window update or a delayed ACK is the
        kernel's); towards a reader that stopped reading it may never.
        """
        keys = self.keys
        for fd, key in keys.items():
            if key.events & selectors.EVENT_WRITE:
                if fd in self.connecting:
                    return True
                end = self.by_fd.get(fd)
                if end is not None:
                    reader = keys.get(end.out.fd)
                    if reader is not None and reader.events & selectors.EVENT_READ:
                        return True
        return False

    def settle(self) -> str:
        """Give up on what is awaited (the loop waited too long for it); say what it was."""
        owed = [pipe for pipe in self.pipes if pipe.sent > pipe.seen and self._owed(pipe)]
        for pipe in owed:
            pipe.seen = pipe.sent
        connects = len(self.connecting)
        self.connecting.clear()  # those connects get the outside's 50 ms from now on
        return f"{len(owed)} pipe(s) owed bytes, {connects} connect(s) in progress"


def _counting_socket(account: Loopback) -> type[socket.socket]:
    """A :class:`socket.socket` subclass counting, for ``account``, what goes through."""
    ends = account.ends
    peek = int(socket.MSG_PEEK)  # a plain int: the IntFlag's & is a Python call

    class CountedSocket(socket.socket):
        __slots__ = ()

        def send(self, data: Any, flags: int = 0) -> int:
            n = _send(self, data, flags)
            ends[self].out.sent += n
            return n

        def sendmsg(self, *args: Any) -> int:
            n = _sendmsg(self, *args)
            ends[self].out.sent += n
            return n

        def recv(self, bufsize: int, flags: int = 0) -> bytes:
            try:
                data = _recv(self, bufsize, flags)
            except (BlockingIOError, InterruptedError):
                raise
            except OSError:
                account.reset(self)
                raise
            inp = ends[self].inp
            if inp is not None and not flags & peek:
                inp.seen += len(data) or 1  # b"" is the peer's FIN
            return data

        def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
            try:
                n = _recv_into(self, buffer, nbytes, flags)
            except (BlockingIOError, InterruptedError):
                raise
            except OSError:
                account.reset(self)
                raise
            inp = ends[self].inp
            if inp is not None and not flags & peek:
                inp.seen += n or 1
            return n

        def shutdown(self, how: int) -> None:
            end = ends.get(self)
            if end is not None and how != socket.SHUT_RD and not end.out.fin:
                end.out.fin = 1
                end.out.sent += 1
            _shutdown(self, how)

        def close(self) -> None:
            account.closed(self)
            socket.socket.close(self)

    return CountedSocket


def is_loopback(address: Any) -> bool:
    """True if ``address`` (a ``sock_connect`` address) is a loopback one."""
    try:
        host = address[0]
        known = _LOOPBACK_HOSTS.get(host)
    except (TypeError, IndexError, KeyError):
        return False
    if known is None:
        # Parsed once per host: a weekly login's wait is ~2,000 refused
        # connects a simulated hour to the same address (issue 21).
        try:
            known = ipaddress.ip_address(host).is_loopback
        except (ValueError, TypeError):
            known = host == "localhost"
        if len(_LOOPBACK_HOSTS) < 256:
            _LOOPBACK_HOSTS[host] = known
    return known


#: Hosts already asked about, and whether each is a loopback address.
_LOOPBACK_HOSTS: dict[Any, bool] = {}


_send = _socket.socket.send
_sendmsg = _socket.socket.sendmsg
_recv = _socket.socket.recv
_recv_into = _socket.socket.recv_into
_shutdown = _socket.socket.shutdown


__all__ = ["Loopback", "is_loopback", "waits_to_write"]
