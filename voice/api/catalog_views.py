"""The public catalog: what a client may put in a session config. No key needed."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agent_worker import catalog
from billing.pricing import display_unit_price
from billing.selectors import PriceInForce
from voice import selectors


class _PublicApi(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]


class VoiceListApi(_PublicApi):
    @extend_schema_serializer(component_name="CatalogVoice")
    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        gender = serializers.CharField(allow_null=True)
        default = serializers.BooleanField()

    @extend_schema(operation_id="catalog_voices", responses={200: OutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.catalog_voices(), many=True).data)


class LanguageListApi(_PublicApi):
    @extend_schema_serializer(component_name="CatalogLanguage")
    class OutputSerializer(serializers.Serializer):
        code = serializers.CharField()
        name = serializers.CharField()
        stt = serializers.BooleanField(help_text="Speech recognition available.")
        tts = serializers.BooleanField(help_text="Voices available; only these are accepted in a session config.")

    @extend_schema(operation_id="catalog_languages", responses={200: OutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(catalog.languages(), many=True).data)


@extend_schema_serializer(component_name="Price")
class PriceOutputSerializer(serializers.Serializer):
    component = serializers.CharField()
    currency = serializers.CharField()
    unit_price = serializers.SerializerMethodField(help_text="Decimal string, in currency per per_units.")
    per_units = serializers.IntegerField()
    confirmed = serializers.BooleanField(help_text="False while the price is not confirmed with the provider.")

    def get_unit_price(self, obj: PriceInForce) -> str:
        return display_unit_price(obj.unit_price)


class ModelListApi(_PublicApi):
    @extend_schema_serializer(component_name="CatalogModel")
    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        status = serializers.CharField()
        provider = serializers.CharField()
        message = serializers.CharField(allow_blank=True)
        default = serializers.BooleanField()
        prices = PriceOutputSerializer(many=True)

    @extend_schema(operation_id="catalog_models", responses={200: OutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.catalog_models(), many=True).data)
