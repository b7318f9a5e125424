"""The receiving process: oslo.messaging consumes RabbitMQ here, the model is applied elsewhere.

Why a process of its own: oslo.messaging's poll loop costs a few hundred microseconds of Python
per message, and in the service process it would take turns on the GIL with the thread that
applies notifications and with the readers of a large model; here it runs on its own core and
its connection never waits for the model's collector passes (see doc/source/architecture.rst).

What crosses the socket pair (:class:`multiprocessing.connection.Connection` framing:
length-prefixed frames, a tag byte first; :mod:`marshal` for the bodies, safe here because both
ends are the same interpreter):

- receiver -> service: ``R`` ready (the pool queue is declared and consumed), ``E`` start-up
  failed (a message), ``B`` a batch of lines in arrival order (a trace line, FORMATS.md §2, per
  message; a ``str`` instead for a message that is not a notification: the reason it was
  refused), ``L`` a log record, ``S`` stopped (no batch follows).
- service -> receiver: ``A`` the outcome of the oldest unanswered batch (the indexes to
  requeue; every other message of it is acknowledged), ``Q`` stop.

Contracts: a message is acknowledged only once the service has answered its batch (applied,
refused or given up on it), so if either process dies, RabbitMQ delivers again what was not
acknowledged. At most ``max_inflight`` batches are unanswered, and the broker hands this
process at most ``prefetch`` unacknowledged messages: a slow (or holding) service keeps a
backlog in RabbitMQ, not in memory. A body over ``max_message_bytes``, or one that does not
decode to a notification, is refused without a traceback, and acknowledged once the service
has counted it.

This module imports only oslo.messaging and the standard library: it is what the receiving
process (``python -m cdm_sync.messaging.receiver``) loads.
"""

from __future__ import annotations

import collections
import logging
import marshal
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import oslo_messaging
import oslo_messaging.opts
from oslo_config import cfg
from oslo_messaging._drivers import common as rpc_common
from oslo_messaging._drivers import impl_rabbit
from oslo_messaging.dispatcher import DispatcherBase
from oslo_messaging.notify.dispatcher import PRIORITIES
from oslo_messaging.notify.listener import BatchNotificationServer

LOG = logging.getLogger(__name__)

READY = b"R"
START_FAILED = b"E"
BATCH = b"B"
LOG_RECORD = b"L"
STOPPED = b"S"
ANSWER = b"A"
QUIT = b"Q"

# The loggers whose levels the receiver copies from the service (oslo.log sets them from
# default_log_levels): what the service would log, the receiver logs, and no more.
MIRRORED_LOGGERS = ("", "cdm_sync", "oslo_messaging", "oslo.messaging", "kombu", "amqp")
# oslo.messaging queues acknowledgements for its poll thread, or, once the listener is
# stopped, for a background thread that runs them every millisecond: time for the last ones.
_ACK_FLUSH_S = 0.05
# How long the last frames (STOPPED, a start-up error, log records) may take to be written.
_SENDER_JOIN_S = 10.0
# The key under which a refused message carries its reason through oslo.messaging.
_REFUSED = "cdm_sync.refused"


@dataclass(frozen=True)
class ReceiverSpec:
    """Everything the receiving process needs, picklable (it crosses a process boundary).

    ``options``: the oslo.messaging options of the service's configuration that differ from
    their defaults, as (group, name, value); ``None`` is the DEFAULT group. They may hold
    secrets (the transport URL's password): they are never logged. ``prefetch``: the
    ``rabbit_qos_prefetch_count`` to use unless ``options`` sets one.
    """

    url: str | None
    options: tuple[tuple[str | None, str, Any], ...]
    topics: tuple[str, ...]
    exchange: str | None
    pool: str
    batch_size: int
    batch_timeout: float
    max_inflight: int
    prefetch: int
    max_message_bytes: int
    log_levels: dict[str, int] = field(default_factory=dict)


def messaging_options(conf: cfg.ConfigOpts) -> tuple[tuple[str | None, str, Any], ...]:
    """The oslo.messaging options set in ``conf`` (file or override), to rebuild the same
    transport in the receiving process. Registers oslo.messaging's options on ``conf``, as
    creating a transport from it would."""
    out = []
    for group, opts in _register_messaging_opts(conf):
        values = conf if group is None else conf[group]
        for opt in opts:
            value = values[opt.dest]
            if value != opt.default:
                out.append((group, opt.dest, value))
    return tuple(out)


def _register_messaging_opts(conf: cfg.ConfigOpts) -> list[tuple[str | None, list[Any]]]:
    """Register every oslo.messaging option on ``conf`` (a no-op for those already there);
    returns them by group."""
    groups = oslo_messaging.opts.list_opts()
    for group, opts in groups:
        conf.register_opts(opts, group=group)
    return groups


def encode(lines: list[Any]) -> bytes:
    """A batch as a frame body. A line marshal cannot encode (never one decoded from JSON)
    becomes the reason it was refused, which the service counts as a rejection."""
    try:
        return marshal.dumps(lines)
    except ValueError:
        safe = []
        for line in lines:
            try:
                marshal.dumps(line)
            except ValueError as exc:
                line = f"could not be forwarded to the service ({exc})"
            safe.append(line)
        return marshal.dumps(safe)


def decode(body: bytes) -> Any:
    return marshal.loads(body)


def _line(incoming: Any) -> Any:
    """One received message as a trace line (FORMATS.md §2), as oslo's dispatcher builds it,
    or the reason (a ``str``) it is not a notification.

    ``ctxt`` is passed through untouched (it may carry a token: it is never logged).
    """
    message = incoming.message  # the rabbit driver's RabbitMessage, a dict subclass
    if not isinstance(message, dict):
        return f"the message decoded to {type(message).__name__}, not an object"
    refused = message.get(_REFUSED)
    if refused is not None:
        return str(refused)
    if not isinstance(message.get("event_type"), str):
        return "no oslo.messaging notification envelope (event_type missing)"
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


# The rabbit driver's message class (``dict`` if a later oslo.messaging drops it: then the
# receiver refuses to start, rather than let unchecked bodies through).
_RabbitMessage: Any = getattr(impl_rabbit, "RabbitMessage", dict)


class _CheckedMessage(_RabbitMessage):  # type: ignore[misc]
    """The rabbit driver's message, decoded only if its body is within the size limit and
    refused, with the reason and without a traceback, if it does not decode to a JSON object.

    The driver logs a traceback for a body it cannot decode and drops it uncounted; a refused
    message instead reaches the service as a reason (see :func:`_line`), which counts and logs
    it, and is acknowledged like any other."""

    max_bytes = 1 << 20

    def __init__(self, raw_message: Any) -> None:
        try:
            size = len(raw_message.body)
            if size > self.max_bytes:
                raise _Refused(f"the body has {size} bytes, over the {self.max_bytes}-byte limit")
            decoded = rpc_common.deserialize_msg(raw_message.payload)
            if not isinstance(decoded, dict):
                raise _Refused(f"the body decodes to {type(decoded).__name__}, not a JSON object")
            if not all(type(key) is str for key in decoded):
                raise _Refused("the body has keys that are not strings")
        except _Refused as exc:
            decoded = {_REFUSED: str(exc)}
        except Exception as exc:  # the decoders' errors, whatever their type
            decoded = {_REFUSED: _unreadable(exc)}
        dict.__init__(self, decoded)
        self._raw_message = raw_message


class _Refused(Exception):
    """A body that decodes, but not to a notification."""


def _unreadable(exc: BaseException) -> str:
    """Why a body could not be decoded, in one short line (a hostile body must not make
    megabyte log lines, and a decoder's error may wrap the RecursionError)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, RecursionError):
            return "the body is nested too deeply to decode"
        cause = cause.__cause__ or cause.__context__
    return f"the body cannot be read: {type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, limit: int = 200) -> str:
    """The start of an exception's message: a hostile body must not make megabyte log lines."""
    text = str(exc)
    return text[:limit] + ("…" if len(text) > limit else "")


class _NotDispatched(DispatcherBase):
    """The batch server's dispatcher: it names the priorities to bind (all of them), and is
    never called, because batches are forwarded (:meth:`_ForwardingServer._on_incoming`)."""

    @property
    def supported_priorities(self) -> Sequence[str]:
        return PRIORITIES

    def dispatch(self, incoming: Sequence[Any]) -> set[Any]:
        raise RuntimeError("batches are forwarded to the service process, not dispatched")


class _ForwardingServer(BatchNotificationServer):
    """oslo.messaging's batch notification server, handing each batch to ``forward`` on the
    thread that polled it instead of submitting it to the executor.

    ``_on_incoming`` is the server's (undocumented) hand-off hook: should a later
    oslo.messaging drop it, the receiver refuses to start with a clear error rather than let
    the stock server acknowledge batches nobody applied."""

    forward: Any = None

    def _on_incoming(self, incoming: Sequence[Any]) -> None:
        self.forward(incoming)


class _ForwardingLogHandler(logging.Handler):
    """Sends this process's log records to the service, which logs them through its own
    handlers (oslo.log): one log, one configuration."""

    def __init__(self, out: queue.SimpleQueue[bytes | None]) -> None:
        super().__init__()
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "pathname": record.pathname,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "created": record.created,
                "msecs": record.msecs,
                "thread": record.thread,
                "threadName": record.threadName,
                "process": record.process,
                "processName": "cdm-sync-receiver",
            }
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            self._out.put(LOG_RECORD + marshal.dumps(fields))
        except Exception:
            self.handleError(record)


class ReceiverLoop:
    """The receiving process's state: the server, the unanswered batches, the two threads."""

    def __init__(self, spec: ReceiverSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.inflight: collections.deque[Sequence[Any]] = collections.deque()
        self.room = threading.Condition()
        self.stop_requested = threading.Event()
        self.service_gone = threading.Event()

    # -- the poll thread -------------------------------------------------------------------

    def forward(self, incoming: Sequence[Any]) -> None:
        body = BATCH + encode([_line(m) for m in incoming])
        with self.room:
            while len(self.inflight) >= self.spec.max_inflight:
                if self.service_gone.is_set():
                    return  # not acknowledged: RabbitMQ delivers it again to the next receiver
                self.room.wait(0.5)
            self.inflight.append(incoming)
        self.out.put(body)

    # -- the sender and the answer threads -----------------------------------------------

    def send_frames(self) -> None:
        while (frame := self.out.get()) is not None:
            try:
                self.conn.send_bytes(frame)
            except OSError:
                self._service_gone()
                return

    def read_answers(self) -> None:
        while True:
            try:
                frame = self.conn.recv_bytes()
            except (EOFError, OSError):
                self._service_gone()
                return
            tag = frame[:1]
            if tag == QUIT:
                self.stop_requested.set()
                continue
            if tag != ANSWER:
                continue
            requeue = set(decode(frame[1:]))
            with self.room:
                incoming = self.inflight.popleft()
                self.room.notify()
            # Queued by oslo.messaging for the poll thread (kombu is not thread-safe).
            for index, message in enumerate(incoming):
                if index in requeue:
                    message.requeue()
                else:
                    message.acknowledge()

    def _service_gone(self) -> None:
        self.service_gone.set()
        self.stop_requested.set()
        with self.room:
            self.room.notify_all()

    # -- the main thread ---------------------------------------------------------------------

    def run(self) -> int:
        sender = threading.Thread(target=self.send_frames, name="send", daemon=True)
        sender.start()
        self._log_to_service()
        try:
            return self._serve()
        finally:
            self.out.put(None)  # the sender ends after the frames queued before this
            sender.join(_SENDER_JOIN_S)

    def _serve(self) -> int:
        spec = self.spec
        try:
            if not callable(getattr(BatchNotificationServer, "_on_incoming", None)):
                raise RuntimeError(
                    "this oslo.messaging's batch server has no _on_incoming hook: cdm-sync "
                    "cannot forward its batches (see cdm_sync/messaging/receiver.py)"
                )
            if _RabbitMessage is dict:
                raise RuntimeError(
                    "this oslo.messaging's rabbit driver has no RabbitMessage: cdm-sync cannot "
                    "check message bodies (see cdm_sync/messaging/receiver.py)"
                )
            # Every message the driver builds is checked (this process consumes nothing else).
            _CheckedMessage.max_bytes = spec.max_message_bytes
            impl_rabbit.RabbitMessage = _CheckedMessage  # type: ignore[misc]
            conf = cfg.ConfigOpts()
            _register_messaging_opts(conf)
            for group, name, value in spec.options:
                conf.set_override(name, value, group=group)
            if not any(name == "rabbit_qos_prefetch_count" for _, name, _ in spec.options):
                # oslo's default (0) is no limit: a backlog would be pulled into this process.
                conf.set_override(
                    "rabbit_qos_prefetch_count", spec.prefetch, group="oslo_messaging_rabbit"
                )
            transport = oslo_messaging.get_notification_transport(conf, url=spec.url)
            targets = [oslo_messaging.Target(topic=t, exchange=spec.exchange) for t in spec.topics]
            server = _ForwardingServer(
                transport,
                targets,
                _NotDispatched(),
                None,  # the threading executor; given nothing (see _ForwardingServer)
                allow_requeue=True,
                pool=spec.pool,
                batch_size=spec.batch_size,
                batch_timeout=spec.batch_timeout,
            )
            server.forward = self.forward
            answers = threading.Thread(target=self.read_answers, name="answers", daemon=True)
            answers.start()
            server.start(override_pool_size=1)
        except Exception as exc:
            # The reason goes to the service, which reports it; the traceback only with debug.
            LOG.debug("The notification receiver could not start", exc_info=True)
            self.out.put(START_FAILED + f"{type(exc).__name__}: {exc}".encode())
            return 1
        self.out.put(READY)
        self.stop_requested.wait()
        server.stop()  # the poll loop ends; a batch it was forwarding is forwarded first
        self.out.put(STOPPED)
        with self.room:  # the service answers every batch it was sent, then we acknowledge
            while self.inflight and not self.service_gone.is_set():
                self.room.wait(0.5)
        time.sleep(_ACK_FLUSH_S)
        server.wait()
        transport.cleanup()
        return 0

    def _log_to_service(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_ForwardingLogHandler(self.out))
        for name, level in self.spec.log_levels.items():
            logging.getLogger(name or None).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """``python -m cdm_sync.messaging.receiver FD``: the receiving process, started by
    :class:`~cdm_sync.messaging.listener.NotificationListener` with its end of a socket pair
    as ``FD``; the first frame on it is the pickled :class:`ReceiverSpec` (from the process
    that started this one, so trusted, like its environment).

    Its lifetime is the socket's: the service stops it with ``Q``, and if the service dies the
    socket closes and it stops by itself. Signals meant for the service (a terminal's Ctrl-C, a
    SIGTERM to the process group) are the service's to act on.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m cdm_sync.messaging.receiver FD", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(args[0]))
    try:
        spec = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return 1
    if not isinstance(spec, ReceiverSpec):
        print("cdm_sync.messaging.receiver: the first frame is not a ReceiverSpec", file=sys.stderr)
        return 2
    return ReceiverLoop(spec, conn).run()


__all__ = ["ReceiverSpec", "decode", "encode", "main", "messaging_options"]

if __name__ == "__main__":
    # Run as the package's module, not as __main__: the pickled spec names that module's class.
    from cdm_sync.messaging.receiver import main as package_main

    sys.exit(package_main())
