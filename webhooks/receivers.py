"""Turn voice's and billing's signals into webhook events, inside the transaction of the change:
the deliveries commit with it. A failure here is logged and rolled back to its savepoint, never
raised into the session's or the debit's transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.dispatch import receiver

from billing import signals as billing_signals
from billing.models import BillingAccount
from voice import events as voice_events
from voice.models import VoiceSession
from webhooks import payloads, services
from webhooks.models import EventType

logger = logging.getLogger(__name__)


def _emit(emit: Callable[[], Any], what: str) -> None:
    try:
        with transaction.atomic():
            emit()
    except Exception:
        logger.exception("Could not record the %s webhook event", what)


@receiver(voice_events.session_started, dispatch_uid="webhooks.session_started")
def on_session_started(sender: Any, session: VoiceSession, **kwargs: Any) -> None:
    _emit(
        lambda: services.webhook_event_emit(
            organization_id=session.organization_id,
            event_type=EventType.SESSION_STARTED,
            source=str(session.pk),
            data=lambda: payloads.session_started(session),
        ),
        EventType.SESSION_STARTED,
    )


@receiver(voice_events.session_ended, dispatch_uid="webhooks.session_ended")
def on_session_ended(sender: Any, session: VoiceSession, **kwargs: Any) -> None:
    event_type = EventType.SESSION_FAILED if session.status == VoiceSession.Status.FAILED else EventType.SESSION_ENDED
    _emit(
        lambda: services.webhook_event_emit(
            organization_id=session.organization_id,
            event_type=event_type,
            source=str(session.pk),
            data=lambda: payloads.session_ended(session),
        ),
        event_type,
    )


@receiver(billing_signals.low_balance, dispatch_uid="webhooks.low_balance")
def on_low_balance(sender: Any, account: BillingAccount, threshold: Decimal, reference: str, **kwargs: Any) -> None:
    _emit(
        lambda: services.webhook_event_emit(
            organization_id=account.organization_id,
            event_type=EventType.BILLING_LOW_BALANCE,
            source=reference,
            data=lambda: payloads.low_balance(account, threshold),
        ),
        EventType.BILLING_LOW_BALANCE,
    )
