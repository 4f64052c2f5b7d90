"""The targets of issue 6, evaluated on one run's results: PASS/MISS with the margin.

The margin is the headroom relative to the goal: ``+20 %`` means 20 % better than needed,
``-40 %`` means 40 % short of (or over) it. A target whose inputs were not measured in this
run says so; nothing is ever estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import s1_throughput, s2_latency
from ._common import Result, fmt_ms, fmt_rate

if TYPE_CHECKING:
    from collections.abc import Callable

Measured = tuple[float, str] | str  # (value, how it was computed) or why it is missing


@dataclass(frozen=True)
class Target:
    name: str
    goal: float
    direction: Literal[">=", "<="]
    unit: str
    measure: Callable[[dict[str, Result]], Measured]

    def evaluate(self, results: dict[str, Result]) -> dict[str, Any]:
        measured = self.measure(results)
        row: dict[str, Any] = {
            "target": self.name,
            "goal": f"{self.direction} {self.goal:g}{self.unit}",
            "unit": self.unit,
        }
        if isinstance(measured, str):
            return {**row, "result": "not measured", "detail": measured}
        value, detail = measured
        if self.direction == ">=":
            margin = value / self.goal - 1
        else:
            margin = 1 - value / self.goal if self.goal else float("-inf")
        return {
            **row,
            "value": value,
            "detail": detail,
            "result": "PASS" if margin >= 0 else "MISS",
            "margin": margin,
        }


def _tp(results: dict[str, Result]) -> Result | None:
    r = results.get(s1_throughput.NAME)
    return r if r is not None and r.get("status") == "ok" else None


def _tp_ratio(ours: str, base: str, vsn: str, size: int) -> Callable[[dict[str, Result]], Measured]:
    def measure(results: dict[str, Result]) -> Measured:
        tp = _tp(results)
        if tp is None:
            return "throughput scenario not run"
        a = s1_throughput.rate(tp, ours, vsn, size)
        b = s1_throughput.rate(tp, base, vsn, size)
        if a is None or b is None:
            missing = ours if a is None else base
            return f"{missing} not measured at vsn {vsn}, {size} B"
        return a / b, f"{fmt_rate(a)} / {fmt_rate(b)} msgs/s"

    return measure


def _rtt_ratio(which: str, base: str, rate: str) -> Callable[[dict[str, Result]], Measured]:
    def measure(results: dict[str, Result]) -> Measured:
        lat = results.get(s2_latency.NAME)
        if lat is None or lat.get("status") != "ok":
            return "latency scenario not run"
        a = s2_latency.percentile(lat, "trio_realtime", "1.0.0", rate, which)
        b = s2_latency.percentile(lat, base, "1.0.0", rate, which)
        if a is None or b is None:
            return f"{'trio_realtime' if a is None else base} not measured at {rate}/s"
        return a / b, f"{fmt_ms(a)} / {fmt_ms(b)}"

    return measure


def _join_rows(results: dict[str, Result]) -> list[Result]:
    r = results.get("join_scale")
    if r is None or r.get("status") != "ok":
        return []
    return [row for row in r["rows"] if row.get("status") == "ok"]


def _memory(n: int) -> Callable[[dict[str, Result]], Measured]:
    def measure(results: dict[str, Result]) -> Measured:
        for row in _join_rows(results):
            if row["channels"] == n:
                per = row["tracemalloc_per_channel"]
                with_task = row["tracemalloc_with_task_per_channel"] / 1024
                rss = row["rss_per_channel"] / 1024
                return per / 1024, (f"tracemalloc, library only; {with_task:.2f} KiB with the holding "
                                    f"task; RSS {rss:.2f} KiB")
        return f"join scale with {n:,} channels not run"

    return measure


def _join_time(n: int) -> Callable[[dict[str, Result]], Measured]:
    def measure(results: dict[str, Result]) -> Measured:
        for row in _join_rows(results):
            if row["channels"] == n:
                return row["join_seconds"], f"{n:,} concurrent joins on one connection"
        return f"join scale with {n:,} channels not run"

    return measure


def targets() -> list[Target]:
    out = [
        Target("throughput ≥ 1.5x official `realtime` (PyPI), 100 B, vsn 1", 1.5, ">=", "x",
               _tp_ratio("trio_realtime", "realtime_py", "1.0.0", 100)),
        Target("throughput ≥ 2.5x official `realtime` (PyPI), 10 KB, vsn 1", 2.5, ">=", "x",
               _tp_ratio("trio_realtime", "realtime_py", "1.0.0", 10_000)),
    ]
    for vsn in ("1.0.0", "2.0.0"):
        for size in (100, 10_000):
            label = "100 B" if size == 100 else "10 KB"
            out.append(Target(f"throughput ≥ 1.0x bare trio-websocket, {label}, vsn {vsn[0]}", 1.0, ">=", "x",
                              _tp_ratio("trio_realtime", "trio_websocket", vsn, size)))
    out.append(Target("batch receive ≥ 0.35x bare `websockets`, 100 B, vsn 1", 0.35, ">=", "x",
                      _tp_ratio("trio_realtime_batch", "websockets", "1.0.0", 100)))
    for rate in ("100", "1000"):
        out.append(Target(f"p50 round trip ≤ 1.3x bare trio-websocket at {rate}/s", 1.3, "<=", "x",
                          _rtt_ratio("p50_ms", "trio_websocket", rate)))
        out.append(Target(f"p99 round trip ≤ official `realtime` (PyPI) at {rate}/s", 1.0, "<=", "x",
                          _rtt_ratio("p99_ms", "realtime_py", rate)))
    for n in (1000, 10_000):
        out.append(Target(f"memory ≤ 4 KiB per joined channel ({n:,} channels)", 4.0, "<=", " KiB",
                          _memory(n)))
    out.append(Target("1,000 joins on one connection ≤ 2 s", 2.0, "<=", " s", _join_time(1000)))
    return out


def evaluate(results: dict[str, Result]) -> list[dict[str, Any]]:
    return [t.evaluate(results) for t in targets()]


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | goal | measured | result | margin |", "|---|---:|---:|---|---:|"]
    for r in rows:
        if r["result"] == "not measured":
            lines.append(f"| {r['target']} | {r['goal']} | — | not measured: {r['detail']} | |")
            continue
        value = f"{r['value']:.2f}{r['unit']}"
        lines.append(f"| {r['target']} | {r['goal']} | {value} ({r['detail']}) | "
                     f"**{r['result']}** | {r['margin']:+.0%} |")
    return lines
