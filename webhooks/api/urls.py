from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("webhooks", views.WebhookEndpointsApi.as_view(), name="webhooks"),
    path("webhooks/<str:endpoint_id>", views.WebhookEndpointDetailApi.as_view(), name="webhook-detail"),
    path(
        "webhooks/<str:endpoint_id>/rotate-secret",
        views.WebhookSecretRotateApi.as_view(),
        name="webhook-rotate-secret",
    ),
    path("webhooks/<str:endpoint_id>/deliveries", views.WebhookDeliveriesApi.as_view(), name="webhook-deliveries"),
    path(
        "webhooks/<str:endpoint_id>/deliveries/<str:delivery_id>/redeliver",
        views.WebhookRedeliverApi.as_view(),
        name="webhook-redeliver",
    ),
]
