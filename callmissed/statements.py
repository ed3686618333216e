"""Statements compiled once: a hot path's query is built with the ORM (so its conditions stay the
models' own), compiled to SQL the first time, and later calls only fill in their values.

Compiling a statement of several subqueries costs more CPU than the rest of a request: that is
what this saves. Each call's values are ``Placeholder``s in the query, bound by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Expression, Field, Model, QuerySet
from django.db.models.query import RawQuerySet


class Placeholder(Expression):
    """Where a call's value goes, prepared for the database as ``output_field`` prepares it."""

    def __init__(self, name: str, output_field: Field) -> None:  # type: ignore[type-arg]
        super().__init__(output_field=output_field)
        self.name = name

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        return "%s", (self,)


@dataclass(frozen=True)
class CompiledStatement:
    model: type[Model]
    using: str
    sql: str
    params: tuple[Any, ...]

    def raw(self, **values: Any) -> RawQuerySet:
        """The statement run with ``values`` for its placeholders: rows of ``model``, with every
        annotation an attribute."""
        connection = connections[self.using]
        params = [
            p.output_field.get_db_prep_value(values[p.name], connection) if isinstance(p, Placeholder) else p
            for p in self.params
        ]
        return self.model.objects.raw(self.sql, params, using=self.using)  # type: ignore[attr-defined]


def compile_statement(queryset: QuerySet[Any]) -> CompiledStatement:
    sql, params = queryset.query.get_compiler(queryset.db).as_sql()
    return CompiledStatement(model=queryset.model, using=queryset.db, sql=sql, params=tuple(params))
