"""Side-by-side comparison table: our preference step against TRL, TRL + Liger and POVID-style.

Runs the pytest-benchmark suite ``bench/bench_step.py`` (the CPU configs are measured on this
machine in this run; LLaVA-1.5-7B is counted on the meta device), prints markdown tables of
ours / peer per preference pair for time, peak memory and FLOPs, and appends one JSON line per
(config, provider) to ``bench/history.jsonl``::

    {"date", "commit", "device", "config", "provider", "time_per_pair_ms", "peak_mem_mb",
     "flops_per_pair", "pairs", "stage", "loss", ...}

GPU rows that ``bench/gpu_throughput.py`` appended to the same history (samples/s, tokens/s, MFU)
are shown too, the newest per (device, config, provider), so a GPU run drops into the table.

Usage (about 3 minutes on 2 busy cores)::

    OMP_NUM_THREADS=1 python bench/compare.py [--configs tiny large] [--no-meta] [--no-history]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HISTORY = BENCH / "history.jsonl"
COMPARISONS = [("ours-s1", "trl"), ("ours-s1", "trl-liger"), ("ours-s1", "trl-full"), ("ours-s2", "povid"),
               ("ours-s1-cached", "trl")]
PEER_NAMES = {"trl": "TRL DPOTrainer", "trl-liger": "TRL + Liger fused DPO", "trl-full": "TRL-style full logits",
              "povid": "POVID-style"}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "bench", "halluremedy", "kernels")
    return commit + ("+dirty" if dirty else "")


def cpu_device(threads: int) -> str:
    model = "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"cpu: {model}, {threads} thread{'s' if threads != 1 else ''}"


def run_suite(configs: Sequence[str], meta: bool, out: Path) -> None:
    selected = [f"(test_step and {c})" for c in configs] + (["test_llava15"] if meta else [])
    if not selected:
        raise SystemExit("nothing to run")
    cmd = [sys.executable, "-m", "pytest", str(BENCH), "--benchmark-only", "-q", "-p", "no:cacheprovider",
           "-W", "ignore", f"--benchmark-json={out}", "-k", f"bench_step and ({' or '.join(selected)})"]
    print("$", " ".join(cmd[2:]), file=sys.stderr)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    summary = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line]
    print(summary[-1] if summary else "", file=sys.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"benchmark suite failed (exit {proc.returncode})")


def load_rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    rows = []
    for bench in data["benchmarks"]:
        extra = dict(bench["extra_info"])
        extra["benchmark"] = bench["name"]
        rows.append(extra)
    return rows


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if value is None else f"{value / scale:.{digits}g}"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or not b else f"{a / b:.2f}"


def ratio_table(rows: Sequence[dict]) -> list[str]:
    out = ["| config | ours / peer | time / pair | peak memory | FLOPs / pair |", "| --- | --- | ---: | ---: | ---: |"]
    by = {(r["config"], r["provider"]): r for r in rows}
    for config in dict.fromkeys(r["config"] for r in rows):
        for ours, peer in COMPARISONS:
            if (config, peer) not in by or (config, ours) not in by:
                continue
            o, p = by[(config, ours)], by[(config, peer)]
            out.append(f"| {config} | {ours} / {peer} ({PEER_NAMES[peer]}) | "
                       f"{_ratio(o.get('time_per_pair_ms'), p.get('time_per_pair_ms'))} | "
                       f"{_ratio(o.get('peak_mem_mb'), p.get('peak_mem_mb'))} | "
                       f"{_ratio(o.get('flops_per_pair'), p.get('flops_per_pair'))} |")
    return out


def absolute_table(rows: Sequence[dict]) -> list[str]:
    out = ["| config | provider | pairs/step | time / pair (ms) | peak memory / step (MiB) | GFLOP / pair | loss |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        loss = r.get("loss")
        out.append(f"| {r['config']} | {r['provider']} | {r['pairs']} | {_fmt(r.get('time_per_pair_ms'))} | "
                   f"{_fmt(r.get('peak_mem_mb'))} | {_fmt(r.get('flops_per_pair'), 1e9)} | "
                   f"{'–' if loss is None else f'{loss:.6f}'} |")
    return out


def gpu_table(history: Path) -> list[str]:
    if not history.exists():
        return []
    newest: dict[tuple, dict] = {}
    for line in history.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("kind") == "gpu-throughput":
                newest[(r["device"], r["config"], r["provider"])] = r
    if not newest:
        return []
    out = ["| device | config | provider | commit | samples/s | tokens/s | MFU | time / pair (ms) | peak memory (MiB) |",
           "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (device, config, provider), r in sorted(newest.items()):
        out.append(f"| {device} | {config} | {provider} | {r['commit']} | {_fmt(r.get('samples_per_s'))} | "
                   f"{_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('mfu'))} | {_fmt(r.get('time_per_pair_ms'))} | "
                   f"{_fmt(r.get('peak_mem_mb'))} |")
    return out


def history_lines(rows: Sequence[dict], commit: str, date: str) -> list[str]:
    keep = ("kind", "config", "provider", "stage", "pairs", "time_per_pair_ms", "median_ms_per_pair", "peak_mem_mb",
            "flops_per_pair", "loss", "config_description", "description")
    lines = []
    for r in rows:
        device = "meta (counted, no device)" if r.get("kind") == "meta" else cpu_device(r.get("threads", 1))
        record = {"date": date, "commit": commit, "device": device, **{k: r[k] for k in keep if k in r}}
        lines.append(json.dumps(record))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=["tiny", "large"], help="CPU configs (bench/baselines)")
    parser.add_argument("--no-meta", action="store_true", help="skip the LLaVA-1.5-7B meta-device counts")
    parser.add_argument("--no-history", action="store_true", help="do not append to bench/history.jsonl")
    parser.add_argument("--json", help="keep pytest-benchmark's JSON here")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") is None:
        print("note: OMP_NUM_THREADS is unset; set it to 1 on a shared machine", file=sys.stderr)

    start = time.time()
    out = Path(args.json) if args.json else Path(tempfile.mkdtemp(prefix="halluremedy-bench-")) / "bench.json"
    run_suite(args.configs, not args.no_meta, out)
    rows = load_rows(out)
    commit, date = git_commit(), datetime.now(timezone.utc).isoformat(timespec="seconds")

    print(f"## Preference step, ours / peer per pair (commit {commit}, {date})\n")
    print("\n".join(ratio_table(rows)))
    print("\n## Absolute\n")
    print("\n".join(absolute_table(rows)))
    descriptions = dict.fromkeys(r["config_description"] for r in rows)
    print("\nConfigs:\n" + "\n".join(f"- {d}" for d in descriptions))
    threads = {r.get("threads") for r in rows if r.get("kind") == "cpu-step"}
    if threads:
        print(f"- CPU device: {cpu_device(min(threads))}")
    print("- time: best of the rounds / pairs; memory: peak RSS growth of one step (CPU), peak live tensor bytes"
          " (meta); FLOPs: FlopCounterMode forward + backward; losses equal ours within 1e-4 (checked)")

    if not args.no_history:
        with HISTORY.open("a") as f:
            for line in history_lines(rows, commit, date):
                f.write(line + "\n")
        print(f"\nappended {len(rows)} rows to {HISTORY.relative_to(ROOT)}")
    gpu = gpu_table(HISTORY)
    if gpu:
        print("\n## GPU throughput (bench/gpu_throughput.py, newest per device)\n")
        print("\n".join(gpu))
    print(f"\n({time.time() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
