"""The trio_realtime benchmark harness: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Every scenario runs on loopback only, with fixed seeds and bounded durations, and measures our
client side by side, in the same run, with the bare trio-websocket and ``websockets`` readers
and the official clients (PyPI ``realtime``, and ``@supabase/realtime-js`` under Node where it
is installed). Each reader runs in its own subprocess (``python -m benchmarks._reader``), so
asyncio, Trio and Node never share a process or the harness's core.
"""
