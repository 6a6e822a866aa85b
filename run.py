#!/usr/bin/env python3
"""Set up a virtual environment and run the demo or the tests.

    python3 run.py demo     # the PDF-notes demo, on an embedded broker
    python3 run.py test     # the test suite (extra arguments go to pytest)
    python3 run.py install  # only set up .venv with the test and dev extras

Needs only Python 3.11+ with pip and venv.  The environment lives in
``.venv`` (``TURBO_VENV`` moves it) and is reinstalled when the package's
metadata changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TURBO_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
DEMO = ["-m", "examples.pdf_notes.demo"]


def ensure_environment(extras: str) -> None:
    """Create the venv and install the package with ``extras``, unless already done."""
    stamp_file = VENV / ".turbo-installed"
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    stamp = f"{digest.hexdigest()} {extras}"
    if PYTHON.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"installing dramatiq_turbo[{extras}] into {VENV}", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f".[{extras}]"], check=True, cwd=ROOT)
    stamp_file.write_text(stamp)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "demo":
        ensure_environment("test,dev")
        return subprocess.call([str(PYTHON), *DEMO, *rest], cwd=ROOT)
    if command == "test":
        ensure_environment("test,dev")
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if command == "install":
        ensure_environment("test,dev")
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
