"""Benchmarks: collect ``bench_*.py`` files and print each benchmark group's ratio table at the end.

Run as ``pytest bench/ --benchmark-only``. A benchmark records its numbers with the
``bench_report`` fixture; the terminal summary then prints every provider against the group's
baseline provider, measured side by side in the same run.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

_REPORT = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    patterns = parent.config.getini("python_files")
    if (
        file_path.name.startswith("bench_")
        and file_path.suffix == ".py"
        and not any(fnmatch(file_path.name, p) for p in patterns)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_report(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """``report[group] = {"baseline": provider, "rows": {provider: {metric: value}}}``."""
    return request.config.stash.setdefault(_REPORT, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for group, entry in config.stash.get(_REPORT, {}).items():
        rows, base = entry["rows"], entry["rows"].get(entry["baseline"])
        if base is None:
            continue
        metrics = list(base)
        terminalreporter.section(f"{group}: ratios vs {entry['baseline']}")
        header = ["provider", *metrics, *(f"{m} / {entry['baseline']}" for m in metrics)]
        terminalreporter.line(" | ".join(header))
        for provider, values in rows.items():
            cells = [provider]
            cells += [f"{values[m]:.4g}" if values.get(m) is not None else "-" for m in metrics]
            cells += [f"{values[m] / base[m]:.2f}x" if values.get(m) is not None and base[m] else "-" for m in metrics]
            terminalreporter.line(" | ".join(cells))
        if "note" in entry:
            terminalreporter.line(entry["note"])
