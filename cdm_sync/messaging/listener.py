"""The live feed: Nova's notifications from RabbitMQ, through oslo.messaging, into the model.

Contracts (the reasons are in doc/source/architecture.rst):

- Notifications are received by oslo.messaging's batch server in a process of its own
  (:mod:`cdm_sync.messaging.receiver`, started, watched and replaced by this listener), on the
  pool queue ``pool``: cdm-sync's own copy of every topic and priority, in the order RabbitMQ
  queued them. One thread here (``cdm-sync-notifications``) applies each batch in arrival order
  through the same :class:`~cdm_sync.messaging.endpoints.Dispatcher` ``cdm-sync replay`` uses,
  then answers it; only then does the receiver acknowledge its messages. If either process
  dies, RabbitMQ delivers again what was not acknowledged; duplicates and versions absorb it.
- At most ``max_inflight`` batches are unanswered and the broker hands the receiver at most
  ``batch_size * (max_inflight + 1)`` unacknowledged messages: a slow model keeps the backlog
  in RabbitMQ.
- ``hold()`` (the gap-free bootstrap, :class:`~cdm_sync.sync.ports.NotificationGate`) keeps the
  batches that arrive unanswered and unacknowledged, so at most ``max_inflight`` batches wait
  in memory and the rest waits in RabbitMQ; ``release()`` applies and answers them in order.
  Held messages count against RabbitMQ's consumer timeout (30 minutes by default): a bootstrap
  listing longer than that has its channel closed and the messages redelivered, nothing lost.
- A message raising anything but a rejection while applied (a bug) is requeued after a
  backoff and dropped, logged, after ``max_redeliveries``; audits repair what it would have
  changed. A message the receiver could not read is counted as rejected and logged with the
  reason, then acknowledged.
- If the applying thread itself fails, the listener stops with :attr:`failure` set (``running``
  is then False) and nothing more is acknowledged; the daemon reports and restarts it.
"""

from __future__ import annotations

import collections
import logging
import marshal
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import oslo_messaging
from oslo_config import cfg

from cdm_sync.conf import listener as listener_conf
from cdm_sync.messaging import receiver
from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.sync.service import NOT_A_STRING, UNPARSABLE, SyncService

LOG = logging.getLogger(__name__)

DEFAULT_TOPICS = ("versioned_notifications",)
DEFAULT_POOL = "cdm-sync"
DEFAULT_BATCH_SIZE = 256
DEFAULT_BATCH_TIMEOUT = 0.1
DEFAULT_MAX_REDELIVERIES = 5
# Batches the receiver may have forwarded without an answer: enough to keep it busy while
# one is applied, few enough that a slow model holds messages back in RabbitMQ.
DEFAULT_MAX_INFLIGHT = 4
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
# First backoff before a failed message is requeued; doubled per attempt, capped.
DEFAULT_REQUEUE_DELAY = 0.1
MAX_REQUEUE_DELAY = 5.0
# Backoff before a receiver that died is replaced; doubled per failed start, capped.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# How long stop() waits for the receiver to hand over and acknowledge what it holds.
STOP_TIMEOUT = 30.0
# How many failing message ids are remembered for the redelivery bound.
_ATTEMPTS_REMEMBERED = 1024
APPLY_THREAD = "cdm-sync-notifications"


@dataclass
class ListenerStats:
    """What the listener did (the model's outcomes are in ``SyncService.stats``).

    Written by the applying thread (and by ``release()``), under the listener's lock;
    plain reads from other threads are fine for monitoring.
    """

    batches: int = 0
    received: int = 0  # messages taken from RabbitMQ, redeliveries included
    applied: int = 0  # messages handed to the apply path (directly or once released)
    buffered: int = 0  # messages held now (unanswered, unacknowledged)
    released: int = 0  # held messages applied on release, in total
    unreadable: int = 0  # messages that were not notifications (refused by the receiver)
    failures: int = 0  # unexpected exceptions while applying
    requeued: int = 0  # messages given back to RabbitMQ after a failure
    dropped: int = 0  # messages given up on after max_redeliveries (or failing in release)
    restarts: int = 0  # receiving processes replaced after dying
    last_batch_at: float | None = None  # POSIX time the last batch was received
    # Notification lag is measured where notifications are applied: SyncService.stats.


class ListenerStopped(RuntimeError):
    """stop() was called while start() was still waiting for the receiver."""


class ReceiverFailed(RuntimeError):
    """The receiving process could not start (its reason, as it logged it)."""


def _describe(line: Any) -> tuple[str, Any]:
    """(event type label, message id) of a line, for logs and counters."""
    if type(line) is not dict:
        return UNPARSABLE, None
    event_type = line.get("event_type")
    metadata = line.get("metadata")
    message_id = metadata.get("message_id") if type(metadata) is dict else None
    return (event_type if isinstance(event_type, str) else NOT_A_STRING), message_id


def _relog(body: bytes) -> None:
    """Log a record the receiver sent through this process's handlers."""
    record = logging.makeLogRecord(receiver.decode(body))
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class ReceiverProcess:
    """The receiving process as the listener sees it: the process and its end of the socket."""

    def __init__(self, spec: receiver.ReceiverSpec, stopping: threading.Event) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cdm_sync.messaging.receiver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        # The socket object is kept for shutdown(): closing a descriptor does not wake a
        # thread blocked reading it, nor tell the receiver, while shutting the socket down does.
        self._socket = ours
        self.conn = Connection(os.dup(ours.fileno()))
        self._send_lock = threading.Lock()
        try:
            self.send(pickle.dumps(spec))
            self._wait_ready(stopping)
        except BaseException:
            self.close(0.0)
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self, stopping: threading.Event) -> None:
        while True:
            if stopping.is_set():
                raise ListenerStopped("the listener was stopped while it was starting")
            if not self.conn.poll(0.5):
                continue  # oslo.messaging retries an unreachable broker inside start()
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                code = self.process.wait(5)
                raise ReceiverFailed(
                    f"the receiver exited with code {code} while starting"
                ) from None
            tag = frame[:1]
            if tag == receiver.READY:
                return
            if tag == receiver.LOG_RECORD:
                _relog(frame[1:])
            elif tag == receiver.START_FAILED:
                raise ReceiverFailed(frame[1:].decode(errors="replace"))

    def send(self, frame: bytes) -> None:
        """Send a frame; if the receiver is gone, the applying thread's read says so."""
        with self._send_lock, suppress(OSError):
            self.conn.send_bytes(frame)

    def disconnect(self) -> None:
        """Shut our end down: a read blocked on it returns, and the receiver stops."""
        with suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def close(self, timeout: float) -> int | None:
        """Disconnect, then reap the receiver (killing it after ``timeout`` seconds)."""
        self.disconnect()
        self.conn.close()
        self._socket.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            LOG.warning("The notification receiver (pid %d) did not exit; killing it", self.pid)
            self.process.kill()
            return self.process.wait()


class NotificationListener:
    """Consumes notifications from RabbitMQ into a :class:`Dispatcher`; a NotificationGate.

    ``transport``: a transport URL (``rabbit://user:pass@host:5672/``, a string or an
    ``oslo_messaging.TransportURL``) or None for the notification transport configured in
    ``conf``. The receiving process builds its own transport from it and from ``conf``'s
    oslo.messaging options (``[oslo_messaging_rabbit]`` and the rest), so a ``Transport``
    object, which cannot cross a process boundary, is refused. ``exchange`` None is the
    transport's ``control_exchange``; Nova publishes to ``nova``.
    """

    def __init__(
        self,
        transport: oslo_messaging.TransportURL | str | None,
        dispatcher: Dispatcher,
        *,
        topics: Iterable[str] = DEFAULT_TOPICS,
        exchange: str | None = None,
        pool: str = DEFAULT_POOL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_timeout: float = DEFAULT_BATCH_TIMEOUT,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        requeue_delay: float = DEFAULT_REQUEUE_DELAY,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        prefetch: int | None = None,
        conf: cfg.ConfigOpts | None = None,
    ) -> None:
        self.topics = tuple(topics)
        if not self.topics:
            raise ValueError("a notification listener needs at least one topic")
        if not pool:
            # Without a pool, the listener would consume from the topic's shared queues and
            # take notifications away from whoever else reads them.
            raise ValueError("a pool name is required")
        if batch_size < 1 or batch_timeout <= 0:
            # oslo.messaging treats a zero timeout as "wait until the batch is full".
            raise ValueError("batch_size must be >= 1 and batch_timeout > 0")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if prefetch is not None and prefetch < 0:
            raise ValueError("prefetch must be >= 0 (0: no limit)")
        if transport is not None and not isinstance(transport, str | oslo_messaging.TransportURL):
            raise TypeError(
                "pass a transport URL (or None and conf), not a "
                f"{type(transport).__name__}: notifications are received in a process of its "
                "own, which builds its own transport"
            )
        self._url = None if transport is None else str(transport)
        self._conf = conf
        self.dispatcher = dispatcher
        self.exchange = exchange
        self.pool = pool
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_redeliveries = max_redeliveries
        self.requeue_delay = requeue_delay
        self.max_inflight = max_inflight
        self.max_message_bytes = max_message_bytes
        # What RabbitMQ may hand the receiver unacknowledged: the batches in flight and the one
        # being filled. 0 is oslo.messaging's default, no limit (kept for comparisons).
        self.prefetch = batch_size * (max_inflight + 1) if prefetch is None else prefetch
        self.stats = ListenerStats()
        # Held by the applying thread for a whole batch and by hold()/release(): no batch is
        # applied while the buffer is being drained, so the buffer always comes first.
        self._lock = threading.Lock()
        self._held = False
        # Batches held back, unanswered, with the receiver that sent them (only its own
        # receiver can answer a batch: a replaced one's messages are redelivered anyway).
        self._held_batches: list[tuple[ReceiverProcess, list[Any]]] = []
        self._attempts: collections.OrderedDict[Any, int] = collections.OrderedDict()
        self._stopping = threading.Event()
        # Guards _thread against a stop() racing a start() (the daemon starts on a thread).
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._receiver: ReceiverProcess | None = None
        self.failure: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started, not stopped, and its applying thread alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def receiver_pid(self) -> int | None:
        """The receiving process's pid while running (its RabbitMQ connections carry it)."""
        current = self._receiver
        return current.pid if current is not None else None

    def _spec(self) -> receiver.ReceiverSpec:
        conf = self._conf if self._conf is not None else cfg.ConfigOpts()
        levels = {
            name: logging.getLogger(name or None).getEffectiveLevel()
            for name in receiver.MIRRORED_LOGGERS
        }
        return receiver.ReceiverSpec(
            url=self._url,
            options=receiver.messaging_options(conf),
            topics=self.topics,
            exchange=self.exchange,
            pool=self.pool,
            batch_size=self.batch_size,
            batch_timeout=self.batch_timeout,
            max_inflight=self.max_inflight,
            prefetch=self.prefetch,
            max_message_bytes=self.max_message_bytes,
            log_levels=levels,
        )

    def start(self) -> None:
        """Start the receiving process, which declares the pool queue and its bindings, then
        consumes; apply what it forwards.

        When this returns, every notification published from now on reaches the queue (and
        the model, or the buffer while held). Blocks while RabbitMQ cannot be reached (the
        driver retries and logs); raises :class:`ReceiverFailed` if the receiver cannot start
        (a bad transport URL, say) and :class:`ListenerStopped` if :meth:`stop` is called
        meanwhile.
        """
        with self._state_lock:
            if self._thread is not None:
                if self._thread.is_alive():
                    return
                self._thread = None  # it failed: start afresh
            self._stopping.clear()
            self.failure = None
        spec = self._spec()
        started = ReceiverProcess(spec, self._stopping)
        with self._state_lock:
            if self._stopping.is_set():
                started.close(STOP_TIMEOUT)
                raise ListenerStopped("the listener was stopped while it was starting")
            self._receiver = started
            self._thread = threading.Thread(
                target=self._run, args=(spec,), name=APPLY_THREAD, daemon=True
            )
            self._thread.start()
        LOG.info(
            "Listening for notifications on %s (exchange %s, pool %s, batches of up to %d "
            "or %.3fs, received by process %d)",
            ", ".join(self.topics),
            self.exchange or "(transport default)",
            self.pool,
            self.batch_size,
            self.batch_timeout,
            started.pid,
        )

    def stop(self) -> None:
        """Stop consuming; batches already received are applied (and acknowledged) first."""
        with self._state_lock:
            self._stopping.set()  # also cuts a requeue backoff or a restart delay short
            thread = self._thread
        if thread is None:
            return
        current = self._receiver
        if current is not None:
            current.send(receiver.QUIT)
            with self._lock:
                holding = bool(self._held_batches)
            if holding:
                # Held batches will not be answered now: let the receiver go at once (RabbitMQ
                # delivers what it held again) rather than wait for answers that never come.
                current.disconnect()
        thread.join(STOP_TIMEOUT)
        if thread.is_alive() and self._receiver is not None:
            LOG.warning("The notification receiver did not stop within %.0fs", STOP_TIMEOUT)
            self._receiver.disconnect()  # the applying thread's read returns
            thread.join(STOP_TIMEOUT)
        with self._state_lock:
            self._thread = None
        LOG.info("Notification listener stopped: %s", self.stats)

    # -- the applying thread -----------------------------------------------------------------

    def _run(self, spec: receiver.ReceiverSpec) -> None:
        try:
            self._run_receivers(spec)
        except BaseException as exc:  # a bug here: stop, say why, acknowledge nothing more
            self.failure = f"the notification listener failed: {type(exc).__name__}: {exc}"
            LOG.exception("The notification listener stopped: it failed unexpectedly")
            current, self._receiver = self._receiver, None
            if current is not None:
                current.close(5.0)  # what it held is redelivered to the next receiver

    def _run_receivers(self, spec: receiver.ReceiverSpec) -> None:
        """Apply what the receiver forwards until it stops; replace it if it dies."""
        delay = RESTART_DELAY
        while True:
            current = self._receiver
            assert current is not None
            self._serve(current)
            code = current.close(STOP_TIMEOUT if self._stopping.is_set() else 5.0)
            self._receiver = None
            self._forget_held(current)
            if self._stopping.is_set():
                return
            self.stats.restarts += 1
            LOG.error(
                "The notification receiver (pid %d) exited unexpectedly (code %s); starting "
                "another in %.0fs (RabbitMQ delivers again what it had not acknowledged)",
                current.pid,
                code,
                delay,
            )
            while not self._stopping.wait(delay):
                try:
                    self._receiver = ReceiverProcess(spec, self._stopping)
                    break
                except ListenerStopped:
                    return
                except Exception:
                    delay = min(delay * 2, MAX_RESTART_DELAY)
                    LOG.exception("Starting a receiver failed; next try in %.0fs", delay)
            else:
                return
            delay = RESTART_DELAY

    def _serve(self, current: ReceiverProcess) -> None:
        """Apply and answer every batch in order, until the receiver's socket closes."""
        conn = current.conn
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                return
            tag = frame[:1]
            try:
                if tag == receiver.BATCH:
                    requeue = self._on_batch(current, receiver.decode(frame[1:]))
                    if requeue is not None:
                        current.send(receiver.ANSWER + marshal.dumps(requeue))
                elif tag == receiver.LOG_RECORD:
                    _relog(frame[1:])
                # STOPPED: nothing follows but its last log records; it exits after answers.
            except Exception:
                # Not the apply path's failures (they are requeued one by one): a frame this
                # side cannot read. Replace the receiver; RabbitMQ delivers again what it held.
                LOG.exception("Reading a frame from the notification receiver failed")
                return

    # -- NotificationGate --------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """Hold notifications back from now on instead of applying them (may precede start()):
        unanswered and unacknowledged, at most ``max_inflight`` batches of them."""
        with self._lock:
            if not self._held:
                self._held = True
                LOG.info("Notifications held: waiting until the model is loaded")

    def release(self) -> int:
        """Apply what was held, in order, answering each batch; then apply notifications as
        they arrive again. Returns how many messages were held."""
        with self._lock:
            held, self._held_batches = self._held_batches, []
            current = self._receiver
            count = 0
            for sender, lines in held:
                count += len(lines)
                if sender is not current:
                    continue  # its receiver is gone: RabbitMQ delivers these again
                failed, _ = self._apply(lines)
                self.stats.requeued += len(failed)
                self.stats.released += len(lines)
                sender.send(receiver.ANSWER + marshal.dumps(failed))
            self.stats.buffered = 0
            self._held = False
        LOG.info("Notifications released: %d held notifications applied", count)
        return count

    def _forget_held(self, gone: ReceiverProcess) -> None:
        """Drop the held batches of a receiver that is gone (RabbitMQ redelivers them)."""
        with self._lock:
            kept = [(sender, lines) for sender, lines in self._held_batches if sender is not gone]
            if len(kept) != len(self._held_batches):
                self._held_batches = kept
                self.stats.buffered = sum(len(lines) for _, lines in kept)

    # -- applying a batch (on the applying thread) -------------------------------------------

    def _on_batch(self, sender: ReceiverProcess, lines: list[Any]) -> list[int] | None:
        """Apply (or hold) one forwarded batch; returns the indexes the receiver requeues, or
        None when the batch is held (answered by release())."""
        stats = self.stats
        with self._lock:
            stats.batches += 1
            stats.received += len(lines)
            stats.last_batch_at = time.time()
            if self._held:
                self._held_batches.append((sender, lines))
                stats.buffered += len(lines)
                return None
            failed, attempt = self._apply(lines)
        if not failed:
            return []
        # Give the failed messages back after a backoff, so that a persistent failure does not
        # spin (one wait per batch, however many failed in it); stop() cuts the wait short.
        stats.requeued += len(failed)
        self._stopping.wait(min(self.requeue_delay * 2 ** (attempt - 1), MAX_REQUEUE_DELAY))
        return failed

    def _apply(self, lines: list[Any]) -> tuple[list[int], int]:
        """Deliver ``lines`` in order; returns the indexes of those to requeue and the highest
        attempt number among them.

        Only a failed message is requeued: the rest of the batch is applied in order (a
        requeued message comes back after those already received, so holding its successors
        back would reorder more, not less).
        """
        deliver = self.dispatcher.deliver
        attempts = self._attempts
        stats = self.stats
        applied = 0
        failed: list[int] = []
        worst = 0
        for index, line in enumerate(lines):
            if type(line) is str:  # the receiver could not read this message: the reason
                stats.unreadable += 1
                self.dispatcher.service.stats.rejection(UNPARSABLE, line)
                LOG.warning("Rejected a message from RabbitMQ: %s", line)
                continue
            try:
                deliver(line)
            except Exception:
                stats.failures += 1
                event_type, message_id = _describe(line)
                key = message_id if message_id is not None else (event_type, repr(line)[:200])
                attempt = attempts.pop(key, 0) + 1
                if attempt > self.max_redeliveries:
                    LOG.exception(
                        "Applying %s (message %s) failed %d times; dropping it (the next audit "
                        "repairs what it would have changed)",
                        event_type,
                        message_id,
                        attempt,
                    )
                    self._drop(event_type, f"failed {attempt} times while being applied")
                    continue
                attempts[key] = attempt
                while len(attempts) > _ATTEMPTS_REMEMBERED:
                    attempts.popitem(last=False)
                LOG.exception(
                    "Applying %s (message %s) failed (attempt %d of %d); requeueing it",
                    event_type,
                    message_id,
                    attempt,
                    self.max_redeliveries + 1,
                )
                failed.append(index)
                worst = max(worst, attempt)
                continue
            applied += 1
            if attempts:
                attempts.pop(_describe(line)[1], None)
        stats.applied += applied  # last: readers polling it see the rest updated
        return failed, worst

    def _drop(self, event_type: str, reason: str) -> None:
        self.stats.dropped += 1
        self.dispatcher.service.stats.rejection(event_type, reason)


def listener_from_conf(conf: cfg.ConfigOpts, service: SyncService) -> NotificationListener:
    """The listener as configured: ``[notifications_listener]`` options, the notification
    transport from ``[oslo_messaging_notifications]``/``[DEFAULT] transport_url``, endpoints for
    ``[notifications] format``."""
    conf.register_opts(listener_conf.OPTS, group=listener_conf.GROUP)  # no-op once registered
    opts = conf[listener_conf.GROUP]
    notifications = conf.notifications
    nova_format = notifications.format
    topics = list(opts.topics)
    if nova_format == "unversioned" and "notifications" not in topics:
        LOG.warning(
            "[notifications] format is unversioned but [%s] topics (%s) lacks Nova's legacy "
            "topic 'notifications'",
            listener_conf.GROUP,
            ", ".join(topics),
        )
    dispatcher = Dispatcher(
        make_endpoints(service, nova_format, notifications.supersede_window), service
    )
    return NotificationListener(
        None,
        dispatcher,
        topics=topics,
        exchange=opts.exchange or None,
        pool=opts.pool,
        batch_size=opts.batch_size,
        batch_timeout=opts.batch_timeout,
        max_redeliveries=opts.max_redeliveries,
        max_message_bytes=notifications.max_message_bytes,
        conf=conf,
    )


__all__ = ["ListenerStats", "NotificationListener", "listener_from_conf"]
