"""Command line: run the benchmarks, print the tables, write the JSON results."""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import BENCHMARKS
from .harness import Context, machine_meta, print_report, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--out", default=str(Path(__file__).parent / "results.json"), help="JSON results path")
    p.add_argument("--repo-dir", default=None, help="scratch directory (default: a fresh temp dir, removed after)")
    p.add_argument("--cli", choices=("auto", "on", "off"), default="auto",
                   help="restic/borg baselines: auto = on at full size, off with --quick")
    p.add_argument("--big-bytes", type=int, default=None,
                   help="size of the big state in bytes (default 1 GiB, 64 MiB with --quick)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    scratch = Path(args.repo_dir) if args.repo_dir else Path(tempfile.mkdtemp(prefix="casstore-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = Context(quick=args.quick, scratch=scratch,
                  log=lambda m: print(m, file=sys.stderr, flush=True),
                  extra={"cli": args.cli, "big_bytes": args.big_bytes})
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for name in names:
            ctx.log(f"[{name}] running")
            t = time.perf_counter()
            try:
                module = importlib.import_module(f".bench_{name}", __package__)
                rows += module.run(ctx)
            except Exception as exc:  # one broken benchmark must not hide the others
                rows.append({"kind": "result", "benchmark": name, "tool": "-",
                             "status": f"error: {type(exc).__name__}: {exc}"[:200],
                             "traceback": traceback.format_exc()[-3000:]})
            ctx.log(f"[{name}] done in {time.perf_counter() - t:.1f}s")
    finally:
        if not args.repo_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    meta = machine_meta() | {"quick": args.quick, "benchmarks": names, "elapsed_s": time.perf_counter() - t0,
                             "argv": sys.argv[1:]}
    print_report(rows)
    write_json(args.out, rows, meta)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
