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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    """A running gunicorn: where it listens and its master's pid."""

    base_url: str
    host: str
    port: int
    pid: int

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: processes whose parent is the master (Linux /proc)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces: fields after the closing parenthesis.
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                pids.append(int(entry.name))
        return sorted(pids)


@contextmanager
def serve(
    app_spec: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    ready_path: str = "/",
    timeout: float = 30.0,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """Start ``gunicorn app_spec`` on a free loopback port; yield the ``Server``; stop it.

    ``env`` is added to the environment (the app factory reads its config from there).
    The server is ready when ``ready_path`` answers any HTTP status and every worker is up.
    """
    from gunicorn.config import KNOWN_SETTINGS

    # Recent gunicorn opens a control socket at one fixed path; parallel servers would share it.
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        extra_args = ["--no-control-socket", *extra_args]
    port = free_port()
    bind = f"127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "gunicorn", "--bind", bind, "--workers", str(workers),
        "--graceful-timeout", "5", "--timeout", "60", *extra_args, app_spec,
    ]  # fmt: skip
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log
    )
    server = Server(f"http://{bind}", "127.0.0.1", port, proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early with code {proc.returncode}")
            try:
                urllib.request.urlopen(server.base_url + ready_path, timeout=1).close()  # noqa: S310
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start in time") from None
                time.sleep(0.1)
        while len(server.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
    """``serve()`` yielding just the base URL, e.g. ``http://127.0.0.1:PORT``."""
    with serve(
        app_spec,
        env=env,
        workers=workers,
        ready_path=ready_path,
        timeout=timeout,
        log_path=log_path,
    ) as server:
        yield server.base_url
