"""What every scenario shares: the run context, worker subprocesses, statistics helpers."""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: The repository root (the parent of ``benchmarks/``).
ROOT: Final = Path(__file__).resolve().parent.parent
#: Where the realtime-js interop peer's ``node_modules`` lives (``bash scripts/bootstrap``).
JS_MODULES: Final = ROOT / "tests" / "interop" / "js"
#: Every worker gets this hash seed, so dict/set ordering is the same in every run.
HASH_SEED: Final = "0"
#: Slack added to a worker's expected running time before it is killed.
STARTUP_SLACK: Final = 30.0

Result = dict[str, Any]


@dataclass
class Context:
    """Settings of one harness run (all from the command line)."""

    smoke: bool
    duration: float
    warmup: float
    reps: int
    sizes: list[int]
    vsns: list[str]
    out: Path
    node: str | None
    js_modules: Path | None
    candidate: Path | None
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)

    # -- workers ---------------------------------------------------------------------------

    def python_cmd(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONHASHSEED"] = HASH_SEED
        return env

    def worker_cwd(self, *, candidate: bool = False) -> Path:
        """The worker's working directory: it is ``sys.path[0]`` under ``-m``, so a candidate
        copy of ``trio_realtime`` there shadows the working tree's."""
        if candidate:
            assert self.candidate is not None
            return self.candidate
        return ROOT

    def node_cmd(self, *args: str) -> list[str] | None:
        if self.node is None or self.js_modules is None:
            return None
        script = str(ROOT / "benchmarks" / "realtime_js_reader.mjs")
        return [self.node, script, "--modules", str(self.js_modules), *args]


async def run_worker(
    ctx: Context, cmd: Sequence[str], *, kill_after: float, candidate: bool = False
) -> Result:
    """Run one worker to completion and return its (last) JSON line.

    Never raises for a failed worker: the result is ``{"status": "error", "reason": ...}``.
    A worker still running after ``kill_after`` seconds is killed.
    """
    try:
        with trio.fail_after(kill_after):
            proc = await trio.run_process(
                list(cmd),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=ctx.worker_cwd(candidate=candidate),
                env=ctx.worker_env(),
            )
    except trio.TooSlowError:
        return {"status": "error", "reason": f"worker killed after {kill_after:g} s"}
    except OSError as exc:
        return {"status": "error", "reason": f"could not start worker: {exc}"}
    return parse_worker_output(proc.stdout, proc.stderr, proc.returncode)


def parse_worker_output(stdout: bytes, stderr: bytes, returncode: int | None) -> Result:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                result: Result = json.loads(line)
            except ValueError:
                continue
            return result
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    return {
        "status": "error",
        "reason": f"worker exited with {returncode} and no result: " + " | ".join(tail),
    }


class LineProcess:
    """A worker we talk to line by line (JSON lines on stdout), for interactive scenarios."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buffer = b""
        self.stderr = b""

    @classmethod
    async def start(cls, ctx: Context, cmd: Sequence[str]) -> LineProcess:
        import subprocess

        proc = await trio.lowlevel.open_process(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ctx.worker_cwd(),
            env=ctx.worker_env(),
        )
        return cls(proc)

    async def read_json(self) -> Result:
        """The next JSON line; raises EOFError (with stderr's tail) if the worker exits."""
        assert self.proc.stdout is not None
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if sep:
                self._buffer = rest
                text = line.decode("utf-8", "replace").strip()
                if text.startswith("{"):
                    result: Result = json.loads(text)
                    return result
                continue
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                await self._collect_stderr()
                tail = " | ".join(self.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
                raise EOFError(f"worker exited without a result: {tail}")
            self._buffer += data

    async def _collect_stderr(self) -> None:
        if self.proc.stderr is None:
            return
        with trio.move_on_after(2):
            while True:
                data = await self.proc.stderr.receive_some(65536)
                if not data:
                    break
                self.stderr += data

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        with trio.move_on_after(5):
            await self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                await stream.aclose()


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} µs"
    return f"{value:.2f} ms"


def status_cell(result: Result) -> str:
    """A table cell for a result that has no number: unavailable, n/a or error (with why)."""
    status = result.get("status", "error")
    reason = result.get("reason", "")
    return f"{status}: {reason}" if reason else str(status)


def unavailable(reason: str) -> Result:
    return {"status": "not available yet", "reason": reason}
