"""Run a real gunicorn server on loopback for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def gunicorn(
    app_spec: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    ready_path: str = "/",
    timeout: float = 30.0,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Start ``gunicorn app_spec`` on a free loopback port; yield its base URL; stop it.

    ``env`` is added to the environment (the app factory reads its config from there).
    The server is ready when ``ready_path`` answers any HTTP status.
    """
    port = free_port()
    bind = f"127.0.0.1:{port}"
    from gunicorn.config import KNOWN_SETTINGS

    # Recent gunicorn opens a control socket at one fixed path; parallel servers would share it.
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        extra = ["--no-control-socket"]
    else:  # pragma: no cover - older gunicorn has no control socket
        extra = []
    cmd = [
        sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
        "--graceful-timeout", "5", "--timeout", "60", *extra, app_spec,
    ]  # fmt: skip
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log
    )
    base = f"http://{bind}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early with code {proc.returncode}")
            try:
                urllib.request.urlopen(base + ready_path, timeout=1).close()  # noqa: S310
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start in time") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
