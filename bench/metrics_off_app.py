"""The baseline for the metrics' cost: the same app with every Prometheus metric a no-op.

prometheus-client's Counter, Gauge and Histogram are replaced, before the service is
imported, by one class whose methods do nothing, so every `inc`/`observe`/`set` the code
makes still runs as a call and costs nothing else. Run as `python -m bench.metrics_off_app
PORT` with the settings in the environment: it is `gemini-graphql serve`, metrics aside.
"""

from __future__ import annotations

from typing import Any

import prometheus_client


class _NoMetric:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, *args: Any, **kwargs: Any) -> None:
        pass

    dec = set = observe = inc


prometheus_client.Counter = prometheus_client.Gauge = prometheus_client.Histogram = _NoMetric  # type: ignore[misc]


def main() -> int:
    """`gemini-graphql serve --port PORT`, in this process: the replacement holds."""
    import sys

    from gemini_graphql.cli import main as cli

    return cli(["serve", "--port", sys.argv[1]])


if __name__ == "__main__":
    raise SystemExit(main())
