"""The ``flask devhealth ...`` commands: catalogue, tokens, sends, and the delivery log."""

from __future__ import annotations

import getpass
import json
import logging
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
from flask import current_app, url_for

from .blueprint import blueprint, deliver, get_state, load_event, parse_json
from .events import CATALOGUE, canonical_name, loggable
from .exceptions import DeliveryNotFound, NotReplayable, WebhookError
from .signals import notify, webhook_replayed
from .store import Delivery, utcnow
from .testing import encode_body, make_token, sample_payload, set_path, signing_claims

logger = logging.getLogger("flask_devhealth_webhooks")
cli = blueprint.cli

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LONGEST = timedelta(days=36500)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``45s`` or ``2w`` as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 15m or 45s.")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > _LONGEST.total_seconds():
        raise click.BadParameter(f"{text!r} is longer than {_LONGEST.days} days.")
    return timedelta(seconds=seconds)


class Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        return parse_duration(str(value))


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no login name in some containers
        return "unknown"


@cli.command("events")
def events_command() -> None:
    """List the event catalogue: canonical names, vendor aliases, legacy titles."""
    rows = [("event", "data.object", "also accepted as / legacy title")]
    for e in CATALOGUE:
        also = ", ".join([*e.aliases, *([repr(e.title)] if e.title else [])]) or "-"
        rows.append((e.name, e.object, also))
    _echo_table(rows)


@cli.command("token")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE", help="Extra claim.")
def token_command(claims: tuple[str, ...]) -> None:
    """Print a JWT signed with the app's first secret (for manual tests with curl)."""
    settings = get_state().settings
    extra = dict(_split_assignment(c) for c in claims)
    click.echo(make_token(settings.secrets[0], algorithm=settings.algorithms[0], **extra))


def _split_assignment(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise click.BadParameter(f"{text!r} must look like NAME=VALUE.")
    key, value = text.split("=", 1)
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


@cli.command("send")
@click.argument("source")
@click.option("--url", help="Full URL to POST to (default: this app's route on 127.0.0.1:5000).")
@click.option("--legacy", is_flag=True, help="Use the old title-only envelope.")
@click.option(
    "--set", "assignments", multiple=True, metavar="PATH=VALUE", help="e.g. data.status=failed"
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Retries on non-2xx answers.",
)
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per attempt.")
def send_command(
    source: str,
    url: str | None,
    legacy: bool,
    assignments: tuple[str, ...],
    retries: int,
    timeout: float,
) -> None:
    """Sign and POST a sample event (NAME) or a JSON file (FILE) over HTTP; print the answer."""
    if canonical_name(source) is not None:
        try:
            payload = sample_payload(source, legacy=legacy)
        except ValueError as exc:  # --legacy for an event that never had a title-only form
            raise click.BadParameter(str(exc), param_hint="--legacy") from None
    elif Path(source).is_file():
        try:
            payload = json.loads(Path(source).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise click.ClickException(f"{source} is not a UTF-8 JSON file.") from None
    else:
        raise click.BadParameter(
            f"{source!r} is neither a known event name nor a file; see `flask devhealth events`.",
            param_hint="SOURCE",
        )
    for assignment in assignments:
        path, value = _split_assignment(assignment)
        set_path(payload, path, value)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if url is None:
        with app.test_request_context():
            url = "http://127.0.0.1:5000" + url_for("devhealth_webhooks.receive")
    raw = encode_body(payload)
    settings = get_state().settings
    status = 0
    for attempt in range(retries + 1):
        token = make_token(
            settings.secrets[0], algorithm=settings.algorithms[0], **signing_claims(app, raw)
        )
        status, answer, retry_after = _post(url, raw, {settings.header: token}, timeout)
        click.echo(f"{status} {answer.strip()}")
        if 200 <= status < 300 or attempt == retries:
            break
        delay = retry_after if retry_after is not None else min(2.0**attempt, 30.0)
        click.echo(f"retrying in {delay:g}s ({attempt + 1}/{retries})", err=True)
        time.sleep(delay)
    if not 200 <= status < 300:
        raise SystemExit(1)


def _post(
    url: str, raw: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str, float | None]:
    request = urllib.request.Request(  # noqa: S310 - the URL is the operator's own
        url, data=raw, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace"), None
    except urllib.error.HTTPError as exc:
        retry = exc.headers.get("Retry-After")
        delay = min(float(retry), 60.0) if retry and retry.isdigit() else None
        return exc.code, exc.read().decode("utf-8", "replace"), delay
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, f"connection failed: {reason}", None


# -- the delivery log -------------------------------------------------------------------


def _since(value: timedelta | None) -> datetime | None:
    return None if value is None else utcnow() - value


def _fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@cli.command("log")
@click.option(
    "--state",
    type=click.Choice(["processing", "processed", "failed", "ignored", "dead_letter"]),
)
@click.option("--event", "event_name", help="Canonical event name or alias.")
@click.option("--since", type=Duration(), help="Only deliveries first received within, e.g. 2d.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def log_command(
    state: str | None,
    event_name: str | None,
    since: timedelta | None,
    limit: int,
    as_json: bool,
) -> None:
    """List received deliveries, newest first (metadata only, never payloads)."""
    if event_name is not None:
        event_name = canonical_name(event_name) or event_name
    rows = get_state().store.list(
        state=state, event_name=event_name, since=_since(since), limit=limit
    )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict()))
        return
    if not rows:
        click.echo("No deliveries match.")
        return
    header = ("received (UTC)", "delivery id", "event", "object id", "status", "state", "tries")
    table = [header] + [
        (
            _fmt_time(r.first_received_at),
            loggable(r.delivery_id),
            loggable(r.event_name),
            loggable(r.object_id),
            loggable(r.status),
            r.state,
            str(r.attempts),
        )
        for r in rows
    ]
    _echo_table(table)


def _echo_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows as left-aligned columns, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@cli.command("show")
@click.argument("delivery_id")
@click.option("--payload", "with_payload", is_flag=True, help="Also print the stored body (PHI).")
def show_command(delivery_id: str, with_payload: bool) -> None:
    """Show one delivery's metadata; its body only with --payload."""
    store = get_state().store
    try:
        row = store.get(delivery_id)
        click.echo(json.dumps(row.as_dict(), indent=2))
        if with_payload:
            logger.info(
                "webhook payload shown delivery_id=%s by=%s", loggable(delivery_id), _operator()
            )
            click.echo(json.dumps(json.loads(store.payload(delivery_id)), indent=2))
    except WebhookError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("replay")
@click.argument("delivery_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Replay every failed delivery.")
@click.option("--since", type=Duration(), help="With --failed: only those received within.")
@click.option("--force", is_flag=True, help="Rerun handlers that already succeeded too.")
def replay_command(
    delivery_ids: tuple[str, ...], failed: bool, since: timedelta | None, force: bool
) -> None:
    """Run stored deliveries through their handlers again, skipping those that succeeded."""
    if bool(delivery_ids) == failed:
        raise click.UsageError("Give delivery ids, or --failed, but not both.")
    if since is not None and not failed:
        raise click.UsageError("--since selects failed deliveries: use it with --failed.")
    store = get_state().store
    ids = list(delivery_ids)
    if failed:
        ids = [d.delivery_id for d in store.list(state="failed", since=_since(since), limit=None)]
        if not ids:
            click.echo("No failed deliveries to replay.")
            return
    results: dict[str, str] = {}
    if len(ids) > 5:
        progress: Any = click.progressbar(ids, label="Replaying", file=sys.stderr)
        with progress as bar:
            for delivery_id in bar:
                results[delivery_id] = replay_delivery(delivery_id, force=force)
    else:
        for delivery_id in ids:
            results[delivery_id] = replay_delivery(delivery_id, force=force)
    for delivery_id, outcome in results.items():
        hint = "  (already finished; --force reruns it)" if outcome == "duplicate" else ""
        click.echo(f"{loggable(delivery_id)}  {outcome}{hint}")
    fine = ("processed", "ignored")  # dead_letter: a handler gave up again
    finished = [d for d, o in results.items() if o == "duplicate"]
    bad = [d for d, o in results.items() if o not in fine and o != "duplicate"]
    summary = f"{len(results) - len(bad) - len(finished)} replayed, "
    if finished:
        summary += f"{len(finished)} already finished (nothing ran), "
    click.echo(summary + f"{len(bad)} not processed.")
    if bad:
        raise SystemExit(1)


def replay_delivery(delivery_id: str, *, force: bool = False) -> str:
    """Replay one stored delivery through the same bookkeeping as a live one; its outcome."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    store = get_state(app).store
    try:
        event = load_event(parse_json(store.payload(delivery_id)), {})
        outcome = deliver(app, store, event, None, replay=True, force=force).outcome
    except (DeliveryNotFound, NotReplayable) as exc:
        click.echo(str(exc), err=True)
        outcome = "not_found" if isinstance(exc, DeliveryNotFound) else "not_replayable"
    except WebhookError:
        outcome = "invalid_payload"
    else:
        notify(webhook_replayed, app, event=event, outcome=outcome)
    logger.info(
        "webhook replay delivery_id=%s outcome=%s force=%s by=%s at=%s",
        loggable(delivery_id),
        outcome,
        force,
        _operator(),
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return outcome


@cli.command("purge")
@click.option("--older-than", type=Duration(), help="Default: DEVHEALTH_WEBHOOKS_RETENTION_DAYS.")
@click.option("--payloads-only", is_flag=True, help="Keep metadata, drop stored bodies.")
def purge_command(older_than: timedelta | None, payloads_only: bool) -> None:
    """Delete finished deliveries (or their bodies) older than the retention period."""
    state = get_state()
    if older_than is None:
        days = state.settings.retention_days
        if days is None:
            raise click.UsageError("Give --older-than (DEVHEALTH_WEBHOOKS_RETENTION_DAYS is None).")
        older_than = timedelta(days=days)
    count = state.store.purge(older_than, payloads_only=payloads_only)
    what = "payloads" if payloads_only else "deliveries"
    logger.info(
        "webhook purge %s=%d older_than_s=%d by=%s",
        what,
        count,
        older_than.total_seconds(),
        _operator(),
    )
    click.echo(f"Purged {count} {what} older than {older_than}.")


__all__ = ["Delivery", "cli", "parse_duration", "replay_delivery"]
