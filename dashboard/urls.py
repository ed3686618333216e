from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from dashboard import playground, views

app_name = "dashboard"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="dashboard:overview"), name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("dashboard/", views.overview, name="overview"),
    path("dashboard/keys/", views.keys, name="keys"),
    path("dashboard/keys/<uuid:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("dashboard/sessions/", views.sessions, name="sessions"),
    path("dashboard/sessions/<uuid:session_id>/", views.session_detail, name="session_detail"),
    path("dashboard/billing/", views.billing, name="billing"),
    path("dashboard/billing/spend-cap/", views.spend_cap, name="spend_cap"),
    path("dashboard/webhooks/", views.webhooks, name="webhooks"),
    path("dashboard/webhooks/<uuid:endpoint_id>/", views.webhook_detail, name="webhook_detail"),
    path("dashboard/webhooks/<uuid:endpoint_id>/rotate/", views.webhook_rotate, name="webhook_rotate"),
    path("dashboard/webhooks/<uuid:endpoint_id>/toggle/", views.webhook_toggle, name="webhook_toggle"),
    path("dashboard/webhooks/<uuid:endpoint_id>/delete/", views.webhook_delete, name="webhook_delete"),
    path(
        "dashboard/webhooks/<uuid:endpoint_id>/deliveries/<uuid:delivery_id>/redeliver/",
        views.webhook_redeliver,
        name="webhook_redeliver",
    ),
    path("dashboard/playground/", playground.playground, name="playground"),
    path("dashboard/playground/ticket", playground.PlaygroundTicketCreateApi.as_view(), name="playground_ticket"),
    path("dashboard/playground/session", playground.PlaygroundSessionCreateApi.as_view(), name="playground_session"),
]
