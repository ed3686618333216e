from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services


class Command(BaseCommand):
    help = (
        "Give an organization (created if needed) a dashboard login with a new generated password; "
        "an existing login of that organization gets a new one. The password is the last line of output."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("org_name", help="Organization name; created if it does not exist.")
        parser.add_argument("--username", default="demo", help="The login's username (default: demo).")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["org_name"].strip()
        username = options["username"].strip()
        if not name or not username:
            raise CommandError("ORG_NAME and --username must not be empty.")
        org = services.organization_get_or_create(name=name)
        try:
            password = services.owner_login_set(organization=org, username=username)
        except services.LoginInUse as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Organization: {org.name} ({org.id})")
        self.stdout.write(f"Dashboard login {username!r}, owner of {org.name}. Its new password (shown once):")
        self.stdout.write(password)
