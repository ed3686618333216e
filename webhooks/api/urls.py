from django.urls import path

from callmissed.routing import Operations
from webhooks.api import views

urlpatterns = [
    path(
        "webhooks",
        Operations(post=views.WebhookEndpointCreateApi, get=views.WebhookEndpointListApi),
        name="webhooks",
    ),
    path(
        "webhooks/<str:endpoint_id>",
        Operations(
            get=views.WebhookEndpointRetrieveApi,
            patch=views.WebhookEndpointUpdateApi,
            delete=views.WebhookEndpointDeleteApi,
        ),
        name="webhook-detail",
    ),
    path(
        "webhooks/<str:endpoint_id>/rotate-secret",
        views.WebhookSecretRotateApi.as_view(),
        name="webhook-rotate-secret",
    ),
    path("webhooks/<str:endpoint_id>/deliveries", views.WebhookDeliveryListApi.as_view(), name="webhook-deliveries"),
    path(
        "webhooks/<str:endpoint_id>/deliveries/<str:delivery_id>/redeliver",
        views.WebhookRedeliverApi.as_view(),
        name="webhook-redeliver",
    ),
]
