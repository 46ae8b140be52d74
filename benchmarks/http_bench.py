"""Requests/s and latency over HTTP: gunicorn (2 sync workers) on loopback, one run per app.

    python -m benchmarks.http_bench [--duration 10] [--clients 4] [--rounds 2]

Load comes from separate client processes (``multiprocessing``, spawn), each sending unique
deliveries signed before the clock starts, one request at a time on an ``http.client``
connection (gunicorn's sync workers close it after each response, so it reconnects; every app
pays the same). The apps run in alternating order over ``--rounds``; requests/s is the mean
over rounds, latency percentiles are over every request. Any answer other than 200/204, and any
connection error, counts as an error.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import apps
from .common import DeliveryFactory, Server, Summary, base_body, gunicorn, markdown_table

#: key -> (gunicorn app spec, path, header kind, label)
APPS: dict[str, tuple[str, str, str, str]] = {
    "floor": ("benchmarks.apps:create_floor()", apps.FLOOR_PATH, "jwt", "floor"),
    "peer": ("benchmarks.apps:create_peer()", apps.PEER_PATH, "peer", "github-webhook"),
    "handwritten": (
        "benchmarks.apps:create_handwritten()",
        apps.HANDWRITTEN_PATH,
        "jwt",
        "hand-written (SQLite WAL)",
    ),
    "extension": (
        "benchmarks.apps:create_extension()",
        apps.EXTENSION_PATH,
        "jwt",
        "this extension, default SQLite log",
    ),
}
MAX_RATE = 6000  # requests/s per run that pre-signed deliveries are sized for


@dataclass
class HttpResult:
    key: str
    requests: int = 0
    errors: int = 0
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return sum(self.rates) / len(self.rates) if self.rates else 0.0


def _client(
    host: str,
    port: int,
    path: str,
    kind: str,
    count: int,
    duration: float,
    barrier: Any,
    results: Any,
) -> None:
    """One load process: pre-sign ``count`` deliveries, then send them until ``duration``."""
    factory = DeliveryFactory(base_body())
    deliveries = factory.many(kind, count)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    latencies: list[float] = []
    errors = 0
    barrier.wait(timeout=300)
    start = time.monotonic()
    deadline = start + duration
    clock = time.perf_counter
    for delivery in deliveries:
        if time.monotonic() >= deadline:
            break
        began = clock()
        try:
            conn.request("POST", path, body=delivery.raw, headers=dict(delivery.headers))
            response = conn.getresponse()
            response.read()
            ok = response.status in (200, 204)
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
        latencies.append(clock() - began)
        if not ok:
            errors += 1
    end = time.monotonic()
    conn.close()
    results.put((latencies, errors, start, end))


def load(
    server: Server, path: str, kind: str, duration: float, clients: int
) -> tuple[list[float], int, float]:
    """Run ``clients`` processes against ``server``; (latencies, errors, elapsed seconds)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    count = int(duration * MAX_RATE / clients) + 50
    procs = [
        ctx.Process(
            target=_client,
            args=(server.host, server.port, path, kind, count, duration, barrier, results),
        )
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=300)
        outputs = [results.get(timeout=duration + 300) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    latencies = [x for out in outputs for x in out[0]]
    errors = sum(out[1] for out in outputs)
    elapsed = max(out[3] for out in outputs) - min(out[2] for out in outputs)
    return latencies, errors, elapsed


def run(
    keys: Sequence[str],
    *,
    duration: float,
    rounds: int,
    clients: int,
    workers: int,
    workdir: Path,
    log: Callable[..., None] = print,
) -> dict[str, HttpResult]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        "BENCH_HANDWRITTEN_DB": str(workdir / "handwritten.sqlite3"),
        "BENCH_INSTANCE": str(workdir / "extension"),
    }
    results = {key: HttpResult(key) for key in keys}
    for index in range(rounds):
        order = list(keys) if index % 2 == 0 else list(reversed(keys))
        for key in order:
            spec, path, kind, label = APPS[key]
            with gunicorn(spec, env=env, workers=workers) as server:
                load(server, path, kind, 1.0, clients)  # warm-up: imports, connections, caches
                latencies, errors, elapsed = load(server, path, kind, duration, clients)
            result = results[key]
            result.requests += len(latencies)
            result.errors += errors
            result.rates.append(len(latencies) / elapsed)
            result.latencies += latencies
            log(
                f"http round {index + 1} {label}: {len(latencies) / elapsed:,.0f} req/s, "
                f"{errors} errors"
            )
    return results


def table(results: dict[str, HttpResult]) -> str:
    hand = results["handwritten"].rps if "handwritten" in results else None
    rows = []
    for key, result in results.items():
        s = Summary.of(result.latencies)
        rows.append(
            (
                APPS[key][3],
                f"{result.rps:,.0f}",
                f"{s.median * 1e3:.2f}",
                f"{s.p99 * 1e3:.2f}",
                str(result.errors),
                f"{result.requests:,}",
                f"{result.rps / hand:.0%}" if hand else "-",
            )
        )
    header = ("app", "requests/s", "p50 ms", "p99 ms", "errors", "requests", "of hand-written")
    return markdown_table(header, rows)


def http_section(
    *,
    duration: float,
    rounds: int,
    workdir: Path,
    clients: int = 4,
    workers: int = 2,
    log: Callable[..., None] = print,
) -> tuple[str, dict[str, float]]:
    """The Markdown section for results.md and requests/s per app."""
    results = run(
        list(APPS),
        duration=duration,
        rounds=rounds,
        clients=clients,
        workers=workers,
        workdir=workdir,
        log=log,
    )
    text = table(results)
    log(text)
    section = "\n".join(
        [
            "## Over HTTP",
            "",
            f"gunicorn, {workers} sync workers, on 127.0.0.1; {clients} client processes on the "
            f"same machine sending unique pre-signed 1 KB deliveries one at a time, "
            f"{duration:g} s per run after a 1 s warm-up, {rounds} round(s) in alternating "
            "order. Clients and server share the CPUs.",
            "",
            text,
        ]
    )
    return section, {key: r.rps for key, r in results.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--apps", default=",".join(APPS), help="comma-separated: " + ",".join(APPS))
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="devhealth-http-"))
    try:
        results = run(
            [key for key in args.apps.split(",") if key],
            duration=args.duration,
            rounds=args.rounds,
            clients=args.clients,
            workers=args.workers,
            workdir=workdir,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
