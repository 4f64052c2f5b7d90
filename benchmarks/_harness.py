"""``python -m benchmarks``: run the scenarios, write JSON, Markdown and PNG charts.

Reproduce the README table with ``python -m benchmarks`` (about 5 minutes on 2 cores); check the
harness in seconds with ``python -m benchmarks --smoke``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from . import (
    _env,
    _report,
    _targets,
    s1_throughput,
    s2_latency,
    s3_fanout,
    s4_join_scale,
    s5_reconnect,
    s6_groups,
    s7_postgres,
    s8_server_fanout,
)
from ._common import JS_MODULES, ROOT, Context, Result, unavailable

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

#: Scenario number -> (name, module or None for "not available yet", title, reason).
SCENARIOS: Final[dict[int, tuple[str, ModuleType | None, str, str]]] = {
    1: (s1_throughput.NAME, s1_throughput, s1_throughput.TITLE, ""),
    2: (s2_latency.NAME, s2_latency, s2_latency.TITLE, ""),
    3: (s3_fanout.NAME, s3_fanout, s3_fanout.TITLE, ""),
    4: (s4_join_scale.NAME, s4_join_scale, s4_join_scale.TITLE, ""),
    5: (s5_reconnect.NAME, s5_reconnect, s5_reconnect.TITLE, ""),
    6: (s6_groups.NAME, s6_groups, s6_groups.TITLE, ""),
    7: (s7_postgres.NAME, s7_postgres, s7_postgres.TITLE, ""),
    8: (s8_server_fanout.NAME, s8_server_fanout, s8_server_fanout.TITLE, ""),
}
DEFAULT_OUT: Final = ROOT / "benchmarks" / "results"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    names = [name for name, *_ in SCENARIOS.values()]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trio_realtime benchmarks, side by side with the bare readers and the official "
        "clients (loopback only).",
    )
    parser.add_argument("--scenario", action="append", metavar="NAME", default=None,
                        help=f"run only these (repeatable; names or numbers): {', '.join(names)}")
    parser.add_argument("--smoke", action="store_true",
                        help="every scenario for a fraction of a second with tiny N: "
                        "proves the harness works")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per run (default 1.0; smoke 0.15)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds discarded before measuring (default 0.25; smoke 0.05)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; smoke 1)")
    parser.add_argument("--sizes", default=None, help="payload sizes in bytes (default 100,10000; smoke 100)")
    parser.add_argument("--vsn", default="1.0.0,2.0.0", help="protocol versions for throughput")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default {DEFAULT_OUT.relative_to(ROOT)}; smoke: …/smoke)")
    parser.add_argument("--candidate", type=Path, default=None, metavar="DIR",
                        help="also measure the trio_realtime package found in DIR (a scratch copy "
                        "with a proposed change) in scenarios 1 and 2")
    parser.add_argument("--no-charts", action="store_true", help="do not draw PNG charts")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    selected: list[int] = []
    for item in args.scenario or []:
        for token in item.split(","):
            token = token.strip()
            match = [n for n, (name, *_) in SCENARIOS.items() if token in (name, str(n))]
            if not match:
                parser.error(f"unknown scenario {token!r}; choose from {', '.join(names)} or 1-8")
            selected.extend(m for m in match if m not in selected)
    args.selected = sorted(selected) if selected else sorted(SCENARIOS)
    if args.candidate is not None and not (args.candidate / "trio_realtime" / "__init__.py").is_file():
        parser.error(f"--candidate {args.candidate}: no trio_realtime package there")
    return args


def _context(args: argparse.Namespace) -> Context:
    smoke = args.smoke
    sizes = args.sizes or ("100" if smoke else "100,10000")
    node = shutil.which("node")
    js_modules = JS_MODULES if (JS_MODULES / "node_modules" / "@supabase" / "realtime-js").is_dir() else None
    out = args.out or (DEFAULT_OUT / "smoke" if smoke else DEFAULT_OUT)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    return Context(
        smoke=smoke,
        duration=args.duration if args.duration is not None else (0.15 if smoke else 1.0),
        warmup=args.warmup if args.warmup is not None else (0.05 if smoke else 0.25),
        reps=args.reps if args.reps is not None else (1 if smoke else 3),
        sizes=[int(s) for s in sizes.split(",") if s],
        vsns=[v for v in args.vsn.split(",") if v],
        out=out,
        node=node if js_modules is not None else None,
        js_modules=js_modules if node is not None else None,
        candidate=args.candidate.resolve() if args.candidate else None,
        log=log,
    )


async def _run_all(ctx: Context, selected: list[int]) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for number in selected:
        name, module, title, reason = SCENARIOS[number]
        if module is None:
            results[name] = {**unavailable(reason), "number": number, "title": title}
            ctx.log(f"[{number}] {title}: not available yet ({reason})")
            continue
        ctx.log(f"[{number}] {title}")
        t0 = time.perf_counter()
        try:
            result: Result = await module.run(ctx)
        except Exception as exc:  # a broken scenario must not lose the others' results
            logging.getLogger("benchmarks").exception("scenario %s failed", name)
            result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        result["number"] = number
        result["title"] = title
        result["seconds"] = time.perf_counter() - t0
        results[name] = result
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    ctx = _context(args)
    # The reference server logs a development-mode warning on every start; keep the output clean.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    header = _env.header(ctx.node, ctx.js_modules, argv)
    header["settings"] = {
        "smoke": ctx.smoke, "duration": ctx.duration, "warmup": ctx.warmup, "reps": ctx.reps,
        "sizes": ctx.sizes, "vsns": ctx.vsns, "candidate": str(ctx.candidate) if ctx.candidate else None,
        "scenarios": [SCENARIOS[n][0] for n in args.selected],
    }
    ctx.log(f"benchmarks: {header['machine']['cpu']} x {header['machine']['cores']}, "
            f"Python {header['versions']['python']}, commit {(header['git']['commit'] or '?')[:10]}"
            f"{' (smoke)' if ctx.smoke else ''}")
    t0 = time.perf_counter()
    results = trio.run(_run_all, ctx, args.selected)
    header["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
    header["machine"]["loadavg_end"] = _env.loadavg()
    target_rows = _targets.evaluate(results)
    run: dict[str, Any] = {"header": header, "targets": target_rows, "scenarios": results}

    ctx.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path = ctx.out / f"run-{stamp}.json"
    json_path.write_text(json.dumps(run, indent=1, default=str) + "\n")
    charts: list[str] = []
    chart_note = "charts not drawn (--no-charts)"
    if not args.no_charts:
        charts, chart_note = _report.charts(run, ctx.out)
    md = _report.markdown(run, json_path.name, charts, chart_note)
    md_path = ctx.out / "latest.md"
    md_path.write_text(md)
    print(f"\nwrote {json_path}\nwrote {md_path}")
    print(chart_note if not charts else "wrote " + ", ".join(str(ctx.out / c) for c in charts))
    print()
    print("\n".join(_targets.markdown(target_rows)))
    failed = [name for name, r in results.items() if r.get("status") == "error"]
    if failed:
        print(f"\nscenarios that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
