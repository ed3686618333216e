from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Organization(models.Model):
    """The tenant: every session, key, usage record and charge belongs to one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


class ApiKey(models.Model):
    """A secret ``cm_…`` key, stored only as its SHA-256 hash; the plaintext is shown once."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, db_index=True, help_text="Visible start of the key, for listing.")
    last4 = models.CharField(max_length=4)
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}…{self.last4}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class SocketTicket(models.Model):
    """A single-use credential for one legacy-WebSocket connection (``?ticket=``), minted for a
    logged-in dashboard user so the browser playground never holds an API key. Stored only as its
    SHA-256 hash, bound to the user and their organization, valid for ``SOCKET_TICKET_TTL_SECONDS``
    and deleted as the socket that presents it connects."""

    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"socket ticket for {self.user_id} until {self.expires_at:%H:%M:%S}"


class AuditLog(models.Model):
    """Security- and money-relevant changes, written in the same transaction as the change."""

    class Action(models.TextChoices):
        ORGANIZATION_CREATED = "organization.created"
        API_KEY_CREATED = "api_key.created"
        API_KEY_REVOKED = "api_key.revoked"
        BALANCE_CREDITED = "balance.credited"
        LIMITS_CHANGED = "limits.changed"
        SESSION_DELETED = "session.deleted"
        WEBHOOK_CREATED = "webhook.created"
        WEBHOOK_UPDATED = "webhook.updated"
        WEBHOOK_DELETED = "webhook.deleted"
        WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"
        WEBHOOK_DISABLED = "webhook.disabled"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="audit_log")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=40, choices=Action.choices)
    target = models.CharField(max_length=100, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"
