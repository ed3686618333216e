"""Usage records keep their session's id without a foreign key into the voice app.

The column (``session_id``) and its index stay as they are; only the constraint goes, and the
model's field becomes a plain UUID, so billing's models import nothing from voice.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0003_top_up_checkouts_and_event_attempts'),
        ('voice', '0001_initial'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerecord',
            name='session',
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name='+',
                to='voice.voicesession',
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name='usagerecord', name='session'),
                migrations.AddField(
                    model_name='usagerecord',
                    name='session_id',
                    field=models.UUIDField(db_index=True),
                    preserve_default=False,
                ),
            ],
        ),
    ]
