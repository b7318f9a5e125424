"""Keeps a file equal to the model dump (FORMATS.md §5, ``cdm-sync serve --dump-file D``).

Scripts and tests read the live model from this file without any other interface. It is
rewritten atomically (write to a temporary file, then rename) at most once a second while the
model changes, and once more when the writer stops (clean shutdown), so a reader never sees a
half-written file and the final file is the final model.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cdm_sync.jsonfile import write_json_atomic
from cdm_sync.model import ChangeRecord, ComputeModel

LOG = logging.getLogger(__name__)


class DumpFileWriter:
    """A change publisher (``SyncService.add_publisher(writer.publish)``) plus a writer thread."""

    def __init__(self, model: ComputeModel, path: str | Path, min_interval: float = 1.0) -> None:
        self.model = model
        self.path = Path(path)
        self.min_interval = min_interval
        self.writes = 0
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dump-file", daemon=True)

    def publish(self, records: list[ChangeRecord]) -> None:
        """Called after each apply; only marks the dump stale (never blocks the writer)."""
        self._dirty.set()

    def start(self) -> None:
        self.write()  # the file exists (possibly empty model) as soon as the service runs
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and write the final dump."""
        self._stopping.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.write()

    def write(self) -> None:
        try:
            write_json_atomic(self.path, self.model.to_dict())
            self.writes += 1
        except OSError as exc:
            # A full disk must not stop the service; the next change tries again.
            LOG.error("Could not write the dump file %s: %s", self.path, exc)
            self._dirty.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._dirty.clear()
            self.write()
            # At most one rewrite per interval, however fast the model changes.
            self._stopping.wait(self.min_interval)
