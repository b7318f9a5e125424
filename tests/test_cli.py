"""The ``cdm-sync`` command as scripts use it: FORMATS.md §5 replay, dump, demo, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cdm_sync.cli import example_path, main
from tests.samples import TRACE_DIR

CHANGE_KEYS = {"format", "revision", "at", "kind", "op", "uuid", "changed", "object", "cause"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console entry point, in a child process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cdm_sync.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_replay_writes_dump_changes_and_summary(tmp_path: Path) -> None:
    dump, changes = tmp_path / "model.json", tmp_path / "changes.jsonl"
    proc = run_cli(
        "replay",
        "--snapshot", str(TRACE_DIR / "snapshot.json"),
        "--trace", str(TRACE_DIR / "trace-versioned.jsonl"),
        "--audit-snapshot", str(TRACE_DIR / "snapshot-final.json"),
        "--dump", str(dump),
        "--changes", str(changes),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stderr.splitlines() if line.startswith("replay:")]
    assert len(summary) == 1
    assert "applied" in summary[0] and "ignored" in summary[0] and "rejected 0" in summary[0]

    model = json.loads(dump.read_text())
    expected = json.loads((TRACE_DIR / "expected-model.json").read_text())
    assert model["format"] == "cdm-sync/model/1"
    assert [i["uuid"] for i in model["instances"]] == [i["uuid"] for i in expected["instances"]]
    assert [n["uuid"] for n in model["compute_nodes"]] == [
        n["uuid"] for n in expected["compute_nodes"]
    ]

    records = [json.loads(line) for line in changes.read_text().splitlines()]
    assert records, "a replay that changes the model writes change records"
    assert [r["revision"] for r in records] == list(range(1, len(records) + 1))
    assert model["revision"] == records[-1]["revision"]
    for record in records:
        assert set(record) == CHANGE_KEYS
        assert record["format"] == "cdm-sync/change/1"
        assert (record["object"] is None) == (record["op"] == "remove")
    sources = {r["cause"]["source"] for r in records}
    assert sources == {"bootstrap", "notification", "audit"}


def test_replay_counts_bad_lines_and_still_succeeds(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    lines = (TRACE_DIR / "trace-versioned.jsonl").read_text().splitlines()
    broken = json.loads(lines[10])
    broken["payload"]["nova_object.data"]["uuid"] = 42
    trace.write_text("\n".join([lines[0], "{not json", json.dumps(broken), *lines[1:]]) + "\n")
    dump = tmp_path / "model.json"
    proc = run_cli(
        "replay", "--snapshot", str(TRACE_DIR / "snapshot.json"), "--trace", str(trace),
        "--dump", str(dump),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rejected 2" in proc.stderr
    assert len(json.loads(dump.read_text())["instances"]) == 3


def test_replay_survives_poisoned_lines(tmp_path: Path) -> None:
    """A line nested 100,000 deep, a 50 MB line, a line that is not UTF-8 and one that is not
    an object, among the recorded ones: each rejected, counted and logged with its line number,
    no traceback, exit 0, and the model is what the good lines alone make."""
    lines = (TRACE_DIR / "trace-versioned.jsonl").read_bytes().splitlines()
    not_utf8 = lines[7].replace(b'"display_name":"', b'"display_name":"caf\xe9 ')
    assert not_utf8 != lines[7]
    poisoned = [
        *lines[:3],
        b"[" * 100_000 + b"]" * 100_000,  # line 4
        b'{"event_type": "instance.update", "payload": "' + b"x" * (50 << 20) + b'"}',  # 5
        *lines[3:9],
        not_utf8,  # line 12
        b"[" + lines[9] + b"]",  # line 13
        *lines[9:],
    ]
    runs = {}
    for name, trace_lines in (("poisoned", poisoned), ("clean", lines)):
        trace, dump = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-model.json"
        trace.write_bytes(b"\n".join(trace_lines) + b"\n")
        proc = run_cli(
            "replay", "--snapshot", str(TRACE_DIR / "snapshot.json"), "--trace", str(trace),
            "--dump", str(dump),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        [summary] = [line for line in proc.stderr.splitlines() if line.startswith("replay:")]
        runs[name] = (summary, proc.stderr, json.loads(dump.read_text()))
    summary, stderr, model = runs["poisoned"]
    assert summary.startswith(f"replay: {len(poisoned)} notifications: ")
    assert "rejected 4," in summary
    for reason in (
        "line 4 is nested too deeply to decode",
        f"line 5 has {len(poisoned[4])} bytes, over the 1048576-byte limit",
        "line 12 is not UTF-8",
        "line 13 is not a JSON object",
    ):
        assert stderr.count(reason) == 1, reason
    assert "rejected 0," in runs["clean"][0]
    assert model == runs["clean"][2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--snapshot", "/nonexistent.json", "--trace", "/dev/null"], "nonexistent"),
        (["dump", "--snapshot", "{trace}"], "not valid JSON"),
        (["dump", "--snapshot", "{wrong_format}"], "expected 'cdm-sync/nova-snapshot/1'"),
        (["--config-file", "{bad_conf}", "dump", "--snapshot", "{snap}"], "tombstone_ttl"),
        (["--config-file", "{garbage_conf}", "dump", "--snapshot", "{snap}"], "parse"),
    ],
)
def test_operator_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something/else"}))
    bad_conf = tmp_path / "bad.conf"
    bad_conf.write_text("[model]\ntombstone_ttl = forever\n")
    garbage_conf = tmp_path / "garbage.conf"
    garbage_conf.write_text("this is [ not a config\n")
    values = {
        "trace": str(TRACE_DIR / "trace-versioned.jsonl"),
        "wrong_format": str(wrong),
        "bad_conf": str(bad_conf),
        "garbage_conf": str(garbage_conf),
        "snap": str(TRACE_DIR / "snapshot.json"),
    }
    proc = run_cli(*[a.format(**values) for a in args])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_dump_of_a_snapshot_is_the_bootstrapped_model(tmp_path: Path) -> None:
    out = tmp_path / "dump.json"
    assert main(["dump", "--snapshot", str(TRACE_DIR / "snapshot.json"), "--out", str(out)]) == 0
    dumped = json.loads(out.read_text())
    snapshot = json.loads((TRACE_DIR / "snapshot.json").read_text())
    assert {i["uuid"] for i in dumped["instances"]} == {s["id"] for s in snapshot["servers"]}
    assert {n["uuid"] for n in dumped["compute_nodes"]} == {
        h["id"] for h in snapshot["hypervisors"]
    }


def test_demo_shows_the_bundled_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    final = json.loads(example_path("snapshot-final.json").read_text())
    for server in final["servers"]:
        assert server["name"] in out
    for service in final["services"]:
        assert service["host"] in out
    assert "Changes (revisions 1.." in out


def test_bundled_example_is_the_shared_trace() -> None:
    for name in ("snapshot.json", "snapshot-final.json", "trace-versioned.jsonl"):
        assert example_path(name).read_bytes() == (TRACE_DIR / name).read_bytes()


def test_dump_to_stdout_is_pure_json_and_logs_go_to_stderr() -> None:
    proc = run_cli("dump", "--snapshot", str(TRACE_DIR / "snapshot.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["format"] == "cdm-sync/model/1"
    assert "Bootstrap done" in proc.stderr  # progress is logged, on stderr


def test_a_reader_that_stops_early_is_not_an_error() -> None:
    """``cdm-sync demo | head``: the reader closes the pipe before the command writes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdm_sync.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the demo computes for a while before it writes anything
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr


def test_the_sample_configuration_is_what_the_generator_writes(tmp_path: Path) -> None:
    """etc/cdm-sync.conf.sample is generated (``tox -e genconfig``): it must list every option
    with the defaults cdm-sync really runs with (e.g. logs on stderr), so regenerate it when an
    option changes."""
    from oslo_config import generator

    out = tmp_path / "cdm-sync.conf.sample"
    namespaces = ["--namespace", "cdm_sync", "--namespace", "oslo.log"]
    generator.main([*namespaces, "--output-file", str(out)])
    sample = Path(__file__).resolve().parents[1] / "etc" / "cdm-sync.conf.sample"
    assert out.read_text() == sample.read_text()
    assert "#use_stderr = true" in out.read_text()
