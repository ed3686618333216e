"""Settings for ``bench.api_throughput`` only: the platform's settings with ``bench.api_urls``,
which adds the bare JSON view the API is measured against. Never used in production."""

from callmissed.settings import *  # noqa: F403

ROOT_URLCONF = "bench.api_urls"
