"""The example app: its handlers keep each resource's latest status; its board leaks no PHI."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import fixture
from flask import Flask
from flask.testing import FlaskClient
from serving import ROOT, gunicorn

from flask_devhealth_webhooks import CATALOGUE, ConfigurationError, blueprint
from flask_devhealth_webhooks.testing import make_token, sample_payload, send_webhook

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # example_app lives at the repository root, not installed
from example_app import create_app

SECRET = "example-app-secret-0123456789abcdefghijklmnop"
ONE_PER_RESOURCE = (
    "benefit_verification.updated",
    "prior_authorization.updated",
    "prior_authorization.provider_outreach_change",
)
PATIENT_FIELDS = ("Alex", "Sample", "1980-01-01", "MBR-0001", "pt-000123", "555-010-0000")


@pytest.fixture
def app(tmp_path: Path, _disconnect_test_handlers: None) -> Flask:
    """The example app on an in-memory delivery log and a board file in tmp_path.

    ``create_app()`` connects the example handlers. pytest-flask's autouse fixtures build
    ``app`` before conftest's autouse ``_disconnect_test_handlers`` takes its snapshot, so
    request that fixture first: the handlers are then disconnected after each test.
    """
    return create_app(
        {
            "TESTING": True,
            "DEVHEALTH_WEBHOOKS_SECRET": SECRET,
            "DEVHEALTH_WEBHOOKS_DATABASE_URL": "sqlite://",
            "EXAMPLE_DATABASE": str(tmp_path / "board.sqlite3"),
        }
    )


def board(client: FlaskClient) -> dict[str, list[dict[str, Any]]]:
    response = client.get("/status.json")
    assert response.status_code == 200
    data: dict[str, list[dict[str, Any]]] = response.get_json()
    return data


def row(client: FlaskClient, table: str, key: str) -> dict[str, Any]:
    """The board row of ``table`` whose id (or event name, for ``activity``) is ``key``."""
    column = "event" if table == "activity" else "id"
    [found] = [r for r in board(client)[table] if r[column] == key]
    return found


def send(client: FlaskClient, payload: dict[str, Any], expected: str = "processed") -> str:
    """Send a signed delivery; check its answer's status; return the event name answered."""
    response = send_webhook(client, payload)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == expected
    name: str = response.get_json()["event"]
    return name


def bv(id: str, status: str, occurred_at: str | None = None, **data: Any) -> dict[str, Any]:
    """A benefit verification update; ``occurred_at=None`` sends the legacy envelope."""
    if occurred_at is None:
        return sample_payload("benefit_verification.updated", legacy=True, id=id, status=status)
    payload = sample_payload("benefit_verification.updated", id=id, status=status, **data)
    payload["occurred_at"] = occurred_at
    return payload


def pa(id: str, status: str, occurred_at: str, result: str | None = None) -> dict[str, Any]:
    outcome = None if result is None else {"result": result}
    payload = sample_payload("prior_authorization.updated", id=id, status=status, outcome=outcome)
    payload["occurred_at"] = occurred_at
    return payload


def test_every_event_type_in_every_envelope_shows_on_the_board(client: FlaskClient) -> None:
    sent: dict[str, int] = {}
    for event in CATALOGUE:
        for legacy in (False, True) if event.title else (False,):
            name = send(client, sample_payload(event.name, legacy=legacy))
            sent[name] = sent.get(name, 0) + 1

    assert sorted(sent) == sorted(e.name for e in CATALOGUE)
    assert {r["event"]: r["deliveries"] for r in board(client)["activity"]} == sent
    bv_id, pa_id, po_id = (sample_payload(name)["data"]["id"] for name in ONE_PER_RESOURCE)
    verification = row(client, "verifications", bv_id)
    assert (verification["status"], verification["coverage"]) == ("completed", "covered")
    assert verification["copay"] == "$30 for 28 days supply"
    authorization = row(client, "authorizations", pa_id)
    assert (authorization["status"], authorization["outcome"]) == ("completed", "Approved")
    outreach = row(client, "activity", "prior_authorization.provider_outreach_change")
    assert (outreach["last_object_id"], outreach["last_status"]) == (po_id, "in_progress")


def test_a_newer_delivery_replaces_the_status(client: FlaskClient) -> None:
    send(client, bv("bv_1", "in_progress", "2026-07-01T10:00:00Z"))
    assert row(client, "verifications", "bv_1")["status"] == "in_progress"

    send(client, bv("bv_1", "completed", "2026-07-01T10:05:00Z"))
    verification = row(client, "verifications", "bv_1")
    assert verification["status"] == "completed"
    assert verification["changed_at"] == "2026-07-01T10:05:00.000000Z"


def test_a_late_older_delivery_does_not_overwrite_a_newer_status(client: FlaskClient) -> None:
    send(client, bv("bv_1", "completed", "2026-07-01T10:05:00Z"))
    before = row(client, "verifications", "bv_1")

    send(client, bv("bv_1", "in_progress", "2026-07-01T10:00:00+00:00"))  # arrives late
    assert row(client, "verifications", "bv_1") == before
    assert row(client, "activity", "benefit_verification.updated")["deliveries"] == 2

    send(client, pa("pa_1", "completed", "2026-07-02T09:00:00Z", "Approved"))
    send(client, pa("pa_1", "awaiting_provider_response", "2026-07-02T08:00:00Z"))
    authorization = row(client, "authorizations", "pa_1")
    assert (authorization["status"], authorization["outcome"]) == ("completed", "Approved")


def test_occurred_at_in_another_timezone_is_compared_as_utc(client: FlaskClient) -> None:
    send(client, bv("bv_1", "completed", "2026-07-01T12:00:00+02:00"))  # 10:00 UTC
    send(client, bv("bv_1", "in_progress", "2026-07-01T09:30:00Z"))  # older
    assert row(client, "verifications", "bv_1")["status"] == "completed"


def test_without_occurred_at_the_received_time_orders_deliveries(client: FlaskClient) -> None:
    send(client, bv("bv_1", "in_progress"))  # legacy envelopes carry no occurred_at
    send(client, bv("bv_1", "completed"))
    assert row(client, "verifications", "bv_1")["status"] == "completed"

    send(client, bv("bv_1", "failed", "2020-01-01T00:00:00Z"))  # happened before both
    assert row(client, "verifications", "bv_1")["status"] == "completed"


def test_a_duplicate_is_answered_duplicate_and_changes_nothing(client: FlaskClient) -> None:
    payload = bv("bv_1", "completed", "2026-07-01T10:00:00Z")
    send(client, payload)
    before = board(client)

    send(client, payload, expected="duplicate")  # same event_id: the handlers do not run
    assert board(client) == before

    send(client, bv("bv_1", "completed"))
    send(client, bv("bv_1", "completed"), expected="duplicate")  # legacy: same body, same id
    assert row(client, "activity", "benefit_verification.updated")["deliveries"] == 2


def test_rerunning_the_handlers_of_a_delivery_changes_nothing(
    app: Flask, client: FlaskClient
) -> None:
    response = send_webhook(client, pa("pa_1", "completed", "2026-07-02T09:00:00Z", "Approved"))
    delivery_id = response.get_json()["delivery_id"]
    before = board(client)

    result = app.test_cli_runner().invoke(args=["devhealth", "replay", "--force", delivery_id])
    assert result.exit_code == 0, result.output
    assert f"{delivery_id}  processed" in result.output
    after = board(client)
    assert [(a["id"], a["status"], a["outcome"]) for a in after["authorizations"]] == [
        ("pa_1", "completed", "Approved")
    ]
    assert after["activity"] == before["activity"]  # counted once per delivery id


def test_a_failed_verification_shows_its_coverage_status(client: FlaskClient) -> None:
    send(client, fixture("benefit_verification_status_change_failed"))
    verification = row(client, "verifications", "bv_Fa1lEd9")
    assert verification["status"] == "failed"
    assert verification["coverage"] == "patient_not_found"
    assert verification["copay"] is None
    assert verification["changed_at"] == "2026-07-29T18:12:04.000000Z"


def test_an_uncatalogued_event_type_is_counted(client: FlaskClient) -> None:
    payload = sample_payload("prior_authorization.message", id="pa_1")
    payload["event_type"] = "prior_authorization.appeal_filed"
    send(client, payload)  # the "*" handler ran, so it is not "ignored"
    assert row(client, "activity", "prior_authorization.appeal_filed")["last_object_id"] == "pa_1"


def test_the_board_shows_statuses_but_no_patient_data(client: FlaskClient) -> None:
    send(client, bv("bv_42", "completed", "2026-07-01T10:00:00Z"))
    send(client, pa("pa_42", "completed", "2026-07-02T09:00:00Z", "Denied"))
    send(client, sample_payload("prior_authorization.provider_outreach_change", id="po_42"))

    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for shown in ("bv_42", "pa_42", "po_42", "completed", "covered", "$30 for 28 days", "Denied"):
        assert shown in html
    as_json = client.get("/status.json").get_data(as_text=True)
    for field in PATIENT_FIELDS:
        assert field not in html
        assert field not in as_json


def test_the_board_escapes_html(client: FlaskClient) -> None:
    payload = bv("<script>alert(1)</script>", "<b>done</b>", "2026-07-01T10:00:00Z")
    payload["data"]["patient_coverage_status"] = "<img src=x onerror=alert(2)>"
    send(client, payload)

    html = client.get("/").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;done&lt;/b&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<script>" not in html
    assert "<b>" not in html
    assert "<img" not in html


def test_the_default_samples_show_no_patient_field_on_the_board(client: FlaskClient) -> None:
    """What ``scripts/demo.sh`` sends: the package's samples, ids unchanged."""
    for name in ("benefit_verification.updated", "prior_authorization.updated"):
        send(client, sample_payload(name))
    html = client.get("/").get_data(as_text=True)
    assert "completed" in html
    for field in PATIENT_FIELDS:
        assert field not in html


def test_apps_keep_separate_boards_and_apps_without_one_are_left_alone(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    other = create_app(
        {
            "DEVHEALTH_WEBHOOKS_SECRET": SECRET + "-other",
            "DEVHEALTH_WEBHOOKS_DATABASE_URL": "sqlite://",
            "EXAMPLE_DATABASE": str(tmp_path / "other.sqlite3"),
        }
    )
    plain = Flask("plain")  # the blueprint only: the example handlers must do nothing there
    plain.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    plain.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    plain.register_blueprint(blueprint)

    send(other.test_client(), bv("bv_other", "completed", "2026-07-01T10:00:00Z"))
    send(plain.test_client(), bv("bv_plain", "completed", "2026-07-01T10:00:00Z"))
    send(client, bv("bv_mine", "failed", "2026-07-01T10:00:00Z"))

    assert [v["id"] for v in board(other.test_client())["verifications"]] == ["bv_other"]
    assert [v["id"] for v in board(client)["verifications"]] == ["bv_mine"]
    assert row(client, "activity", "benefit_verification.updated")["deliveries"] == 1


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVHEALTH_WEBHOOKS_SECRET", SECRET)
    monkeypatch.setenv("DEVHEALTH_WEBHOOKS_DATABASE_URL", f"sqlite:///{tmp_path / 'log.sqlite3'}")
    monkeypatch.setenv("EXAMPLE_DATABASE", str(tmp_path / "nested" / "board.sqlite3"))
    app = create_app()

    assert app.config["DEVHEALTH_WEBHOOKS_SECRET"] == SECRET
    assert (tmp_path / "nested" / "board.sqlite3").is_file()
    send(app.test_client(), bv("bv_1", "completed", "2026-07-01T10:00:00Z"))
    assert (tmp_path / "log.sqlite3").is_file()


def test_a_missing_secret_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVHEALTH_WEBHOOKS_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="DEVHEALTH_WEBHOOKS_SECRET"):
        create_app({"DEVHEALTH_WEBHOOKS_DATABASE_URL": "sqlite://"})


@pytest.mark.gunicorn
def test_the_example_app_under_gunicorn_over_http(tmp_path: Path) -> None:
    env = {
        "DEVHEALTH_WEBHOOKS_SECRET": SECRET,
        "DEVHEALTH_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'deliveries.sqlite3'}",
        "EXAMPLE_DATABASE": str(tmp_path / "board.sqlite3"),
    }
    deliveries = [
        bv("bv_http", "in_progress", "2026-07-01T10:00:00Z"),
        bv("bv_http", "completed", "2026-07-01T10:05:00Z"),
        bv("bv_http", "failed", "2026-07-01T09:00:00Z"),  # late and older: ignored
        sample_payload(
            "prior_authorization.determination",
            legacy=True,
            id="pa_http",
            outcome={"result": "Denied"},
        ),
        sample_payload("prior_authorization.message", id="pa_http"),
        sample_payload("prior_authorization.provider_outreach_change", id="po_http"),
    ]
    log = tmp_path / "gunicorn.log"
    with gunicorn("example_app:create_app()", env=env, workers=2, log_path=log) as base:
        url = base + "/webhooks/devhealth"

        def post(payload: dict[str, Any], token: str | None) -> requests.Response:
            headers = {"Content-Type": "application/json"}
            if token is not None:
                headers["X-Webhook-Secret"] = token
            return requests.post(url, data=json.dumps(payload), headers=headers, timeout=10)

        answers = [post(p, make_token(SECRET)) for p in deliveries]
        assert [(a.status_code, a.json()["status"]) for a in answers] == [(200, "processed")] * 6
        again = post(deliveries[3], make_token(SECRET))
        assert (again.status_code, again.json()["status"]) == (200, "duplicate")
        forged = post(bv("bv_forged", "completed", "2026-07-01T11:00:00Z"), make_token("x" * 40))
        assert (forged.status_code, forged.json()["error"]) == (401, "invalid_signature")

        state = requests.get(base + "/status.json", timeout=10).json()
        html = requests.get(base + "/", timeout=10).text

    assert [(v["id"], v["status"]) for v in state["verifications"]] == [("bv_http", "completed")]
    assert [(a["id"], a["status"], a["outcome"]) for a in state["authorizations"]] == [
        ("pa_http", "completed", "Denied")
    ]
    assert {a["event"]: a["deliveries"] for a in state["activity"]} == {
        "benefit_verification.updated": 3,
        "prior_authorization.determination": 1,
        "prior_authorization.message": 1,
        "prior_authorization.provider_outreach_change": 1,
    }
    for shown in ("bv_http", "pa_http", "po_http", "completed", "Denied"):
        assert shown in html
    for field in PATIENT_FIELDS:
        assert field not in html
    assert "bv_forged" not in html
    server_log = log.read_text()
    assert SECRET not in server_log
    for field in PATIENT_FIELDS:
        assert field not in server_log


def raw_post(base: str, head: str, body: bytes) -> tuple[int, str, bytes]:
    """Send bytes exactly as given (no client library fixes the framing); read the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), headers.decode(), content


def test_broken_chunked_framing_under_gunicorn_is_a_json_400_and_never_logged(
    tmp_path: Path,
) -> None:
    env = {
        "DEVHEALTH_WEBHOOKS_SECRET": SECRET,
        "DEVHEALTH_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'deliveries.sqlite3'}",
        "EXAMPLE_DATABASE": str(tmp_path / "board.sqlite3"),
    }
    payload = json.dumps(sample_payload("benefit_verification.updated")).encode()
    head = (
        "POST /webhooks/devhealth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Webhook-Secret: {make_token(SECRET)}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n"
    )
    bodies = {
        "bad chunk size": b"zz\r\n" + payload + b"\r\n0\r\n\r\n",
        # A length shorter than the chunk: the rest of the JSON is read as the next size line,
        # and the server's error message quotes it.
        "chunk longer than declared": b"10\r\n" + payload + b"\r\n0\r\n\r\n",
        "cut short": b"1000\r\n" + payload[:200],
    }
    log = tmp_path / "gunicorn.log"
    with gunicorn("example_app:create_app()", env=env, workers=1, log_path=log) as base:
        answers = {name: raw_post(base, head, body) for name, body in bodies.items()}
        state = requests.get(base + "/status.json", timeout=10).json()

    for name, (status, headers, content) in answers.items():
        assert status == 400, name
        assert "application/json" in headers, name
        assert json.loads(content)["error"] == "invalid_json", name
    assert state["activity"] == []  # no handler saw a fragment
    server_log = log.read_text()
    assert "Traceback" not in server_log
    for field in PATIENT_FIELDS:
        assert field not in server_log
