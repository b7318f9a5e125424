"""The health endpoint and the counters behind it, under the load an untrusted network brings.

The endpoint is a real ``HealthServer`` on a loopback port, read over HTTP. What it must
survive: a stream of ever-new event types (the counters and the Prometheus series stay bounded),
readers racing the writers (every /status and /metrics answer is whole), thousands of idle
connections and clients that stall mid-request (/status still answers, threads and open
connections stay bounded), and a stop in the middle of all that (prompt, no thread left).
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdm_sync.api.health import HealthServer, service_status
from cdm_sync.model import ComputeModel
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES, VERSIONED_EVENT_TYPES
from cdm_sync.nova.snapshot import read_snapshot
from cdm_sync.sync.service import NOT_A_STRING, OTHER, SOURCES, UNPARSABLE, SyncService
from tests.conftest import Harness
from tests.samples import TRACE_DIR, load_sample, sample_names
from tests.services import wait_for

# The labels a counter may carry besides Nova's event types.
FIXED_LABELS = SOURCES | {OTHER, UNPARSABLE, NOT_A_STRING}
IDLE_CONNECTIONS = 2000
PROMPT = 2.0  # seconds within which /status must answer, whatever else is going on


@contextmanager
def running(status: Callable[[], dict[str, Any]], **options: Any) -> Iterator[HealthServer]:
    server = HealthServer(status, host="127.0.0.1", port=0, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def url(server: HealthServer, path: str) -> str:
    return "http://{}:{}{}".format(*server.address, path)


def get(
    server: HealthServer, path: str, method: str = "GET", body: bytes | None = None
) -> tuple[int, Message, bytes]:
    """(status code, headers, body) of one request on a new connection."""
    request = urllib.request.Request(url(server, path), data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def timed_status(server: HealthServer) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    code, _, body = get(server, "/status")
    assert code == 200
    return time.monotonic() - started, json.loads(body)


def fixed_status() -> dict[str, Any]:
    return service_status(SyncService(ComputeModel()), None)


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for the idle connections at both ends (the client's and the server's sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * IDLE_CONNECTIONS + 1000
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_idle(server: HealthServer, n: int) -> list[socket.socket]:
    return [socket.create_connection(server.address, timeout=10) for _ in range(n)]


def closed_by_server(sock: socket.socket) -> bool:
    """True if the server closed this connection (reads end of stream or a reset)."""
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def own_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the label set --------------------------------------------------------------------------------


def test_every_event_type_in_novas_samples_and_the_recorded_traces_is_known() -> None:
    sampled = {load_sample(name)["event_type"] for name in sample_names()}
    assert sampled == VERSIONED_EVENT_TYPES  # Nova has a sample of each it sends
    traced = set()
    for trace in sorted(TRACE_DIR.glob("trace-*.jsonl")):
        traced |= {json.loads(line)["event_type"] for line in trace.read_text().splitlines()}
    assert {t for t in traced if t.startswith("compute.instance.")}, "the legacy trace is there"
    assert traced - NOVA_EVENT_TYPES == set()


def test_unknown_event_types_are_counted_under_one_label(harness: Harness) -> None:
    stats = harness.service.stats
    for i in range(5000):
        stats.count(f"custom{i}.update", "unhandled")
        stats.rejection(f"instance.custom{i}", "bad")
    for label in (*SOURCES, UNPARSABLE, NOT_A_STRING, "instance.update"):
        stats.count(label, "changed")
    stats.rejection(["not", "hashable"], "bad")  # what a broken publisher may send
    counts = stats.by_type
    assert counts[(OTHER, "unhandled")] == 5000 and counts[(OTHER, "rejected")] == 5000
    assert {label for label, _ in counts} == FIXED_LABELS | {"instance.update"}
    assert stats.snapshot().last_rejections[-1] == "(not a string): bad"


def test_without_known_event_types_only_the_fixed_labels_grow() -> None:
    stats = SyncService(ComputeModel()).stats
    for event_type in ("instance.update", "compute.instance.exists", "custom.x", "audit"):
        stats.count(event_type, "changed")
    assert stats.by_type == {(OTHER, "changed"): 3, ("audit", "changed"): 1}


# -- readers racing writers -----------------------------------------------------------------------


def test_readers_get_copies_that_writers_never_change(harness: Harness) -> None:
    stats = harness.service.stats
    stats.count("instance.update", "changed")
    snapshot, counts = stats.snapshot(), stats.by_type
    for i, key in enumerate(stats.by_type):  # a writer adding keys mid-iteration
        stats.count(sorted(NOVA_EVENT_TYPES)[i], key[1])
        stats.count("instance.update", f"outcome{i}")
    assert snapshot.by_type == {("instance.update", "changed"): 1} == counts
    assert len(stats.by_type) == 3


def test_status_and_metrics_stay_whole_while_notifications_apply(
    harness: Harness, load_trace: Callable[[str], list[dict[str, Any]]]
) -> None:
    """Readers hammer /status and /metrics over HTTP while two writers add counters under new
    (event type, outcome) keys: every answer is complete and parses, and the labels it shows
    stay within Nova's event types."""
    service = harness.service
    snapshot = read_snapshot(TRACE_DIR / "snapshot.json")
    harness.bootstrap(snapshot)
    trace = load_trace("trace-versioned.jsonl")
    kinds = sorted(NOVA_EVENT_TYPES)
    stop = threading.Event()
    failures: list[BaseException] = []
    answers = {"status": 0, "metrics": 0}

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    work()
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)
                stop.set()

        return run

    counter = iter(range(10**9))

    def notify() -> None:
        i = next(counter)
        # Every known event type with a payload no parser accepts (rejected, unhandled or
        # superseded, each a new key at first), unknown ones, and the real trace.
        for line in (
            {"priority": "info", "event_type": kinds[i % len(kinds)], "payload": {"x": i},
             "publisher_id": "p", "metadata": {"message_id": f"m{i}"}},
            {"priority": "error", "event_type": f"custom{i}.update", "payload": None,
             "publisher_id": "p", "metadata": {"message_id": f"c{i}"}},
            trace[i % len(trace)],
        ):  # fmt: skip
            harness.deliver(line)

    def relist() -> None:
        harness.bootstrap(snapshot)  # submit_all: counters merged under the source's label

    def read_status() -> None:
        code, _, body = get(server, "/status")
        assert code == 200, body
        status = json.loads(body)
        labels = set(status["notifications"]["by_event_type"])
        assert labels <= NOVA_EVENT_TYPES | FIXED_LABELS, labels - NOVA_EVENT_TYPES
        answers["status"] += 1

    def read_metrics() -> None:
        code, _, body = get(server, "/metrics")
        assert code == 200, body
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        labels = {s.labels["event_type"] for s in families["cdm_sync_notifications"].samples}
        assert labels <= NOVA_EVENT_TYPES | FIXED_LABELS, labels - NOVA_EVENT_TYPES
        answers["metrics"] += 1

    with running(lambda: service_status(service, None)) as server:
        threads = [threading.Thread(target=guarded(w)) for w in (notify, relist)]
        threads += [threading.Thread(target=guarded(read_status)) for _ in range(3)]
        threads += [threading.Thread(target=guarded(read_metrics)) for _ in range(3)]
        for thread in threads:
            thread.start()
        stop.wait(4.0)
        stop.set()
        for thread in threads:
            thread.join(30)
    if failures:
        raise failures[0]
    assert answers["status"] > 10 and answers["metrics"] > 10
    assert len({label for label, _ in service.stats.by_type}) > 100  # the keys kept growing
    assert service.stats.by_type[(OTHER, "unhandled")] > 0


# -- idle and slow clients ------------------------------------------------------------------------


def test_status_answers_promptly_while_thousands_of_idle_connections_wait(
    many_files: None,
) -> None:
    """Idle connections wait in the selector, not in threads: with room for all of them kept
    open, the thread count does not move and /status answers at once."""
    threads_before = threading.active_count()
    with running(fixed_status, max_connections=IDLE_CONNECTIONS + 100) as server:
        threads_serving = threading.active_count()
        assert threads_serving - threads_before <= 4 + 3  # workers, selector, 503s, watchdog
        idle = open_idle(server, IDLE_CONNECTIONS)
        try:
            wait_for(lambda: server.open_connections >= IDLE_CONNECTIONS, 30, "all accepted")
            elapsed, status = timed_status(server)
            assert elapsed < PROMPT and status["state"] == "NOT_SYNCED"
            assert threading.active_count() == threads_serving
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: server.open_connections == 0, 10, "the idle connections closed")
        elapsed, _ = timed_status(server)
        assert elapsed < PROMPT
        assert get(server, "/metrics")[0] == 200
        assert threading.active_count() == threads_serving


def test_connections_past_the_bound_close_the_one_idle_longest(many_files: None) -> None:
    fds_before = own_fds()
    with running(fixed_status, max_connections=100) as server:
        idle = open_idle(server, IDLE_CONNECTIONS)
        try:
            wait_for(lambda: server.open_connections <= 100, 10, "the bound kept")
            # The server holds at most the bound; the client holds all of its own sockets.
            assert own_fds() - fds_before < IDLE_CONNECTIONS + 100 + 50
            elapsed, _ = timed_status(server)
            assert elapsed < PROMPT
            wait_for(lambda: closed_by_server(idle[0]), 10, "the oldest one closed")
            assert not closed_by_server(idle[-1])  # the newest are still served
            idle[-1].sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            idle[-1].settimeout(10)
            assert idle[-1].recv(100).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: server.open_connections == 0, 10, "every connection closed")
        assert timed_status(server)[0] < PROMPT


def test_a_new_connection_is_refused_when_every_open_one_is_busy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running(fixed_status, workers=1, timeout=30, max_connections=2) as server:
        busy = [socket.create_connection(server.address) for _ in range(2)]
        for sock in busy:  # one in the only worker, one queued for it: neither is idle
            sock.sendall(b"GET /status HTTP/1.1\r\n")
        wait_for(lambda: server.open_connections == 2, 10, "both accepted")
        with caplog.at_level("WARNING", logger="cdm_sync.api.health"):
            refused = socket.create_connection(server.address)
            wait_for(lambda: closed_by_server(refused), 10, "the new one refused")
        assert "refused 1 new ones" in caplog.text
        assert not any(closed_by_server(sock) for sock in busy)
        for sock in [*busy, refused]:
            sock.close()
        wait_for(lambda: server.open_connections == 0, 10, "the busy ones closed")
        assert timed_status(server)[0] < PROMPT


def test_a_client_that_stalls_mid_request_does_not_block_status() -> None:
    with running(fixed_status, workers=2, timeout=30) as server:
        stalled = socket.create_connection(server.address)
        try:
            stalled.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Half: ")  # and nothing more
            for _ in range(5):
                elapsed, status = timed_status(server)
                assert elapsed < PROMPT and status["state"] == "NOT_SYNCED"
        finally:
            stalled.close()


def test_a_request_trickled_byte_by_byte_is_cut_off_after_the_timeout() -> None:
    """cheroot's timeout bounds each read; a client sending a byte now and then would hold a
    worker forever. The whole request gets ``timeout`` seconds."""
    with running(fixed_status, workers=2, timeout=1.0) as server:
        tricklers = [socket.create_connection(server.address) for _ in range(2)]  # every worker
        request = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        started = time.monotonic()
        cut_off: dict[int, float] = {}
        try:
            for byte in range(len(request)):
                for i, sock in enumerate(tricklers):
                    if i in cut_off:
                        continue
                    try:
                        sock.sendall(request[byte : byte + 1])
                    except OSError:
                        cut_off[i] = time.monotonic() - started
                    else:
                        if closed_by_server(sock):
                            cut_off[i] = time.monotonic() - started
                if len(cut_off) == len(tricklers) or time.monotonic() - started > 10:
                    break
                time.sleep(0.1)
            assert sorted(cut_off) == [0, 1], "a trickling client held its worker"
            assert max(cut_off.values()) < 1.0 + 1.5
            assert timed_status(server)[0] < PROMPT
        finally:
            for sock in tricklers:
                sock.close()


def test_stop_is_prompt_with_clients_connected_and_leaves_no_thread() -> None:
    threads_before = set(threading.enumerate())
    server = HealthServer(fixed_status, host="127.0.0.1", port=0, timeout=30)
    server.start()
    address = server.address
    idle = open_idle(server, 50)
    stalled = socket.create_connection(address)
    stalled.sendall(b"GET /status HTTP/1.1\r\n")
    kept = http.client.HTTPConnection(*address, timeout=10)
    kept.request("GET", "/status")
    assert kept.getresponse().read()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3.0
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)
    for sock in [*idle, stalled]:
        sock.close()
    kept.close()
    server.stop()  # again: nothing to do


# -- what the endpoint answers --------------------------------------------------------------------


def test_paths_methods_and_errors_answer_one_line_json_and_echo_nothing() -> None:
    resyncs = iter([True, False])
    marker = b"<script>echo-me</script>"
    with running(fixed_status, start_resync=lambda: next(resyncs)) as server:
        code, headers, body = get(server, "/status")
        assert (code, headers["Content-Type"]) == (200, "application/json")
        code, headers, body = get(server, "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        assert b'cdm_sync_model_state{state="NOT_SYNCED"} 1.0' in body
        code, _, body = get(server, "/resync", "POST", marker)
        assert code == 202 and set(json.loads(body)) == {"started_at"}
        answers = {
            (method, path): get(server, path, method, marker)
            for method, path in [
                ("POST", "/resync"),
                ("GET", "/" + marker.decode()),
                ("GET", "/resync"),
                ("POST", "/status"),
                ("DELETE", "/metrics"),
            ]
        }
    for (method, path), (_, headers, body) in answers.items():
        assert marker not in body and b"\n" not in body, (method, path, body)
        assert headers["Content-Type"] == "application/json"
        assert "error" in json.loads(body)
    assert answers[("POST", "/resync")][0] == 409
    assert answers[("GET", "/" + marker.decode())][0] == 404
    assert [answers[k][0] for k in [("GET", "/resync"), ("POST", "/status")]] == [405, 405]
    assert answers[("GET", "/resync")][1]["Allow"] == "POST"
    assert answers[("DELETE", "/metrics")][1]["Allow"] == "GET"
    with running(fixed_status) as server:
        assert get(server, "/resync", "POST")[:1] == (503,)


def test_a_failing_status_source_is_a_500_without_its_details() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    with running(broken) as server:
        for path in ("/status", "/metrics"):
            code, _, body = get(server, path)
            assert (code, json.loads(body)) == (500, {"error": "internal error"})
            assert b"secret" not in body


def test_a_connection_is_kept_alive_across_requests_and_bodies_are_skipped() -> None:
    with running(fixed_status, start_resync=lambda: True) as server:
        conn = http.client.HTTPConnection(*server.address, timeout=10)
        try:
            for method, path, body in [
                ("GET", "/status", None),
                ("POST", "/resync", b"x" * 1000),  # not read, and not taken for a request
                ("GET", "/metrics", None),
                ("GET", "/status", None),
            ]:
                conn.request(method, path, body=body)
                response = conn.getresponse()
                assert response.status in (200, 202)
                response.read()
            assert server.open_connections == 1
        finally:
            conn.close()


def test_oversized_requests_are_refused() -> None:
    def answer(head: bytes) -> bytes:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(head)
            try:
                return sock.recv(100)
            except ConnectionResetError:  # closed with the rest of the head unread
                return b"(reset)"

    with running(fixed_status) as server:
        big_body = b"POST /resync HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
        assert answer(big_body).startswith(b"HTTP/1.1 413 ")
        big_head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 65536 + b"\r\n\r\n"
        assert answer(big_head).split(b"\r\n")[0] in (b"HTTP/1.1 413 Request Entity Too Large",
                                                        b"(reset)")  # fmt: skip
        assert timed_status(server)[0] < PROMPT
