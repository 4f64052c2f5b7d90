"""``python -m trio_realtime serve`` / ``python -m trio_realtime.server``."""

from __future__ import annotations

import argparse
import functools
import json
import re
import signal
import socket
import subprocess
import sys

import pytest
import trio
from _server_helpers import SECRET, attempt_upgrade, make_token

from trio_realtime.server._cli import add_serve_parser, main, run_serve


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["serve", *argv])


def test_parser_defaults() -> None:
    args = _parse()
    assert (args.host, args.port, args.jwt_secret, args.vsn_default) == ("127.0.0.1", 4000, None, "1.0.0")
    assert args.func is run_serve
    args = _parse("--host", "0.0.0.0", "--port", "0", "--jwt-secret", "s", "--vsn-default", "2.0.0")
    assert (args.host, args.port, args.jwt_secret, args.vsn_default) == ("0.0.0.0", 0, "s", "2.0.0")


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--vsn-default", "3.0.0"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["serve", "--idle-timeout", "-1"]) == 2
    assert "ServerConfig.idle_timeout" in capsys.readouterr().err


async def test_cli_prints_the_url_and_serves() -> None:
    with trio.fail_after(10):
        argv = [sys.executable, "-m", "trio_realtime.server", "--port", "0", "--jwt-secret", SECRET,
                "--log-level", "WARNING"]
        async with trio.open_nursery() as nursery:
            run = functools.partial(trio.run_process, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    check=False)
            proc: trio.Process = await nursery.start(run)
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, "the server exited before printing its URL"
                line += chunk
            m = re.fullmatch(r"trio_realtime server listening on ws://127\.0\.0\.1:(\d+)/realtime/v1 "
                             r"\(vsn 1\.0\.0 and 2\.0\.0\)\n", line.decode())
            assert m is not None, line
            port = int(m.group(1))
            refusal = await attempt_upgrade(port, "/realtime/v1/websocket?apikey=nope")
            assert refusal is not None
            assert refusal.status == 401
            assert json.loads(refusal.body) == {"error": "The token provided is not a valid JWT"}
            assert await attempt_upgrade(port, f"/socket/websocket?apikey={make_token()}") is None
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--log-level", "ERROR"]) == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
