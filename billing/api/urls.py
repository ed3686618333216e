from django.urls import path

from billing.api import views

urlpatterns = [
    path("usage", views.UsageApi.as_view(), name="usage"),
    path("billing/checkout", views.CheckoutApi.as_view(), name="billing-checkout"),
    path("billing/stripe/webhook", views.StripeWebhookApi.as_view(), name="billing-stripe-webhook"),
]
