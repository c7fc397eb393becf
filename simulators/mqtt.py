"""A lean MQTT 3.1.1 publisher for long QoS 1 streams.

paho-mqtt spends about 80 µs of Python per QoS 1 message (message objects,
per-acknowledgement callbacks and an O(in-flight) scan on every PUBACK), which
caps one process at roughly 10,000 acknowledged messages/s here. A simulator
only publishes, so this client does the minimum: it encodes each PUBLISH
into a write buffer, sends the buffer in large chunks, and counts PUBACKs
straight from the socket, keeping at most ``window`` messages unacknowledged.
Unacknowledged packets are kept and re-sent with the DUP flag after a
reconnect, so delivery stays at-least-once as QoS 1 promises.
"""

from __future__ import annotations

import collections
import select
import socket
import ssl
import time
from typing import Any, Final

from core.errors import BrokerError
from core.settings import MqttUrl

__all__ = ["MqttPublisher"]

_CONNECT, _CONNACK, _PUBLISH_QOS1, _PUBACK = 0x10, 0x20, 0x32, 0x40
_PINGREQ, _PINGRESP, _DISCONNECT = b"\xc0\x00", 0xD0, b"\xe0\x00"
_DUP: Final = 0x08
_CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
_FLUSH_BYTES: Final = 256 * 1024
_MAX_MID: Final = 65535


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class MqttPublisher:
    """Publishes QoS 1 messages to one broker over one connection.

    Use :meth:`connect`, then :meth:`publish` for each message (buffered),
    :meth:`flush` / :meth:`wait` when pacing, :meth:`drain` at the end and
    :meth:`close`. ``window`` bounds unacknowledged messages (at most 32768,
    so a packet id is never reused while in flight).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str,
        tls: bool = False,
        keepalive_s: int = 60,
        window: int = 20_000,
        connect_timeout_s: float = 10.0,
        reconnect_attempts: int = 5,
        stall_timeout_s: float = 60.0,
    ) -> None:
        if not 1 <= window <= 32768:
            raise ValueError("window must be within 1..32768")
        self.host, self.port, self.tls = host, port, tls
        self.username, self.password = username, password
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.window = window
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.stall_timeout_s = stall_timeout_s
        self.published = 0
        self.acked = 0
        self.bytes_sent = 0
        self.reconnects = 0
        self._sock: socket.socket | None = None
        self._mid = 0
        self._buffer = bytearray()
        self._inbox = bytearray()
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._topics: dict[str, bytes] = {}
        self._last_send = time.monotonic()

    @classmethod
    def for_url(cls, url: MqttUrl, *, client_id: str, **options: Any) -> MqttPublisher:
        """A publisher to the broker and account of ``url`` (other options as for ``__init__``)."""
        options.setdefault("password", url.password)
        return cls(
            host=url.host,
            port=url.port,
            username=url.username,
            tls=url.tls,
            client_id=client_id,
            **options,
        )

    # ---------------------------------------------------------------- connection
    def connect(self) -> None:
        """Open the connection and wait for the broker's CONNACK."""
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise BrokerError(
                f"无法连接代理 cannot reach broker {self.host}:{self.port}: {exc}"
            ) from exc
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock: socket.socket = raw
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=self.host)
        flags = 0x02  # clean session: a publisher keeps no subscriptions
        payload = _str16(self.client_id.encode())
        if self.username is not None:
            flags |= 0x80
            payload += _str16(self.username.encode())
            if self.password is not None:
                flags |= 0x40
                payload += _str16(self.password.encode())
        header = _str16(b"MQTT") + bytes([4, flags]) + self.keepalive_s.to_bytes(2, "big")
        body = header + payload
        try:
            sock.sendall(bytes([_CONNECT]) + _varint(len(body)) + body)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    raise BrokerError("代理关闭了连接 broker closed the connection during CONNECT")
                reply += chunk
        except OSError as exc:
            sock.close()
            raise BrokerError(f"连接失败 CONNECT failed: {exc}") from exc
        if reply[0] != _CONNACK or reply[3] != 0:
            sock.close()
            reason = _CONNACK_REASONS.get(reply[3], f"code {reply[3]}")
            raise BrokerError(f"代理拒绝连接 broker refused the connection: {reason}")
        sock.setblocking(False)
        self._sock = sock
        self._last_send = time.monotonic()

    def close(self) -> None:
        """Send DISCONNECT and close the socket (unacknowledged messages are abandoned)."""
        if self._sock is None:
            return
        try:
            self._sock.setblocking(True)
            self._sock.sendall(_DISCONNECT)
        except OSError:
            pass
        self._sock.close()
        self._sock = None

    def _reconnect(self, error: Exception) -> None:
        """Reconnect with capped backoff and re-send every unacknowledged packet."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.reconnects += 1
        delay = 0.2
        for _attempt in range(self.reconnect_attempts):
            try:
                self.connect()
                break
            except BrokerError:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            raise BrokerError(f"与代理的连接中断 lost the broker: {error}") from error
        # Everything unacknowledged goes again, sent or not (the buffer holds a subset).
        self._inbox.clear()
        self._buffer.clear()
        for _mid, packet in self._unacked:
            self._buffer += bytes([packet[0] | _DUP]) + packet[1:]

    # ---------------------------------------------------------------- publishing
    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH; sends when the buffer is large or the window full."""
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topics[topic] = _str16(topic.encode())
        mid = self._mid % _MAX_MID + 1
        self._mid = mid
        packet = b"".join(
            (
                b"\x32",
                _varint(len(tb) + 2 + len(payload)),
                tb,
                mid.to_bytes(2, "big"),
                payload,
            )
        )
        self._unacked.append((mid, packet))
        self._buffer += packet
        self.published += 1
        if len(self._buffer) >= _FLUSH_BYTES:
            self.flush()
        if self.published - self.acked >= self.window:
            self.flush()
            stalled_at = time.monotonic() + self.stall_timeout_s
            while self.published - self.acked > self.window // 2:
                acked = self.acked
                self._io(1.0, want_write=False)
                stalled_at = self._check_progress(self.acked != acked, stalled_at)

    def flush(self) -> None:
        """Send everything buffered (reading acknowledgements meanwhile)."""
        stalled_at = time.monotonic() + self.stall_timeout_s
        while self._buffer:
            left = len(self._buffer)
            self._io(1.0, want_write=True)
            stalled_at = self._check_progress(len(self._buffer) != left, stalled_at)

    def _check_progress(self, progressed: bool, stalled_at: float) -> float:
        """Return the next stall deadline; raise once nothing moved for too long."""
        now = time.monotonic()
        if progressed:
            return now + self.stall_timeout_s
        if now > stalled_at:
            raise BrokerError(
                f"代理 {self.stall_timeout_s:.0f} 秒无响应 broker made no progress"
                f" for {self.stall_timeout_s:.0f} s"
            )
        return stalled_at

    def wait(self, seconds: float) -> None:
        """Spend ``seconds`` reading acknowledgements and keeping the connection alive."""
        deadline = time.monotonic() + seconds
        self.flush()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if time.monotonic() - self._last_send > self.keepalive_s / 2:
                self._buffer += _PINGREQ
                self.flush()
            self._io(min(left, 1.0), want_write=False)

    def drain(self, timeout_s: float = 60.0) -> None:
        """Send everything and wait until the broker acknowledged every message."""
        deadline = time.monotonic() + timeout_s
        self.flush()
        while self.acked < self.published:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = self.published - self.acked
                raise BrokerError(
                    f"代理未确认 {missing} 条消息 broker did not acknowledge {missing}"
                )
            self._io(min(left, 1.0), want_write=False)

    # ---------------------------------------------------------------- socket work
    def _io(self, timeout_s: float, *, want_write: bool) -> None:
        sock = self._sock
        if sock is None:
            self._reconnect(BrokerError("not connected"))
            return
        try:
            readable, writable, _ = select.select(
                [sock], [sock] if want_write and self._buffer else [], [], timeout_s
            )
            if readable:
                self._read()
            if writable and self._buffer:
                sent = sock.send(self._buffer[:_FLUSH_BYTES])
                del self._buffer[:sent]
                self.bytes_sent += sent
                self._last_send = time.monotonic()
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (OSError, ConnectionError) as exc:
            self._reconnect(exc)

    def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            if not data:
                raise ConnectionResetError("broker closed the connection")
            self._inbox += data
            if len(data) < 1 << 16:
                break
        self._parse()

    def _parse(self) -> None:
        buf = self._inbox
        pos = 0
        n = len(buf)
        unacked = self._unacked
        acked = 0
        while pos + 2 <= n:
            kind = buf[pos] & 0xF0
            length, shift, i = 0, 0, pos + 1
            while i < n:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
            else:
                break
            if i + length > n:
                break
            if kind == _PUBACK and length >= 2:
                mid = (buf[i] << 8) | buf[i + 1]
                if unacked and unacked[0][0] == mid:
                    unacked.popleft()
                    acked += 1
                else:  # out of order: find it (brokers ack in order, so this is rare)
                    for k, (m, _p) in enumerate(unacked):
                        if m == mid:
                            del unacked[k]
                            acked += 1
                            break
            pos = i + length
        del buf[:pos]
        self.acked += acked
