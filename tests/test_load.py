"""10,000 unique signed deliveries through gunicorn with 4 workers (issue 4, load test).

The delivery log is the default one: a SQLite file in the app's instance folder. Every
delivery must be answered 200 and logged ``processed`` exactly once, with its handler run
exactly once. Slow, so it runs only with DEVHEALTH_WEBHOOKS_RUN_LOAD=1 (`.ci/run` sets it).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from apps.e2e_support import (
    APP_SPEC,
    expected_side_effects,
    log_rows,
    post,
    server_env,
    side_effect_counts,
)
from serving import gunicorn

from flask_devhealth_webhooks.testing import encode_body, sample_payload

pytestmark = [
    pytest.mark.load,
    pytest.mark.gunicorn,
    pytest.mark.skipif(
        os.environ.get("DEVHEALTH_WEBHOOKS_RUN_LOAD") != "1",
        reason="the load test is slow; set DEVHEALTH_WEBHOOKS_RUN_LOAD=1 to run it "
        "(`.ci/run` sets it)",
    ),
]

TOTAL = 10_000
SENDERS = 16
#: The whole run must finish within this many seconds, or the test fails (it took ~1 min).
BUDGET = 600.0
NAMES = (
    "benefit_verification.updated",
    "prior_authorization.updated",
    "prior_authorization.message",
    "prior_authorization.provider_outreach_change",
)


def test_ten_thousand_deliveries_on_the_default_sqlite_log(tmp_path: Path) -> None:
    payloads = [sample_payload(NAMES[i % len(NAMES)]) for i in range(TOTAL)]
    names = {p["event_id"]: NAMES[i % len(NAMES)] for i, p in enumerate(payloads)}
    assert len(names) == TOTAL
    bodies = [encode_body(p) for p in payloads]
    instance = tmp_path / "instance"
    env = server_env(None, DEVHEALTH_E2E_INSTANCE_PATH=str(instance))

    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + BUDGET

    def send(base: str, chunk: list[bytes]) -> None:
        seen: Counter[str] = Counter()
        for raw in chunk:
            if time.monotonic() > deadline:
                seen["not sent: over the time budget"] += 1
                continue
            try:
                status, body = post(base, raw)
            except OSError as exc:
                seen[type(exc).__name__] += 1
                continue
            seen[f"{status} {body.get('status') or body.get('error')}"] += 1
        with lock:
            outcomes.update(seen)

    started = time.monotonic()
    with gunicorn(APP_SPEC, env=env, workers=4, log_path=tmp_path / "gunicorn.log") as base:
        threads = [
            threading.Thread(target=send, args=(base, bodies[i::SENDERS])) for i in range(SENDERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    elapsed = time.monotonic() - started

    assert outcomes == {"200 processed": TOTAL}, f"{dict(outcomes)} after {elapsed:.0f} s"
    log = instance / "devhealth_webhooks.sqlite3"
    assert log.is_file(), "the default delivery log is not in the instance folder"
    url = f"sqlite:///{log}"
    rows = log_rows(url)
    assert set(rows) == set(names)
    assert Counter((r.state, r.attempts) for r in rows.values()) == {("processed", 1): TOTAL}
    assert side_effect_counts(url) == {
        (delivery_id, handler): 1
        for delivery_id, name in names.items()
        for handler in expected_side_effects(name)
    }
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        engine.dispose()
