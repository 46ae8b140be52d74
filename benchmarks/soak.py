"""Soak: keep gunicorn busy for a while; report throughput over time, errors and worker memory.

    python -m benchmarks.soak --duration 600            # 10 minutes against the extension
    python -m benchmarks.soak --duration 60 --app handwritten --interval 5

Starts gunicorn (sync workers) on loopback with the chosen app from ``benchmarks.apps`` and a
fresh delivery log, then runs client processes that sign and send unique deliveries as fast as
the server answers. Every interval it prints requests/s, errors, latency percentiles and the
resident memory (``VmRSS`` of /proc/PID/status) of every worker; at the end, a summary with
each worker's memory growth after warm-up and, for the extension, the delivery log's row count
against the requests answered 200. Not run in CI.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import apps
from .common import DeliveryFactory, base_body, gunicorn, markdown_table, rss_kib

SPECS = {
    "extension": ("benchmarks.apps:create_extension()", apps.EXTENSION_PATH),
    "handwritten": ("benchmarks.apps:create_handwritten()", apps.HANDWRITTEN_PATH),
    "floor": ("benchmarks.apps:create_floor()", apps.FLOOR_PATH),
}
#: Latency histogram: log-spaced buckets from 50 µs to about 60 s, merged across clients.
BUCKET_BASE = 50e-6
BUCKET_RATIO = 1.05
BUCKETS = 300


def bucket(seconds: float) -> int:
    if seconds <= BUCKET_BASE:
        return 0
    return min(BUCKETS - 1, int(math.log(seconds / BUCKET_BASE, BUCKET_RATIO)) + 1)


def bucket_upper(index: int) -> float:
    return float(BUCKET_BASE * BUCKET_RATIO**index)


def quantile(histogram: Sequence[int], q: float) -> float:
    total = sum(histogram)
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_upper(index)
    return bucket_upper(len(histogram) - 1)


def _client(
    index: int,
    host: str,
    port: int,
    path: str,
    interval: float,
    duration: float,
    barrier: Any,
    start: Any,
    counters: Any,
    batches: Any,
) -> None:
    """Send unique signed deliveries until the end; report a histogram per interval."""
    factory = DeliveryFactory(base_body())
    conn = http.client.HTTPConnection(host, port, timeout=30)
    barrier.wait(timeout=300)
    while start.value == 0:
        time.sleep(0.001)
    started = start.value
    stop_at = started + duration
    slot, ok, errors = 0, 0, 0
    histogram = [0] * BUCKETS
    kinds: dict[str, int] = {}
    clock = time.perf_counter
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        current = int((now - started) // interval)
        if current != slot:
            batches.put((slot, ok, errors, histogram))
            slot, ok, errors, histogram = current, 0, 0, [0] * BUCKETS
        delivery = factory.make("jwt")
        kind = ""
        began = clock()
        try:
            conn.request("POST", path, body=delivery.raw, headers=dict(delivery.headers))
            response = conn.getresponse()
            answer = response.read()
            success = response.status == 200
            if not success:
                kind = f"HTTP {response.status} {_error_code(answer)}"
        except (OSError, http.client.HTTPException) as exc:
            success = False
            kind = f"{type(exc).__name__} (no answer)"
            conn.close()
        histogram[bucket(clock() - began)] += 1
        if success:
            ok += 1
            counters[2 * index] += 1
        else:
            errors += 1
            counters[2 * index + 1] += 1
            kinds[kind] = kinds.get(kind, 0) + 1
    batches.put((slot, ok, errors, histogram))
    batches.put(kinds)
    batches.put(None)
    conn.close()


def _error_code(answer: bytes) -> str:
    """The ``error`` of a JSON answer, else what the body is: errors are counted by kind."""
    try:
        return str(json.loads(answer)["error"])
    except (ValueError, KeyError, TypeError):
        return "(not JSON)" if answer else "(empty body)"


@dataclass
class Interval:
    seconds: float
    ok: int = 0
    errors: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    rss: dict[int, int | None] = field(default_factory=dict)


def soak(
    app: str, duration: float, interval: float, workers: int, clients: int, warmup: float
) -> str:
    spec, path = SPECS[app]
    workdir = Path(tempfile.mkdtemp(prefix="devhealth-soak-"))
    env = {
        "BENCH_HANDWRITTEN_DB": str(workdir / "handwritten.sqlite3"),
        "BENCH_INSTANCE": str(workdir / "extension"),
    }
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", 2 * clients, lock=False)
    barrier = ctx.Barrier(clients + 1)
    start = ctx.Value("d", 0.0, lock=False)
    batches = ctx.Queue()
    slots = max(1, math.ceil(duration / interval))
    intervals = [Interval(min(interval, duration - i * interval)) for i in range(slots)]
    kinds: dict[str, int] = {}
    log_path = workdir / "gunicorn.log"
    try:
        with gunicorn(spec, env=env, workers=workers, log_path=log_path) as server:
            first_workers = server.worker_pids()
            procs = [
                ctx.Process(
                    target=_client,
                    args=(
                        *(i, server.host, server.port, path, interval, duration),
                        *(barrier, start, counters, batches),
                    ),
                )
                for i in range(clients)
            ]
            for proc in procs:
                proc.start()
            barrier.wait(timeout=300)
            start.value = began = time.monotonic()
            print(f"soak: {app}, {workers} workers, {clients} clients, {duration:g} s")
            print(
                " t (s) | req/s | errors | "
                + " | ".join(f"worker {n} RSS MiB" for n in range(1, len(first_workers) + 1))
            )
            last = [0, 0]
            for index in range(slots):
                time.sleep(
                    max(0.0, began + min((index + 1) * interval, duration) - time.monotonic())
                )
                ok = sum(counters[0::2])
                errors = sum(counters[1::2])
                rss = {pid: rss_kib(pid) for pid in server.worker_pids()}
                intervals[index].rss = rss
                rate = (ok + errors - sum(last)) / intervals[index].seconds
                rss_text = " | ".join(
                    f"{(v or 0) / 1024:.1f}" for v in (rss.get(p) for p in first_workers)
                )
                print(
                    f"{min((index + 1) * interval, duration):6.0f} | {rate:5.0f} | "
                    f"{errors - last[1]:6d} | {rss_text}",
                    flush=True,
                )
                last = [ok, errors]
            done = 0
            while done < clients:
                item = batches.get(timeout=120)
                if item is None:
                    done += 1
                    continue
                if isinstance(item, dict):
                    for kind, count in item.items():
                        kinds[kind] = kinds.get(kind, 0) + count
                    continue
                slot, ok_n, err_n, histogram = item
                target = intervals[min(slot, slots - 1)]
                target.ok += ok_n
                target.errors += err_n
                target.histogram = [a + b for a, b in zip(target.histogram, histogram, strict=True)]
            for proc in procs:
                proc.join(timeout=30)
            final_workers = server.worker_pids()
        rows_logged = _logged(app, workdir)
        server_lines = _server_warnings(log_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _report(
        app, duration, interval, workers, clients, warmup, intervals, first_workers,
        final_workers, rows_logged, kinds, server_lines,
    )  # fmt: skip


#: Server log lines worth reporting: gunicorn's own errors and the extension's warnings, which
#: name outcomes and exception classes only (never a payload, a token or a secret).
_NOTEWORTHY = ("[ERROR]", "[CRITICAL]", "webhook ", "Traceback")


def _server_warnings(log_path: Path, limit: int = 20) -> list[str]:
    """The first ``limit`` noteworthy lines of the server's log, with how many there were."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = [line for line in lines if any(mark in line for mark in _NOTEWORTHY)]
    shown = found[:limit]
    if len(found) > limit:
        shown.append(f"... and {len(found) - limit} more")
    return shown


def _logged(app: str, workdir: Path) -> int | None:
    """Processed rows in the app's delivery log (None for the floor, which keeps none)."""
    if app == "extension":
        path, query = (
            workdir / "extension" / "devhealth_webhooks.sqlite3",
            "SELECT count(*) FROM devhealth_webhook_deliveries WHERE state = 'processed'",
        )
    elif app == "handwritten":
        path = workdir / "handwritten.sqlite3"
        query = "SELECT count(*) FROM deliveries WHERE state = 'processed'"
    else:
        return None
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def _report(
    app: str,
    duration: float,
    interval: float,
    workers: int,
    clients: int,
    warmup: float,
    intervals: list[Interval],
    first_workers: list[int],
    final_workers: list[int],
    rows_logged: int | None,
    kinds: dict[str, int],
    server_lines: list[str],
) -> str:
    rows = []
    elapsed = 0.0
    for item in intervals:
        elapsed += item.seconds
        rows.append(
            (
                f"{elapsed:.0f}",
                f"{(item.ok + item.errors) / item.seconds:,.0f}",
                str(item.errors),
                f"{quantile(item.histogram, 0.5) * 1e3:.1f}",
                f"{quantile(item.histogram, 0.99) * 1e3:.1f}",
                *(f"{(item.rss.get(p) or 0) / 1024:.1f}" for p in first_workers),
            )
        )
    header = ("t (s)", "req/s", "errors", "p50 ms", "p99 ms")
    header += tuple(f"worker {i + 1} RSS MiB" for i in range(len(first_workers)))
    total_ok = sum(i.ok for i in intervals)
    total_errors = sum(i.errors for i in intervals)
    # Memory growth: from the first interval ending after the warm-up to the last one.
    base_index = min(len(intervals) - 1, max(0, math.ceil(warmup / interval) - 1))
    growth = []
    for number, pid in enumerate(first_workers, 1):
        before = intervals[base_index].rss.get(pid)
        after = intervals[-1].rss.get(pid)
        if before is None or after is None:
            growth.append(f"worker {number}: gone (restarted)")
        else:
            growth.append(
                f"worker {number}: {before / 1024:.1f} → {after / 1024:.1f} MiB "
                f"({after - before:+,d} KiB)"
            )
    per_10k = ""
    if total_ok:
        deltas = [
            (intervals[-1].rss.get(p) or 0) - (intervals[base_index].rss.get(p) or 0)
            for p in first_workers
        ]
        after_warmup = sum(i.ok + i.errors for i in intervals[base_index + 1 :]) or 1
        per_10k = f"; {sum(deltas) / after_warmup * 1e4:+.1f} KiB per 10,000 requests after warm-up"
    lines = [
        f"## Soak: {app}",
        "",
        f"{duration:g} s, gunicorn {workers} sync workers, {clients} client processes, "
        f"{interval:g} s intervals.",
        "",
        markdown_table(header, rows),
        "",
        f"- requests: {total_ok + total_errors:,} ({total_ok:,} answered 200), errors: "
        f"{total_errors}, mean {(total_ok + total_errors) / duration:,.0f} req/s",
        f"- worker memory after {warmup:g} s warm-up: " + "; ".join(growth) + per_10k,
        f"- workers restarted: {'no' if first_workers == final_workers else 'yes'}",
    ]
    if rows_logged is not None:
        lines.append(f"- processed rows in the delivery log: {rows_logged:,} (200s: {total_ok:,})")
    if kinds:
        lines.append(
            "- errors by kind: "
            + "; ".join(f"{kind}: {count:,}" for kind, count in sorted(kinds.items()))
        )
    if server_lines:
        lines += ["- the server logged:", "", "```", *server_lines, "```"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--app", choices=sorted(SPECS), default="extension")
    parser.add_argument("--interval", type=float, default=10.0, help="report every N seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=10.0, help="memory baseline after N s")
    parser.add_argument("--output", default=None, help="also write the report (Markdown) here")
    args = parser.parse_args(argv)
    report = soak(args.app, args.duration, args.interval, args.workers, args.clients, args.warmup)
    print()
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
