"""Every ``flask devhealth`` command, through Flask's CLI runner.

``send`` talks to a real gunicorn server (tests/apps/cli_target.py); the delivery-log commands
(``log``, ``show``, ``replay``, ``purge``) run on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import Result
from conftest import FIXTURES, SECRET, build_app
from flask import Flask
from serving import gunicorn

from flask_devhealth_webhooks import CATALOGUE, Event, PermanentFailure, blueprint, get_state, on
from flask_devhealth_webhooks import cli as cli_module
from flask_devhealth_webhooks.signals import handler_key, webhook_replayed
from flask_devhealth_webhooks.store import Delivery, deliveries, utcnow
from flask_devhealth_webhooks.testing import sample_payload, send_webhook

BV = "benefit_verification.updated"
PA = "prior_authorization.updated"
MESSAGE = "prior_authorization.message"
#: Patient fields of the sample bodies (``Sample`` also appears in ``data.id``, which is shown).
PHI = ("Alex", "1980-01-01", "MBR-0001", "alex.sample@example.test", "555-010-0000")


def invoke(app: Flask, *args: str) -> Result:
    result: Result = app.test_cli_runner().invoke(args=["devhealth", *args])
    return result


def assert_clean(text: str) -> None:
    """No patient field, secret or token in ``text``."""
    for value in (*PHI, SECRET):
        assert value not in text
    assert "eyJ" not in text  # how every JWT starts


def row(app: Flask, delivery_id: str) -> Delivery:
    return get_state(app).store.get(delivery_id)


def age_row(app: Flask, delivery_id: str, days: float, **values: Any) -> None:
    """Make a delivery look first received ``days`` ago (and set other columns)."""
    with get_state(app).store.engine.begin() as conn:
        conn.execute(
            deliveries.update()
            .where(deliveries.c.delivery_id == delivery_id)
            .values(first_received_at=utcnow() - timedelta(days=days), **values)
        )


# -- events and token ----------------------------------------------------------------------


def test_events_lists_the_catalogue(app: Flask) -> None:
    result = invoke(app, "events")

    assert result.exit_code == 0
    for event_type in CATALOGUE:
        assert event_type.name in result.output
        assert event_type.object in result.output
        for alias in event_type.aliases:
            assert alias in result.output
        if event_type.title:
            assert event_type.title in result.output


def test_token_is_signed_with_the_apps_secret(app: Flask) -> None:
    result = invoke(app, "token")

    assert result.exit_code == 0
    token = result.output.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] > claims["iat"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "-other", algorithms=["HS256"])
    response = app.test_client().post(
        "/webhooks/devhealth",
        json=sample_payload(BV),
        headers={"X-Webhook-Secret": token},
    )
    assert response.status_code == 200


def test_token_uses_the_configured_algorithm_and_extra_claims(
    make_app: Callable[..., Flask],
) -> None:
    long_secret = SECRET * 2  # HS512 wants 64 bytes or more
    app = make_app(SECRET=long_secret, ALGORITHMS=["HS512"], AUDIENCE="clinic-42")

    result = invoke(app, "token", "--claim", "aud=clinic-42", "--claim", "batch=7")

    assert result.exit_code == 0
    token = result.output.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    claims = jwt.decode(token, long_secret, algorithms=["HS512"], audience="clinic-42")
    assert claims["batch"] == 7
    response = app.test_client().post(
        "/webhooks/devhealth", json=sample_payload(BV), headers={"X-Webhook-Secret": token}
    )
    assert response.status_code == 200


# -- send, against a real server -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    database_url: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """tests/apps/cli_target.py under gunicorn, with its delivery log in a SQLite file."""
    tmp = tmp_path_factory.mktemp("cli_target")
    database_url = f"sqlite:///{tmp / 'target.sqlite3'}"
    env = {"DEVHEALTH_WEBHOOKS_SECRET": SECRET, "DEVHEALTH_WEBHOOKS_DATABASE_URL": database_url}
    spec = "tests.apps.cli_target:create_app()"
    with gunicorn(spec, env=env, log_path=tmp / "gunicorn.log") as base:
        yield Target(base + "/webhooks/devhealth", database_url)


@pytest.fixture
def target_log(target: Target, tmp_path: Path) -> Iterator[Flask]:
    """An app reading the server's delivery log, to check what the server recorded."""
    app = build_app(tmp_path, DATABASE_URL=target.database_url)
    yield app
    get_state(app).store.engine.dispose()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays ``send`` waits between retries (recorded, not slept)."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)  # what cli.send calls between tries
    return waited


def answers(result: Result) -> list[tuple[int, dict[str, Any]]]:
    """The ``STATUS BODY`` lines ``send`` printed, parsed."""
    parsed = []
    for line in result.stdout.splitlines():
        if not line.strip():
            continue  # the server's JSON ends with a newline of its own
        status, _, body = line.partition(" ")
        parsed.append((int(status), json.loads(body)))
    return parsed


def nonce() -> str:
    return "data.cli_nonce=" + uuid.uuid4().hex


@pytest.mark.gunicorn
def test_send_signs_and_posts_a_sample_event(app: Flask, target: Target, target_log: Flask) -> None:
    result = invoke(app, "send", BV, "--url", target.url)

    assert result.exit_code == 0, result.output
    [(status, body)] = answers(result)
    assert status == 200
    assert body["status"] == "processed"
    assert body["event"] == BV
    delivery = row(target_log, body["delivery_id"])
    assert delivery.event_type == "benefit_verification.status_change"
    assert delivery.state == "processed"
    assert_clean(result.output)


@pytest.mark.gunicorn
def test_send_legacy_envelope(app: Flask, target: Target, target_log: Flask) -> None:
    result = invoke(app, "send", BV, "--legacy", "--url", target.url, "--set", nonce())

    assert result.exit_code == 0, result.output
    [(status, body)] = answers(result)
    assert status == 200
    assert body["status"] == "processed"
    assert body["delivery_id"].startswith("sha256:")
    delivery = row(target_log, body["delivery_id"])
    assert delivery.event_name == BV
    assert delivery.event_type is None


@pytest.mark.gunicorn
def test_send_set_overrides_fields(app: Flask, target: Target, target_log: Flask) -> None:
    result = invoke(
        app, "send", PA, "--url", target.url, "--set", "data.status=failed", "--set", nonce()
    )

    assert result.exit_code == 0, result.output
    [(_, body)] = answers(result)
    assert row(target_log, body["delivery_id"]).status == "failed"


@pytest.mark.gunicorn
def test_send_a_json_file(app: Flask, target: Target, target_log: Flask) -> None:
    event_id = "evt_cli_file_" + uuid.uuid4().hex
    path = FIXTURES / "prior_authorization_message.json"

    result = invoke(app, "send", str(path), "--url", target.url, "--set", f"event_id={event_id}")

    assert result.exit_code == 0, result.output
    [(status, body)] = answers(result)
    assert (status, body["delivery_id"], body["event"]) == (200, event_id, MESSAGE)
    assert row(target_log, event_id).state == "processed"


@pytest.mark.gunicorn
def test_send_exits_non_zero_on_an_error_answer(
    app: Flask, target: Target, sleeps: list[float]
) -> None:
    result = invoke(app, "send", BV, "--url", target.url, "--set", "data.cli_mode=fail")

    assert result.exit_code == 1
    [(status, body)] = answers(result)
    assert status == 500
    assert body["error"] == "handler_failed"
    assert sleeps == []


@pytest.mark.gunicorn
def test_send_with_another_secret_is_refused(
    make_app: Callable[..., Flask], target: Target
) -> None:
    app = make_app(SECRET="another-secret-0123456789abcdefghijklmnop")

    result = invoke(app, "send", BV, "--url", target.url)

    assert result.exit_code == 1
    [(status, body)] = answers(result)
    assert (status, body["error"]) == (401, "invalid_signature")


@pytest.mark.gunicorn
def test_send_retries_honour_retry_after(
    app: Flask, target: Target, target_log: Flask, sleeps: list[float]
) -> None:
    result = invoke(
        app,
        "send",
        BV,
        "--url",
        target.url,
        "--retries",
        "3",
        "--set",
        "data.cli_mode=retry_once",
        "--set",
        "data.cli_retry_after=7",
    )

    assert result.exit_code == 0, result.output
    (first, first_body), (second, second_body) = answers(result)
    assert (first, first_body["error"]) == (503, "retry_later")
    assert (second, second_body["status"]) == (200, "processed")
    assert sleeps == [7.0]
    assert "retrying in 7s (1/3)" in result.stderr
    assert row(target_log, second_body["delivery_id"]).attempts == 2


@pytest.mark.gunicorn
def test_send_retries_back_off_without_retry_after(
    app: Flask, target: Target, sleeps: list[float]
) -> None:
    result = invoke(
        app, "send", BV, "--url", target.url, "--retries", "2", "--set", "data.cli_mode=fail"
    )

    assert result.exit_code == 1
    assert [status for status, _ in answers(result)] == [500, 500, 500]
    assert sleeps == [1.0, 2.0]


@pytest.mark.gunicorn
def test_send_stops_retrying_once_accepted(app: Flask, target: Target, sleeps: list[float]) -> None:
    result = invoke(
        app, "send", BV, "--url", target.url, "--retries", "5", "--set", "data.cli_mode=fail_once"
    )

    assert result.exit_code == 0
    assert [status for status, _ in answers(result)] == [500, 200]
    assert sleeps == [1.0]


def test_send_refuses_an_unknown_source(app: Flask) -> None:
    result = invoke(app, "send", "benefit_verification.nope")

    assert result.exit_code == 2
    assert "neither a known event name nor a file" in result.output


@pytest.mark.parametrize(
    ("prefix", "path"), [(None, "/webhooks/devhealth"), ("/hooks/dh", "/hooks/dh")]
)
def test_send_defaults_to_the_apps_route_on_loopback(
    monkeypatch: pytest.MonkeyPatch, prefix: str | None, path: str
) -> None:
    app = Flask("send_default_url")
    app.config["DEVHEALTH_WEBHOOKS_SECRET"] = SECRET
    app.config["DEVHEALTH_WEBHOOKS_DATABASE_URL"] = "sqlite://"
    app.register_blueprint(blueprint, url_prefix=prefix)
    posted: list[str] = []

    def fake_post(url: str, raw: bytes, headers: dict[str, str], timeout: float) -> Any:
        posted.append(url)
        return 200, '{"status": "processed"}', None

    monkeypatch.setattr(cli_module, "_post", fake_post)

    result = invoke(app, "send", BV)

    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0
    assert posted == ["http://127.0.0.1:5000" + path]


# -- log -----------------------------------------------------------------------------------


@pytest.fixture
def logged(durable: Callable[..., Flask]) -> tuple[Flask, dict[str, str]]:
    """An app with three deliveries: an old processed BV, a failed message, a new PA update."""
    app = durable()

    @on(MESSAGE)
    def broken(event: Event) -> None:
        raise RuntimeError("message store down")

    client = app.test_client()
    ids = {}
    for name in (BV, MESSAGE, PA):
        payload = sample_payload(name)
        send_webhook(client, payload)
        ids[name] = payload["event_id"]
    age_row(app, ids[BV], days=3)
    return app, ids


def test_log_lists_deliveries_newest_first(logged: tuple[Flask, dict[str, str]]) -> None:
    app, ids = logged

    result = invoke(app, "log")

    assert result.exit_code == 0
    header, *lines = result.output.splitlines()
    assert header.split()[:2] == ["received", "(UTC)"]
    assert "state" in header
    assert [line.split()[2] for line in lines] == [ids[PA], ids[MESSAGE], ids[BV]]
    assert "failed" in lines[1]
    assert "processed" in lines[0]
    assert_clean(result.output)


def test_log_filters(logged: tuple[Flask, dict[str, str]]) -> None:
    app, ids = logged

    def listed(*args: str) -> list[str]:
        result = invoke(app, "log", "--json", *args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["delivery_id"] for line in result.output.splitlines()]

    assert listed("--state", "failed") == [ids[MESSAGE]]
    assert listed("--state", "processed") == [ids[PA], ids[BV]]
    assert listed("--event", BV) == [ids[BV]]
    assert listed("--event", "benefit_verification.status_change") == [ids[BV]]
    assert listed("--since", "2d") == [ids[PA], ids[MESSAGE]]
    assert listed("--since", "4d") == [ids[PA], ids[MESSAGE], ids[BV]]
    assert listed("--limit", "1") == [ids[PA]]
    assert listed("--state", "failed", "--event", BV) == []


def test_log_json_is_metadata_only(logged: tuple[Flask, dict[str, str]]) -> None:
    app, ids = logged

    result = invoke(app, "log", "--json", "--state", "failed")

    assert result.exit_code == 0
    [entry] = [json.loads(line) for line in result.output.splitlines()]
    assert entry["delivery_id"] == ids[MESSAGE]
    assert entry["event_name"] == MESSAGE
    assert entry["state"] == "failed"
    assert entry["attempts"] == 1
    assert entry["has_payload"] is True
    assert entry["last_error"].endswith("RuntimeError: message store down")
    assert entry["first_received_at"].endswith("+00:00")
    assert "payload" not in entry
    assert_clean(result.output)


def test_log_says_when_nothing_matches(durable: Callable[..., Flask]) -> None:
    result = invoke(durable(), "log")

    assert result.exit_code == 0
    assert result.output.strip() == "No deliveries match."


@pytest.mark.parametrize(
    "args", [("--state", "lost"), ("--since", "yesterday"), ("--limit", "many")]
)
def test_log_rejects_bad_options(app: Flask, args: tuple[str, ...]) -> None:
    result = invoke(app, "log", *args)

    assert result.exit_code == 2
    assert args[0] in result.output


# -- show ----------------------------------------------------------------------------------


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        doc, index = decoder.raw_decode(text, index)
        docs.append(doc)
    return docs


def test_show_prints_metadata_without_payload(logged: tuple[Flask, dict[str, str]]) -> None:
    app, ids = logged

    result = invoke(app, "show", ids[MESSAGE])

    assert result.exit_code == 0
    [meta] = json_documents(result.output)
    assert meta["delivery_id"] == ids[MESSAGE]
    assert meta["state"] == "failed"
    assert meta["event_type"] == MESSAGE
    assert "last_error" in meta
    assert "payload" not in meta
    assert_clean(result.output)


def test_show_payload_prints_the_body_and_logs_who_asked(
    durable: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()
    payload = sample_payload(BV)
    send_webhook(app.test_client(), payload)
    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")

    result = invoke(app, "show", payload["event_id"], "--payload")

    assert result.exit_code == 0
    meta, body = json_documents(result.output)
    assert meta["delivery_id"] == payload["event_id"]
    assert body == payload
    assert f"webhook payload shown delivery_id={payload['event_id']}" in caplog.text
    assert f"by={getpass.getuser()}" in caplog.text
    assert_clean(caplog.text)


def test_show_unknown_delivery(durable: Callable[..., Flask]) -> None:
    result = invoke(durable(), "show", "evt_missing")

    assert result.exit_code == 1
    assert "No delivery 'evt_missing'" in result.output


def test_show_payload_when_payloads_are_not_stored(durable: Callable[..., Flask]) -> None:
    app = durable(STORE_PAYLOADS=False)
    payload = sample_payload(BV)
    send_webhook(app.test_client(), payload)

    result = invoke(app, "show", payload["event_id"], "--payload")

    assert result.exit_code == 1
    assert "DEVHEALTH_WEBHOOKS_STORE_PAYLOADS" in result.output
    assert "cannot be shown or replayed" in result.output
    assert_clean(result.output)


# -- replay --------------------------------------------------------------------------------


class Handlers:
    """Two handlers of BV: ``crm`` always succeeds, ``ledger`` fails while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = {"crm": 0, "ledger": 0}

        @on(BV)
        def crm(event: Event) -> None:
            self.calls["crm"] += 1

        @on(BV)
        def ledger(event: Event) -> None:
            self.calls["ledger"] += 1
            if self.broken:
                raise RuntimeError("ledger offline")

        self.keys = {handler_key(BV, crm), handler_key(BV, ledger)}


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


def send_failed(app: Flask, count: int) -> list[str]:
    """``count`` BV deliveries that fail (the ledger is broken); their ids."""
    client = app.test_client()
    ids = []
    for _ in range(count):
        payload = sample_payload(BV)
        assert send_webhook(client, payload).status_code == 500
        ids.append(payload["event_id"])
    return ids


def test_replay_ids_reruns_only_handlers_that_did_not_succeed(
    durable: Callable[..., Flask], handlers: Handlers, caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()
    ids = send_failed(app, 2)
    handlers.broken = False
    replayed: list[tuple[str, str]] = []
    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")

    with webhook_replayed.connected_to(
        lambda _, event, outcome: replayed.append((event.delivery_id, outcome)), sender=app
    ):
        result = invoke(app, "replay", *ids)

    assert result.exit_code == 0, result.output
    assert handlers.calls == {"crm": 2, "ledger": 4}
    assert replayed == [(ids[0], "processed"), (ids[1], "processed")]
    for delivery_id in ids:
        assert f"{delivery_id}  processed" in result.output
        delivery = row(app, delivery_id)
        assert delivery.state == "processed"
        assert delivery.attempts == 2
        assert set(delivery.succeeded_handlers) == handlers.keys
        assert f"webhook replay delivery_id={delivery_id} outcome=processed force=False" in (
            caplog.text
        )
    assert "2 replayed, 0 not processed." in result.output
    assert "Replaying" not in result.stderr
    assert f"by={getpass.getuser()} at=" in caplog.text
    assert_clean(caplog.text)
    assert "Sample" not in caplog.text.replace(sample_payload(BV)["data"]["id"], "<data.id>")


def test_replay_exits_1_when_a_replay_fails(
    durable: Callable[..., Flask], handlers: Handlers
) -> None:
    app = durable()
    [delivery_id] = send_failed(app, 1)

    result = invoke(app, "replay", delivery_id)

    assert result.exit_code == 1
    assert f"{delivery_id}  failed" in result.output
    assert "0 replayed, 1 not processed." in result.output
    assert handlers.calls == {"crm": 1, "ledger": 2}
    delivery = row(app, delivery_id)
    assert delivery.state == "failed"
    assert delivery.attempts == 2


def test_replay_force_reruns_every_handler(
    durable: Callable[..., Flask], handlers: Handlers
) -> None:
    app = durable()
    handlers.broken = False
    payload = sample_payload(BV)
    send_webhook(app.test_client(), payload)

    plain = invoke(app, "replay", payload["event_id"])
    calls_after_plain = dict(handlers.calls)
    forced = invoke(app, "replay", "--force", payload["event_id"])

    assert calls_after_plain == {"crm": 1, "ledger": 1}  # already processed: nothing reran
    assert "duplicate" in plain.output
    assert plain.exit_code == 0, plain.output
    assert "0 replayed, 1 already finished (nothing ran), 0 not processed." in plain.output
    assert forced.exit_code == 0, forced.output
    assert handlers.calls == {"crm": 2, "ledger": 2}
    delivery = row(app, payload["event_id"])
    assert delivery.state == "processed"
    assert set(delivery.succeeded_handlers) == handlers.keys


def test_replay_a_dead_letter_reruns_the_handler_that_gave_up(
    durable: Callable[..., Flask],
) -> None:
    app = durable()
    calls = {"crm": 0, "payer": 0}
    payer_known = False

    @on(BV)
    def crm(event: Event) -> None:
        calls["crm"] += 1

    @on(BV)
    def payer(event: Event) -> None:
        calls["payer"] += 1
        if not payer_known:
            raise PermanentFailure("payer not in the contract list")

    payload = sample_payload(BV)
    assert send_webhook(app.test_client(), payload).json["status"] == "dead_letter"
    payer_known = True  # the contract list was fixed; the operator replays the dead letter

    result = invoke(app, "replay", payload["event_id"])

    assert result.exit_code == 0, result.output
    assert f"{payload['event_id']}  processed" in result.output
    assert calls == {"crm": 1, "payer": 2}
    assert row(app, payload["event_id"]).state == "processed"


def test_replay_failed_picks_every_failed_delivery(
    durable: Callable[..., Flask], handlers: Handlers
) -> None:
    app = durable()
    failed = send_failed(app, 2)
    old = send_failed(app, 1)[0]
    age_row(app, old, days=3)
    handlers.broken = False
    done = sample_payload(BV)
    send_webhook(app.test_client(), done)

    recent = invoke(app, "replay", "--failed", "--since", "1d")
    everything = invoke(app, "replay", "--failed")
    nothing_left = invoke(app, "replay", "--failed")

    assert recent.exit_code == 0, recent.output
    assert {line.split()[0] for line in recent.output.splitlines()[:-1]} == set(failed)
    assert everything.exit_code == 0, everything.output
    assert everything.output.splitlines()[0] == f"{old}  processed"
    assert nothing_left.exit_code == 0
    assert nothing_left.output.strip() == "No failed deliveries to replay."
    assert row(app, done["event_id"]).attempts == 1
    for delivery_id in (*failed, old):
        assert row(app, delivery_id).state == "processed"


def test_replay_shows_a_progress_bar_on_many(
    durable: Callable[..., Flask], handlers: Handlers
) -> None:
    app = durable()
    ids = send_failed(app, 6)
    handlers.broken = False

    result = invoke(app, "replay", "--failed")

    assert result.exit_code == 0, result.output
    assert "Replaying" in result.stderr
    assert "6 replayed, 0 not processed." in result.stdout
    assert all(row(app, d).state == "processed" for d in ids)


def test_replay_unknown_delivery(durable: Callable[..., Flask]) -> None:
    result = invoke(durable(), "replay", "evt_missing")

    assert result.exit_code == 1
    assert "evt_missing  not_found" in result.output
    assert "No delivery 'evt_missing'" in result.output


def test_replay_without_stored_payload_says_it_is_impossible(
    durable: Callable[..., Flask], handlers: Handlers
) -> None:
    app = durable(STORE_PAYLOADS=False)
    [delivery_id] = send_failed(app, 1)

    result = invoke(app, "replay", delivery_id)

    assert result.exit_code == 1
    assert f"{delivery_id}  not_replayable" in result.output
    assert "DEVHEALTH_WEBHOOKS_STORE_PAYLOADS" in result.output
    assert "cannot be shown or replayed" in result.output
    assert handlers.calls == {"crm": 1, "ledger": 1}
    assert row(app, delivery_id).state == "failed"


@pytest.mark.parametrize("args", [(), ("evt_1", "--failed")])
def test_replay_needs_ids_or_failed_but_not_both(app: Flask, args: tuple[str, ...]) -> None:
    result = invoke(app, "replay", *args)

    assert result.exit_code == 2
    assert "Give delivery ids, or --failed" in result.output


# -- purge ---------------------------------------------------------------------------------


def seed_for_purge(app: Flask) -> dict[str, str]:
    """Deliveries named by what purge should do with them."""
    client = app.test_client()
    ids = {}
    for name in ("old_processed", "old_dead", "old_failed", "new_processed"):
        payload = sample_payload(PA)
        send_webhook(client, payload)
        ids[name] = payload["event_id"]
    age_row(app, ids["old_processed"], days=40)
    age_row(app, ids["old_dead"], days=40, state="dead_letter")
    age_row(app, ids["old_failed"], days=40, state="failed")
    return ids


def remaining(app: Flask) -> set[str]:
    return {d.delivery_id for d in get_state(app).store.list(limit=None)}


def test_purge_older_than(durable: Callable[..., Flask], caplog: pytest.LogCaptureFixture) -> None:
    app = durable()
    ids = seed_for_purge(app)
    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")

    result = invoke(app, "purge", "--older-than", "30d")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Purged 2 deliveries older than 30 days")
    assert remaining(app) == {ids["old_failed"], ids["new_processed"]}
    assert "webhook purge deliveries=2 older_than_s=2592000" in caplog.text
    assert f"by={getpass.getuser()}" in caplog.text
    assert_clean(caplog.text)


def test_purge_defaults_to_the_retention_period(durable: Callable[..., Flask]) -> None:
    app = durable(RETENTION_DAYS=60)
    ids = seed_for_purge(app)

    kept = invoke(app, "purge")
    age_row(app, ids["old_processed"], days=61)
    purged = invoke(app, "purge")

    assert kept.output.startswith("Purged 0 deliveries")
    assert purged.output.startswith("Purged 1 deliveries")
    assert ids["old_processed"] not in remaining(app)


def test_purge_without_retention_needs_older_than(durable: Callable[..., Flask]) -> None:
    result = invoke(durable(RETENTION_DAYS=None), "purge")

    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_purge_payloads_only_keeps_metadata(durable: Callable[..., Flask]) -> None:
    app = durable()
    ids = seed_for_purge(app)

    result = invoke(app, "purge", "--older-than", "30d", "--payloads-only")
    replay = invoke(app, "replay", "--force", ids["old_processed"])

    assert result.exit_code == 0
    assert result.output.startswith("Purged 2 payloads")
    assert remaining(app) == set(ids.values())
    assert not row(app, ids["old_processed"]).has_payload
    assert not row(app, ids["old_dead"]).has_payload
    assert row(app, ids["old_failed"]).has_payload
    assert row(app, ids["new_processed"]).has_payload
    assert replay.exit_code == 1
    assert "not_replayable" in replay.output


def test_purge_rejects_a_bad_duration(app: Flask) -> None:
    result = invoke(app, "purge", "--older-than", "a month")

    assert result.exit_code == 2
    assert "not a duration" in result.output


def test_an_overlong_since_is_a_usage_error(app: Flask) -> None:
    result = invoke(app, "log", "--since", "99999999d")
    assert result.exit_code == 2
    assert "longer than" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_send_refuses_a_file_that_is_not_json(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "body.json"
    path.write_text("not json {")
    result = invoke(app, "send", str(path), "--url", "http://127.0.0.1:9/unused")
    assert result.exit_code == 1
    assert "is not a UTF-8 JSON file" in result.output
    assert isinstance(result.exception, SystemExit)


def test_events_columns_are_aligned(app: Flask) -> None:
    header, *rows = invoke(app, "events").output.splitlines()
    column = header.index("data.object")
    objects = {row[column:].split()[0] for row in rows}
    assert objects == {"benefit_verification", "prior_authorization", "provider_outreach"}
    assert all(row[column - 2 : column] == "  " for row in rows), rows


def test_replaying_a_dead_letter_that_gives_up_again_exits_1(
    durable: Callable[..., Flask],
) -> None:
    app = durable()

    @on(BV)
    def payer(event: Event) -> None:
        raise PermanentFailure("payer not in the contract list")

    payload = sample_payload(BV)
    assert send_webhook(app.test_client(), payload).json["status"] == "dead_letter"
    result = invoke(app, "replay", payload["event_id"])
    assert result.exit_code == 1
    assert f"{payload['event_id']}  dead_letter" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("send", "prior_authorization.message", "--legacy", "--url", "http://127.0.0.1:9/x"),
        ("send", BV, "--retries", "-1", "--url", "http://127.0.0.1:9/x"),
        ("replay", "wh_evt_x", "--since", "1d"),
        ("log", "--limit", "0"),
    ],
)
def test_meaningless_options_are_usage_errors(app: Flask, args: tuple[str, ...]) -> None:
    result = invoke(app, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_ids_with_control_characters_are_printed_and_logged_defanged(
    durable: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = durable()

    @on(BV)
    def broken(event: Event) -> None:
        raise RuntimeError("down")

    payload = sample_payload(BV)
    payload["event_id"] = "inj\nwebhook processed event=FAKE"
    caplog.set_level(logging.INFO, logger="flask_devhealth_webhooks")
    assert send_webhook(app.test_client(), payload).status_code == 500
    listed = invoke(app, "log")
    replayed = invoke(app, "replay", "--failed")
    assert "inj?webhook?processed?event=FAKE" in listed.output
    for text in (listed.output, replayed.output, caplog.text):
        assert "\nwebhook processed event=FAKE" not in text
