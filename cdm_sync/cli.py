"""The ``cdm-sync`` command: the operator's and the scripts' way in (FORMATS.md §5).

Commands: ``demo`` (the bundled real Nova example, no cloud needed), ``replay``, ``dump``,
``serve`` (the live service), ``snapshot`` (from a live cloud), and ``status``/``resync``
(against a running ``serve``, through its health endpoint). Every failure an operator can
cause (missing file, wrong format tag, bad config value, Nova or the service unreachable) ends
with one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging as std_logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from oslo_config import cfg
from oslo_log import log as logging

from cdm_sync import conf
from cdm_sync.conf.secrets import protect_secrets
from cdm_sync.jsonfile import write_json_atomic
from cdm_sync.model import ChangeRecord, ComputeModel
from cdm_sync.model.changes import format_timestamp
from cdm_sync.nova.auth import AuthConfigError
from cdm_sync.nova.event_types import NOVA_EVENT_TYPES
from cdm_sync.nova.snapshot import SnapshotError, read_snapshot
from cdm_sync.nova.trace import TraceError
from cdm_sync.redaction import REDACTOR, redact_handlers
from cdm_sync.replay import bootstrap, replay
from cdm_sync.sync.service import SyncService

LOG = logging.getLogger(__name__)

EXAMPLE = "basic_lifecycle"


class UsageError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def example_path(name: str) -> Path:
    """A file of the bundled real Nova 34 example (snapshot, trace, final snapshot)."""
    return Path(str(resources.files("cdm_sync") / "data" / EXAMPLE / name))


class ChangeWriter:
    """Appends change records as JSON Lines (FORMATS.md §4)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.count = 0

    def __call__(self, records: list[ChangeRecord]) -> None:
        for record in records:
            self.stream.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
        self.count += len(records)


def _model_from_conf() -> ComputeModel:
    return ComputeModel(
        tombstone_ttl=conf.CONF.model.tombstone_ttl, dedupe_window=conf.CONF.model.dedupe_window
    )


def _run_replay(
    snapshot: Path | str, trace: Path | str, audit: Path | str | None, changes: TextIO | None
) -> Any:
    writer = ChangeWriter(changes) if changes is not None else None
    return replay(
        snapshot,
        trace,
        audit,
        model=_model_from_conf(),
        nova_format=conf.CONF.notifications.format,
        supersede_window=conf.CONF.notifications.supersede_window,
        max_message_bytes=conf.CONF.notifications.max_message_bytes,
        on_changes=writer,
    )


def cmd_replay(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        changes = (
            stack.enter_context(open(args.changes, "w", encoding="utf-8")) if args.changes else None
        )
        result = _run_replay(args.snapshot, args.trace, args.audit_snapshot, changes)
    if args.dump:
        write_json_atomic(args.dump, result.model.to_dict())
    summary = result.service.stats.summary()
    audit = f"; {result.audit.line()}" if result.audit is not None else ""
    print(
        f"replay: {result.trace_lines} notifications: {summary.line()}; "
        f"bootstrap items rejected {len(result.bootstrap_rejected)}{audit}",
        file=sys.stderr,
    )
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    service = SyncService(_model_from_conf(), event_types=NOVA_EVENT_TYPES)
    bootstrap(service, read_snapshot(args.snapshot, conf.CONF.notifications.max_message_bytes))
    document = service.model.to_dict()
    if args.out:
        write_json_atomic(args.out, document)
    else:
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Replay the bundled real Nova trace and show what the model learned."""
    trace = example_path(f"trace-{args.stream}.jsonl")
    records: list[ChangeRecord] = []
    result = replay(
        example_path("snapshot.json"),
        trace,
        example_path("snapshot-final.json"),
        model=_model_from_conf(),
        on_changes=records.extend,
    )
    out = sys.stdout
    model = result.model
    out.write(
        f"cdm-sync demo: a real Nova 34.0.0 run ({EXAMPLE}, {args.stream} notifications)\n"
        f"bootstrapped from its snapshot, replayed {result.trace_lines} notifications, audited "
        f"against the final snapshot.\n\n"
    )
    _print_table(
        out,
        "Compute nodes",
        ["host", "hypervisor", "status", "state", "instances", "vcpus used", "RAM used MB"],
        [
            [
                u.node.hostname,
                u.node.hypervisor_hostname,
                u.node.status,
                u.node.state,
                u.instances,
                _of(u.vcpus_used, u.node.vcpus),
                _of(u.memory_mb_used, u.node.memory_mb),
            ]
            for u in sorted(model.usages(), key=lambda u: u.node.hostname or "")
        ],
    )
    _print_table(
        out,
        "Instances",
        ["name", "project", "host", "vm_state", "power_state", "flavor"],
        [
            [
                i.name,
                i.project_id,
                i.host,
                i.vm_state,
                i.power_state,
                i.flavor.name if i.flavor else None,
            ]
            for i in sorted(model.instances(), key=lambda i: i.name or "")
        ],
    )
    by_cause = Counter((r.cause.source, r.kind, r.op) for r in records)
    _print_table(
        out,
        f"Changes (revisions 1..{model.revision})",
        ["cause", "kind", "op", "count"],
        [[s, k, o, n] for (s, k, o), n in sorted(by_cause.items())],
    )
    moves = [r for r in records if r.kind == "instance" and "host" in r.changed]
    if moves:
        _print_table(
            out,
            "Instance moves seen",
            ["revision", "instance", "host", "because of"],
            [
                [
                    r.revision,
                    getattr(r.element, "name", r.uuid),
                    " -> ".join(map(str, r.changed["host"])),
                    r.cause.event_type or r.cause.source,
                ]
                for r in moves
            ],
        )
    out.write(f"{result.service.stats.summary().line()}\n")
    out.write("Full dump: cdm-sync replay --snapshot S --trace T --dump model.json (see README).\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # The adapters are imported only when serving.
    from cdm_sync.daemon import Daemon, StartupError

    daemon = Daemon(conf.CONF, args.dump_file)

    def stop(signum: int, frame: Any) -> None:
        LOG.info("Signal %d received", signum)
        daemon.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return daemon.run()
    except StartupError as exc:
        raise UsageError(str(exc)) from None


def cmd_snapshot(args: argparse.Namespace) -> int:
    from cdm_sync.nova.collector import collector_from_conf
    from cdm_sync.nova.snapshot import write_snapshot
    from cdm_sync.sync.ports import ListingError

    bar = _Progress()
    try:
        snap, incomplete = collector_from_conf(conf.CONF).full_snapshot(bar)
    except ListingError as exc:
        bar.done()
        raise UsageError(f"listing Nova failed: {exc.reason}") from None
    bar.done()
    write_snapshot(snap, args.out)
    print(
        f"snapshot: {len(snap.services)} services, {len(snap.hypervisors)} hypervisors, "
        f"{len(snap.servers)} servers at microversion {snap.microversion} -> {args.out}",
        file=sys.stderr,
    )
    for reason in incomplete:
        print(f"cdm-sync: warning: the listing is incomplete: {reason}", file=sys.stderr)
    return 1 if incomplete else 0


def _health_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    host = conf.CONF.health.host
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{conf.CONF.health.port}"


def _http_json(url: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"cannot reach cdm-sync serve at {url}: {reason}") from None


def cmd_status(args: argparse.Namespace) -> int:
    _, status = _http_json(_health_url(args) + "/status")
    ready = 0 if status.get("state") == "READY" else 1  # the same rule for both outputs
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return ready
    notes = status["notifications"]
    lag = notes.get("lag_seconds")
    out = sys.stdout
    out.write(
        f"state        {status['state']}"
        + (f" ({status['reason']})" if status.get("reason") else "")
        + "\n"
        f"model        {status['compute_nodes']} compute nodes, {status['instances']} instances, "
        f"revision {status['revision']}\n"
        f"notifications applied {notes['applied']} (changed {notes['changed']}), ignored "
        f"{notes['ignored']}, rejected {notes['rejected']}"
        + (f", lag {lag:.2f}s" if lag is not None else "")
        + "\n"
    )
    for label, key in (("full audit", "last_full_audit"), ("cheap audit", "last_cheap_audit")):
        report = status.get(key)
        if report:
            out.write(
                f"{label:<13}{report['result']} at {format_timestamp(report['started_at'])}, "
                f"{report['duration']}s, drift {report['drift'] or 'none'}\n"
            )
        else:
            out.write(f"{label:<13}not run yet\n")
    if status.get("drift"):
        out.write(f"drift total  {status['drift']}\n")
    return ready


def cmd_resync(args: argparse.Namespace) -> int:
    base = _health_url(args)
    code, answer = _http_json(base + "/resync", method="POST")
    if code == 409:
        raise UsageError("an audit is already running; try again when it has finished")
    if code != 202:
        raise UsageError(f"resync was refused: {answer.get('error', code)}")
    bar = _Progress()
    while True:
        time.sleep(0.5)
        _, status = _http_json(base + "/status")
        resync = status["resync"]
        for what, count in resync["progress"].items():
            bar(what, count)
        if not resync["running"]:
            break
    bar.done()
    if resync["error"]:
        raise UsageError(f"resync failed: {resync['error']}")
    report = resync["report"] or {}
    drift = report.get("drift") or {}
    print(
        f"resync {report.get('result')}: {report.get('listed_servers')} servers listed in "
        f"{report.get('duration')}s; corrected: "
        + (", ".join(f"{k} {v}" for k, v in drift.items()) or "nothing")
        + (f"; {report['reason']}" if report.get("reason") else "")
    )
    return 0 if report.get("result") == "ok" else 1


class _Progress:
    """A one-line progress display on stderr (a plain line per update when not a terminal)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, what: str, count: int) -> None:
        self.counts[what] = count
        now = time.monotonic()
        if not self.tty and now - self._last < 2.0:
            return
        self._last = now
        text = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        sys.stderr.write(f"\r{text}" if self.tty else f"{text}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.counts:
            sys.stderr.write("\n")


def _of(used: int, total: int | None) -> str:
    return f"{used}/{total if total is not None else '?'}"


def _print_table(out: TextIO, title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out.write(f"{title}\n")
    for n, row in enumerate(cells):
        out.write(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
        if n == 0:
            out.write("  " + "  ".join("-" * w for w in widths) + "\n")
    out.write("\n")


def _global_options(after: bool) -> argparse.ArgumentParser:
    """``--config-file`` and ``--debug``, accepted before the subcommand and after it (FORMATS
    §5): the copy after it keeps its own destination, and :func:`main` merges the two."""
    suffix = "_after" if after else ""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--config-file",
        action="append",
        default=[],
        metavar="FILE",
        dest="config_file" + suffix,
        help="oslo.config file (repeatable; default search: /etc/cdm-sync/cdm-sync.conf)",
    )
    options.add_argument(
        "--debug", action="store_true", dest="debug" + suffix, help="log at debug level"
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdm-sync",
        description="A live graph of an OpenStack cloud's compute.",
        parents=[_global_options(after=False)],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    after = [_global_options(after=True)]  # every subcommand's parents

    demo = sub.add_parser(
        "demo", parents=after, help="replay the bundled real Nova example and show the model"
    )
    demo.add_argument(
        "--stream",
        choices=("versioned", "legacy", "both"),
        default="versioned",
        help="which recorded notification stream to replay (default: versioned)",
    )
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser(
        "replay", parents=after, help="bootstrap from a snapshot and replay a notification trace"
    )
    rep.add_argument("--snapshot", required=True, help="Nova snapshot (cdm-sync/nova-snapshot/1)")
    rep.add_argument("--trace", required=True, help="notification trace (JSON Lines)")
    rep.add_argument("--audit-snapshot", help="snapshot to audit against after the trace")
    rep.add_argument("--dump", help="write the model dump (cdm-sync/model/1) here")
    rep.add_argument("--changes", help="write the change records (JSON Lines) here")
    rep.set_defaults(func=cmd_replay)

    serve = sub.add_parser(
        "serve", parents=after, help="the live service: bootstrap, listen, audit"
    )
    serve.add_argument("--dump-file", help="keep this file equal to the model dump")
    serve.set_defaults(func=cmd_serve)

    snap = sub.add_parser(
        "snapshot", parents=after, help="write a Nova snapshot from the live cloud"
    )
    snap.add_argument("--out", required=True, help="where to write it")
    snap.set_defaults(func=cmd_snapshot)

    for name, func, text in (
        ("status", cmd_status, "state, counters and audits of a running cdm-sync serve"),
        ("resync", cmd_resync, "run a full audit now in a running cdm-sync serve"),
    ):
        command = sub.add_parser(name, parents=after, help=text)
        command.add_argument("--url", help="its health endpoint (default: from [health])")
        if name == "status":
            command.add_argument("--json", action="store_true", help="the raw status document")
        command.set_defaults(func=func)

    dump = sub.add_parser("dump", parents=after, help="the model dump of a Nova snapshot")
    dump.add_argument("--snapshot", required=True, help="Nova snapshot (cdm-sync/nova-snapshot/1)")
    dump.add_argument("--out", help="write here instead of stdout")
    dump.set_defaults(func=cmd_dump)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        conf.load([*args.config_file, *args.config_file_after])
        protect_secrets(conf.CONF)
        if args.debug or args.debug_after:
            conf.CONF.set_override("debug", True)
        logging.setup(conf.CONF, "cdm-sync")
        redact_handlers(std_logging.getLogger().handlers)
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe must surface here, not at interpreter exit
        return status
    except (SnapshotError, TraceError, UsageError, AuthConfigError) as exc:
        print(f"cdm-sync: error: {REDACTOR(str(exc))}", file=sys.stderr)
        return 2
    except cfg.Error as exc:
        print(f"cdm-sync: configuration error: {REDACTOR(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``cdm-sync dump | head``): not an error of ours. What is still
        # buffered goes to /dev/null when the interpreter flushes stdout on exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        what = exc.strerror or str(exc)
        reason = REDACTOR(f"{exc.filename}: {what}" if exc.filename else what)
        print(f"cdm-sync: error: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
