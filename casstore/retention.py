"""Retention policies: which snapshots forget() keeps, per lineage (as restic's forget)."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(value: str | float | int | _dt.timedelta) -> float:
    """Seconds from a timedelta, a number of seconds, or text like '7d', '12h', '1w2d'."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[smhdwy])+\s*", value or "")
    if not parts:
        raise ValueError(f"duration {value!r} is not like '7d', '12h' or '1w2d'")
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([smhdwy])", value))


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_within: float | None = None   # seconds before the lineage's newest snapshot
    keep_daily: int | None = None

    def empty(self) -> bool:
        return self.keep_last is None and self.keep_within is None and self.keep_daily is None


@dataclass
class Decision:
    keep: list = field(default_factory=list)
    forget: list = field(default_factory=list)


def apply(policy: Policy, lineage: list) -> Decision:
    """Split one lineage's snapshots (objects with .timestamp, oldest first) into keep and forget."""
    newest_first = sorted(lineage, key=lambda s: (s.timestamp, s.index), reverse=True)
    kept: set[int] = set()
    if policy.keep_last:
        kept.update(range(min(policy.keep_last, len(newest_first))))
    if policy.keep_within is not None and newest_first:
        cutoff = newest_first[0].timestamp - policy.keep_within
        kept.update(i for i, s in enumerate(newest_first) if s.timestamp >= cutoff)
    if policy.keep_daily:
        days: list[_dt.date] = []
        for i, s in enumerate(newest_first):
            day = _dt.datetime.fromtimestamp(s.timestamp, tz=_dt.timezone.utc).date()
            if day not in days:
                if len(days) == policy.keep_daily:
                    break
                days.append(day)
                kept.add(i)
    out = Decision()
    for i, s in enumerate(newest_first):
        (out.keep if i in kept else out.forget).append(s)
    return out
