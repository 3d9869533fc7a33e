"""Formatting for humans (sizes, times, tables) and for scripts (JSON of reports)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from typing import Any, Iterable

import click


def human_bytes(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def plain(obj: Any) -> Any:
    """A JSON-ready view of a report object: to_dict(), a dataclass, a mapping, or its attributes."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return str(obj)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(plain(obj), indent=2, sort_keys=False, default=str))


def table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = "  ".join("{:<%d}" % w for w in widths)
    click.echo(line.format(*headers).rstrip())
    for r in rows:
        click.echo(line.format(*[str(x) for x in r]).rstrip())


def key_values(pairs: Iterable[tuple[str, Any]]) -> None:
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    for k, v in pairs:
        click.echo(f"{k + ':':<{width + 1}} {v}")
