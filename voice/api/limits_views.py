"""An organization's limits: billing's balance and caps beside the sessions live now.

Served here because voice depends on billing, not the other way round: billing knows the caps,
voice counts the sessions."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from billing import selectors as billing_selectors
from billing.api.serializers import MoneyField
from voice import selectors


class BillingLimitsApi(APIView):
    @extend_schema_serializer(component_name="LimitsOutput")
    class OutputSerializer(serializers.Serializer):
        currency = serializers.CharField()
        prepaid = serializers.BooleanField()
        balance = MoneyField()
        spend_cap_monthly = MoneyField(allow_null=True)
        month_to_date_spend = MoneyField()
        max_concurrent_sessions = serializers.IntegerField()
        live_sessions = serializers.IntegerField()
        payment_failed = serializers.BooleanField()

    @extend_schema(operation_id="billing_limits", responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        organization = request_api_key(request).organization
        limits = billing_selectors.billing_limits(organization=organization)
        data = {**asdict(limits), "live_sessions": selectors.live_session_count(organization=organization)}
        return Response(self.OutputSerializer(data).data)
