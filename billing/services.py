"""Billing rules: accounts, admission, usage into records and ledger, top-ups, Stripe meter events.

``session_admission_check`` runs inside ``voice_session_create``'s transaction, with the
organization row locked, so two racing creates cannot both slip under a cap. Every change to a
balance's credit or to an account's limits writes its audit row in the same transaction.

Billing never looks at sessions: the voice app passes what it knows (how many sessions are live,
whose session a usage event is) and acts on ``signals.balance_exhausted``.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Field, Model
from django.utils import timezone

from accounts.models import AuditLog, Organization
from agent_worker import contracts
from billing import signals, stripe_gateway
from billing.models import BillingAccount, LedgerEntry, MeterEventReport, TopUpCheckout, UsageRecord
from billing.pricing import PriceBook, PriceMissing, display
from billing.selectors import billing_account_get, month_to_date_spend
from callmissed import queueing
from callmissed.errors import (
    ApplicationError,
    ConcurrencyLimit,
    IdempotencyConflict,
    PaymentRequired,
    UpstreamError,
    ValidationFailed,
)

logger = logging.getLogger(__name__)

MICRO = Decimal(1_000_000)
MIN_TOP_UP = Decimal("5.00")
MAX_TOP_UP = Decimal("10000.00")
TOP_UP_CURRENCY = "usd"
MIN_ADMIN_CREDIT = Decimal("0.01")
# What a balance credit may be: usage debits are posted by ``usage_events_apply`` alone.
CREDIT_KINDS = (LedgerEntry.Kind.GRANT, LedgerEntry.Kind.TOP_UP, LedgerEntry.Kind.ADJUSTMENT)


def billing_account_open(
    *, organization: Organization, actor: User | None = None, starter_credit: bool = True, credit_claim: str = ""
) -> BillingAccount:
    """The organization's account, opened with it (in its creating transaction), with the starter
    credit unless ``starter_credit`` is False (the signup's rule refused it).

    The credit is posted once per claim: the dashboard's signup passes the owner's normalized email,
    so a second organization for the same person starts at zero. Without a claim (operators, the
    management command) the organization itself is the claim."""
    with transaction.atomic():
        account = BillingAccount.objects.create(
            organization=organization, max_concurrent_sessions=settings.BILLING_MAX_CONCURRENT_SESSIONS
        )
        credit = Decimal(settings.BILLING_SIGNUP_CREDIT_USD) if starter_credit else Decimal(0)
        if credit > 0:
            if credit_claim:
                # The ledger's unique reference makes the claim race-free; hashed, so no email sits in it.
                reference = "grant:signup:claim:" + hashlib.sha256(credit_claim.encode()).hexdigest()
            else:
                reference = f"grant:signup:{organization.pk}"
            granted = balance_credit(
                account=account,
                kind=LedgerEntry.Kind.GRANT,
                amount=credit,
                reference=reference,
                description="Signup credit",
                actor=actor,
            )
            if granted:
                account.refresh_from_db()
            else:
                logger.info("signup credit for organization %s refused: claim already used", organization.pk)
    return account


def balance_credit(
    *,
    account: BillingAccount,
    kind: str,
    amount: Decimal,
    reference: str,
    description: str = "",
    actor: User | None = None,
) -> bool:
    """Credit a balance once per ``reference`` (a signup grant, a Stripe top-up, an operator's
    adjustment), audited; False when that reference was already posted."""
    if kind not in CREDIT_KINDS:
        raise ValueError(f"{kind!r} is not a credit")
    if not amount.is_finite() or amount <= 0:
        raise ValidationFailed(fields={"amount": ["A credit is a positive amount of USD."]})
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
        entry, created = LedgerEntry.objects.get_or_create(
            reference=reference,
            defaults={"account": locked, "kind": kind, "amount": amount, "description": description[:200]},
        )
        if created:
            locked.balance += amount
            locked.save(update_fields=["balance"])
            AuditLog.objects.create(
                organization_id=locked.organization_id,
                actor=actor,
                action=AuditLog.Action.BALANCE_CREDITED,
                target=reference[:100],
                detail={"kind": kind, "amount": str(amount), "balance": str(locked.balance), "ledger_entry": entry.pk},
            )
    return created


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP
# What ``billing_limits_change`` changes (the admin's form edits exactly these).
LIMIT_FIELDS = ("prepaid", "spend_cap_monthly", "max_concurrent_sessions", "payment_failed")


def billing_limits_change(
    *,
    account: BillingAccount,
    actor: User | None = None,
    prepaid: bool | _Keep = KEEP,
    spend_cap_monthly: Decimal | _Keep | None = KEEP,
    max_concurrent_sessions: int | _Keep = KEEP,
    payment_failed: bool | _Keep = KEEP,
) -> BillingAccount:
    """Change an account's limits (what is not ``KEEP``), audited with each field's old and new
    value; no row when nothing changed. ``account`` is refreshed with what was saved."""
    wanted: dict[str, Any] = {
        "prepaid": prepaid,
        "spend_cap_monthly": spend_cap_monthly,
        "max_concurrent_sessions": max_concurrent_sessions,
        "payment_failed": payment_failed,
    }
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().get(pk=account.pk)
        changed: dict[str, list[Any]] = {}
        for name, value in wanted.items():
            old = getattr(locked, name)
            if value is not KEEP and value != old:
                setattr(locked, name, value)
                changed[name] = [_audit_value(old), _audit_value(value)]
        if changed:
            locked.full_clean()
            locked.save(update_fields=list(changed))
            AuditLog.objects.create(
                organization_id=locked.organization_id,
                actor=actor,
                action=AuditLog.Action.LIMITS_CHANGED,
                target=str(locked.pk),
                detail=changed,
            )
    account.refresh_from_db()
    return account


def _audit_value(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


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


def session_admission_check(*, account: BillingAccount, live_sessions: int) -> None:
    """Raise PaymentRequired (402) or ConcurrencyLimit (429) when the account's organization may
    not start one more session beside its ``live_sessions``."""
    problem = funds_problem(account=account)
    if problem:
        raise PaymentRequired(problem)
    if live_sessions >= account.max_concurrent_sessions:
        raise ConcurrencyLimit(
            f"This organization already has {live_sessions} live sessions, "
            f"its limit is {account.max_concurrent_sessions}.",
            retry_after=settings.BILLING_CONCURRENCY_RETRY_AFTER_SECONDS,
        )


@dataclass
class UsageApplied:
    # The records this call inserted (the events seen before insert none).
    records: list[UsageRecord] = field(default_factory=list)
    duplicate: bool = False
    # The organizations (by primary key) that may no longer run sessions after this usage: why.
    exhausted: dict[Any, str] = field(default_factory=dict)
    # Events left out for want of a price (everything else was applied): the caller raises it
    # once its transaction commits, so the task retries them after an admin adds the row.
    price_missing: PriceMissing | None = None


def usage_events_apply(
    *, events: Sequence[contracts.UsageReported], organizations: Mapping[str, Organization]
) -> UsageApplied:
    """Record usage events as priced, immutable records, billed to ``organizations[session id]``
    (the voice app knows whose session it is), with one ledger debit per organization for all
    that is new — each event id once, whether it repeats in ``events``, came alone or in an
    earlier call, or is being applied by another worker at this very moment: the records are
    inserted skipping the (event id, index) pairs already stored, and only what this call
    inserted is debited and reported to Stripe. A lone event is a batch of one.

    Prices are read once for all the events. An event priced only in part is left out whole
    (``price_missing``) and the rest applied: billable usage is never dropped, nor held up by
    another's missing price. Runs in the caller's transaction when there is one. An organization
    this usage leaves unable to pay gets ``signals.balance_exhausted``, once, after the commit
    (the voice app ends its live sessions)."""
    distinct = {event.event_id: event for event in events}.values()
    billable = [(event, [(i, item) for i, item in enumerate(event.items) if item.quantity > 0]) for event in distinct]
    billable = [(event, items) for event, items in billable if items]
    if not billable:
        return UsageApplied()
    book = PriceBook.load(
        items={(item.component, item.model) for _, items in billable for _, item in items},
        until=max(event.occurred_at for event, _ in billable),
    )
    records: list[UsageRecord] = []
    missing: PriceMissing | None = None
    for event, items in billable:
        organization = organizations[event.session_id]
        try:
            records += [
                _record_build(organization=organization, event=event, index=index, item=item, book=book)
                for index, item in items
            ]
        except PriceMissing as error:
            missing = missing or error
    if not records:
        return UsageApplied(price_missing=missing)
    with transaction.atomic(savepoint=False):
        inserted = _records_insert_new(records)
        exhausted = _debit(records=inserted) if inserted else {}
    return UsageApplied(records=inserted, duplicate=not inserted, exhausted=exhausted, price_missing=missing)


def _signal_low_balance(*, account: BillingAccount, before: Decimal, reference: str) -> None:
    threshold = Decimal(settings.BILLING_LOW_BALANCE_USD)
    if account.prepaid and before >= threshold > account.balance:
        signals.low_balance.send(sender=BillingAccount, account=account, threshold=threshold, reference=reference)


def _records_insert_new(records: list[UsageRecord]) -> list[UsageRecord]:
    """Insert the records whose (event id, index) is not stored yet and return those, with their
    primary keys: ``INSERT … ON CONFLICT DO NOTHING RETURNING``, which Django's ``bulk_create``
    cannot say (with ``ignore_conflicts`` it returns nothing). A record another transaction is
    inserting at the same moment waits for it and is skipped if it commits, so two workers
    applying the same event record it once, without locking anything first. Rows go in key order:
    two such inserts never hold each other's rows (no deadlock)."""
    records = sorted(records, key=lambda r: (r.event_id, r.index))
    meta = UsageRecord._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    columns = ", ".join(_column(UsageRecord, f.name) for f in fields)
    conflict = ", ".join(_column(UsageRecord, name) for name in ("event_id", "index"))
    returning = ", ".join(_column(UsageRecord, name) for name in ("id", "event_id", "index"))
    by_key = {(r.event_id, r.index): r for r in records}
    inserted: list[UsageRecord] = []
    step = connection.ops.bulk_batch_size(fields, records)
    with connection.cursor() as cursor:
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            values = ", ".join([f"({', '.join(['%s'] * len(fields))})"] * len(chunk))
            params = [f.get_db_prep_save(f.pre_save(r, add=True), connection) for r in chunk for f in fields]
            cursor.execute(
                f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) VALUES {values} "  # noqa: S608 (names from the model)
                f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}",
                params,
            )
            for pk, event_id, index in cursor.fetchall():
                record = by_key[(event_id, index)]
                record.pk = pk
                record._state.adding = False
                record._state.db = connection.alias
                inserted.append(record)
    inserted.sort(key=lambda r: (r.event_id, r.index))
    return inserted


def _debit(*, records: list[UsageRecord]) -> dict[Any, str]:
    """For the records just inserted: per organization, in key order (two batches never wait on
    each other's accounts in a cycle), one balance update and one ledger post named by its first
    record's event (only the transaction that inserted that event's records posts it); then the
    meter events. The balance is changed in the statement that reads it back, so an account's
    row is locked only from here to the commit. Returns the organizations left unable to pay."""
    by_organization: dict[Any, list[UsageRecord]] = {}
    for record in records:
        by_organization.setdefault(record.organization_id, []).append(record)
    posts: list[tuple[BillingAccount, Decimal, str, LedgerEntry]] = []
    for organization_id in sorted(by_organization, key=str):
        mine = by_organization[organization_id]
        total = sum((r.cost for r in mine), Decimal(0))
        account = _balance_subtract(organization=mine[0].organization, amount=total)
        sessions = sorted({str(r.session_id) for r in mine})
        entry = LedgerEntry(
            account=account,
            kind=LedgerEntry.Kind.USAGE,
            amount=-total,
            reference=f"usage:{mine[0].event_id}",
            description=f"Session{'s' if len(sessions) > 1 else ''} {', '.join(sessions)}"[:200],
        )
        posts.append((account, total, mine[0].event_id, entry))
    LedgerEntry.objects.bulk_create([entry for *_, entry in posts])
    _queue_meter_events(records=records)
    exhausted: dict[Any, str] = {}
    for account, total, event_id, _ in posts:
        _signal_low_balance(account=account, before=account.balance + total, reference=event_id)
        problem = funds_problem(account=account)
        if problem:
            exhausted[account.organization_id] = problem
            transaction.on_commit(
                partial(
                    signals.balance_exhausted.send,
                    sender=BillingAccount,
                    organization=account.organization,
                    reason=problem,
                )
            )
    return exhausted


def _balance_subtract(*, organization: Organization, amount: Decimal) -> BillingAccount:
    meta = BillingAccount._meta
    balance = _column(BillingAccount, "balance")
    sql = (
        f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {balance} = {balance} - %s "  # noqa: S608 (names from the model)
        f"WHERE {_column(BillingAccount, 'organization')} = %s RETURNING *"
    )
    balance_field, owner = meta.get_field("balance"), meta.get_field("organization")
    assert isinstance(balance_field, Field) and isinstance(owner, Field)
    params = [balance_field.get_db_prep_save(amount, connection), owner.get_db_prep_save(organization.pk, connection)]
    updated = list(BillingAccount.objects.raw(sql, params))
    if not updated:
        raise BillingAccount.DoesNotExist(f"Organization {organization.pk} has no billing account")
    updated[0].organization = organization
    return updated[0]


def _column(model: type[Model], name: str) -> str:
    """A field's column, quoted for raw SQL: the statements above say what the ORM cannot."""
    model_field = model._meta.get_field(name)
    assert isinstance(model_field, Field) and model_field.column
    return connection.ops.quote_name(model_field.column)


def _record_build(
    *,
    organization: Organization,
    event: contracts.UsageReported,
    index: int,
    item: contracts.UsageItem,
    book: PriceBook,
) -> UsageRecord:
    quantity = Decimal(str(item.quantity)).quantize(Decimal("0.000001"))
    priced = book.price(component=item.component, model=item.model, quantity=quantity, at=event.occurred_at)
    return UsageRecord(
        event_id=event.event_id,
        index=index,
        organization=organization,
        session_id=event.session_id,
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


def _queue_meter_events(*, records: list[UsageRecord]) -> None:
    """One meter event per record, inserted together in the same transaction so none is ever
    forgotten; the Celery task sends each after commit, and a periodic flush catches any that
    were not."""
    from billing import tasks  # the task module imports this one

    billable = stripe_gateway.enabled()
    reports = MeterEventReport.objects.bulk_create(
        [
            MeterEventReport(
                usage_record=record,
                identifier=f"cm-usage-{record.event_id}-{record.index}",
                value=int((record.cost * MICRO).to_integral_value()),
                status=MeterEventReport.Status.PENDING if billable else MeterEventReport.Status.SKIPPED,
            )
            for record in records
        ]
    )
    if billable:
        for report in reports:
            if report.value > 0:
                queueing.enqueue_on_commit(tasks.report_meter_event, report_id=report.pk)


def meter_event_send(*, report_id: int) -> MeterEventReport:
    """Tell Stripe about one usage record. Safe to repeat: Stripe keeps one event per identifier."""
    with transaction.atomic():
        report = MeterEventReport.objects.select_for_update().select_related("usage_record").get(pk=report_id)
        if report.status != MeterEventReport.Status.PENDING:
            return report
        report.attempts += 1
        report.save(update_fields=["attempts"])
    record = report.usage_record
    account = billing_account_get(organization=record.organization)
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
    account = billing_account_get(organization=organization)
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
