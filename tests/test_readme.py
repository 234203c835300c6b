"""The README's library example, saved as a script and run verbatim, as a newcomer would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from conftest import COLOURS, write_image

README = Path(__file__).parent.parent / "README.md"


def test_readme_library_examples_run_as_unguarded_scripts(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    script = "\n".join(f"exec({block!r})" for block in blocks)  # each block verbatim, in order
    (tmp_path / "example.py").write_text(script)  # no `if __name__ == "__main__":` guard
    for n in range(36):  # enough files for the ingest to start decode worker processes
        write_image(tmp_path / "photos" / f"{n:02d}.png", list(COLOURS.values())[n % len(COLOURS)], seed=n)
    write_image(tmp_path / "q.jpg", COLOURS["red"])
    tone = np.sin(np.linspace(0, 440 * 2 * np.pi, 16_000)).astype(np.float32)
    soundfile.write(tmp_path / "bark.wav", tone, 16_000)
    run = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert (tmp_path / "indexes" / "default" / "manifest.json").is_file()
    assert (tmp_path / "indexes" / "vectors" / "manifest.json").is_file()
