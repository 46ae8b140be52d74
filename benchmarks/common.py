"""Shared pieces: bodies, signed deliveries, WSGI environs, statistics, machine, gunicorn."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import platform
import secrets
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from flask_devhealth_webhooks.testing import make_token, sample_payload
from tests.serving import Server, serve

from .apps import HEADER, PEER_EVENT, SECRET

ROOT = Path(__file__).resolve().parent.parent
EVENT_ID_SLOT = "wh_evt_0000000000000000"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# -- bodies -----------------------------------------------------------------------------------


def base_body(target: int = 1024) -> dict[str, Any]:
    """A benefit verification body trimmed to about ``target`` bytes (compact JSON)."""
    body = sample_payload("benefit_verification.updated")
    body["event_id"] = EVENT_ID_SLOT
    body["occurred_at"] = "2026-07-29T18:12:04+00:00"
    data = body["data"]
    trims: list[tuple[dict[str, Any], str]] = [
        (data, "provider"),
        (data, "insurance"),
        (data, "verification_methods"),
        (data, "drug_history"),
        (data, "diagnoses"),
        (data["patient"], "address"),
        (data["drugs"][0], "determination_details"),
        (data, "status_description"),
    ]
    for parent, key in trims:
        if len(encode(body)) <= target:
            break
        parent.pop(key, None)
    return body


def grown_body(target: int) -> dict[str, Any]:
    """The 1 KB body with its ``drugs`` list grown until it is about ``target`` bytes."""
    body = base_body()
    drugs: list[Any] = body["data"]["drugs"]
    drug = drugs[0]
    step = len(encode(drug)) + 1
    size = len(encode(body))
    while size + step <= target:
        drugs.append(drug)
        size += step
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# -- signed deliveries ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One unique delivery: the raw body and the headers a given app expects."""

    raw: bytes
    headers: Mapping[str, str]


def jwt_headers(raw: bytes) -> dict[str, str]:
    return {HEADER: make_token(SECRET), "Content-Type": "application/json"}


def peer_headers(raw: bytes, delivery_id: str) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), raw, hashlib.sha1).hexdigest()
    return {
        "X-Hub-Signature": "sha1=" + digest,
        "X-Github-Event": PEER_EVENT,
        "X-Github-Delivery": delivery_id,
        "Content-Type": "application/json",
    }


class DeliveryFactory:
    """Unique deliveries of one body: a fresh ``event_id`` and a fresh token each."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        template = encode(body)
        slot = EVENT_ID_SLOT.encode()
        if template.count(slot) != 1:
            raise ValueError("the body must hold the event_id slot exactly once")
        self.prefix, self.suffix = template.split(slot)
        self.size = len(template)

    def make(self, kind: str) -> Delivery:
        event_id = "wh_evt_" + secrets.token_hex(8)
        raw = self.prefix + event_id.encode() + self.suffix
        if kind == "peer":
            return Delivery(raw, peer_headers(raw, event_id))
        return Delivery(raw, jwt_headers(raw))

    def many(self, kind: str, n: int) -> list[Delivery]:
        return [self.make(kind) for _ in range(n)]


# -- calling a WSGI app directly --------------------------------------------------------------


def environ(path: str, delivery: Delivery) -> dict[str, Any]:
    """A WSGI environ for ``POST path`` with the delivery's body and headers."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_LENGTH": str(len(delivery.raw)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(delivery.raw),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in delivery.headers.items():
        key = name.upper().replace("-", "_")
        env[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    return env


def call(app: WSGIApp, env: dict[str, Any]) -> int:
    """Run one request through ``app``; return the HTTP status code."""
    status: list[str] = []

    def start_response(s: str, _headers: Any, _exc_info: Any = None) -> Callable[[bytes], None]:
        status.append(s)
        return lambda _data: None

    result = app(env, start_response)
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0][:3])


# -- statistics -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p10: float
    median: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        ordered = sorted(values)
        return cls(
            len(ordered),
            percentile(ordered, 0.10),
            percentile(ordered, 0.50),
            percentile(ordered, 0.90),
            percentile(ordered, 0.99),
        )


# -- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_description(postgres: str | None = None) -> list[tuple[str, str]]:
    packages = ("flask", "werkzeug", "pyjwt", "marshmallow", "sqlalchemy", "blinker")
    rows = [
        ("CPU", f"{cpu_model()}, {os.cpu_count()} logical CPUs"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("SQLite", sqlite3.sqlite_version),
        ("flask-devhealth-webhooks", _version("flask-devhealth-webhooks")),
        ("libraries", ", ".join(f"{p} {_version(p)}" for p in packages)),
        (
            "servers and peers",
            ", ".join(f"{p} {_version(p)}" for p in ("gunicorn", "github-webhook", "psycopg")),
        ),
    ]
    if postgres:
        rows.append(("PostgreSQL", postgres))
    return rows


# -- gunicorn ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def gunicorn(
    spec: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    timeout: float = 30.0,
    log_path: Path | None = None,
) -> Iterator[Server]:
    """``gunicorn spec`` on a free loopback port with ``workers`` sync workers; stopped after."""
    with serve(
        spec,
        env=env,
        workers=workers,
        timeout=timeout,
        log_path=log_path,
        extra_args=["--backlog", "256"],
    ) as server:
        yield server


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
