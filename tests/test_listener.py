"""The notification listener against the real RabbitMQ, through oslo.messaging's rabbit driver.

Nova's notifications are published the way Nova publishes them (an ``oslo_messaging.Notifier``
with the ``messagingv2`` driver; recorded trace lines through that same driver, so their
message ids and envelope times are the recorded ones) and the model the listener built is
compared with what ``cdm_sync.replay`` builds from the same files without a broker: the
live path and the replay path must agree. Each test has its own exchange, topics and pool
queues, deleted afterwards, so tests never see each other's messages. Waits poll the listener's
counters or the model with a deadline; nothing depends on how long anything takes.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import oslo_messaging
import pytest
from oslo_config import cfg
from oslo_messaging.notify.dispatcher import PRIORITIES
from oslo_messaging.notify.messaging import MessagingV2Driver

import cdm_sync.conf
from cdm_sync.conf import listener as listener_conf
from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
from cdm_sync.messaging.listener import (
    APPLY_THREAD,
    NotificationListener,
    ReceiverFailed,
    listener_from_conf,
)
from cdm_sync.model import ChangeRecord, ComputeModel
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import read_snapshot
from cdm_sync.replay import ReplayResult, bootstrap, replay
from cdm_sync.sync.service import SyncService
from tests.samples import TRACE_DIR, load_sample, sample_names
from tests.services import (
    close_rabbit_connections,
    delete_rabbit_objects,
    rabbit_url,
    wait_for,
)

SNAPSHOT = TRACE_DIR / "snapshot.json"


def trace(name: str = "trace-versioned.jsonl") -> list[dict[str, Any]]:
    text = (TRACE_DIR / name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@functools.cache
def reference(name: str = "trace-versioned.jsonl", nova_format: str = "auto") -> ReplayResult:
    """The same snapshot and trace through ``cdm_sync.replay``, no broker involved."""
    return replay(SNAPSHOT, TRACE_DIR / name, nova_format=nova_format)


def bootstrapped(model: ComputeModel | None = None) -> SyncService:
    service = SyncService(
        model if model is not None else ComputeModel(), event_types=NOVA_EVENT_TYPES
    )
    bootstrap(service, read_snapshot(SNAPSHOT))
    return service


def changed(service: SyncService) -> Counter[str]:
    """How many notifications of each type changed the model (never a redelivery)."""
    return Counter({t: n for (t, o), n in service.stats.by_type.items() if o == "changed"})


class SeenIds:
    """An extra oslo.messaging endpoint beside ours: the message ids the listener delivered,
    redeliveries included."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.threads: set[str] = set()

    def _see(self, ctxt: Any, publisher_id: Any, event_type: Any, payload: Any, md: Any) -> None:
        self.ids.append(md["message_id"])
        self.threads.add(threading.current_thread().name)

    audit = debug = info = warn = error = critical = sample = _see


class Bus:
    """One test's corner of the broker: its exchange, topics and pools, and publishing to them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tag = uuid.uuid4().hex[:10]
        self.exchange = f"cdm-test-{self.tag}"
        self.topic = f"vn-{self.tag}"
        self.conf = cfg.ConfigOpts()
        # The notifier sends to the transport's control_exchange: point it at this test's
        # exchange (creating a transport once registers the option).
        oslo_messaging.get_notification_transport(self.conf, url=url).cleanup()
        self.conf.set_override("control_exchange", self.exchange)
        self.transport = oslo_messaging.get_notification_transport(self.conf, url=url)
        self.topics: set[str] = {self.topic}
        self.pools: set[str] = set()
        self.listeners: list[NotificationListener] = []
        self.seen: dict[NotificationListener, SeenIds] = {}
        self._drivers: dict[str, MessagingV2Driver] = {}

    def pool(self, name: str = "cdm") -> str:
        pool = f"{name}-{self.tag}"
        self.pools.add(pool)
        return pool

    def listener(
        self, service: SyncService, *, pool: str | None = None, **kwargs: Any
    ) -> NotificationListener:
        """A listener on this test's topic and exchange, applying to ``service``."""
        seen = SeenIds()
        listener = NotificationListener(
            self.url,
            Dispatcher([*make_endpoints(service), seen], service),
            topics=kwargs.pop("topics", [self.topic]),
            exchange=self.exchange,
            pool=pool or self.pool(),
            **kwargs,
        )
        self.listeners.append(listener)
        self.seen[listener] = seen
        return listener

    def send(self, line: dict[str, Any], topic: str | None = None) -> None:
        """Publish a recorded notification as Nova did: the messagingv2 driver under Nova's
        Notifier, with the recorded message id and envelope time."""
        topic = topic or self.topic
        self.topics.add(topic)
        driver = self._drivers.get(topic)
        if driver is None:
            driver = MessagingV2Driver(self.conf, topics=[topic], transport=self.transport)
            self._drivers[topic] = driver
        priority = line["priority"].upper()
        message = {
            "message_id": line["metadata"]["message_id"],
            "publisher_id": line["publisher_id"],
            "event_type": line["event_type"],
            "priority": priority,
            "payload": line["payload"],
            "timestamp": line["metadata"]["timestamp"],
        }
        driver.notify(line.get("ctxt") or {}, message, priority, None)

    def notifier(self, topic: str | None = None) -> oslo_messaging.Notifier:
        return oslo_messaging.Notifier(
            self.transport, driver="messagingv2", topics=[topic or self.topic]
        )

    def queue(self, name: str) -> tuple[int, int]:
        """(messages ready, consumers) of a queue."""
        with kombu.Connection(self.url.replace("rabbit://", "amqp://") + "/") as connection:
            _, messages, consumers = connection.default_channel.queue_declare(name, passive=True)
        return messages, consumers

    def unacknowledged(self, name: str) -> tuple[int, int]:
        """(messages ready, messages delivered and not yet acknowledged) of a queue, as the
        broker counts them (rabbitmqctl, as an operator would look)."""
        listed = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name",
             "messages_ready", "messages_unacknowledged"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        for row in listed.splitlines():
            queue, ready, unacked = row.split()
            if queue == name:
                return int(ready), int(unacked)
        raise AssertionError(f"no queue {name}")

    def publish_raw(self, body: bytes, content_type: str, priority: str = "info") -> None:
        """Publish a body as it is (no oslo.messaging envelope, no serializer) where the
        notifier would have published an info notification: anything may reach the bus."""
        with kombu.Connection(self.url.replace("rabbit://", "amqp://") + "/") as connection:
            kombu.Producer(connection.default_channel).publish(
                body,
                exchange=self.exchange,
                routing_key=f"{self.topic}.{priority}",
                content_type=content_type,
                content_encoding="binary",
                declare=[],
            )

    def close(self) -> None:
        for listener in self.listeners:
            listener.stop()
        self.transport.cleanup()
        # The pools' queues, and the topic queues oslo's notifier declares when it sends.
        queues = set(self.pools) | {f"{t}.{p}" for t in self.topics for p in PRIORITIES}
        delete_rabbit_objects(sorted(queues), [self.exchange])


@pytest.fixture(scope="module")
def url() -> str:
    return rabbit_url()


@pytest.fixture
def bus(url: str) -> Iterator[Bus]:
    b = Bus(url)
    try:
        yield b
    finally:
        b.close()


def test_recorded_trace_through_rabbitmq_gives_the_replay_model(bus: Bus) -> None:
    lines = trace()
    service = bootstrapped()
    listener = bus.listener(service, batch_size=32)
    listener.start()
    for line in lines:
        bus.send(line)
    wait_for(lambda: listener.stats.applied >= len(lines), what="every notification applied")

    expected = reference()
    assert service.model.to_dict() == expected.model.to_dict()
    assert service.stats.by_type == expected.service.stats.by_type
    assert service.model.check_integrity() == []
    stats = listener.stats
    assert (stats.received, stats.applied, stats.failures, stats.requeued) == (len(lines),) * 2 + (
        0,
        0,
    )
    # Notification lag is known once notifications came through RabbitMQ (what /metrics shows).
    assert service.stats.lag_seconds is not None and service.stats.last_notification_at is not None
    # Applied by the listener's one applying thread (the receiving process only forwards).
    assert bus.seen[listener].threads == {APPLY_THREAD}


def test_nova_samples_published_by_a_notifier_apply_in_arrival_order(bus: Bus) -> None:
    """Every sample Nova documents, as Nova's Notifier sends it (its publisher id, event type
    and priority), each instance sample about its own instance; ERROR and INFO interleave."""
    samples = []
    for name in sample_names():
        sample = load_sample(name)
        data = sample["payload"].get("nova_object.data", {})
        if "uuid" in data and sample["event_type"].startswith("instance."):
            data["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
        samples.append(sample)
    assert {s["priority"] for s in samples} >= {"INFO", "ERROR"}

    live = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    live_records: list[ChangeRecord] = []
    live.add_publisher(live_records.extend)
    listener = bus.listener(live, batch_size=len(samples))  # one batch when the broker allows
    listener.start()
    notifier = bus.notifier()
    for sample in samples:
        publisher = notifier.prepare(publisher_id=sample["publisher_id"])
        getattr(publisher, sample["priority"].lower())({}, sample["event_type"], sample["payload"])
    wait_for(lambda: listener.stats.applied >= len(samples), what="every sample applied")

    # The same notifications delivered directly, in publish order, envelope times increasing.
    direct = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    direct_records: list[ChangeRecord] = []
    direct.add_publisher(direct_records.extend)
    dispatcher = Dispatcher(make_endpoints(direct), direct)
    start = time.time()
    for i, sample in enumerate(samples):
        line = copy.deepcopy(sample)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + i))
        line["metadata"] = {"message_id": str(uuid.uuid4()), "timestamp": stamp + ".000000"}
        dispatcher.deliver(line)

    assert live.model.to_dict() == direct.model.to_dict()
    assert live.stats.by_type == direct.stats.by_type
    assert live.model.instance_count > 50
    # Arrival order: the changes came out in publish order (oslo's stock batch dispatcher
    # would have applied each batch's ERROR notifications before its INFO ones).
    assert [(r.kind, r.op, r.uuid) for r in live_records] == [
        (r.kind, r.op, r.uuid) for r in direct_records
    ]


def test_pools_copy_to_each_pool_share_within_one_and_take_nothing_from_others(
    bus: Bus,
) -> None:
    update = load_sample("instance-update")
    uuids = [str(uuid.uuid4()) for _ in range(40)]
    alone, shared = bus.pool("alone"), bus.pool("shared")
    services = [SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES) for _ in range(3)]
    listeners = [
        bus.listener(services[0], pool=alone),
        bus.listener(services[1], pool=shared),
        bus.listener(services[2], pool=shared),
    ]
    for listener in listeners:
        listener.start()

    # Another consumer of the topic, as other OpenStack services read notifications: no pool.
    seen_by_other: list[str] = []

    class OtherConsumer:
        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, md: Any):
            seen_by_other.append(payload["nova_object.data"]["uuid"])

    other = oslo_messaging.get_notification_listener(
        bus.transport, [oslo_messaging.Target(topic=bus.topic, exchange=bus.exchange)],
        [OtherConsumer()],
    )  # fmt: skip
    other.start()
    try:
        # Consumers subscribe when their poll thread first runs: publish once all have.
        wait_for(lambda: bus.queue(alone)[1] > 0 and bus.queue(shared)[1] > 0)
        wait_for(lambda: bus.queue(f"{bus.topic}.info")[1] > 0)
        per_listener = bus.queue(alone)[1]
        wait_for(lambda: bus.queue(shared)[1] == 2 * per_listener, what="both shared consumers")

        notifier = bus.notifier().prepare(publisher_id=update["publisher_id"])
        for instance in uuids:
            payload = copy.deepcopy(update["payload"])
            payload["nova_object.data"]["uuid"] = instance
            notifier.info({}, update["event_type"], payload)

        wait_for(lambda: services[0].model.instance_count == len(uuids), what="pool 'alone'")
        shared_models = [services[1].model, services[2].model]
        wait_for(lambda: sum(m.instance_count for m in shared_models) == len(uuids))
        wait_for(lambda: len(seen_by_other) == len(uuids), what="the non-pooled consumer")
    finally:
        other.stop()
        other.wait()

    assert {i.uuid for i in services[0].model.instances()} == set(uuids)
    first, second = ({i.uuid for i in m.instances()} for m in shared_models)
    assert first and second and not first & second and first | second == set(uuids)
    assert sorted(seen_by_other) == sorted(uuids)


def test_gap_free_bootstrap_holds_before_start_and_releases_in_order(bus: Bus) -> None:
    """The engine's sequence: hold, start, list and load while notifications arrive, release."""
    lines = trace()
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    listener = bus.listener(service)
    listener.hold()
    listener.start()
    during_listing, afterwards = lines[:70], lines[70:]
    for line in during_listing:
        bus.send(line)
    wait_for(lambda: listener.stats.buffered == len(during_listing), what="buffered")
    assert service.model.to_dict()["revision"] == 0  # nothing applied while held
    assert service.stats.by_type == Counter()

    bootstrap(service, read_snapshot(SNAPSHOT))
    assert listener.release() == len(during_listing)
    assert not listener.held and listener.stats.buffered == 0
    for line in afterwards:
        bus.send(line)
    wait_for(lambda: listener.stats.applied >= len(lines), what="the rest applied live")

    expected = reference()
    assert service.model.to_dict() == expected.model.to_dict()
    assert service.stats.by_type == expected.service.stats.by_type
    assert listener.stats.released == len(during_listing)


def test_hold_mid_stream_keeps_a_bounded_backlog_unacknowledged_then_release_applies_it(
    bus: Bus,
) -> None:
    """While held, at most max_inflight batches wait in memory, unanswered and unacknowledged;
    the rest of the backlog waits in RabbitMQ (the prefetch bound); release applies it all."""
    lines = trace()
    service = bootstrapped()
    pool = bus.pool()
    listener = bus.listener(service, pool=pool, batch_size=8)  # 4 batches in flight: 32 held
    listener.start()
    for line in lines[:40]:
        bus.send(line)
    wait_for(lambda: listener.stats.applied == 40)

    listener.hold()
    at_hold = service.model.to_dict()
    for line in lines[40:100]:
        bus.send(line)
    wait_for(lambda: listener.stats.buffered == 32, what="four batches held")
    time.sleep(1.0)  # room for more to arrive, were the bound not to hold
    assert listener.stats.buffered == 32
    ready, unacknowledged = bus.unacknowledged(pool)
    assert ready + unacknowledged == 60  # nothing held was acknowledged
    assert unacknowledged <= 8 * (4 + 1)  # what the broker may hand the receiver
    assert service.model.to_dict() == at_hold
    assert listener.stats.applied == 40

    assert listener.release() == 32
    assert listener.release() == 0  # nothing left; releasing again is harmless
    for line in lines[100:]:
        bus.send(line)
    wait_for(lambda: listener.stats.applied == len(lines))
    assert service.model.to_dict() == reference().model.to_dict()
    wait_for(lambda: bus.unacknowledged(pool) == (0, 0), what="everything acknowledged")


def test_what_a_killed_receiver_held_comes_again_and_is_applied_once(bus: Bus) -> None:
    """Held messages are not acknowledged: a receiver killed while the listener holds loses
    nothing; the next one gets them again, and release applies each notification once."""
    lines = trace()
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    pool = bus.pool()
    listener = bus.listener(service, pool=pool, batch_size=8)
    listener.hold()
    listener.start()
    first = listener.receiver_pid
    for line in lines[:50]:
        bus.send(line)
    wait_for(lambda: listener.stats.buffered == 32, what="four batches held")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: listener.receiver_pid not in (None, first), what="a new receiver")
    wait_for(lambda: listener.stats.buffered == 32, timeout=30, what="held again")

    bootstrap(service, read_snapshot(SNAPSHOT))
    assert listener.release() == 32
    for line in lines[50:]:
        bus.send(line)
    wait_for(lambda: listener.stats.applied == len(lines), timeout=30)
    assert service.model.to_dict() == reference().model.to_dict()
    assert changed(service) == changed(reference().service)


def test_bodies_that_are_not_notifications_are_counted_logged_and_acknowledged(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever reaches the pool queue: a body nested 100,000 deep, one of 50 MB, one that is
    not UTF-8, plain text, JSON that is not an object, an object without oslo.messaging's
    envelope. Each is one counted rejection and one log line with the reason (no traceback),
    it is acknowledged, and the notifications around it apply."""
    lines = trace()
    service = bootstrapped()
    pool = bus.pool()
    listener = bus.listener(service, pool=pool, max_message_bytes=1 << 20)
    listener.start()
    huge = {"oslo.version": "2.0", "oslo.message": json.dumps({"x": "y" * (50 << 20)})}
    bad = [
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
        (json.dumps(huge).encode(), "application/json", "over the 1048576-byte limit"),
        (b'{"oslo.version": "2.0", "oslo.message": "' + b"\xff\xfe" + b'"}',
         "application/json", "cannot be read"),
        (b"not JSON at all", "text/plain", "not a JSON object"),
        (b"[1, 2, 3]", "application/json", "list, not a JSON object"),
        (b'{"hello": "world"}', "application/json", "no oslo.messaging notification envelope"),
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        for line in lines[:30]:
            bus.send(line)
        for body, content_type, _ in bad:
            bus.publish_raw(body, content_type)
        for line in lines[30:]:
            bus.send(line)
        wait_for(lambda: listener.stats.applied == len(lines), timeout=60, what="all applied")
        wait_for(lambda: listener.stats.unreadable == len(bad), what="each refusal counted")
        wait_for(lambda: bus.unacknowledged(pool) == (0, 0), what="everything acknowledged")
    assert service.model.to_dict() == reference().model.to_dict()
    assert service.stats.summary().rejected == len(bad)
    refusals = [r for r in caplog.records if "Rejected a message from RabbitMQ" in r.getMessage()]
    assert len(refusals) == len(bad)
    for (_, _, reason), record in zip(bad, refusals, strict=True):
        assert reason in record.getMessage()
    assert all(r.exc_info is None and not getattr(r, "exc_text", None) for r in caplog.records)
    assert "Traceback" not in caplog.text
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)


def test_closed_connections_mid_stream_lose_nothing(bus: Bus) -> None:
    """RabbitMQ drops the listener's (and the publisher's) connections while 60 notifications
    are delivered but not yet acknowledged; oslo.messaging reconnects, RabbitMQ delivers the
    unacknowledged ones again, and the model still ends as the in-order replay (a redelivery
    is recognised by its message id)."""
    lines = trace()
    service = bootstrapped()
    # A sink that is stuck until the connections are gone keeps the first batch in hand.
    sink_free = threading.Event()
    service.add_publisher(lambda records: sink_free.wait(30))
    pool = bus.pool()
    listener = bus.listener(service, pool=pool, batch_size=4)
    listener.start()
    try:
        for line in lines[:60]:
            bus.send(line)
        # Delivered, not acknowledged (the prefetch bound leaves the rest ready in the queue).
        wait_for(lambda: listener.stats.received > 0 and bus.unacknowledged(pool)[1] > 0)
        assert listener.stats.applied < 60

        closed = close_rabbit_connections(f":{listener.receiver_pid}:", "cdm-sync listener test")
        closed += close_rabbit_connections(f":{os.getpid()}:", "cdm-sync listener test")
        assert closed >= 2  # the receiver's and the notifier's
    finally:
        sink_free.set()
    for line in lines[60:]:  # the notifier reconnects as well
        bus.send(line)

    sent = {line["metadata"]["message_id"] for line in lines}
    seen = bus.seen[listener].ids
    wait_for(lambda: set(seen) >= sent, timeout=40, what="every message, after reconnecting")
    wait_for(lambda: listener.stats.applied == len(seen))

    expected = reference()
    assert service.model.to_dict() == expected.model.to_dict()
    assert changed(service) == changed(expected.service)
    assert set(seen) == sent
    assert len(seen) > len(sent)  # the unacknowledged ones did come again
    assert listener.stats.failures == 0


class FlakyClock:
    """The model's clock, failing the next ``n`` reads made by the listener's worker (an
    unexpected error inside the apply path, the kind no endpoint can anticipate)."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.failed = 0
        self._test_thread = threading.get_ident()

    def __call__(self) -> float:
        if self.failures_left and threading.get_ident() != self._test_thread:
            self.failures_left -= 1
            self.failed += 1
            raise RuntimeError("injected failure in the apply path")
        return time.time()


def test_unexpected_failure_requeues_and_the_message_is_applied_on_redelivery(
    bus: Bus,
) -> None:
    lines = trace()
    clock = FlakyClock()
    service = bootstrapped(ComputeModel(clock=clock))
    listener = bus.listener(service, requeue_delay=0.01)
    listener.start()
    for line in lines[:-1]:
        bus.send(line)
    wait_for(lambda: listener.stats.applied == len(lines) - 1)
    clock.failures_left = 1
    bus.send(lines[-1])  # instance.delete.end: fails once, is requeued, is applied
    wait_for(lambda: listener.stats.applied == len(lines), what="the redelivered message")

    expected = reference()
    assert service.model.to_dict() == expected.model.to_dict()
    assert service.stats.by_type == expected.service.stats.by_type
    stats = listener.stats
    assert (clock.failed, stats.failures, stats.requeued, stats.dropped) == (1, 1, 1, 0)
    assert stats.received == len(lines) + 1
    assert bus.seen[listener].ids.count(lines[-1]["metadata"]["message_id"]) == 1


def test_failure_mid_stream_requeues_only_that_message_and_versions_absorb_the_delay(
    bus: Bus,
) -> None:
    """The failing message comes back after its successors; being older, it is ignored as
    stale, so the state is the in-order replay's (the revision counter, which counts
    changes, is one lower: its change was superseded before it arrived)."""
    lines = trace()
    clock = FlakyClock()
    service = bootstrapped(ComputeModel(clock=clock))
    pool = bus.pool()
    first = bus.listener(service, pool=pool)
    first.start()
    for line in lines[:60]:
        bus.send(line)
    wait_for(lambda: first.stats.applied == 60)
    first.stop()
    # The rest waits in the pool queue, so the next listener receives it as one backlog.
    for line in lines[60:]:
        bus.send(line)
    wait_for(lambda: bus.queue(pool)[0] == len(lines) - 60)
    clock.failures_left = 1  # the next application: line 60, an instance.update
    listener = bus.listener(service, pool=pool, batch_size=128, requeue_delay=0.01)
    listener.start()
    wait_for(lambda: listener.stats.applied == len(lines) - 60, what="every message applied")

    assert clock.failed == 1 and listener.stats.requeued == 1 and listener.stats.dropped == 0
    # The failed delivery raised before the recorder endpoint ran: each id is seen once, and
    # the failed one after some of its successors.
    seen = bus.seen[listener].ids
    assert sorted(seen) == sorted(line["metadata"]["message_id"] for line in lines[60:])
    assert seen.index(lines[60]["metadata"]["message_id"]) > 0

    def state(model: ComputeModel) -> dict[str, Any]:
        dump = model.to_dict()
        del dump["revision"]
        return dump

    assert state(service.model) == state(reference().model)


def test_a_message_that_keeps_failing_is_dropped_after_the_bound(bus: Bus) -> None:
    lines = [line for line in trace() if line["event_type"] == "instance.update"]
    clock = FlakyClock()
    service = bootstrapped(ComputeModel(clock=clock))
    listener = bus.listener(service, max_redeliveries=2, requeue_delay=0.01)
    listener.start()
    clock.failures_left = 3
    bus.send(lines[0])
    wait_for(lambda: listener.stats.dropped == 1, what="the message to be given up on")
    assert (listener.stats.failures, listener.stats.requeued, listener.stats.received) == (3, 2, 3)
    assert any("failed 3 times" in r for r in service.stats.last_rejections)
    assert service.stats.by_type[("instance.update", "rejected")] == 1

    # The listener is still alive and applies what comes next.
    bus.send(lines[1])
    wait_for(lambda: listener.stats.applied == 1)
    assert service.stats.by_type[("instance.update", "changed")] == 1


def test_stop_finishes_and_the_pool_queue_keeps_what_arrives_until_restart(bus: Bus) -> None:
    lines = trace()
    service = bootstrapped()
    pool = bus.pool()
    first = bus.listener(service, pool=pool)
    first.start()
    for line in lines[:50]:
        bus.send(line)
    wait_for(lambda: first.stats.applied == 50)
    first.stop()
    assert not first.running

    for line in lines[50:]:
        bus.send(line)
    wait_for(lambda: bus.queue(pool)[0] == len(lines) - 50, what="the queue to hold the rest")
    assert service.model.to_dict() != reference().model.to_dict()

    second = bus.listener(service, pool=pool)
    second.start()
    wait_for(lambda: second.stats.applied == len(lines) - 50)
    assert service.model.to_dict() == reference().model.to_dict()
    assert service.stats.by_type == reference().service.stats.by_type


def test_listener_from_configuration_with_versioned_and_legacy_topics(
    bus: Bus, tmp_path: Path
) -> None:
    """cdm-sync.conf as an operator writes it; Nova with notification_format=both publishing
    versioned and legacy notifications on their two topics into one pool queue."""
    legacy_topic = f"legacy-{bus.tag}"
    pool = bus.pool("conf")
    config = tmp_path / "cdm-sync.conf"
    config.write_text(
        f"[DEFAULT]\ntransport_url = {bus.url}\n"
        f"[notifications]\nformat = both\n"
        f"[notifications_listener]\ntopics = {bus.topic},{legacy_topic}\n"
        f"exchange = {bus.exchange}\npool = {pool}\nbatch_size = 16\nbatch_timeout = 0.05\n"
    )
    conf = cfg.ConfigOpts()
    conf.register_opts(listener_conf.OPTS, group=listener_conf.GROUP)
    conf.register_opts(cdm_sync.conf.notification_opts, group="notifications")
    conf(["--config-file", str(config)], project="cdm-sync-test", default_config_files=[])

    service = bootstrapped()
    listener = listener_from_conf(conf, service)
    assert (listener.topics, listener.pool, listener.batch_size) == (
        (bus.topic, legacy_topic),
        pool,
        16,
    )
    listener.start()
    try:
        lines = trace("trace-both.jsonl")
        for line in lines:
            versioned = "nova_object.name" in line["payload"]
            bus.send(line, topic=bus.topic if versioned else legacy_topic)
        wait_for(lambda: listener.stats.applied == len(lines))
    finally:
        listener.stop()

    expected = reference("trace-both.jsonl", "both")
    assert service.model.to_dict() == expected.model.to_dict()
    assert service.stats.by_type == expected.service.stats.by_type


def test_a_receiver_that_dies_is_replaced_and_nothing_is_lost(bus: Bus) -> None:
    """The receiving process is killed (SIGKILL: no goodbye) with batches forwarded but not
    yet answered; the listener starts another, RabbitMQ delivers the unacknowledged messages
    again, and the model ends as the in-order replay."""
    lines = trace()
    service = bootstrapped()
    sink_free = threading.Event()
    service.add_publisher(lambda records: sink_free.wait(30))  # holds the first batch
    pool = bus.pool()
    listener = bus.listener(service, pool=pool, batch_size=4)
    listener.start()
    first = listener.receiver_pid
    try:
        for line in lines[:60]:
            bus.send(line)
        # Delivered, not acknowledged (the prefetch bound leaves the rest ready in the queue).
        wait_for(lambda: listener.stats.received > 0 and bus.unacknowledged(pool)[1] > 0)
        os.kill(first, signal.SIGKILL)
    finally:
        sink_free.set()
    wait_for(lambda: listener.receiver_pid not in (None, first), what="a new receiver")
    assert listener.stats.restarts == 1
    for line in lines[60:]:
        bus.send(line)

    sent = {line["metadata"]["message_id"] for line in lines}
    seen = bus.seen[listener].ids
    wait_for(lambda: set(seen) >= sent, timeout=40, what="every message, from the new receiver")
    wait_for(lambda: listener.stats.applied == len(seen))
    assert service.model.to_dict() == reference().model.to_dict()
    assert changed(service) == changed(reference().service)
    assert len(seen) > len(sent)  # what the killed receiver held came again


def test_a_receiver_stops_when_the_service_is_killed(bus: Bus) -> None:
    """The service process dies (SIGKILL) without stopping its listener: its end of the
    socket closes, and the receiver stops consuming and exits by itself (no orphan left
    holding messages of the pool)."""
    pool = bus.pool()
    service_script = textwrap.dedent(
        f"""
        import time
        from cdm_sync.messaging.endpoints import Dispatcher, make_endpoints
        from cdm_sync.messaging.listener import NotificationListener
        from cdm_sync.model import ComputeModel
        from cdm_sync.sync.service import SyncService

        service = SyncService(ComputeModel())
        listener = NotificationListener(
            {bus.url!r}, Dispatcher(make_endpoints(service), service),
            topics=[{bus.topic!r}], exchange={bus.exchange!r}, pool={pool!r},
        )
        listener.start()
        print(listener.receiver_pid, flush=True)
        time.sleep(120)
        """
    )
    service = subprocess.Popen(
        [sys.executable, "-c", service_script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert service.stdout is not None
        receiver_pid = int(service.stdout.readline())
        wait_for(lambda: bus.queue(pool)[1] == 1, what="the receiver consuming")
        service.kill()
        service.wait(10)

        def gone() -> bool:
            try:
                return Path(f"/proc/{receiver_pid}/stat").read_text().split(") ")[1][0] == "Z"
            except FileNotFoundError:
                return True

        wait_for(gone, what="the orphaned receiver to exit")
        wait_for(lambda: bus.queue(pool)[1] == 0, what="no consumer left on the pool queue")
    finally:
        service.kill()


def test_bad_transport_fails_start_clearly_and_logs_no_password(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
    listener = NotificationListener(
        "nosuchdriver://cdm:s3cret-pw@127.0.0.1:5672/",
        Dispatcher(make_endpoints(service), service),
        pool=bus.pool(),
    )
    with caplog.at_level(logging.INFO), pytest.raises(ReceiverFailed) as failed:
        listener.start()
    assert "nosuchdriver" in str(failed.value)
    assert not listener.running and listener.receiver_pid is None
    # The receiver's own log record came through this process's logging.
    assert any(r.processName == "cdm-sync-receiver" for r in caplog.records)
    assert "s3cret-pw" not in str(failed.value) + caplog.text


def test_a_transport_object_is_refused(bus: Bus) -> None:
    with pytest.raises(TypeError, match="transport URL"):
        service = SyncService(ComputeModel(), event_types=NOVA_EVENT_TYPES)
        NotificationListener(bus.transport, Dispatcher([], service), pool=bus.pool())
