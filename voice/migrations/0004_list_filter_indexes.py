from typing import Any

from django.db import migrations, models


def _create_metadata_index(apps: Any, schema_editor: Any) -> None:
    # GIN exists on PostgreSQL only; the SQLite of development filters metadata without it.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS session_metadata ON voice_voicesession USING gin (metadata jsonb_path_ops)"
        )


def _drop_metadata_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS session_metadata")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_audit_organization_created"),
        ("voice", "0003_session_room_delete_and_key_revoked"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="voicesession",
            index=models.Index(
                fields=["organization", "transport", "-created_at", "-id"], name="session_org_transport"
            ),
        ),
        migrations.RunPython(_create_metadata_index, _drop_metadata_index),
    ]
