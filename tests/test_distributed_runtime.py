"""Ray is optional and joined in one place: a bad address is one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmsearch.distributed.runtime import connect
from mmsearch.errors import UserInputError


def test_local_runtime_runs_a_task(ray_runtime) -> None:
    assert connect("auto") is ray_runtime  # already connected: left as it is
    assert ray_runtime.get(ray_runtime.remote(lambda: 41 + 1).remote()) == 42


def test_unreachable_cluster_is_one_line() -> None:
    code = (
        "from mmsearch.distributed.runtime import connect\n"
        "from mmsearch.errors import UserInputError\n"
        "try:\n    connect('127.0.0.1:9')\nexcept UserInputError as exc:\n    print('ERR', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ERR")]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], done.stdout + done.stderr


def test_the_local_path_never_imports_ray() -> None:
    code = "import sys, mmsearch, mmsearch.cli, mmsearch.index; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserInputError, match=r"mmsearch\[ray\]"):
        connect("local")
