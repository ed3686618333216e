from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts import services


class Command(BaseCommand):
    help = "Create an API key for an organization (created if needed). The key is the last line of output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org_name", help="Organization name; created if it does not exist.")
        parser.add_argument("--name", default="", help="A label for the key, e.g. 'staging'.")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["org_name"].strip()
        if not name:
            self.stderr.write("ORG_NAME must not be empty.")
            raise SystemExit(2)
        org = services.organization_get_or_create(name=name)
        created = services.api_key_create(organization=org, name=options["name"])
        self.stdout.write(f"Organization: {org.name} ({org.id})")
        self.stdout.write(f"API key {created.api_key.prefix}… created. It is shown once; store it now:")
        self.stdout.write(created.plaintext)
