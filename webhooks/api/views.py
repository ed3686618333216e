"""Thin adapters: parse input, call one service or selector, serialize."""

from __future__ import annotations

from datetime import timedelta

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from voice.api.pagination import NewestFirstCursorPagination
from voice.api.views import paginated
from webhooks import selectors, services
from webhooks.api import serializers as s
from webhooks.models import WebhookEndpoint


def _endpoint(request: Request, endpoint_id: str) -> WebhookEndpoint:
    return selectors.webhook_endpoint_get(organization=request_api_key(request).organization, endpoint_id=endpoint_id)


def _with_secret(created: services.EndpointWithSecret) -> Response:
    created.endpoint.secret = created.secret  # type: ignore[attr-defined]
    return Response(s.EndpointWithSecretOutputSerializer(created.endpoint).data, status=status.HTTP_201_CREATED)


class WebhookEndpointsApi(APIView):
    """``POST`` registers an endpoint (its secret is in this answer only); ``GET`` lists them."""

    @extend_schema(
        operation_id="webhooks_create",
        request=s.EndpointCreateInputSerializer,
        responses={201: s.EndpointWithSecretOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        body = s.EndpointCreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        organization = request_api_key(request).organization
        return _with_secret(services.webhook_endpoint_create(organization=organization, **body.validated_data))

    @extend_schema(operation_id="webhooks_list", responses={200: s.EndpointOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        endpoints = selectors.webhook_endpoint_list(organization=request_api_key(request).organization)
        return Response(s.EndpointOutputSerializer(endpoints, many=True).data)


class WebhookEndpointDetailApi(APIView):
    @extend_schema(operation_id="webhooks_retrieve", responses={200: s.EndpointOutputSerializer})
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        return Response(s.EndpointOutputSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhooks_update",
        request=s.EndpointUpdateInputSerializer,
        responses={200: s.EndpointOutputSerializer},
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        body = s.EndpointUpdateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_update(endpoint=endpoint, **body.validated_data)
        return Response(s.EndpointOutputSerializer(endpoint).data)

    @extend_schema(operation_id="webhooks_destroy", responses={204: None})
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        services.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookSecretRotateApi(APIView):
    @extend_schema(
        operation_id="webhooks_rotate_secret",
        request=s.RotateSecretInputSerializer,
        responses={201: s.EndpointWithSecretOutputSerializer},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        body = s.RotateSecretInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        overlap = timedelta(seconds=body.validated_data["overlap_seconds"])
        return _with_secret(services.webhook_endpoint_rotate_secret(endpoint=endpoint, overlap=overlap))


class WebhookDeliveriesApi(APIView):
    @extend_schema(
        operation_id="webhooks_deliveries_list",
        parameters=[s.DeliveryFilterSerializer],
        responses={200: paginated(s.DeliveryOutputSerializer, "WebhookDeliveryPage")},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        filters = s.DeliveryFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        deliveries = selectors.webhook_delivery_list(endpoint=endpoint, status=filters.validated_data.get("status"))
        paginator = NewestFirstCursorPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(s.DeliveryOutputSerializer(page, many=True).data)


class WebhookRedeliverApi(APIView):
    @extend_schema(operation_id="webhooks_redeliver", request=None, responses={202: s.DeliveryOutputSerializer})
    def post(self, request: Request, endpoint_id: str, delivery_id: str) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        delivery = selectors.webhook_delivery_get(endpoint=endpoint, delivery_id=delivery_id)
        delivery = services.webhook_delivery_redeliver(delivery=delivery)
        return Response(s.DeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
