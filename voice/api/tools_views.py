"""The organization's tool signing secret: what a customer's tool endpoints verify calls with."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from voice import selectors


class ToolSigningSecretApi(APIView):
    @extend_schema_serializer(component_name="ToolSigningSecretOutput")
    class OutputSerializer(serializers.Serializer):
        secret = serializers.CharField(
            help_text="whsec_…: verify each tool call's webhook-signature with it (Standard Webhooks)."
        )

    @extend_schema(operation_id="tools_signing_secret", responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        organization = request_api_key(request).organization
        secret = selectors.tool_signing_secret(organization=organization)
        return Response(self.OutputSerializer({"secret": secret}).data)
