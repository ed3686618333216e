"""``create_login``: what ``make run`` prints so that its key's sessions can be seen in the dashboard."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.models import Membership
from accounts.tests.factories import make_org

pytestmark = pytest.mark.django_db


def _create_login(*args: str) -> str:
    out = StringIO()
    call_command("create_login", *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_the_login_is_an_owner_of_the_same_organization_as_the_key() -> None:
    key_out = StringIO()
    call_command("create_api_key", "Demo", stdout=key_out)
    password = _create_login("Demo", "--username", "demo")

    membership = Membership.objects.select_related("organization").get(user__username="demo")
    assert membership.organization.name == "Demo" and membership.role == Membership.Role.OWNER
    client = Client()
    assert client.login(username="demo", password=password)
    keys_page = client.get("/dashboard/keys/").content.decode()
    assert key_out.getvalue().strip().splitlines()[-1][:10] in keys_page


def test_each_run_replaces_the_password_and_the_old_one_stops_working() -> None:
    first = _create_login("Demo")
    second = _create_login("Demo")
    assert first != second and len(second) == 20 and second.isalnum()
    assert not Client().login(username="demo", password=first)
    assert Client().login(username="demo", password=second)
    assert Membership.objects.filter(user__username="demo").count() == 1


def test_a_login_of_another_organization_is_refused_and_keeps_its_password() -> None:
    make_org(name="Other")
    password = _create_login("Other", "--username", "meera")
    with pytest.raises(CommandError, match="another organization"):
        _create_login("Demo", "--username", "meera")
    assert Client().login(username="meera", password=password)
