"""Whether this process sends traces, decided from the standard OTEL_* variables only.

Tracing is an optional extra (`pip install 'gemini-graphql[otel]'`) and off by default: on
only when the OpenTelemetry SDK is installed, OTEL_SDK_DISABLED is not "true", and the
variables name an exporter (OTEL_TRACES_EXPORTER other than "none", or an OTLP endpoint in
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT). Off, `from_env` answers
None and nothing of OpenTelemetry is imported, so the hot paths have nothing to skip: no
extension on the schema, no middleware, no carrier in the jobs, no wrapper around the job
function or the model (see infra.otel for what "on" adds).

Everything else (endpoint, headers, timeout, compression, sampler, propagators, batching,
resource attributes) is read by the SDK and its exporter from the same variables.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemini_graphql.infra.otel import Tracing

log = logging.getLogger(__name__)

API_SERVICE = "gemini-graphql-api"
WORKER_SERVICE = "gemini-graphql-worker"
SUPPORTED_EXPORTERS = ("otlp", "console")
# What the [otel] extra's exporter speaks; "grpc" needs opentelemetry-exporter-otlp-proto-grpc.
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
_INSTALL = "pip install 'gemini-graphql[otel]'"


def exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the variables ask for, in their order; () for none (tracing off).

    Unlike the SDK's own default ("otlp" when OTEL_TRACES_EXPORTER is unset), nothing is
    exported unless the variables say where or how: an OTLP endpoint, or an exporter named.
    """
    if _get(environ, "OTEL_SDK_DISABLED").lower() == "true":
        return ()
    named = _get(environ, "OTEL_TRACES_EXPORTER")
    if named:
        wanted = [name.strip().lower() for name in named.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in (*SUPPORTED_EXPORTERS, "none")]
        if unknown:
            log.warning(
                "OTEL_TRACES_EXPORTER: %s not supported here (only %s); ignored",
                ", ".join(unknown),
                ", ".join(SUPPORTED_EXPORTERS),
            )
        return tuple(dict.fromkeys(name for name in wanted if name in SUPPORTED_EXPORTERS))
    if _get(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _get(
        environ, "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return ("otlp",)
    return ()


def otlp_protocol(environ: Mapping[str, str]) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf."""
    return (
        _get(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _get(environ, "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).lower()


def service_name(environ: Mapping[str, str], default: str) -> str:
    return _get(environ, "OTEL_SERVICE_NAME") or default


def from_env(environ: Mapping[str, str] | None = None, *, service: str) -> Tracing | None:
    """This process's tracing as the variables ask (`service`: the name unless
    OTEL_SERVICE_NAME gives one), or None: off, or asked for but not installed (logged)."""
    environ = os.environ if environ is None else environ
    names = exporters(environ)
    if not names:
        return None
    if not _sdk_installed():
        log.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed: %s", _INSTALL
        )
        return None
    protocol = otlp_protocol(environ)
    if "otlp" in names and protocol not in OTLP_PROTOCOLS:
        log.error("OTLP protocol %r is not supported (use http/protobuf); tracing is off", protocol)
        return None
    from gemini_graphql.infra.otel import Tracing  # the SDK, only when tracing is on

    try:
        return Tracing.configured(names, protocol=protocol, service=service_name(environ, service))
    except ImportError as exc:  # the exporter named is not installed
        log.error("tracing is off: %s (%s)", exc, _INSTALL)
        return None


def _sdk_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # not even the API (the parent package)
        return False


def _get(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name, "").strip()
