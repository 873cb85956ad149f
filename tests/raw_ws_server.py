"""A WebSocket server written by hand from RFC 6455, for testing the capture client against
peers that are not our simulator: each connection runs a script that writes raw bytes (frames
cut anywhere, fragments, control frames, resets, bad handshakes).

Loopback only (127.0.0.1, port 0). Not a library: just enough of the protocol to misbehave.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from typing import Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(first_byte: int, payload: bytes) -> bytes:
    """One unmasked server frame; `first_byte` holds FIN, RSV and the opcode (0x81: a whole text frame)."""
    n = len(payload)
    if n < 126:
        head = bytes([first_byte, n])
    elif n < 65536:
        head = bytes([first_byte, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first_byte, 127]) + n.to_bytes(8, "big")
    return head + payload


def text(payload: bytes) -> bytes:
    return frame(0x81, payload)


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    return frame(0x88, b"" if code is None else struct.pack("!H", code) + reason)


class Peer:
    """One accepted connection, seen from the server side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self._buf = b""
        self.request = b""

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            self._buf += chunk
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_request(self) -> bytes:
        self.request = self._read_until(b"\r\n\r\n")
        return self.request

    def accept_key(self) -> bytes:
        key = next(line.split(b":", 1)[1].strip() for line in self.request.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        return base64.b64encode(hashlib.sha1(key + GUID).digest())

    def handshake(self, extra_headers: bytes = b"") -> None:
        """Read the upgrade request and accept it (101)."""
        self.read_request()
        self.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + self.accept_key() + b"\r\n" + extra_headers + b"\r\n"
        )

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next client frame (clients mask theirs)."""
        b0, b1 = self._read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read_exact(8), "big")
        mask = self._read_exact(4) if b1 & 0x80 else b"\0\0\0\0"
        data = self._read_exact(n)
        return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))

    def read_text(self) -> bytes:
        """The next client text frame's payload, skipping control frames (pongs)."""
        while True:
            opcode, data = self.read_frame()
            if opcode == 1:
                return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class RawWsServer:
    """Accepts connections on 127.0.0.1 and runs `script(peer, n)` for each (n: 0-based count)."""

    def __init__(self, script: Callable[[Peer, int], None]) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._peers: list[Peer] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/market"

    def __enter__(self) -> "RawWsServer":
        self._acceptor.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.listener.close()
        for p in self._peers:
            try:
                p.sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            peer = Peer(sock)
            self._peers.append(peer)
            n = self.accepted
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(peer, n), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, peer: Peer, n: int) -> None:
        try:
            self.script(peer, n)
        except (ConnectionError, OSError):
            pass  # the client left: the normal end of most scripts
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test
            self.errors.append(exc)
