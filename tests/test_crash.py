"""A worker killed mid-delivery under a real gunicorn (issue 3, must show).

The delivery's first handler succeeds, then the ``"*"`` handler kills its worker with
``os._exit(1)``. The sender sees the connection drop; the row stays ``processing`` under its
lease; once the lease has run out a resend (or ``flask devhealth replay``) takes it over and
runs only the handler that had not succeeded. Nothing is lost and nothing runs twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps.e2e_support import (
    APP_IMPORT,
    APP_SPEC,
    Row,
    leaks_in,
    log_rows,
    post,
    scratch_database,
    server_env,
    side_effect_counts,
    wait_until,
)
from serving import ROOT, gunicorn

from flask_devhealth_webhooks.store import utcnow
from flask_devhealth_webhooks.testing import encode_body, sample_payload

pytestmark = pytest.mark.gunicorn

LEASE = 2.0
BV = "benefit_verification.updated"


@pytest.fixture(params=["sqlite", "postgres"])
def e2e_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL database of this test's own (dropped afterwards)."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


def lease_left(row: Row) -> float:
    """Seconds until the row's lease runs out (negative once it has)."""
    return float((row.lease_expires_at - utcnow()).total_seconds())


@pytest.mark.parametrize("recovery", ["resend", "replay"])
def test_crashed_delivery_is_finished_after_the_lease(
    e2e_database_url: str, tmp_path: Path, recovery: str
) -> None:
    marker = tmp_path / "crash-once"
    marker.touch()
    payload = sample_payload(BV, id="bv_e2e_crash", status="crash")
    raw = encode_body(payload)
    delivery_id = payload["event_id"]
    env = server_env(
        e2e_database_url,
        DEVHEALTH_WEBHOOKS_LEASE_SECONDS=str(LEASE),
        DEVHEALTH_E2E_CRASH_MARKER=str(marker),
        DEVHEALTH_E2E_LOG_LEVEL="INFO",
    )
    log_path = tmp_path / "gunicorn.log"

    with gunicorn(APP_SPEC, env=env, workers=2, log_path=log_path) as base:
        with pytest.raises(ConnectionError):
            post(base, raw)
        assert not marker.exists(), "the crashing handler did not run"

        row = log_rows(e2e_database_url)[delivery_id]
        assert (row.state, row.attempts, row.has_payload) == ("processing", 1, True)
        assert len(row.succeeded) == 1
        assert row.succeeded[0].startswith(f"{BV}:tests.apps.e2e_app.record_bv")
        assert side_effect_counts(e2e_database_url) == {(delivery_id, "bv"): 1}

        if recovery == "resend":
            if lease_left(row) > 0.5:
                # The sender retries at once: the lease still holds, so no handler reruns.
                status, body = post(base, raw)
                assert (status, body["error"]) == (409, "in_progress")
            for _ in wait_until(LEASE + 10, poll=0.2):
                status, body = post(base, raw)
                if status != 409:
                    break
            assert (status, body["status"]) == (200, "processed")
        else:
            time.sleep(max(0.0, lease_left(row)) + 0.1)
            replay = subprocess.run(
                [sys.executable, "-m", "flask", "--app", APP_IMPORT, "devhealth", "replay",
                 delivery_id],
                cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert replay.returncode == 0, replay.stdout + replay.stderr
            assert f"{delivery_id}  processed" in replay.stdout
            assert leaks_in(replay.stdout + replay.stderr) == []
            status, body = post(base, raw)
            assert (status, body["status"]) == (200, "duplicate")

        # The server replaced the dead worker and keeps serving.
        other = sample_payload(BV, id="bv_e2e_after")
        status, body = post(base, encode_body(other))
        assert (status, body["status"]) == (200, "processed")

    row = log_rows(e2e_database_url)[delivery_id]
    assert (row.state, row.attempts, row.has_payload) == ("processed", 2, True)
    assert sorted(key.split(":", 1)[0] for key in row.succeeded) == ["*", BV]
    assert side_effect_counts(e2e_database_url) == Counter(
        {
            (delivery_id, "bv"): 1,
            (delivery_id, "any"): 1,
            (other["event_id"], "bv"): 1,
            (other["event_id"], "any"): 1,
        }
    )
    log = log_path.read_text()
    assert "exited with code 1" in log
    assert "webhook processed" in log
    assert leaks_in(log) == []
