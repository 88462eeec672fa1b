"""The admin Unix socket: created private, never stolen, and checked per connection.

The socket is bound under a restrictive umask to a temporary name and renamed into
place, so there is no moment when it exists with wider permissions, and a stale socket
from a crashed gateway is replaced atomically. A live one (something answers a
connect) is never taken over. Every request's peer uid is read with `SO_PEERCRED`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .admin.common import ACTOR
from .errors import error_response
from .store import Actor


class AdminSocketError(RuntimeError):
    """The admin socket cannot be created; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Peer:
    uid: int
    pid: int

    @property
    def name(self) -> str:
        try:
            return f"uid:{self.uid}({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid:{self.uid}"


PEER = web.RequestKey("peer", Peer)


@dataclass(slots=True)
class AdminListener:
    """A bound, listening admin socket; `close()` closes it and removes its file, if the
    file is still this one (closing twice is harmless)."""

    path: Path
    sock: socket.socket
    inode: int

    @classmethod
    def bind(cls, path: Path) -> AdminListener:
        sock, inode = bind_admin_socket(path)
        return cls(path, sock, inode)

    def close(self) -> None:
        self.sock.close()
        remove_admin_socket(self.path, self.inode)


def bind_admin_socket(path: Path) -> tuple[socket.socket, int]:
    """A listening socket at `path`, mode 0600, and its inode (to clean up only ours)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    _clear_stale(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)  # bind() creates the file: born 0600
        try:
            sock.bind(str(temporary))
        finally:
            os.umask(previous)
        os.replace(temporary, path)
        sock.listen(128)
        sock.setblocking(False)
        return sock, path.stat().st_ino
    except OSError as exc:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise AdminSocketError(f"cannot create the admin socket {path}: {exc}") from exc


def _clear_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(
            f"{path} exists and is not a socket: move it away or set [admin] socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # nobody listens: a crashed gateway's leftover, replaced on bind
    except OSError as exc:
        raise AdminSocketError(f"cannot check the admin socket {path}: {exc}") from exc
    finally:
        probe.close()
    raise AdminSocketError(
        f"another gateway is serving the admin socket {path}: stop it first, "
        "or give this one another [admin] socket"
    )


def remove_admin_socket(path: Path, inode: int) -> None:
    """Remove the socket file if it is still the one this process created."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == inode:
            path.unlink()


def peer_of(request: web.Request) -> Peer | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return Peer(uid=uid, pid=pid)


def peer_middleware(allowed_uids: frozenset[int]) -> Middleware:
    """Refuse every request whose peer uid is not allowed (checked per request, so a
    connection cannot outlive a change of who may connect)."""

    @web.middleware
    async def check_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = peer_of(request)
        if peer is None or peer.uid not in allowed_uids:
            who = "unknown" if peer is None else peer.name
            return error_response(
                403,
                f"{who} may not use the admin socket: run as the gateway's user or root, "
                "or add the uid to [admin] allowed_uids",
                code="admin_peer_refused",
            )
        request[PEER] = peer
        request[ACTOR] = Actor(peer.name, "socket")
        return await handler(request)

    return check_peer
