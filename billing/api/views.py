"""Thin adapters over billing services and selectors."""

from __future__ import annotations

import hashlib
import logging
import uuid

from django.core.exceptions import RequestDataTooBig
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from billing import selectors, services, stripe_gateway, tasks, webhooks
from billing.api import serializers
from callmissed.errors import PayloadTooLarge, ServiceUnavailable, ValidationFailed

logger = logging.getLogger(__name__)


class UsageApi(APIView):
    @extend_schema(
        operation_id="usage_list",
        parameters=[serializers.UsageQuerySerializer],
        responses={200: serializers.UsageOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        query = serializers.UsageQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        usage = selectors.usage_by_day(organization=request_api_key(request).organization, **query.validated_data)
        return Response(serializers.UsageOutputSerializer(usage).data)


class CheckoutApi(APIView):
    @extend_schema(
        operation_id="billing_checkout",
        request=serializers.CheckoutInputSerializer,
        responses={201: serializers.CheckoutOutputSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="Retrying with the same key returns the same Checkout Session.",
            )
        ],
    )
    def post(self, request: Request) -> Response:
        key = request_api_key(request)
        body = serializers.CheckoutInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        client_key = request.headers.get("Idempotency-Key")
        # Scoped to the organization so two tenants' keys can never collide at Stripe; hashed so any
        # header value (long, non-ASCII) becomes a key Stripe accepts and two keys never share one.
        scope = uuid.uuid4().hex
        if client_key:
            scope = hashlib.sha256(client_key.encode("utf-8", "surrogatepass")).hexdigest()
        idempotency_key = f"cm-checkout-{key.organization.pk}-{scope}"
        checkout = services.checkout_create(
            organization=key.organization,
            amount=body.validated_data["amount_usd"],
            success_url=body.validated_data["success_url"],
            cancel_url=body.validated_data["cancel_url"],
            idempotency_key=idempotency_key,
        )
        out = serializers.CheckoutOutputSerializer({"id": checkout.id, "url": checkout.url})
        return Response(out.data, status=status.HTTP_201_CREATED)


@method_decorator(csrf_exempt, name="dispatch")
class StripeWebhookApi(APIView):
    """Stripe calls this; it is authenticated by the signature, not an API key."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []

    @extend_schema(operation_id="billing_stripe_webhook", request=None, responses={200: None})
    def post(self, request: Request) -> Response:
        signature = request.headers.get("Stripe-Signature", "")
        if not signature or not stripe_gateway.webhooks_enabled():
            raise ValidationFailed("Missing Stripe-Signature header or webhooks are not configured.")
        try:
            body = request.body
        except RequestDataTooBig as error:
            raise PayloadTooLarge() from error
        try:
            event = stripe_gateway.webhook_verify(body=body, signature=signature)
        except ValueError as error:
            raise ValidationFailed(f"Invalid Stripe webhook: {error}") from error
        row, created = webhooks.stripe_event_receive(event=event)
        if created or row.processed_at is None:
            try:
                tasks.apply_stripe_event.delay(event_id=row.event_id)
            except Exception as error:
                # Stored but not queued: a non-2xx makes Stripe deliver again, and that delivery queues it.
                logger.exception("Could not queue Stripe event %s", row.event_id)
                raise ServiceUnavailable(
                    "The event is stored but could not be queued; deliver it again.", retry_after=30
                ) from error
        return Response({"received": True, "duplicate": not created})
