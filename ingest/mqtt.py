"""The MQTT side of ingest: a paho-mqtt client driven by the asyncio event loop.

Threading model, chosen on purpose: paho runs in **the event loop's thread**
through its external-loop API (``loop_read`` / ``loop_write`` /
``loop_misc`` called from ``add_reader`` / ``add_writer`` callbacks and a
one-second timer), not in paho's own network thread. So ``on_message``,
``on_disconnect`` and ``ack()`` all run in one thread and cannot interleave:

* paho does not document ``ack()`` as thread-safe, and in 2.2 it queues the
  PUBACK without a lock around the connection state;
* acknowledgements carry packet ids, which are only meaningful on the
  connection (session) that delivered the message. Every connection gets a
  new *generation*; an :class:`Inbox` never spans two, and :meth:`ack` drops
  the acks of an inbox from an older generation. If a reconnect happened
  between a message's arrival and its batch's commit, the broker redelivers
  the message (its session still holds it unacknowledged) and the natural key
  absorbs the copy; acking the old id on the new connection could instead
  acknowledge a different message if the session had been lost.

The one blocking call, ``reconnect()`` (TCP connect, TLS handshake), runs in
a worker thread while the loop leaves the client alone; the socket is
registered with the loop when it returns.

Batches are cut where the stream pauses: an inbox is sealed when it is full,
when its oldest message is ``max_age_s`` old, or as soon as the receiver has
read everything the socket held (the broker had nothing more to send) and
the decoder asks for it. So a lone message -- a button press on a quiet
stream -- goes on at once instead of waiting out the age, while a stream read
faster than ingest takes its batches (the decoder busy, or the socket never
empty) still fills them.

The client keeps a persistent session (clean start off, session expiry set)
and announces a Receive Maximum: without it Mosquitto limits the messages in
flight to a v5 client to its ``max_inflight_messages`` (1000 here), which
would cap a batch below the 5,000 messages ingest wants to commit at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from core.errors import BrokerError
from core.settings import MqttUrl
from ingest.metrics import IngestMetrics

__all__ = ["Backoff", "Inbox", "MqttReceiver"]

log = logging.getLogger("anxiao.ingest.mqtt")

#: A connection that lasted this long resets the reconnect backoff.
_STABLE_S = 5.0
_CONNACK_TIMEOUT_S = 10.0
#: Packets read per readiness callback at most (fewer event-loop turns per message).
_READS_PER_WAKEUP = 64


class Backoff:
    """Capped exponential backoff with jitter: each delay is in [cap/2, cap]."""

    def __init__(self, *, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        """The next delay in seconds (and count the attempt)."""
        cap = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        # "Equal jitter": spread workers that lost the same broker apart, never ~0.
        return cap / 2 + random.random() * cap / 2

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempt = 0


@dataclass(slots=True)
class Inbox:
    """Messages received on one connection since the last seal, column-wise."""

    generation: int
    topics: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    #: Wall-clock receive time of each message, Unix seconds.
    received_s: list[float] = field(default_factory=list)
    #: Packet ids to acknowledge (QoS 1 messages only), in arrival order.
    mids: list[int] = field(default_factory=list)
    payload_bytes: int = 0
    #: Monotonic time of the first message (the batch's age starts there).
    opened_at: float = 0.0

    def __len__(self) -> int:
        return len(self.topics)


class MqttReceiver:
    """Receives device messages into inboxes and acknowledges them on request."""

    def __init__(
        self,
        *,
        url: MqttUrl,
        client_id: str,
        topic_filter: str,
        session_expiry_s: int,
        receive_maximum: int,
        keepalive_s: int,
        batch_max_messages: int,
        batch_max_bytes: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        metrics: IngestMetrics,
    ) -> None:
        self._url = url
        self._client_id = client_id
        self.topic_filter = topic_filter
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._keepalive_s = keepalive_s
        self._batch_max_messages = batch_max_messages
        self._batch_max_bytes = batch_max_bytes
        self._backoff = Backoff(initial_s=backoff_initial_s, max_s=backoff_max_s)
        self._metrics = metrics
        self._generation = 0
        self._inbox = Inbox(generation=0)
        self._sealed: deque[Inbox] = deque()
        #: The last read took everything the socket held: the inbox is not filling.
        self._quiet = True
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self.subscribed = asyncio.Event()
        """Set once the broker acknowledged the subscription."""
        self._connack: asyncio.Future[None] | None = None
        self._connected = False
        self._draining = False
        self._closed = False
        self._fd: int | None = None
        self._writing = False
        self._reading = False
        self._discarding = False
        self._confirm: asyncio.Future[None] | None = None
        self._confirm_mid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._client = self._make_client()

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._connected

    @property
    def generation(self) -> int:
        """Number of the current connection (acks of older ones are dropped)."""
        return self._generation

    async def run(self) -> None:
        """Connect, and reconnect after every loss, until :meth:`close`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        misc = asyncio.create_task(self._misc_timer(), name="ingest-mqtt-misc")
        first = True
        try:
            while not self._stop_requested():
                try:
                    await self._connect_once()
                except (OSError, BrokerError) as exc:
                    delay_s = self._backoff.next_delay()
                    log.warning("MQTT connect failed (%s); retrying in %.2f s", exc, delay_s)
                    await self._sleep_unless_closing(delay_s)
                    continue
                if not first:
                    self._metrics.reconnects["mqtt"] += 1
                first = False
                connected_at = time.monotonic()
                await self._lost.wait()
                if self._stop_requested():
                    break
                if time.monotonic() - connected_at >= _STABLE_S:
                    self._backoff.reset()
                delay_s = self._backoff.next_delay()
                log.warning("MQTT connection lost; reconnecting in %.2f s", delay_s)
                await self._sleep_unless_closing(delay_s)
        finally:
            misc.cancel()

    async def next_inbox(self, max_age_s: float) -> Inbox | None:
        """The next batch of messages: a full one, else what arrived until the stream paused.

        The current inbox is sealed once nothing more is waiting to be read,
        or at the latest when its oldest message is ``max_age_s`` old.
        Returns None once draining and nothing is left.
        """
        while True:
            if self._sealed:
                return self._sealed.popleft()
            timeout_s: float | None = None
            if self._inbox.topics:
                timeout_s = self._inbox.opened_at + max_age_s - time.monotonic()
                if timeout_s <= 0 or self._draining or self._quiet:
                    return self._seal()
            elif self._draining:
                return None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)

    def ack(self, inbox: Inbox) -> bool:
        """Acknowledge an inbox's messages in arrival order; False if its connection is gone."""
        if inbox.generation != self._generation or not self._connected:
            return False
        ack = self._client.ack
        for mid in inbox.mids:
            ack(mid, 1)
        return True

    def drain(self) -> None:
        """Stop reading new messages; :meth:`next_inbox` hands out the rest, then None.

        The connection stays up (keepalive, acknowledgements) until :meth:`close`.
        """
        self._draining = True
        if self._fd is not None and self._loop is not None and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        future = self._connack
        if future is not None and not future.done():
            future.set_exception(BrokerError("stopping"))
        self._lost.set()
        self._stopping.set()
        self._wake.set()

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """Make sure the broker has the acknowledgements, disconnect (the session stays).

        Closing a socket that still has unread data makes the kernel send a
        reset, and a reset makes the broker drop what it has not read yet --
        the last acknowledgements among it. Since ingest stopped reading while
        the broker kept sending, that data is there. So before disconnecting,
        ingest subscribes once more to its (unchanged) filter and waits for
        the SUBACK: the broker handles a client's packets in order, so the
        SUBACK means every PUBACK before it counted. Messages that arrive
        meanwhile are dropped unacknowledged; the broker redelivers them to
        the next session.
        """
        self._closed = True
        self._lost.set()
        self._stopping.set()
        client = self._client
        loop = asyncio.get_running_loop()
        if self._connected and self._fd is not None:
            self._discarding = True
            if not self._reading:
                loop.add_reader(self._fd, self._on_readable)
                self._reading = True
            confirmed: asyncio.Future[None] = loop.create_future()
            self._confirm = confirmed
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            _, mid = client.subscribe(self.topic_filter, options=options)
            self._confirm_mid = -1 if mid is None else mid
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), timeout_s)
            except (TimeoutError, BrokerError):
                log.warning("broker did not confirm the last acknowledgements; it may redeliver")
            finally:
                self._confirm = None
        if self._connected:
            client.disconnect()
            deadline = time.monotonic() + timeout_s
            while client.want_write() and time.monotonic() < deadline:
                if client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                    break
                if client.want_write():
                    await asyncio.sleep(0.005)
        self._unregister()
        self._connected = False
        self._metrics.mqtt_connected = False
        if client.socket() is not None:
            # DISCONNECT could not be written in time; paho has no public "close now".
            client._sock_close()

    # --------------------------------------------------------------- paho glue

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if self._url.username is not None:
            client.username_pw_set(self._url.username, self._url.password)
        if self._url.tls:
            client.tls_set()
        client.connect_timeout = 5.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s
        properties.ReceiveMaximum = self._receive_maximum
        client.connect_async(
            self._url.host,
            self._url.port,
            keepalive=self._keepalive_s,
            clean_start=False,
            properties=properties,
        )
        return client

    async def _connect_once(self) -> None:
        """One connection attempt: TCP (and TLS), CONNECT, wait for a good CONNACK."""
        loop = asyncio.get_running_loop()
        self._unregister()
        self._lost.clear()
        self._connack = loop.create_future()
        try:
            # Blocking TCP connect (and TLS handshake) off the loop; the loop does
            # not touch the client meanwhile (no fd registered, not connected).
            await asyncio.to_thread(self._client.reconnect)
            sock = self._client.socket()
            if sock is None:
                raise BrokerError("paho opened no socket")
            self._fd = sock.fileno()
            loop.add_reader(self._fd, self._on_readable)
            self._reading = True
            if self._client.want_write():
                self._writing = True
                loop.add_writer(self._fd, self._on_writable)
            try:
                await asyncio.wait_for(asyncio.shield(self._connack), _CONNACK_TIMEOUT_S)
            except TimeoutError as exc:
                self._unregister()
                self._client._sock_close()  # abandon a silent connection
                raise BrokerError("no CONNACK from the broker") from exc
            except BrokerError:
                self._unregister()
                raise
        finally:
            self._connack = None

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        future = self._connack
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            if future is not None and not future.done():
                future.set_exception(BrokerError(f"broker refused the connection: {reason}"))
            return
        self._connected = True
        self._metrics.mqtt_connected = True
        if not flags.session_present:
            # A new session: anything the broker held for an older one is gone.
            log.info("MQTT session is new (client id %s)", self._client_id)
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe(self.topic_filter, options=options)
        log.info("MQTT connected as %s, subscribed to %s", self._client_id, self.topic_filter)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        confirm = self._confirm
        if confirm is not None and mid == self._confirm_mid and not confirm.done():
            confirm.set_result(None)
        refused = [reason for reason in reasons if reason.is_failure]
        if refused:
            log.error("broker refused the subscription to %s: %s", self.topic_filter, refused[0])
        else:
            self.subscribed.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        self._metrics.mqtt_connected = False
        # A new generation: acks of what arrived so far would go to the wrong session.
        self._generation += 1
        if self._inbox.topics:
            self._queue_inbox()
        self._inbox = Inbox(generation=self._generation)
        self._unregister()
        if was_connected and not self._closed:
            log.warning("MQTT disconnected: %s", reason)
        for future in (self._connack, self._confirm):
            if future is not None and not future.done():
                future.set_exception(BrokerError(f"disconnected: {reason}"))
        self._lost.set()
        self._wake.set()

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        if self._discarding:
            return  # closing: unacknowledged, so the broker redelivers it later
        inbox = self._inbox
        if not inbox.topics:
            inbox.opened_at = time.monotonic()
            self._wake.set()
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers should refuse these; keep it as a bad topic
            topic = bytes(message._topic).decode("utf-8", "replace")
        # decode_publish slices it out with struct.unpack: always bytes, never bytearray.
        payload = cast(bytes, message.payload)
        inbox.topics.append(topic)
        inbox.payloads.append(payload)
        inbox.received_s.append(time.time())
        if message.qos:
            inbox.mids.append(message.mid)
        inbox.payload_bytes += len(payload)
        self._metrics.messages_received += 1
        if (
            len(inbox.topics) >= self._batch_max_messages
            or inbox.payload_bytes >= self._batch_max_bytes
        ):
            self._queue_inbox()

    def _seal(self) -> Inbox:
        """Close the current inbox and start a new one; return the closed one."""
        inbox = self._inbox
        self._inbox = Inbox(generation=self._generation)
        return inbox

    def _queue_inbox(self) -> None:
        """Seal the current inbox and queue it for :meth:`next_inbox`."""
        self._sealed.append(self._seal())
        self._wake.set()

    def _on_readable(self) -> None:
        client = self._client
        before = -1
        quiet = False
        # One packet per loop_read; keep reading while whole packets arrive.
        for _ in range(_READS_PER_WAKEUP):
            received = self._metrics.messages_received
            if received == before or self._fd is None:
                # Nothing more to read (or a packet that is not a message, which
                # at worst seals a batch early): the stream paused here.
                quiet = True
                break
            before = received
            client.loop_read()
        self._quiet = quiet
        if quiet and self._inbox.topics:
            self._wake.set()

    def _on_writable(self) -> None:
        self._client.loop_write()

    def _in_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_socket_close(self, _client: mqtt.Client, _userdata: object, _sock: object) -> None:
        if self._in_loop_thread():
            self._unregister()

    def _on_socket_register_write(
        self, _client: mqtt.Client, _userdata: object, _sock: object
    ) -> None:
        if self._in_loop_thread() and self._fd is not None and not self._writing and self._loop:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_socket_unregister_write(
        self, _client: mqtt.Client, _userdata: object, _sock: object
    ) -> None:
        if self._in_loop_thread() and self._fd is not None and self._writing and self._loop:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _unregister(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None or self._loop is None:
            return
        if self._reading:
            self._loop.remove_reader(fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(fd)
            self._writing = False

    async def _misc_timer(self) -> None:
        # Keepalive pings and the ping-timeout check; paho's loop would do this.
        while True:
            await asyncio.sleep(1.0)
            if self._fd is not None:
                self._client.loop_misc()

    def _stop_requested(self) -> bool:
        return self._closed or self._draining

    async def _sleep_unless_closing(self, delay_s: float) -> None:
        if self._stop_requested():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)
