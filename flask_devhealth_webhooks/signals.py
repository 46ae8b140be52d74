"""Blinker signals: one per event, the lifecycle signals, ``on()`` and the dispatch loop.

Event signals are sent with the ``Event`` as sender, so a handler is simply ``fn(event)``.
Lifecycle signals follow Flask's convention: the app is the sender, data in keyword arguments.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from inspect import iscoroutinefunction
from typing import Any, TypeVar

from blinker import NamedSignal, Namespace, Signal

from .events import ANY, CATALOGUE, Event, canonical_name, closest_names, loggable

#: Event signals, by canonical name (or uncatalogued vendor name); nothing else lives here, so
#: no ``event_type`` a sender chooses can reach a lifecycle signal or the catch-all.
logger = logging.getLogger("flask_devhealth_webhooks")

_events = Namespace()
#: Lifecycle signals (sender: the app).
_signals = Namespace()

#: One signal per catalogued event, keyed by canonical name; vendor aliases share the signal.
EVENT_SIGNALS: dict[str, Signal] = {
    e.name: _events.signal(e.name, doc=e.description) for e in CATALOGUE
}
benefit_verification_updated = EVENT_SIGNALS["benefit_verification.updated"]
prior_authorization_updated = EVENT_SIGNALS["prior_authorization.updated"]
prior_authorization_determination = EVENT_SIGNALS["prior_authorization.determination"]
#: Every delivery, catalogued or not, once per delivery (``@on("*")``).
any_event = Signal("Every verified delivery, including unknown event types.")

webhook_received = _signals.signal(
    "webhook-received", doc="A delivery passed verification and schema checks: ``event=``."
)
webhook_rejected = _signals.signal(
    "webhook-rejected",
    doc="A delivery was refused before dispatch: ``reason=`` (error code), ``status_code=``.",
)
webhook_processed = _signals.signal(
    "webhook-processed",
    doc="Every handler succeeded: ``event=``, ``outcome=`` (``processed`` or ``ignored``).",
)
webhook_failed = _signals.signal(
    "webhook-failed", doc="At least one handler raised: ``event=``, ``failures=`` (HandlerFailure)."
)
webhook_duplicate = _signals.signal(
    "webhook-duplicate", doc="A delivery already finished arrived again: ``event=``."
)
webhook_in_progress = _signals.signal(
    "webhook-in-progress", doc="A delivery is being processed elsewhere: ``event=``."
)
webhook_replayed = _signals.signal(
    "webhook-replayed", doc="A stored delivery was replayed: ``event=``, ``outcome=``."
)
event_dispatched = _signals.signal(
    "event-dispatched", doc="An Event (derived ones included) is about to reach its handlers."
)

Handler = Callable[[Event], Any]
F = TypeVar("F", bound=Handler)


def event_signal(name: str) -> Signal:
    """The signal for a canonical name, an alias, ``"*"`` or an uncatalogued vendor name."""
    if name == ANY:
        return any_event
    return _events.signal(canonical_name(name) or name)


def on(name: str, *, strict: bool = True) -> Callable[[F], F]:
    """Register ``fn(event)`` for an event (canonical name, vendor alias or ``"*"``).

    The handler is held by a strong reference, so one defined inside a function keeps firing.
    With ``strict=False`` a name the catalogue does not know yet is accepted as sent.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("on() needs an event name such as 'benefit_verification.updated'.")
    if strict and name != ANY and canonical_name(name) is None:
        hint = ", ".join(repr(n) for n in closest_names(name)) or "see `flask devhealth events`"
        raise ValueError(
            f"Unknown Develop Health event {name!r}. Closest known names: {hint}. "
            "Pass strict=False to subscribe to a vendor event not catalogued yet."
        )
    signal = event_signal(name)

    def decorator(fn: F) -> F:
        signal.connect(fn, weak=False)
        return fn

    return decorator


def handler_key(event_name: str, fn: Callable[..., Any]) -> str:
    """A stable name for one handler of one event, as recorded in the delivery log."""
    return f"{event_name}:{qualified_name(fn)}"


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, a callable object, or what a partial wraps."""
    fn = getattr(fn, "func", fn)  # functools.partial: name the function it wraps
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


@dataclass(frozen=True)
class HandlerFailure:
    """One handler that raised while a delivery was dispatched."""

    handler: str
    exception: BaseException


def notify(signal: Signal, app: Any, **data: Any) -> None:
    """Send a lifecycle signal; a receiver that raises is logged, never turned into a 500.

    The request's answer must stay JSON and the delivery's bookkeeping must go on whatever an
    observer does. Each receiver is called here rather than by ``signal.send``, which stops at
    the first that raises: one observer's bug must not silence the others.
    """
    if not signal.receivers or signal.is_muted:
        return
    for receiver_id in _in_order(signal, app):
        # Looked up again just before the call: an earlier receiver may have disconnected it
        # (blinker's send() skips it then), or dropped the last reference to a weak one.
        receiver = _resolve(signal.receivers.get(receiver_id))
        if receiver is None:
            continue
        try:
            if iscoroutinefunction(receiver):
                raise TypeError("lifecycle signals are sent synchronously")  # as send() would
            receiver(app, **data)
        except Exception as exc:  # an observer's bug must not lose or alter the delivery
            logger.error(
                "webhook signal receiver failed signal=%s receiver=%s exception=%s",
                signal.name if isinstance(signal, NamedSignal) else "?",
                loggable(qualified_name(receiver)),
                type(exc).__name__,
            )


def _resolve(ref: Any) -> Any:
    """A receiver from ``signal.receivers``: the object, or what its weak reference holds."""
    return ref() if isinstance(ref, weakref.ref) else ref


def _in_order(signal: Signal, sender: Any) -> list[Any]:
    """The ids (keys of ``signal.receivers``) of the receivers for ``sender``, in the order
    they were connected.

    blinker yields receivers from a set; ``signal.receivers`` keeps connection order. Matched
    by equality, not ``id()``: a weakly held bound method resolves to a new object each time.
    Ids, not receivers, so that a weak receiver dropped meanwhile is not kept alive here.
    """
    found = list(signal.receivers_for(sender))
    if not found:
        return []
    return [
        receiver_id
        for receiver_id, ref in list(signal.receivers.items())
        if (target := _resolve(ref)) is not None and target in found
    ]


def _receivers(signal: Signal, sender: Any) -> list[Callable[..., Any]]:
    """The receivers for ``sender``, in the order they were connected (see ``_in_order``)."""
    if not signal.receivers:
        return []
    found = list(signal.receivers_for(sender))
    if len(found) < 2:  # the usual case: one handler per event
        return found
    live = (_resolve(signal.receivers.get(rid)) for rid in _in_order(signal, sender))
    return [receiver for receiver in live if receiver is not None]


@dataclass
class DispatchResult:
    """What one dispatch did: handlers that ran, succeeded, were skipped, and failures."""

    ran: int = 0
    skipped: int = 0
    stopped: bool = False
    succeeded: list[str] = field(default_factory=list)
    failures: list[HandlerFailure] = field(default_factory=list)


def dispatch(
    app: Any,
    event: Event,
    *,
    skip: Collection[str] = (),
    on_success: Callable[[list[str]], bool] | None = None,
) -> DispatchResult:
    """Call every handler of ``event`` (and of the events it derives), one by one.

    A handler that raises does not stop the others; failures are collected and returned.
    Handlers whose key is in ``skip`` (already succeeded for this delivery) are not called.
    ``on_success`` receives the growing list of succeeded keys after each success but the
    last, so a crash mid-delivery loses no bookkeeping; when it returns False (the delivery
    was taken over by another worker) no further handler is called and ``stopped`` is set.
    """
    calls: list[tuple[str, Callable[..., Any], Event]] = []
    for ev in (event, *event.derived()):
        notify(event_dispatched, app, event=ev)
        # Looked up, not created: a signal per vendor name sent would pile up in the namespace.
        # A delivery naming "*" finds no signal here: the catch-all is not in this namespace.
        signal = _events.get(canonical_name(ev.name) or ev.name)
        for fn in _receivers(signal, ev) if signal is not None else ():
            calls.append((handler_key(ev.name, fn), fn, ev))
    for fn in _receivers(any_event, event):
        calls.append((handler_key(ANY, fn), fn, event))
    # Handlers with one name (made by one factory, say) are told apart by registration order.
    seen: dict[str, int] = {}
    for index, (key, fn, ev) in enumerate(calls):
        seen[key] = count = seen.get(key, 0) + 1
        if count > 1:
            calls[index] = (f"{key}#{count}", fn, ev)

    result = DispatchResult()
    last = len(calls) - 1
    for index, (key, fn, ev) in enumerate(calls):
        if key in skip:
            result.skipped += 1
            continue
        result.ran += 1
        try:
            fn(ev)
        except Exception as exc:  # every handler runs; failures are reported
            result.failures.append(HandlerFailure(key, exc))
            continue
        result.succeeded.append(key)
        if on_success is not None and index != last and not on_success(list(result.succeeded)):
            result.stopped = True
            break
    return result
