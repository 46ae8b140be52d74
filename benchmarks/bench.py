"""Per-delivery cost of this extension against the floor, a hand-written equivalent and a peer.

Run from the repository root (``pip install -e '.[bench]'`` first)::

    python -m benchmarks.bench            # full run: about 6-10 minutes, 1M-row logs included
    python -m benchmarks.bench --quick    # about a minute: smaller samples, logs up to 100k rows

Set ``DEVHEALTH_WEBHOOKS_TEST_DATABASE_URL`` to add the PostgreSQL row (the benchmark creates
and uses its own database, ``devhealth_bench``, next to the one the URL names).

Every app is called directly as a WSGI callable with pre-built environs and pre-signed bodies,
so signing and request building are not timed. Each delivery is unique (fresh ``event_id`` and
token) and must be answered 200/204: a rejection would make a variant look fast, so any other
status aborts the run. Variants are measured in many short interleaved rounds, and each ratio is
the median over rounds of the two variants' medians in that round: the disk's latency drifts over
seconds, and pairing by round keeps that drift out of the ratios. Results: a Markdown table
printed and written to ``benchmarks/results.md``, and ``benchmarks/scaling.png``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flask_devhealth_webhooks import get_state
from flask_devhealth_webhooks.store import deliveries

from . import apps
from .common import (
    DeliveryFactory,
    Summary,
    WSGIApp,
    base_body,
    call,
    environ,
    fmt_us,
    grown_body,
    machine_description,
    markdown_table,
    percentile,
)

HERE = Path(__file__).resolve().parent
PG_ENV = "DEVHEALTH_WEBHOOKS_TEST_DATABASE_URL"
BENCH_DATABASE = "devhealth_bench"
BODY_SIZES = (1_000, 10_000, 100_000, 1_000_000)
NOTES = """## What is compared

- **floor**: `jwt.decode` (HS256) + `json.loads` + one function call in a bare Flask route.
- **hand-written**: the floor + `load_envelope` (this project's schemas) + an
  `INSERT ... ON CONFLICT DO NOTHING` of the delivery id, event type and raw body before the
  call and an `UPDATE` after it, each committed, on one persistent `sqlite3` connection (WAL,
  default `synchronous`). It has no lease, attempts, handler progress, secondary indexes,
  signals or logging, and a handler that raises leaves its row `processing`, so the resend is
  answered as a duplicate and the event is lost: a lower bound on the work, not the same
  guarantees.
- **this extension**: the blueprint with its defaults: verification, schema load, a claim row
  committed before any handler runs and a finish update after (the same two durable commits),
  signals, the per-delivery log line when INFO is enabled.
- Every figure is for accepted deliveries (200/204): the run stops on any other answer.
- With a durable log, two fsync'd commits cost more than the whole floor on this disk, so the
  floor ratio of a durable configuration is dominated by the disk, not by Python. Run with
  `--workdir /dev/shm/...` to see CPU cost alone (not durable: for analysis only).
- Both durable variants make the same two fdatasyncs per delivery and write the same WAL
  pages: the row and the delivery id's unique index, then the row. The extension's only other
  index is partial (failed and dead-lettered deliveries), which a delivery that succeeds never
  touches (under strace, 8.2 against 8.1 WAL writes per delivery; 14.9 with the full indexes
  on state and first-received time it had before).
- From 10 KB up the extension costs more than the hand-written app because it checks more:
  a body with more than 64 brackets is walked to refuse nesting deeper than 64 levels, and
  every body is scanned for unpaired surrogate escapes and numbers too large for a float. The
  hand-written app has none of these (`json.loads` raises `RecursionError`, a 500, at about
  1,000 levels). On a 100 KB body `parse_json` takes 979 µs against 589 µs for `json.loads`
  (timeit). The platform's own bodies (0.4-2.3 KB, at most 24 brackets) never reach the walk.
"""
LOG_SIZES = (1_000, 100_000, 1_000_000)


@dataclass
class Variant:
    """One app under test: how to call it and which headers it expects."""

    key: str
    label: str
    app: WSGIApp
    path: str
    kind: str = "jwt"
    times: list[float] = field(default_factory=list)
    #: The median of each round, in round order (``paired`` compares variants round by round).
    rounds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    warmup: int
    rounds: int
    per_round: int


def _check(variant: Variant, status: int) -> None:
    if status not in (200, 204):
        raise SystemExit(
            f"{variant.label} answered HTTP {status}; the benchmark only times accepted "
            "deliveries. Fix the app or the body before trusting any figure."
        )


def measure(variants: Sequence[Variant], factory: DeliveryFactory, plan: Plan) -> None:
    """Warm every variant up, then time them in interleaved rounds of unique deliveries."""
    for variant in variants:
        variant.times.clear()
        variant.rounds.clear()
        for _ in range(plan.warmup):
            _check(variant, call(variant.app, environ(variant.path, factory.make(variant.kind))))
    for index in range(plan.rounds):
        shift = index % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            envs = [
                environ(variant.path, factory.make(variant.kind)) for _ in range(plan.per_round)
            ]
            gc.collect()
            app, times = variant.app, []
            clock = time.perf_counter
            for env in envs:
                started = clock()
                status = call(app, env)
                times.append(clock() - started)
                if status not in (200, 204):
                    _check(variant, status)
            variant.times += times
            variant.rounds.append(Summary.of(times).median)


@dataclass(frozen=True)
class Paired:
    """One variant's cost relative to another's, round by round (see ``measure``)."""

    median: float
    p25: float
    p75: float

    @classmethod
    def of(cls, variant: Variant, reference: Variant) -> Paired:
        ratios = sorted(v / r for v, r in zip(variant.rounds, reference.rounds, strict=True))
        return cls(percentile(ratios, 0.5), percentile(ratios, 0.25), percentile(ratios, 0.75))

    def __str__(self) -> str:
        return f"{self.median:.2f}x"


# -- the apps -----------------------------------------------------------------------------------


def postgres_bench_url() -> tuple[str, str] | None:
    """A URL for our own database next to the one the environment names, and its version."""
    env_url = os.environ.get(PG_ENV)
    if not env_url:
        return None
    url = sa.engine.make_url(env_url)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": BENCH_DATABASE},
            ).first()
            if exists is None:
                conn.execute(sa.text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
            version = str(conn.execute(sa.text("SHOW server_version")).scalar_one())
    finally:
        admin.dispose()
    bench_url = url.set(database=BENCH_DATABASE)
    engine = sa.create_engine(bench_url)
    with engine.begin() as conn:
        deliveries.drop(conn, checkfirst=True)
    engine.dispose()
    return bench_url.render_as_string(hide_password=False), version


def build_variants(workdir: Path, postgres: str | None) -> list[Variant]:
    variants = [
        Variant("floor", "floor (jwt.decode + json.loads + call)", apps.create_floor(), "/hook"),
        Variant(
            "handwritten",
            "hand-written (floor + load_envelope + SQLite WAL insert/update)",
            apps.create_handwritten(str(workdir / "handwritten.sqlite3")),
            apps.HANDWRITTEN_PATH,
        ),
        Variant(
            "handwritten_again",
            "hand-written again (same app, own file: this run's noise)",
            apps.create_handwritten(str(workdir / "handwritten_again.sqlite3")),
            apps.HANDWRITTEN_PATH,
        ),
        Variant("peer", "github-webhook (HMAC-SHA1)", apps.create_peer(), apps.PEER_PATH, "peer"),
        Variant(
            "memory",
            "this extension, `sqlite://` (in memory)",
            apps.create_extension("sqlite://", str(workdir / "memory")),
            apps.EXTENSION_PATH,
        ),
        Variant(
            "default",
            "this extension, default (SQLite file, WAL)",
            apps.create_extension(None, str(workdir / "default")),
            apps.EXTENSION_PATH,
        ),
    ]
    if postgres is not None:
        variants.append(
            Variant(
                "postgres",
                "this extension, PostgreSQL",
                apps.create_extension(postgres, str(workdir / "postgres")),
                apps.EXTENSION_PATH,
            )
        )
    return variants


# -- pre-filling the logs -----------------------------------------------------------------------


def _rows(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def prefill(path: str, table: str, target: int, payload: bytes) -> None:
    """Grow a delivery log to ``target`` finished rows with one bulk insert per chunk."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        have = _rows(conn, table)
        stamp = "2026-01-01 00:00:00.000000"
        chunk = 50_000
        while have < target:
            n = min(chunk, target - have)
            ids = range(have, have + n)
            if table == "deliveries":
                conn.executemany(
                    "INSERT INTO deliveries (delivery_id, event_type, state, received_at,"
                    " processed_at, payload) VALUES (?, ?, 'processed', ?, ?, ?)",
                    ((f"prefill-{i:09d}", "bench", stamp, stamp, payload) for i in ids),
                )
            else:
                conn.executemany(
                    f"INSERT INTO {table} (delivery_id, event_name, event_type, object_type,"  # noqa: S608
                    " object_id, status, state, attempts, first_received_at, last_received_at,"
                    " processed_at, succeeded_handlers, payload, payload_encrypted)"
                    " VALUES (?, 'benefit_verification.updated',"
                    " 'benefit_verification.status_change', 'benefit_verification', ?,"
                    " 'completed', 'processed', 1, ?, ?, ?, '[]', ?, 0)",
                    ((f"prefill-{i:09d}", f"bv_{i}", stamp, stamp, stamp, payload) for i in ids),
                )
            conn.commit()
            have += n
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


# -- the report ---------------------------------------------------------------------------------


def main_table(
    variants: Sequence[Variant],
) -> tuple[str, dict[str, Summary], dict[str, tuple[Paired, Paired]]]:
    """The in-process table, the variants' summaries and their (x floor, x hand) ratios."""
    summaries = {v.key: Summary.of(v.times) for v in variants}
    by_key = {v.key: v for v in variants}
    ratios = {
        v.key: (Paired.of(v, by_key["floor"]), Paired.of(v, by_key["handwritten"]))
        for v in variants
    }
    rows = []
    for v in variants:
        s = summaries[v.key]
        to_floor, to_hand = ratios[v.key]
        rows.append(
            (
                v.label,
                fmt_us(s.median),
                f"{fmt_us(s.p10)} - {fmt_us(s.p90)}",
                str(to_floor),
                f"{to_hand} ({to_hand.p25:.2f} - {to_hand.p75:.2f})",
                str(s.n),
            )
        )
    header = (
        "variant",
        "median µs",
        "p10 - p90 µs",
        "x floor",
        "x hand-written (p25 - p75 over rounds)",
        "n",
    )
    return markdown_table(header, rows), summaries, ratios


def _errorbars(axes: Any, points: list[tuple[int, Summary]], **style: Any) -> None:
    """One line of medians with p10-p90 bars, x the first element of each point."""
    axes.errorbar(
        [x for x, _ in points],
        [s.median * 1e6 for _, s in points],
        yerr=[
            [(s.median - s.p10) * 1e6 for _, s in points],
            [(s.p90 - s.median) * 1e6 for _, s in points],
        ],
        marker="o",
        capsize=3,
        **style,
    )


def plot(
    body_results: dict[str, list[tuple[int, Summary]]],
    log_results: dict[str, list[tuple[int, Summary]]],
    labels: dict[str, str],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"floor": "tab:blue", "handwritten": "tab:orange", "default": "tab:green"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, points in body_results.items():
        _errorbars(left, points, color=colors.get(key), label=labels[key])
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("body size (bytes)")
    left.set_ylabel("µs per delivery (median, p10-p90)")
    left.set_title("Cost against body size")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    for key, points in log_results.items():
        _errorbars(right, points, color=colors.get(key), label=labels[key])
    right.set_xscale("log")
    right.set_ylim(bottom=0)
    right.set_xlabel("rows already in the delivery log")
    right.set_ylabel("µs per delivery (median, p10-p90)")
    right.set_title("Cost against log size (1 KB body)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def commit_cost(workdir: Path, n: int = 2000) -> Summary:
    """One durable commit on this disk: a 1 KB row inserted into a WAL SQLite file, committed
    with SQLite's default ``synchronous=FULL`` (the write plus one fdatasync of the WAL)."""
    path = workdir / "commit-cost.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.commit()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            conn.execute("INSERT INTO t (body) VALUES (?)", (b"x" * 1000,))
            conn.commit()
            times.append(time.perf_counter() - started)
    finally:
        conn.close()
    return Summary.of(times)


def targets(
    summaries: dict[str, Summary],
    ratios: dict[str, tuple[Paired, Paired]],
    http: dict[str, float] | None,
    commit: Summary | None = None,
) -> str:
    floor = summaries["floor"].median
    to_floor, to_hand = ratios["default"]
    lines = [
        f"- default configuration ≤ 1.0x hand-written: {to_hand.median:.3f}x "
        f"(p25 - p75 over rounds {to_hand.p25:.2f} - {to_hand.p75:.2f}) — "
        + ("met" if to_hand.median <= 1.0 else "**not met**"),
        f"- default configuration ≤ 2.5x floor: {to_floor.median:.2f}x — "
        + ("met" if to_floor.median <= 2.5 else "**not met**"),
    ]
    if "handwritten_again" in ratios:
        again = ratios["handwritten_again"][1]
        lines.append(
            f"- the same hand-written app timed again in this run (own file) comes out at "
            f"{again.median:.3f}x itself (p25 - p75 {again.p25:.2f} - {again.p75:.2f}): the "
            "distance from 1.0 a ratio needs before it is a win or a loss, not noise"
        )
    if http and "extension" in http and "handwritten" in http:
        share = http["extension"] / http["handwritten"]
        lines.append(
            f"- over HTTP ≥ 90% of hand-written's requests/s: {share:.0%} — "
            + ("met" if share >= 0.9 else "**not met**")
        )
    if commit is not None:
        durable = 1 + 2 * commit.median / floor  # the floor's own work and two commits
        budget = (2.5 - durable) * floor
        lines += [
            "",
            f"One durable commit on this disk (1 KB row, WAL, `synchronous=FULL`) costs "
            f"{fmt_us(commit.median)} µs (p10 - p90 {fmt_us(commit.p10)} - {fmt_us(commit.p90)}), "
            f"{commit.median / floor:.2f}x the floor. The floor's own work plus the two commits "
            f"of a log that is durable before the handlers run and when the sender is answered "
            f"come to {durable:.2f}x the floor, "
            + (
                "so on this disk no durable configuration can meet the 2.5x-floor target."
                if budget <= 0
                else f"which leaves {fmt_us(budget)} µs for schema validation, bookkeeping and "
                "signals; the extension's in-memory variant spends "
                f"{fmt_us(summaries['memory'].median - floor)} µs on them."
            ),
        ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> str:
    quick: bool = args.quick
    plan = Plan(warmup=100, rounds=15, per_round=30) if quick else Plan(300, 50, 100)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="devhealth-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = print if not args.silent else (lambda *_a, **_k: None)
    postgres = None if args.no_postgres else postgres_bench_url()
    out: list[str] = []
    started = datetime.now(timezone.utc)

    variants = build_variants(workdir, postgres[0] if postgres else None)
    factory = DeliveryFactory(base_body())
    log(f"in-process: {len(variants)} variants, body {factory.size} bytes, {plan}")
    measure(variants, factory, plan)
    expected = plan.warmup + plan.rounds * plan.per_round
    for kind in ("floor", "handwritten", "peer"):
        if apps.CALLS[kind] < expected:
            raise SystemExit(f"the {kind} handler ran {apps.CALLS[kind]} times, not {expected}")
    table, summaries, ratios = main_table(variants)
    log(table)
    out += [
        "## Per delivery, in process",
        "",
        f"A {factory.size}-byte benefit verification body, a unique delivery each time, "
        f"{plan.rounds} interleaved rounds of {plan.per_round} after {plan.warmup} warm-up calls "
        "per variant. Each app is called as a WSGI callable (no server, no client). Ratios are "
        "medians over rounds of the two variants' medians in one round (pooled medians drift "
        "with the disk's latency, which changes over seconds).",
        "",
        table,
        "",
    ]

    body_results: dict[str, list[tuple[int, Summary]]] = {}
    log_results: dict[str, list[tuple[int, Summary]]] = {}
    labels = {v.key: v.label for v in variants}
    if not args.no_scaling:
        scaled = [v for v in variants if v.key in ("floor", "handwritten", "default")]
        by_key = {v.key: v for v in scaled}
        rows = []
        for size in BODY_SIZES:
            body_factory = DeliveryFactory(grown_body(size))
            n = max(30, min(plan.rounds * plan.per_round, int(5e8 / body_factory.size / 50)))
            size_rounds = max(3, min(plan.rounds, n // 25))
            size_plan = Plan(max(5, plan.warmup * 1000 // size), size_rounds, n // size_rounds)
            log(f"body size {body_factory.size} bytes: {size_plan}")
            measure(scaled, body_factory, size_plan)
            cells = [f"{body_factory.size:,}"]
            for v in scaled:
                s = Summary.of(v.times)
                body_results.setdefault(v.key, []).append((body_factory.size, s))
                cells.append(f"{fmt_us(s.median)} ({fmt_us(s.p10)} - {fmt_us(s.p90)})")
            cells.append(str(Paired.of(by_key["default"], by_key["handwritten"])))
            cells.append(str(Paired.of(by_key["default"], by_key["floor"])))
            rows.append(cells)
        body_table = markdown_table(
            ("body bytes", *(f"{v.label} µs" for v in scaled), "default x hand", "default x floor"),
            rows,
        )
        log(body_table)
        out += [
            "## Against body size",
            "",
            "The 1 KB body with its `drugs` list grown (every item schema-checked). Median µs "
            "per delivery, p10 - p90 in brackets.",
            "",
            body_table,
            "",
        ]

        log_variants = [
            Variant(
                "handwritten",
                labels["handwritten"],
                apps.create_handwritten(str(workdir / "log-handwritten.sqlite3")),
                apps.HANDWRITTEN_PATH,
            ),
            Variant(
                "default",
                labels["default"],
                apps.create_extension(None, str(workdir / "log-default")),
                apps.EXTENSION_PATH,
            ),
        ]
        ext_app: Any = log_variants[1].app
        get_state(ext_app).store.create_table()
        ext_db = str(workdir / "log-default" / "devhealth_webhooks.sqlite3")
        hw_db = str(workdir / "log-handwritten.sqlite3")
        payload = factory.make("jwt").raw
        sizes = [n for n in LOG_SIZES if n <= args.max_log_rows]
        log_rounds = max(3, plan.rounds // 3)
        log_plan = Plan(plan.warmup, log_rounds, plan.per_round)
        rows = []
        for target in sizes:
            t0 = time.monotonic()
            prefill(hw_db, "deliveries", target, payload)
            prefill(ext_db, deliveries.name, target, payload)
            log(f"log of {target:,} rows (filled in {time.monotonic() - t0:.0f} s): {log_plan}")
            measure(log_variants, factory, log_plan)
            cells = [f"{target:,}"]
            for v in log_variants:
                s = Summary.of(v.times)
                log_results.setdefault(v.key, []).append((target, s))
                cells.append(f"{fmt_us(s.median)} ({fmt_us(s.p10)} - {fmt_us(s.p90)})")
            cells.append(str(Paired.of(log_variants[1], log_variants[0])))
            rows.append(cells)
        log_table = markdown_table(
            ("rows already stored", *(f"{v.label} µs" for v in log_variants), "default x hand"),
            rows,
        )
        log(log_table)
        out += [
            "## Against log size",
            "",
            "The 1 KB body; the delivery log pre-filled with finished deliveries (1 KB payload "
            "each) by a bulk insert before timing.",
            "",
            log_table,
            "",
        ]
        plot_path = Path(args.plot)
        plot(body_results, log_results, labels, plot_path)
        out += [f"![cost against body size and log size]({plot_path.name})", ""]
        log(f"plot written to {plot_path}")

    http_rps: dict[str, float] | None = None
    if not args.no_http:
        from .http_bench import http_section

        section, http_rps = http_section(
            duration=5.0 if quick else args.http_duration,
            rounds=1 if quick else 3,
            workdir=workdir / "http",
            log=log,
        )
        out += [section, ""]

    commit = commit_cost(workdir)
    log(f"one durable commit: {fmt_us(commit.median)} µs")
    out += ["## Targets (issue 4)", "", targets(summaries, ratios, http_rps, commit), "", NOTES]
    machine = machine_description(postgres[1] if postgres else None)
    header = [
        "# Benchmark results",
        "",
        f"Generated by `python -m benchmarks.bench{' --quick' if quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC, in {(datetime.now(timezone.utc) - started).seconds // 60}"
        " min.",
        "",
        markdown_table(("machine", ""), machine),
        "",
    ]
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(header + out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples, logs up to 100k")
    parser.add_argument("--no-http", action="store_true", help="skip the gunicorn runs")
    parser.add_argument("--no-scaling", action="store_true", help="skip body and log sizes")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--max-log-rows", type=int, default=None)
    parser.add_argument("--http-duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--output", default=str(HERE / "results.md"))
    parser.add_argument("--plot", default=str(HERE / "scaling.png"))
    parser.add_argument("--workdir", default=None, help="keep the logs here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="do not delete the work directory")
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args(argv)
    if args.max_log_rows is None:
        args.max_log_rows = 100_000 if args.quick else max(LOG_SIZES)
    report = run(args)
    Path(args.output).write_text(report + "\n")
    print(report)
    print(f"\nwritten to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
