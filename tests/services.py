"""The real services the integration tests run against, found or reported.

Tests that need a service call its helper: when the service does not answer, the test fails in
CI (``CI=true``: a missing service there is a broken environment, not a reason to go green) and
is skipped elsewhere.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable

import pytest

RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672
RABBIT_URL = f"rabbit://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/"
# The same broker as kombu spells it, for test housekeeping (deleting queues).
_KOMBU_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"


def unavailable(reason: str) -> None:
    """Fail under CI, skip otherwise."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(f"service unavailable: {reason}")


def rabbit_url() -> str:
    """The RabbitMQ transport URL, once the broker has answered an AMQP handshake."""
    import kombu  # oslo.messaging's own client library

    try:
        with socket.create_connection((RABBIT_HOST, RABBIT_PORT), timeout=2):
            pass
        with kombu.Connection(_KOMBU_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable(f"RabbitMQ at {RABBIT_HOST}:{RABBIT_PORT}: {exc}")
    return RABBIT_URL


def delete_rabbit_objects(queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
    """Remove queues and exchanges a test declared (missing ones are fine)."""
    import kombu

    with kombu.Connection(_KOMBU_URL, connect_timeout=3) as connection:
        for queue in queues:
            try:
                connection.default_channel.queue_delete(queue)
            except Exception:  # not declared by this test run: the channel closed, reopen it
                connection.close()
                connection.connect()
        for exchange in exchanges:
            try:
                connection.default_channel.exchange_delete(exchange)
            except Exception:
                connection.close()
                connection.connect()


def close_rabbit_connections(name_contains: str, reason: str = "test") -> int:
    """Close the broker's connections whose client-given name contains ``name_contains``
    (oslo.messaging names them ``<program>:<pid>:<uuid>``), as an operator would with
    rabbitmqctl. Returns how many were closed."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    closed = 0
    for row in listed.splitlines():
        pid, _, properties = row.partition("\t")
        if pid.startswith("<") and name_contains in properties:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, reason],
                capture_output=True,
                check=True,
                timeout=30,
            )
            closed += 1
    return closed


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test (saying what) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.02)
