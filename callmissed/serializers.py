"""The base of every input serializer, and serializer fields built from a pydantic contract.

Input is strict: an unknown field is an error (a typo must not fall back silently to a default),
a JSON number is not a string and a string is not a number, and every problem is reported at once,
keyed by field, as the error envelope's ``fields``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar, TypeGuard, get_args, get_origin

from django.core.validators import RegexValidator
from pydantic import BaseModel
from rest_framework import serializers
from rest_framework.settings import api_settings

from agent_worker.contracts import Limits


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, not silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        errors: dict[str, Any] = {}
        if isinstance(data, Mapping):
            accepted = ", ".join(self.fields)
            unknown = sorted(set(data) - set(self.fields))
            errors = {str(name): [f"Unknown field. Accepted fields: {accepted}."] for name in unknown}
        try:
            validated = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {api_settings.NON_FIELD_ERRORS_KEY: exc.detail}
            raise serializers.ValidationError({**errors, **_dotted(detail)}) from None
        if errors:
            raise serializers.ValidationError(errors)
        return validated


def _dotted(detail: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    """A nested serializer's errors keyed by their dotted path (``backchannels.extra_phrases``,
    ``tools.1.name``), so ``fields`` stays one flat object of message lists."""
    flat: dict[str, Any] = {}
    for key, value in detail.items():
        name = str(key)
        if prefix:
            name = prefix if name == api_settings.NON_FIELD_ERRORS_KEY else f"{prefix}.{name}"
        if isinstance(value, Mapping) and all(isinstance(k, int) for k in value):
            # A list's items: a string's messages stay under the list's own name; an object's
            # fields are under its index (``tools.1.url``).
            for index, messages in value.items():
                if isinstance(messages, Mapping):
                    flat.update(_dotted(messages, f"{name}.{index}"))
                else:
                    flat.setdefault(name, []).extend(messages)
        elif isinstance(value, Mapping):
            flat.update(_dotted(value, name))
        else:
            flat[name] = value
    return flat


class StrictCharField(serializers.CharField):
    """A JSON string; DRF would turn ``5`` or ``["a"]`` into text."""

    default_error_messages = {"type": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("type")
        return super().to_internal_value(data)


class StrictURLField(serializers.URLField):
    """A JSON string holding a URL; DRF would turn ``5`` into ``"5"`` before checking it."""

    default_error_messages = {"type": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("type")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer; DRF would take ``"300"``, ``300.0`` or ``true``."""

    default_error_messages = {"type": "Must be an integer."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("type")
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of a few strings; a refusal names them all."""

    default_error_messages = {"type": "Must be a string."}

    def __init__(self, choices: Any, **kwargs: Any) -> None:
        super().__init__(choices, **kwargs)
        accepted = ", ".join(self.choice_strings_to_values)
        self.error_messages["invalid_choice"] = f"Unknown value {{input!r}}. Accepted values: {accepted}."

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("type")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean; DRF would take ``"yes"``, ``1`` or ``"off"``."""

    default_error_messages = {"type": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("type")
        return data


class StrictJSONObjectField(serializers.DictField):
    """A JSON object, whatever it holds (a tool's JSON Schema); DRF would take a list of pairs."""

    default_error_messages = {"type": "Must be a JSON object."}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("type")
        return data


class StrictListField(serializers.ListField):
    """A JSON array; DRF would take an object's keys or a string's characters in places."""

    default_error_messages = {"type": "Must be a list."}

    def to_internal_value(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            self.fail("type")
        return super().to_internal_value(data)


def contract_fields(model: type[BaseModel], *, output: bool = False) -> dict[str, serializers.Field]:
    """A serializer field per field of ``model``, with its type, default, description and ``Limits``.

    For input a field with a default may be left out. For output every field is always present and
    only its type (and choices) describe it: a stored value may predate a change of limits. A list
    of contracts becomes a list of their serializers; a ``dict`` any JSON object."""
    fields: dict[str, serializers.Field] = {}
    for name, info in model.model_fields.items():
        limits = next((m for m in info.metadata if isinstance(m, Limits)), Limits())
        options: dict[str, Any] = {"help_text": info.description} if info.description else {}
        if output:
            limits = Limits(choices=limits.choices)
            options["read_only"] = True
        elif info.default_factory is not None:
            options["default"] = info.default_factory
        elif not info.is_required():
            options["default"] = info.default
        field: serializers.Field
        if _is_contract(info.annotation):
            if "default" in options:
                options["default"] = _dumped(info.annotation)  # what the nested input would validate to
            field = contract_serializer(info.annotation, output=output)(**options)
        elif info.annotation is bool:
            field = StrictBooleanField(**options)
        elif get_origin(info.annotation) is list and get_args(info.annotation) == (str,):
            item = StrictCharField(
                min_length=limits.item_min_length, max_length=limits.item_max_length, allow_blank=output
            )
            field = StrictListField(child=item, min_length=limits.min_length, max_length=limits.max_length, **options)
        elif get_origin(info.annotation) is list and _is_contract(get_args(info.annotation)[0]):
            child = contract_serializer(get_args(info.annotation)[0], output=output)()
            field = StrictListField(child=child, min_length=limits.min_length, max_length=limits.max_length, **options)
        elif get_origin(info.annotation) is dict:
            field = StrictJSONObjectField(**options)
        elif limits.choices:
            field = StrictChoiceField(choices=list(limits.choices), **options)
        elif info.annotation is str:
            field = StrictCharField(
                min_length=limits.min_length,
                max_length=limits.max_length,
                allow_blank=output or limits.min_length == 0,
                validators=[RegexValidator(limits.pattern, f"Must match {limits.pattern}.")] if limits.pattern else [],
                **options,
            )
        elif info.annotation is int:
            field = StrictIntegerField(min_value=limits.ge, max_value=limits.le, **options)
        elif info.annotation is bool and output:
            field = serializers.BooleanField(**options)
        elif info.annotation is float and output:
            field = serializers.FloatField(**options)
        else:
            raise TypeError(f"{model.__name__}.{name}: no serializer field for {info.annotation!r}")
        fields[name] = field
    return fields


# The fields of a pydantic ``contract``, followed by any declared on the subclass. (A comment, not a
# docstring: drf-spectacular would describe every subclass without a docstring of its own with it.)
class ContractSerializer(serializers.Serializer):
    contract: ClassVar[type[BaseModel]]
    # An output serializer: every field of the contract always present, none taken as input.
    contract_output: ClassVar[bool] = False

    def get_fields(self) -> dict[str, serializers.Field]:
        return {**contract_fields(self.contract, output=self.contract_output), **super().get_fields()}

    def to_representation(self, instance: Any) -> Any:
        # An instance of the contract is written by pydantic's own JSON dump, the very fields
        # above in one call (DRF visits each field, nested ones too, for every row of a page).
        # Anything else (a stored dict, a subclass with fields of its own) goes field by field.
        if self.contract_output and type(instance) is self.contract and not self._declared_fields:
            return instance.model_dump(mode="json")
        return super().to_representation(instance)


@cache
def contract_serializer(model: type[BaseModel], *, output: bool = False) -> type[serializers.Serializer]:
    """The serializer of a contract nested in another (``SessionConfig.backchannels``, each of
    ``SessionConfig.tools``), strict on input like its parent; named after the model, so the schema
    has one component for each."""
    name = model.__name__ + ("Output" if output else "")
    bases: tuple[type, ...] = (ContractSerializer,) if output else (StrictSerializer, ContractSerializer)
    return type(f"{name}Serializer", bases, {"contract": model, "contract_output": output, "__doc__": model.__doc__})


def _is_contract(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _dumped(model: type[BaseModel]) -> Callable[[], dict[str, Any]]:
    return lambda: model().model_dump()
