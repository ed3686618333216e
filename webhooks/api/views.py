"""Thin adapters, one class per operation: parse input, call one service or selector, serialize."""

from __future__ import annotations

from datetime import timedelta

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from callmissed.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
    StrictSerializer,
    StrictURLField,
)
from voice.api.pagination import PageQuerySerializer, page_response, paginated
from webhooks import selectors, services
from webhooks.api.serializers import (
    DeliveryOutputSerializer,
    EndpointOutputSerializer,
    EndpointWithSecretOutputSerializer,
    event_types_field,
)
from webhooks.models import WebhookDelivery, WebhookEndpoint
from webhooks.services import MAX_ROTATION_OVERLAP


def _endpoint(request: Request, endpoint_id: str) -> WebhookEndpoint:
    return selectors.webhook_endpoint_get(organization=request_api_key(request).organization, endpoint_id=endpoint_id)


def _with_secret(created: services.EndpointWithSecret) -> Response:
    created.endpoint.secret = created.secret  # type: ignore[attr-defined]
    return Response(EndpointWithSecretOutputSerializer(created.endpoint).data, status=status.HTTP_201_CREATED)


class WebhookEndpointCreateApi(APIView):
    """Registers an endpoint; its signing secret is in this answer only."""

    @extend_schema_serializer(component_name="EndpointCreateInput")
    class InputSerializer(StrictSerializer):
        event_types = event_types_field(help_text="Events this endpoint receives.")
        url = StrictURLField(max_length=2000, help_text="http(s) URL on the public internet.")
        description = StrictCharField(max_length=200, required=False, allow_blank=True, default="")

    OutputSerializer = EndpointWithSecretOutputSerializer

    @extend_schema(operation_id="webhooks_create", request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        organization = request_api_key(request).organization
        return _with_secret(services.webhook_endpoint_create(organization=organization, **body.validated_data))


class WebhookEndpointListApi(APIView):
    """The caller's endpoints, newest first."""

    OutputSerializer = EndpointOutputSerializer

    @extend_schema(operation_id="webhooks_list", responses={200: OutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        endpoints = selectors.webhook_endpoint_list(organization=request_api_key(request).organization)
        return Response(self.OutputSerializer(endpoints, many=True).data)


class WebhookEndpointRetrieveApi(APIView):
    OutputSerializer = EndpointOutputSerializer

    @extend_schema(operation_id="webhooks_retrieve", responses={200: OutputSerializer})
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        return Response(self.OutputSerializer(endpoint).data)


class WebhookEndpointUpdateApi(APIView):
    """Changes only the fields sent."""

    @extend_schema_serializer(component_name="EndpointUpdateInput")
    class InputSerializer(StrictSerializer):
        url = StrictURLField(max_length=2000, required=False)
        event_types = event_types_field(required=False)
        description = StrictCharField(max_length=200, required=False, allow_blank=True)
        enabled = StrictBooleanField(required=False, help_text="true re-enables an endpoint that was disabled.")

    OutputSerializer = EndpointOutputSerializer

    @extend_schema(operation_id="webhooks_update", request=InputSerializer, responses={200: OutputSerializer})
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_update(endpoint=endpoint, **body.validated_data)
        return Response(self.OutputSerializer(endpoint).data)


class WebhookEndpointDeleteApi(APIView):
    """Removes the endpoint with its deliveries."""

    @extend_schema(operation_id="webhooks_destroy", responses={204: None})
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        services.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookSecretRotateApi(APIView):
    @extend_schema_serializer(component_name="RotateSecretInput")
    class InputSerializer(StrictSerializer):
        overlap_seconds = StrictIntegerField(
            min_value=0,
            max_value=int(MAX_ROTATION_OVERLAP.total_seconds()),
            required=False,
            default=86400,
            help_text="How long the previous secret keeps signing beside the new one (default 24 h).",
        )

    OutputSerializer = EndpointWithSecretOutputSerializer

    @extend_schema(operation_id="webhooks_rotate_secret", request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        overlap = timedelta(seconds=body.validated_data["overlap_seconds"])
        return _with_secret(services.webhook_endpoint_rotate_secret(endpoint=endpoint, overlap=overlap))


class WebhookDeliveryListApi(APIView):
    class FilterSerializer(PageQuerySerializer):
        status = StrictChoiceField(WebhookDelivery.Status.choices, required=False)

    OutputSerializer = DeliveryOutputSerializer

    @extend_schema(
        operation_id="webhooks_deliveries_list",
        parameters=[FilterSerializer],
        responses={200: paginated(OutputSerializer, "WebhookDeliveryPage")},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        filters = self.FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        deliveries = selectors.webhook_delivery_list(endpoint=endpoint, **filters.validated_data)
        return page_response(deliveries, request=request, view=self, serializer=self.OutputSerializer)


class WebhookRedeliverApi(APIView):
    OutputSerializer = DeliveryOutputSerializer

    @extend_schema(operation_id="webhooks_redeliver", request=None, responses={202: OutputSerializer})
    def post(self, request: Request, endpoint_id: str, delivery_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        delivery = selectors.webhook_delivery_get(endpoint=endpoint, delivery_id=delivery_id)
        delivery = services.webhook_delivery_redeliver(delivery=delivery)
        return Response(self.OutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
