"""Accounts are opened with their organization now; an organization created before that (whose
account billing would have opened the first time it looked) gets it here, with the starter credit
it would have had then, posted and audited as ``billing.services.billing_account_open`` does."""

from decimal import Decimal

from django.conf import settings
from django.db import migrations


def open_missing_accounts(apps, schema_editor):
    Organization = apps.get_model('accounts', 'Organization')
    AuditLog = apps.get_model('accounts', 'AuditLog')
    BillingAccount = apps.get_model('billing', 'BillingAccount')
    LedgerEntry = apps.get_model('billing', 'LedgerEntry')
    credit = Decimal(settings.BILLING_SIGNUP_CREDIT_USD)
    for organization in Organization.objects.filter(billing_account__isnull=True).order_by('pk'):
        account = BillingAccount.objects.create(
            organization=organization, max_concurrent_sessions=settings.BILLING_MAX_CONCURRENT_SESSIONS
        )
        reference = f'grant:signup:{organization.pk}'
        if credit <= 0 or LedgerEntry.objects.filter(reference=reference).exists():
            continue
        entry = LedgerEntry.objects.create(
            account=account, kind='grant', amount=credit, reference=reference, description='Signup credit'
        )
        account.balance = credit
        account.save(update_fields=['balance'])
        AuditLog.objects.create(
            organization=organization,
            action='balance.credited',
            target=reference,
            detail={'kind': 'grant', 'amount': str(credit), 'balance': str(credit), 'ledger_entry': entry.pk},
        )


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_audit_organization_created'),
        ('billing', '0004_usage_session_id'),
    ]

    operations = [migrations.RunPython(open_missing_accounts, migrations.RunPython.noop)]
