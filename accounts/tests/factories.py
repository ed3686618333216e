from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from accounts import services
from accounts.models import Organization


class OrganizationFactory(factory.django.DjangoModelFactory[Organization]):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")

    @classmethod
    def _create(cls, model_class: type[Organization], *args: object, **kwargs: object) -> Organization:
        # Through the service, as every real organization is made: audited, with its billing account.
        return services.organization_get_or_create(name=str(kwargs["name"]))


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery staple")


def make_org(**fields: object) -> Organization:
    org: Organization = OrganizationFactory.create(**fields)
    return org


def make_key(organization: Organization | None = None, name: str = "test") -> services.CreatedApiKey:
    return services.api_key_create(organization=organization or make_org(), name=name)
