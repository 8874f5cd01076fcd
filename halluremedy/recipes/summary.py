"""``OUT/summary.md``: what a run was (its resolved config), its results and where its files are;
and ``OUT/config.yaml``, the same config as ``--config`` reads it, to run it again."""

from __future__ import annotations

import os
from pathlib import Path

from halluremedy.config import config_yaml


def _where(path: Path, out: Path) -> str:
    """``path`` relative to ``out`` when inside it, else absolute."""
    path, out = path.resolve(), out.resolve()
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def write_summary(out: str | os.PathLike, command: str, cfg, *, results: str,
                  files: dict[str, str | os.PathLike]) -> Path:
    """Write ``OUT/config.yaml`` and ``OUT/summary.md`` for a run of ``halluremedy COMMAND`` with ``cfg``:
    ``results`` (Markdown) and a table of ``files`` (what -> path; only those that exist are listed,
    paths inside OUT relative to it). Returns the summary's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config_yaml(cfg)
    (out / "config.yaml").write_text(resolved)
    rows = [f"| {what} | `{_where(Path(path), out)}` |" for what, path in files.items() if Path(path).exists()]
    text = "\n".join([
        f"# halluremedy {command}: {out}", "",
        f"Run again: `halluremedy {command} --config {out / 'config.yaml'}`", "",
        "## Results", "", results.strip(), "",
        "## Files", "", "| what | where (inside this folder unless absolute) |", "|---|---|", *rows, "",
        "## Resolved config", "", "```yaml", resolved.rstrip(), "```", ""])
    path = out / "summary.md"
    path.write_text(text)
    return path
