"""Outbound calls to customer URLs (webhooks now, the agent worker's tool calls too): Standard
Webhooks signing and an SSRF-guarded HTTP client. Django-free, so the agent worker can use it."""
