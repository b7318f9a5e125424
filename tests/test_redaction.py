"""Secrets stay out of logs, CLI errors and status documents, whatever a library says.

The configuration's secrets (option values declared secret, passwords inside URLs) are
registered with the process's redactor; every line a handler formats (traceback included) is
scrubbed. The end-to-end cases, a real ``serve`` whose connections fail, are in test_serve.py.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import oslo_messaging
import pytest
from oslo_config import cfg

from cdm_sync.conf.secrets import protect_secrets
from cdm_sync.redaction import (
    MASK,
    RedactingFormatter,
    Redactor,
    passwords_in_url,
    redact_handlers,
)


@pytest.fixture
def redactor() -> Iterator[Redactor]:
    yield Redactor()


def test_a_failing_connection_that_quotes_the_transport_url_logs_no_password(
    redactor: Redactor,
) -> None:
    """oslo.messaging's transport URL and a keystoneauth password, configured as operators
    do; an exception that quotes both (as a connection error may quote its URL) is logged
    with its traceback: neither secret is in the line or the traceback."""
    rabbit_pw, keystone_pw = f"rb-{uuid.uuid4().hex}", f"ks-{uuid.uuid4().hex}"
    url = f"rabbit://cdm:{rabbit_pw}@rabbit1:5672,cdm:{rabbit_pw}@rabbit2:5672/"
    conf = cfg.ConfigOpts()
    oslo_messaging.get_notification_transport(conf, url="fake:///").cleanup()  # registers
    conf.register_opt(cfg.StrOpt("password", secret=True), group="nova_client")
    conf([], project="cdm-sync-test", default_config_files=[])
    conf.set_override("transport_url", url, group="oslo_messaging_notifications")
    conf.set_override("password", keystone_pw, group="nova_client")
    protect_secrets(conf, redactor)

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("cdm_sync.tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        redact_handlers([handler], redactor)
        try:
            raise ConnectionError(f"cannot connect to {url} as cdm with password {keystone_pw}")
        except ConnectionError:
            logger.exception("Connecting failed: %s", url)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "Traceback" in text and "ConnectionError" in text
    assert rabbit_pw not in text and keystone_pw not in text
    # The option is secret: the URL goes whole; a copy spelled otherwise loses its passwords.
    assert f"cannot connect to {MASK} as cdm" in text
    assert redactor(url.replace("rabbit://", "amqp://")) == (
        f"amqp://cdm:{MASK}@rabbit1:5672,cdm:{MASK}@rabbit2:5672/"
    )
    assert redactor(f"status reason: {keystone_pw}") == f"status reason: {MASK}"


def test_url_encoded_forms_and_documents_are_masked(redactor: Redactor) -> None:
    redactor.protect("p@ss w/rd")
    assert redactor("http://u:p%40ss%20w%2Frd@h/") == f"http://u:{MASK}@h/"
    assert redactor.document({"reason": ["x p@ss w/rd"], "n": 1}) == {
        "reason": [f"x {MASK}"],
        "n": 1,
    }


def test_short_values_are_not_masked_everywhere(redactor: Redactor) -> None:
    """A two-letter 'secret' would turn every log line to stars; it protects nothing."""
    redactor.protect("ab")
    assert redactor("abcabc") == "abcabc"


def test_passwords_in_urls() -> None:
    assert passwords_in_url("rabbit://a:b1@h1,c:d2@h2:5672/x and http://u:p3@k/v3") == [
        "b1",
        "d2",
        "p3",
    ]
    assert passwords_in_url("http://nobody@host/ and no URL") == []


def test_the_redacting_formatter_keeps_the_inner_format(redactor: Redactor) -> None:
    redactor.protect("Secret-Value-1")
    formatter = RedactingFormatter(logging.Formatter("[%(name)s] %(message)s"), redactor)
    record = logging.LogRecord("n", logging.INFO, "f", 1, "got %s", ("Secret-Value-1",), None)
    assert formatter.format(record) == f"[n] got {MASK}"
