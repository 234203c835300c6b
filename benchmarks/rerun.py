"""What every benchmark script does alike: the command that reproduces a run, and its results
written as JSON (the measurements) and Markdown (the table the README quotes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def command_line(script: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``python benchmarks/<script>`` plus the options whose values differ from their defaults."""
    return f"python benchmarks/{script}" + "".join(
        f" --{name.replace('_', '-')} {value:g}" if isinstance(value, float) else f" --{name.replace('_', '-')} {value}"
        for name, value in vars(args).items()
        if value != parser.get_default(name)
    )


def publish(name: str, report: dict, lines: list[str]) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md`` and print the table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
