"""The live feed: Nova's notifications from RabbitMQ, through oslo.messaging, into the model.

Why it is built the way it is:

- **Batch listener.** oslo.messaging's single-message listener hands one message at a time from
  its poll thread to a worker, and that hand-off is the bottleneck; its batch server
  (:class:`oslo_messaging.notify.listener.BatchNotificationServer`, what
  ``get_batch_notification_listener`` builds) gets close to the rate the broker delivers at.
- **Applied on the poll thread.** The batch server would still hand each batch to an executor
  thread. In CPython the two threads only take turns (the GIL): the poll thread, which does
  most of the work (AMQP framing, JSON), is made to wait while a batch is applied, and every
  acknowledgement the worker writes hands the lock back and forth. The listener applies each
  batch on the poll thread itself (:class:`_InlineBatchServer`): no hand-off, no contention,
  batches strictly in the order received, and a natural back-pressure (nothing is read from
  RabbitMQ while a batch is being applied; unread messages wait in the queue, unacknowledged
  ones are prefetch-bounded). Measured with ``python -m bench.run``: see the benchmarks doc.
- **Arrival order.** The stock batch dispatcher sorts a batch by priority before calling the
  endpoints, which would apply an ``instance.create.error`` (ERROR) before the ``instance.update``
  (INFO) sent ahead of it. The listener therefore builds the batch server with its own
  dispatcher, which hands every message of a batch, in arrival order, to the same
  :class:`~cdm_sync.messaging.endpoints.Dispatcher` that ``cdm-sync replay`` uses (one path for
  live and replayed notifications).
- **A pool.** With the rabbit driver the pool name is the name of one queue bound to every
  topic and priority we listen to: cdm-sync gets its own copy of every notification without
  taking any from other consumers, and (one queue, one consumer channel) receives them in the
  order RabbitMQ queued them, whatever their topic or priority.
- **Failures.** Malformed notifications are rejected and counted by the endpoints and never
  reach here as exceptions. Anything else raised while applying (a bug) requeues that message
  (``NotificationResult.REQUEUE`` semantics: the batch server requeues exactly the messages the
  dispatcher returns and acknowledges the rest) after a short backoff; a message that keeps
  failing is dropped after ``max_redeliveries`` with an error in the log, so one poison message
  cannot stall the feed forever (the audits repair what it would have changed). A requeued
  message comes back after those already received, so it is applied out of order: versions
  decide what wins (an older observation is ignored as stale).
- **Reconnection** is oslo.messaging's and kombu's: the poll thread reconnects and re-declares
  the pool queue, and messages that were not acknowledged on the lost connection are delivered
  again. Nothing here holds a connection or catches the driver's errors.
- **The gap-free bootstrap** (:class:`~cdm_sync.sync.ports.NotificationGate`): ``hold()`` makes
  the listener buffer what it receives (acknowledged, in order) while the engine lists Nova and
  loads the model; ``release()`` applies the buffer through the normal path, then goes back to
  applying as messages arrive. Buffered messages are acknowledged rather than left unacked, so
  a long listing cannot run into RabbitMQ's consumer timeout; if the process dies while holding,
  the next start lists Nova again after those notifications, so nothing is lost.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging.dispatcher import DispatcherBase
from oslo_messaging.notify.dispatcher import PRIORITIES
from oslo_messaging.notify.listener import BatchNotificationServer

from cdm_sync.conf import listener as listener_conf
from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

DEFAULT_TOPICS = ("versioned_notifications",)
DEFAULT_POOL = "cdm-sync"
DEFAULT_BATCH_SIZE = 256
DEFAULT_BATCH_TIMEOUT = 0.1
DEFAULT_MAX_REDELIVERIES = 5
# First backoff before a failed message is requeued; doubled per attempt, capped.
DEFAULT_REQUEUE_DELAY = 0.1
MAX_REQUEUE_DELAY = 5.0
# How many failing message ids are remembered for the redelivery bound.
_ATTEMPTS_REMEMBERED = 1024


@dataclass
class ListenerStats:
    """What the listener did (the model's outcomes are in ``SyncService.stats``).

    Written by the poll thread (and by ``release()``), under the listener's lock;
    plain reads from other threads are fine for monitoring.
    """

    batches: int = 0
    received: int = 0  # messages taken from RabbitMQ, redeliveries included
    applied: int = 0  # messages handed to the apply path (directly or from the buffer)
    buffered: int = 0  # messages in the hold buffer now
    released: int = 0  # messages applied from the buffer, in total
    failures: int = 0  # unexpected exceptions while applying
    requeued: int = 0  # messages given back to RabbitMQ after a failure
    dropped: int = 0  # messages given up on after max_redeliveries (or failing in release)
    last_batch_at: float | None = None  # POSIX time the last batch was received
    # Notification lag is measured where notifications are applied: SyncService.stats.


class _InlineBatchServer(BatchNotificationServer):
    """oslo.messaging's batch notification server, applying each batch on the thread that
    polled it instead of submitting it to the executor (see the module docstring). The
    executor is still made by ``start()`` and shut down by ``wait()``; it is given nothing.

    ``_on_incoming`` is the server's (undocumented) hand-off hook: should a later oslo.messaging
    rename it, batches would go to the one-worker executor again, still in order, only slower
    (``tests/test_listener.py`` checks which thread applies them)."""

    def _on_incoming(self, incoming: Sequence[Any]) -> None:
        self._process_incoming(incoming)


class _InOrderDispatcher(DispatcherBase):
    """oslo.messaging's dispatcher interface for the batch server, handing batches to the
    listener as they arrived. Bound to every priority: the traffic endpoint counts everything."""

    def __init__(self, on_batch: Any) -> None:
        self._on_batch = on_batch

    @property
    def supported_priorities(self) -> Sequence[str]:
        return PRIORITIES

    def dispatch(self, incoming: Sequence[Any]) -> set[Any]:
        """Returns the messages to requeue; the server acknowledges the others."""
        return self._on_batch(incoming)


def _line(incoming: Any) -> Any:
    """One received message as a trace line (FORMATS.md §2), as oslo's dispatcher builds it.

    ``ctxt`` is passed through untouched (it may carry a token: it is never logged).
    """
    message = incoming.message  # the rabbit driver's RabbitMessage, a dict subclass
    if not isinstance(message, dict):
        return message  # the Dispatcher rejects and counts it
    return {
        "priority": message.get("priority"),
        "publisher_id": message.get("publisher_id"),
        "event_type": message.get("event_type"),
        "payload": message.get("payload"),
        "metadata": {
            "message_id": message.get("message_id"),
            "timestamp": message.get("timestamp"),
        },
        "ctxt": incoming.ctxt,
    }


def _describe(line: Any) -> tuple[str, Any]:
    """(event type label, message id) of a line, for logs and counters."""
    if type(line) is not dict:
        return "(unparsable)", None
    event_type = line.get("event_type")
    metadata = line.get("metadata")
    message_id = metadata.get("message_id") if type(metadata) is dict else None
    return (event_type if isinstance(event_type, str) else "(not a string)"), message_id


class NotificationListener:
    """Consumes notifications from RabbitMQ into a :class:`Dispatcher`; a NotificationGate.

    ``transport``: an oslo.messaging notification transport (the caller keeps it and cleans
    it up), or a transport URL (``rabbit://user:pass@host:5672/``) or None (the notification
    transport configured in ``conf``), in which case the listener makes its own transport on
    :meth:`start` and cleans it up on :meth:`stop`. ``exchange`` None is the transport's
    ``control_exchange``; Nova publishes to ``nova``.
    """

    def __init__(
        self,
        transport: oslo_messaging.Transport | oslo_messaging.TransportURL | str | None,
        dispatcher: Dispatcher,
        *,
        topics: Iterable[str] = DEFAULT_TOPICS,
        exchange: str | None = None,
        pool: str = DEFAULT_POOL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_timeout: float = DEFAULT_BATCH_TIMEOUT,
        max_redeliveries: int = DEFAULT_MAX_REDELIVERIES,
        requeue_delay: float = DEFAULT_REQUEUE_DELAY,
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
        self._transport_arg = transport
        self._conf = conf
        self.dispatcher = dispatcher
        self.exchange = exchange
        self.pool = pool
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_redeliveries = max_redeliveries
        self.requeue_delay = requeue_delay
        self.stats = ListenerStats()
        # Held by the poll thread for a whole batch and by hold()/release(): no batch is applied
        # while the buffer is being drained, so the buffer always comes first.
        self._lock = threading.Lock()
        self._held = False
        self._buffer: list[Any] = []
        self._attempts: collections.OrderedDict[Any, int] = collections.OrderedDict()
        self._stopping = threading.Event()
        self._server: BatchNotificationServer | None = None
        self._transport: oslo_messaging.Transport | None = None
        self._owns_transport = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Declare the pool queue and its bindings, then consume.

        When this returns, every notification published from now on reaches the queue (and
        the model, or the buffer while held). Blocks while RabbitMQ cannot be reached (the
        driver retries and logs).
        """
        if self._server is not None:
            return
        transport = self._transport_arg
        if transport is None or isinstance(transport, str | oslo_messaging.TransportURL):
            conf = self._conf if self._conf is not None else cfg.ConfigOpts()
            transport = oslo_messaging.get_notification_transport(conf, url=transport)
            self._owns_transport = True
        self._transport = transport
        targets = [oslo_messaging.Target(topic=t, exchange=self.exchange) for t in self.topics]
        self._stopping.clear()
        server = _InlineBatchServer(
            transport,
            targets,
            _InOrderDispatcher(self._on_batch),
            None,  # the threading executor, unless this process is eventlet-patched
            allow_requeue=True,
            pool=self.pool,
            batch_size=self.batch_size,
            batch_timeout=self.batch_timeout,
        )
        try:
            server.start(override_pool_size=1)  # its executor stays idle (see above)
        except Exception:
            self._release_transport()
            raise
        self._server = server
        LOG.info(
            "Listening for notifications on %s (exchange %s, pool %s, batches of up to %d "
            "or %.3fs, applied on the poll thread)",
            ", ".join(self.topics),
            self.exchange or "(transport default)",
            self.pool,
            self.batch_size,
            self.batch_timeout,
        )

    def stop(self) -> None:
        """Stop consuming; batches already received are applied (and acknowledged) first."""
        server = self._server
        if server is None:
            return
        self._stopping.set()  # cut a requeue backoff short
        server.stop()
        server.wait()
        self._server = None
        self._release_transport()
        LOG.info("Notification listener stopped: %s", self.stats)

    def _release_transport(self) -> None:
        if self._owns_transport and self._transport is not None:
            self._transport.cleanup()
        self._transport = None
        self._owns_transport = False

    # -- NotificationGate --------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """Buffer notifications from now on instead of applying them (may precede start())."""
        with self._lock:
            if not self._held:
                self._held = True
                LOG.info("Notifications held: buffering until the model is loaded")

    def release(self) -> int:
        """Apply the buffer in order, then apply notifications as they arrive again."""
        with self._lock:
            buffered, self._buffer = self._buffer, []
            deliver = self.dispatcher.deliver
            stats = self.stats
            for line in buffered:
                try:
                    deliver(line)
                except Exception:
                    # Already acknowledged: it cannot be requeued. Counted; audits repair.
                    event_type, message_id = _describe(line)
                    LOG.exception(
                        "Applying held %s (message %s) failed; dropping it", event_type, message_id
                    )
                    self._drop(event_type, "failed while releasing held notifications")
                else:
                    stats.applied += 1
            stats.released += len(buffered)
            stats.buffered = 0
            self._held = False
        LOG.info("Notifications released: %d buffered notifications applied", len(buffered))
        return len(buffered)

    # -- applying a batch (on the poll thread) -----------------------------------------------

    def _on_batch(self, incoming: Sequence[Any]) -> set[Any]:
        stats = self.stats
        with self._lock:
            stats.batches += 1
            stats.received += len(incoming)
            stats.last_batch_at = time.time()
            lines = [_line(m) for m in incoming]
            if self._held:
                self._buffer.extend(lines)
                stats.buffered = len(self._buffer)
                return set()
            failed, attempt = self._apply(lines)
        if not failed:
            return set()
        # Give the failed messages back after a backoff, so that a persistent failure does not
        # spin (one wait per batch, however many failed in it); stop() cuts the wait short.
        stats.requeued += len(failed)
        self._stopping.wait(min(self.requeue_delay * 2 ** (attempt - 1), MAX_REQUEUE_DELAY))
        return {incoming[i] for i in failed}

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
        conf=conf,
    )


__all__ = ["ListenerStats", "NotificationListener", "listener_from_conf"]
