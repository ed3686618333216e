"""Billing's part in other apps' events."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.dispatch import receiver

from accounts.models import Organization
from accounts.signals import organization_created
from billing import services


@receiver(organization_created, dispatch_uid="billing.open_account")
def open_account(
    sender: Any,
    organization: Organization,
    actor: User | None = None,
    starter_credit: bool = True,
    credit_claim: str = "",
    **kwargs: Any,
) -> None:
    """Every organization has its account from the start: reads never have to create one."""
    services.billing_account_open(
        organization=organization, actor=actor, starter_credit=starter_credit, credit_claim=credit_claim
    )
