"""Login and signup throttles, and the signup credit that scripted signups must not farm."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from accounts.models import Membership
from accounts.services import email_identity
from billing.selectors import billing_account_get
from callmissed import ratelimit
from testsupport.processes import free_port

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple 42"
START = 1_900_022_400.0  # a UTC midnight: every window (minute, 15 min, hour, day) starts here


@pytest.fixture(autouse=True)
def production_limits(settings: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """The documented defaults (the test settings raise them for everyone else) on a clock that stands still."""
    settings.LOGIN_RATE_LIMIT = "10/min"
    settings.LOGIN_FAILURE_LIMIT = "5/15min"
    settings.SIGNUP_RATE_LIMIT = "5/hour"
    settings.BILLING_SIGNUP_CREDITS_PER_IP = "2/day"
    clock = {"now": START}
    monkeypatch.setattr(ratelimit, "clock", lambda: clock["now"])
    return clock


def _address() -> str:
    """A fresh client address per test: counters in the shared Redis outlive a test."""
    raw = uuid.uuid4().int
    return f"10.{raw % 250}.{(raw >> 8) % 250}.{(raw >> 16) % 250 + 1}"


def _client(address: str | None = None) -> Client:
    return Client(REMOTE_ADDR=address or _address())


def _user(username: str = "") -> User:
    username = username or f"u{uuid.uuid4().hex[:10]}"
    return User.objects.create_user(username=username, email=f"{username}@example.com", password=PASSWORD)


def _signup(client: Client, email: str = "", **extra: str) -> Any:
    name = uuid.uuid4().hex[:10]
    return client.post(
        "/signup/",
        {
            "username": extra.get("username", f"s{name}"),
            "email": email or f"{name}@example.com",
            "organization_name": extra.get("organization_name", f"Org {name}"),
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )


def _balance(username: str) -> Decimal:
    """What the dashboard will show: billing looks at the organization as it does on any page."""
    org = Membership.objects.get(user__username=username).organization
    return billing_account_get(organization=org).balance


# --- login -------------------------------------------------------------------------------------


def test_the_eleventh_login_attempt_from_one_address_in_a_minute_gets_429_with_retry_after() -> None:
    client = _client()
    for i in range(10):
        response = client.post("/login/", {"username": f"nobody{i}", "password": "wrong"})
        assert response.status_code == 200  # the ordinary "wrong password" page
    response = client.post("/login/", {"username": "meera", "password": "wrong"})
    assert response.status_code == 429
    assert response["Retry-After"] == "60"
    page = response.content.decode()
    assert "Too many attempts" in page
    assert 'value="meera"' in page  # the form comes back as the user filled it
    assert "wrong" not in page  # but never the password


def test_a_throttled_login_never_reaches_the_password_check() -> None:
    user = _user()
    client = _client()
    for i in range(10):
        client.post("/login/", {"username": f"nobody{i}", "password": "wrong"})
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_burst_from_one_address_gets_exactly_ten_attempts() -> None:
    address = _address()
    barrier = threading.Barrier(25)
    statuses: list[int] = []

    def attempt(i: int) -> None:
        try:
            barrier.wait()
            status = _client(address).post("/login/", {"username": f"burst{i}", "password": "wrong"}).status_code
            statuses.append(status)
        finally:
            connection.close()

    workers = [threading.Thread(target=attempt, args=(i,)) for i in range(25)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(statuses) == [200] * 10 + [429] * 15


def test_the_login_window_ends_and_the_address_may_try_again(production_limits: dict[str, float]) -> None:
    client = _client()
    for i in range(11):
        client.post("/login/", {"username": f"nobody{i}", "password": "wrong"})
    production_limits["now"] = START + 60
    assert client.post("/login/", {"username": "nobody", "password": "wrong"}).status_code == 200


def test_five_failed_logins_lock_the_username_for_every_address() -> None:
    user = _user()
    for _ in range(5):
        assert _client().post("/login/", {"username": user.username, "password": "guess"}).status_code == 200
    # A guessing run spread over many addresses: the sixth try is refused, right password or not.
    response = _client().post("/login/", {"username": user.username.upper(), "password": PASSWORD})
    assert response.status_code == 429
    assert response["Retry-After"] == "900"


def test_a_browser_that_signed_in_before_is_not_locked_out_by_a_strangers_guesses() -> None:
    user = _user()
    own_browser = _client()
    assert own_browser.post("/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    own_browser.post("/logout/")
    for _ in range(6):
        _client().post("/login/", {"username": user.username, "password": "guess"})
    assert _client().post("/login/", {"username": user.username, "password": PASSWORD}).status_code == 429
    # The owner's own browser carries the signed device cookie of its last sign-in.
    assert own_browser.post("/login/", {"username": user.username, "password": PASSWORD}).status_code == 302


def test_a_successful_login_clears_the_usernames_failures() -> None:
    user = _user()
    for _ in range(4):
        _client().post("/login/", {"username": user.username, "password": "guess"})
    assert _client().post("/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    for _ in range(5):
        assert _client().post("/login/", {"username": user.username, "password": "guess"}).status_code == 200


def test_the_admin_login_is_behind_the_same_throttles() -> None:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    for _ in range(5):
        assert _client().post("/admin/login/", {"username": "root", "password": "guess"}).status_code == 200
    client = _client()
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert response.status_code == 429 and response["Retry-After"] == "900"
    assert "Too many attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_login_still_works_when_the_cache_is_down(settings: Any) -> None:
    user = _user()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    response = _client().post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302


# --- signup ------------------------------------------------------------------------------------


def test_the_sixth_signup_from_one_address_in_an_hour_gets_429_and_creates_nothing() -> None:
    client = _client()
    for _ in range(5):
        assert _signup(Client(REMOTE_ADDR=client.defaults["REMOTE_ADDR"])).status_code == 302
    users = User.objects.count()
    response = _signup(client, email="sixth@example.com", username="sixth", organization_name="Sixth Org")
    assert response.status_code == 429
    assert response["Retry-After"] == "3600"
    page = response.content.decode()
    assert 'value="sixth@example.com"' in page and 'value="Sixth Org"' in page
    assert PASSWORD not in page
    assert User.objects.count() == users


# --- signup credit -----------------------------------------------------------------------------


def test_a_first_organization_gets_the_signup_credit() -> None:
    response = _signup(_client(), username="asha", email="asha@example.com")
    assert response.status_code == 302
    assert _balance("asha") == Decimal("5.00")


def test_scripted_signups_from_one_address_get_the_credit_only_twice_a_day(
    production_limits: dict[str, float],
) -> None:
    address = _address()
    names = [f"bot{i}{uuid.uuid4().hex[:6]}" for i in range(5)]
    for name in names[:4]:
        assert _signup(_client(address), username=name).status_code == 302
    assert [_balance(name) for name in names[:4]] == [Decimal("5.00"), Decimal("5.00"), Decimal(0), Decimal(0)]
    production_limits["now"] = START + 86400  # the next UTC day
    assert _signup(_client(address), username=names[4]).status_code == 302
    assert _balance(names[4]) == Decimal("5.00")


def test_one_person_gets_the_signup_credit_once_however_the_address_is_spelled() -> None:
    local = f"p{uuid.uuid4().hex[:8]}"
    spellings = [f"{local}@gmail.com", f"{local[:3]}.{local[3:]}+second@gmail.com", f"{local.upper()}+x@googlemail.com"]
    balances = []
    for i, email in enumerate(spellings):
        username = f"{local}{i}"
        assert _signup(_client(), username=username, email=email).status_code == 302
        balances.append(_balance(username))
    assert balances == [Decimal("5.00"), Decimal(0), Decimal(0)]


def test_no_signup_credit_while_the_cache_is_down_but_the_signup_succeeds(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    assert _signup(_client(), username="outage").status_code == 302
    assert _balance("outage") == Decimal(0)


@pytest.mark.parametrize(
    ("email", "identity"),
    [
        ("A.Sha+news@Gmail.com", "asha@gmail.com"),
        ("asha@googlemail.com", "asha@gmail.com"),
        ("a.sha+x@example.com", "a.sha@example.com"),  # dots matter outside Gmail
    ],
)
def test_email_identity_names_one_inbox_one_way(email: str, identity: str) -> None:
    assert email_identity(email) == identity
