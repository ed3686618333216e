"""Test settings: the real settings with fast hashing and locmem email."""

import uuid

from callmissed.settings import *  # noqa: F403
from callmissed.settings import _env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
API_RATE_LIMIT = "100000/min"
# A run's cache keys (rate-limit counters) never meet another run's in a shared Redis.
CACHES["default"]["KEY_PREFIX"] = f"test-{uuid.uuid4().hex[:8]}"  # noqa: F405
# Tasks queued by services run inline in the test process; tests of the broker path start a
# real Celery worker (send_task ignores eager mode anyway).
# CELERY_TASK_ALWAYS_EAGER=false runs a real worker on these settings (voice/tests/test_celery_live.py).
CELERY_TASK_ALWAYS_EAGER = _env.celery_task_always_eager is not False
# Tests about other things create many sessions at once; the billing tests set each org's cap.
BILLING_MAX_CONCURRENT_SESSIONS = 1000
# Every test client calls from 127.0.0.1: the throttle tests set these back to the defaults.
LOGIN_RATE_LIMIT = "100000/min"
LOGIN_FAILURE_LIMIT = "100000/min"
SIGNUP_RATE_LIMIT = "100000/min"
BILLING_SIGNUP_CREDITS_PER_IP = "100000/day"
