"""Billing rules: accounts, admission, usage into records and ledger, top-ups, Stripe meter events.

``session_admission_check`` runs inside ``voice_session_create``'s transaction, with the
organization row locked, so two racing creates cannot both slip under a cap.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Organization
from agent_worker import contracts
from billing import stripe_gateway
from billing.models import BillingAccount, LedgerEntry, MeterEventReport, TopUpCheckout, UsageRecord
from billing.pricing import display, price_usage
from callmissed import queueing
from callmissed.errors import (
    ApplicationError,
    ConcurrencyLimit,
    IdempotencyConflict,
    PaymentRequired,
    UpstreamError,
    ValidationFailed,
)
from voice import lifecycle
from voice.models import VoiceSession

logger = logging.getLogger(__name__)

MICRO = Decimal(1_000_000)
MIN_TOP_UP = Decimal("5.00")
MAX_TOP_UP = Decimal("10000.00")
TOP_UP_CURRENCY = "usd"


def billing_account_get_or_create(
    *, organization: Organization, signup_credit: bool = True, signup_credit_claim: str = ""
) -> BillingAccount:
    """Every organization gets an account the first time billing looks, and with it the signup credit
    unless ``signup_credit`` is False (the signup's rule refused it).

    The credit is posted once per claim: the dashboard's signup passes the owner's normalized email,
    so a second organization for the same person starts at zero. Without a claim (operators, the
    management command) the organization itself is the claim."""
    account = BillingAccount.objects.filter(organization=organization).first()
    if account is not None:
        return account
    credit = Decimal(settings.BILLING_SIGNUP_CREDIT_USD) if signup_credit else Decimal(0)
    if signup_credit_claim:
        # The ledger's unique reference makes the claim race-free; hashed, so no email sits in it.
        reference = "grant:signup:claim:" + hashlib.sha256(signup_credit_claim.encode()).hexdigest()
    else:
        reference = f"grant:signup:{organization.pk}"
    with transaction.atomic():
        account, created = BillingAccount.objects.get_or_create(
            organization=organization,
            defaults={"max_concurrent_sessions": settings.BILLING_MAX_CONCURRENT_SESSIONS},
        )
        if created and credit > 0:
            granted = ledger_post(
                account=account,
                kind=LedgerEntry.Kind.GRANT,
                amount=credit,
                reference=reference,
                description="Signup credit",
            )
            if granted:
                account.refresh_from_db()
            else:
                logger.info("signup credit for organization %s refused: claim already used", organization.pk)
    return account


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_to_date_spend(*, organization: Organization, now: datetime | None = None) -> Decimal:
    since = month_start(now or timezone.now())
    total = UsageRecord.objects.filter(organization=organization, occurred_at__gte=since).aggregate(s=Sum("cost"))["s"]
    return total or Decimal(0)


def funds_problem(*, account: BillingAccount) -> str | None:
    """Why this account may not run sessions now, or None."""
    if account.payment_failed:
        return "The last payment failed; update the payment method in the billing portal."
    if account.prepaid and account.balance <= 0:
        return f"The prepaid balance is exhausted ({display(account.balance)} USD); top up to continue."
    cap = account.spend_cap_monthly
    if cap is not None and month_to_date_spend(organization=account.organization) >= cap:
        return f"The monthly spend cap of {display(cap)} USD is reached."
    return None


def session_admission_check(*, organization: Organization) -> None:
    """Raise PaymentRequired (402) or ConcurrencyLimit (429) when the org may not start a session."""
    account = billing_account_get_or_create(organization=organization)
    problem = funds_problem(account=account)
    if problem:
        raise PaymentRequired(problem)
    live = VoiceSession.objects.live().filter(organization=organization).count()
    if live >= account.max_concurrent_sessions:
        raise ConcurrencyLimit(
            f"This organization already has {live} live sessions, its limit is {account.max_concurrent_sessions}.",
            retry_after=settings.BILLING_CONCURRENCY_RETRY_AFTER_SECONDS,
        )


def ledger_post(*, account: BillingAccount, kind: str, amount: Decimal, reference: str, description: str = "") -> bool:
    """Change a balance once per reference; False when that reference was already posted."""
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
        _, created = LedgerEntry.objects.get_or_create(
            reference=reference,
            defaults={"account": locked, "kind": kind, "amount": amount, "description": description[:200]},
        )
        if created:
            locked.balance += amount
            locked.save(update_fields=["balance"])
    return created


@dataclass
class UsageApplied:
    records: list[UsageRecord] = field(default_factory=list)
    duplicate: bool = False


def usage_event_apply(*, event: contracts.UsageReported) -> UsageApplied | None:
    """Record one usage event as priced, immutable records and one ledger debit — once per event id.

    None when the session is unknown. Raises ``PriceMissing`` when a price is not configured, so the
    task retries (and an admin can add the row) rather than dropping billable usage."""
    session = VoiceSession.objects.select_related("organization").filter(pk=event.session_id).first()
    if session is None:
        return None
    account = billing_account_get_or_create(organization=session.organization)
    with transaction.atomic():
        # The account lock serialises usage per organization: a duplicate waits, then sees the rows.
        account = BillingAccount.objects.select_for_update().get(pk=account.pk)
        if UsageRecord.objects.filter(event_id=event.event_id).exists():
            return UsageApplied(duplicate=True)
        records = [
            _record(session=session, event=event, index=index, item=item)
            for index, item in enumerate(event.items)
            if item.quantity > 0
        ]
        total = sum((r.cost for r in records), Decimal(0))
        if records:
            LedgerEntry.objects.create(
                account=account,
                kind=LedgerEntry.Kind.USAGE,
                amount=-total,
                reference=f"usage:{event.event_id}",
                description=f"Session {session.pk}",
            )
            account.balance -= total
            account.save(update_fields=["balance"])
            _queue_meter_events(account=account, records=records)
        exhausted = funds_problem(account=account)
    if exhausted:
        _end_live_sessions(organization=session.organization, why=exhausted)
    return UsageApplied(records=records)


def _record(
    *, session: VoiceSession, event: contracts.UsageReported, index: int, item: contracts.UsageItem
) -> UsageRecord:
    quantity = Decimal(str(item.quantity)).quantize(Decimal("0.000001"))
    priced = price_usage(component=item.component, model=item.model, quantity=quantity, at=event.occurred_at)
    return UsageRecord.objects.create(
        event_id=event.event_id,
        index=index,
        organization=session.organization,
        session=session,
        component=item.component,
        model=item.model,
        provider=item.provider,
        quantity=quantity,
        occurred_at=event.occurred_at,
        price=priced.price,
        unit_price=priced.price.unit_price,
        per_units=priced.price.per_units,
        price_currency=priced.price.currency,
        usd_per_unit=priced.usd_per_unit,
        cost=priced.cost,
    )


def _queue_meter_events(*, account: BillingAccount, records: list[UsageRecord]) -> None:
    """One meter event per record, created in the same transaction so none is ever forgotten;
    the Celery task sends it after commit, and a periodic flush catches any that were not."""
    from billing import tasks  # the task module imports this one

    billable = stripe_gateway.enabled()
    reports = [
        MeterEventReport.objects.create(
            usage_record=record,
            identifier=f"cm-usage-{record.event_id}-{record.index}",
            value=int((record.cost * MICRO).to_integral_value()),
            status=MeterEventReport.Status.PENDING if billable else MeterEventReport.Status.SKIPPED,
        )
        for record in records
    ]
    if billable:
        ids = [r.pk for r in reports if r.value > 0]
        for report_id in ids:
            queueing.enqueue_on_commit(tasks.report_meter_event, report_id=report_id)


def _end_live_sessions(*, organization: Organization, why: str) -> None:
    # Sessions are locked one by one in primary-key order, as every other path does: no deadlock.
    live = VoiceSession.objects.live().filter(organization=organization).order_by("pk")
    for session_id in live.values_list("pk", flat=True):
        logger.info("Ending session %s: %s", session_id, why)
        lifecycle.voice_session_terminate(
            session_id=str(session_id), reason=contracts.EndReason.INSUFFICIENT_FUNDS, error=why
        )


def meter_event_send(*, report_id: int) -> MeterEventReport:
    """Tell Stripe about one usage record. Safe to repeat: Stripe keeps one event per identifier."""
    with transaction.atomic():
        report = MeterEventReport.objects.select_for_update().select_related("usage_record").get(pk=report_id)
        if report.status != MeterEventReport.Status.PENDING:
            return report
        report.attempts += 1
        report.save(update_fields=["attempts"])
    record = report.usage_record
    account = billing_account_get_or_create(organization=record.organization)
    customer_id = stripe_customer_ensure(account=account)
    try:
        stripe_gateway.meter_event_create(
            customer_id=customer_id, identifier=report.identifier, value=report.value, at=record.occurred_at
        )
    except stripe_gateway.StripeFailure as failure:
        MeterEventReport.objects.filter(pk=report.pk).update(last_error=str(failure)[:2000])
        raise
    MeterEventReport.objects.filter(pk=report.pk).update(
        status=MeterEventReport.Status.SENT, sent_at=timezone.now(), last_error=""
    )
    report.refresh_from_db()
    return report


def stripe_customer_ensure(*, account: BillingAccount) -> str:
    if account.stripe_customer_id:
        return account.stripe_customer_id
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().select_related("organization").get(pk=account.pk)
        if not locked.stripe_customer_id:
            org = locked.organization
            # The idempotency key makes a retried create return the same customer, never a second one.
            locked.stripe_customer_id = stripe_gateway.customer_create(
                name=org.name, organization_id=str(org.pk), idempotency_key=f"cm-customer-{org.pk}"
            )
            locked.save(update_fields=["stripe_customer_id"])
    account.stripe_customer_id = locked.stripe_customer_id
    return locked.stripe_customer_id


@dataclass(frozen=True)
class Checkout:
    id: str
    url: str


def checkout_create(
    *, organization: Organization, amount: Decimal, success_url: str, cancel_url: str, idempotency_key: str
) -> Checkout:
    """A Stripe Checkout Session for a top-up of ``amount`` USD, recorded as the only payment a
    webhook may credit. Stripe's refusals become typed errors; nothing is recorded unless Stripe
    created the session."""
    if not stripe_gateway.enabled():
        raise ValidationFailed("Payments are not configured on this server (STRIPE_SECRET_KEY is unset).")
    if not amount.is_finite() or not MIN_TOP_UP <= amount <= MAX_TOP_UP:
        raise ValidationFailed(
            fields={"amount_usd": [f"Top-ups are between {MIN_TOP_UP} and {MAX_TOP_UP} USD."]},
        )
    amount_cents = int((amount * 100).to_integral_value())
    account = billing_account_get_or_create(organization=organization)
    try:
        customer_id = stripe_customer_ensure(account=account)
        session_id, url = stripe_gateway.checkout_session_create(
            customer_id=customer_id,
            organization_id=str(organization.pk),
            amount_cents=amount_cents,
            currency=TOP_UP_CURRENCY,
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )
    except stripe_gateway.StripeFailure as failure:
        raise _checkout_error(failure) from failure
    # A replayed idempotency key returns the session already recorded.
    TopUpCheckout.objects.get_or_create(
        stripe_id=session_id,
        defaults={"organization": organization, "amount_cents": amount_cents, "currency": TOP_UP_CURRENCY},
    )
    return Checkout(id=session_id, url=url)


# Stripe's parameter names for what the client sent us.
_CHECKOUT_FIELDS = {"success_url": "success_url", "cancel_url": "cancel_url", "line_items": "amount_usd"}


def _checkout_error(failure: stripe_gateway.StripeFailure) -> ApplicationError:
    logger.warning("Stripe Checkout failed: %s", failure)
    if isinstance(failure, stripe_gateway.StripeRefused):
        if failure.idempotency:
            return IdempotencyConflict("This Idempotency-Key was already used for a different checkout.")
        param = (failure.param or "").split("[")[0]
        if param in _CHECKOUT_FIELDS:
            field_name = _CHECKOUT_FIELDS[param]
            reason = str(failure).split(": ", 1)[-1]
            return ValidationFailed(fields={field_name: [f"Stripe refused this value: {reason}"]})
    return UpstreamError("Stripe could not create the Checkout Session; try again shortly.")
