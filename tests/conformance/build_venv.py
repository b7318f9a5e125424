"""Build (or find) the separate virtualenv the conformance suite runs Nova in.

Nova and cdm-sync must not share an environment: cdm-sync never imports Nova, and Nova 34 pins
libraries (SQLAlchemy, eventlet, oslo.*) the project does not want. The venv is large (about
400 MB) and takes a minute to build, so it is cached outside the clone, keyed by the hash of
``requirements-nova.txt`` and the Python version: changing a pin builds a new one, and a venv is
used only once its install completed (``.complete`` marker), so an interrupted build is redone.

Standard library only: it runs with the project's Python before anything else exists.

    python tests/conformance/build_venv.py            # prints the venv's path
    CDM_SYNC_NOVA_VENV=/path python .../build_venv.py  # use (or build) that venv instead
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements-nova.txt")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdm-sync"
MARKER = ".complete"


class BuildError(RuntimeError):
    """The venv could not be built (typically: no route to the package index)."""


def venv_key(requirements: Path = REQUIREMENTS) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()[:12]


def default_path(requirements: Path = REQUIREMENTS) -> Path:
    explicit = os.environ.get("CDM_SYNC_NOVA_VENV")
    if explicit:
        return Path(explicit)
    return CACHE_DIR / f"nova-venv-{venv_key(requirements)}"


def python_of(path: Path) -> Path:
    return path / "bin" / "python"


def ensure_venv(path: Path | None = None, requirements: Path = REQUIREMENTS) -> Path:
    """The venv's path, built first unless a complete one is there. Raises BuildError."""
    path = path or default_path(requirements)
    if (path / MARKER).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions starting at once must not build into the same directory.
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / MARKER).exists():
            return path
        if path.exists():
            shutil.rmtree(path)  # an interrupted build
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        env = dict(os.environ)
        # The machine's pip configuration may list local indexes that do not exist: each one
        # prints hundreds of "Location ... is ignored" lines. Only the default index is needed.
        env["PIP_CONFIG_FILE"] = os.devnull
        env.pop("PIP_FIND_LINKS", None)
        command = [str(python_of(path)), "-m", "pip", "install", "-q", "-r", str(requirements)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise BuildError(f"pip install -r {requirements.name} failed:\n{tail}")
        (path / MARKER).write_text(venv_key(requirements) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="where (default: the cache, keyed by hash)")
    args = parser.parse_args()
    try:
        print(ensure_venv(args.venv))
    except BuildError as exc:
        print(f"build_venv: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
