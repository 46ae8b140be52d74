"""Concurrent duplicates under a real gunicorn with 4 worker processes (issue 3, must show).

20 distinct events are each sent 10 times at once. The claim is the only thing standing
between the copies, so every handler side effect must happen exactly once per event.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from apps.e2e_support import (
    APP_SPEC,
    expected_side_effects,
    log_rows,
    post,
    scratch_database,
    server_env,
    side_effect_counts,
    side_effect_pids,
)
from serving import gunicorn

from flask_devhealth_webhooks.testing import encode_body, sample_payload

pytestmark = pytest.mark.gunicorn

EVENTS = 20
COPIES = 10
NAMES = (
    "benefit_verification.updated",
    "prior_authorization.updated",
    "prior_authorization.message",
    "prior_authorization.provider_outreach_change",
)


@pytest.fixture(params=["sqlite", "postgres"])
def e2e_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL database of this test's own (dropped afterwards)."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


def test_concurrent_copies_run_each_handler_once(e2e_database_url: str, tmp_path: Path) -> None:
    payloads = [sample_payload(NAMES[i % len(NAMES)]) for i in range(EVENTS)]
    names = {p["event_id"]: NAMES[i % len(NAMES)] for i, p in enumerate(payloads)}
    assert len(names) == EVENTS
    # Copies of one event are queued next to each other, so the 4 workers race on each one.
    sends = [encode_body(p) for p in payloads for _ in range(COPIES)]
    env = server_env(e2e_database_url, DEVHEALTH_E2E_HANDLER_DELAY="0.2")

    with gunicorn(APP_SPEC, env=env, workers=4, log_path=tmp_path / "gunicorn.log") as base:
        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(lambda raw: post(base, raw), sends))

        statuses = Counter(status for status, _ in answers)
        assert set(statuses) <= {200, 409}, statuses
        assert statuses[409] > 0, "no copy ever met another in progress: the race was not run"
        assert sum(statuses.values()) == EVENTS * COPIES
        for status, body in answers:
            if status == 409:
                assert body["error"] == "in_progress"
        ran = Counter(b["delivery_id"] for _, b in answers if b.get("status") == "processed")
        assert ran == dict.fromkeys(names, 1), "each event must be run by exactly one copy"

        # The sender retries what it was told to retry later: all are finished by now.
        retried = [raw for raw, (status, _) in zip(sends, answers, strict=True) if status == 409]
        for raw in retried:
            status, body = post(base, raw)
            assert (status, body["status"]) == (200, "duplicate")
            assert body["delivery_id"] == json.loads(raw)["event_id"]

    rows = log_rows(e2e_database_url)
    assert {d: (r.state, r.attempts) for d, r in rows.items()} == dict.fromkeys(
        names, ("processed", 1)
    )
    assert side_effect_counts(e2e_database_url) == {
        (delivery_id, handler): 1
        for delivery_id, name in names.items()
        for handler in expected_side_effects(name)
    }
    assert len(side_effect_pids(e2e_database_url)) > 1, "the handlers all ran in one worker"
