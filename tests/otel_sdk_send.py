"""Sends GenAI spans to Vigil with the OpenTelemetry Python SDK's stock OTLP exporters.

Usage: otel_sdk_send.py GRPC_ENDPOINT HTTP_ENDPOINT COUNT
Env VIGIL_TOKEN: sent as `authorization: Bearer <token>` by both exporters (what
OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token> does for an unmodified application).
Env VIGIL_CA_CERT: a PEM file to trust for https:// endpoints (gRPC and HTTP) instead of the system roots.
Env VIGIL_EXPORT_TIMEOUT: seconds an export may take, retries included (default 10).
Prints the number of spans sent per exporter. Exits non-zero if an export fails.
"""
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter


class Checked:
    """Wraps an exporter so that a failed export fails the script instead of being logged and dropped; counts
    the exports."""

    def __init__(self, inner):
        self.inner = inner
        self.exports = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result != SpanExportResult.SUCCESS:
            print(f"export failed: {result}", file=sys.stderr)
            sys.exit(2)
        self.exports += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def send(exporter, service, count):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(Checked(exporter)))
    tracer = provider.get_tracer("otel-sdk-e2e")
    for i in range(count):
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", "openai")
            span.set_attribute("gen_ai.request.model", "gpt-4o")
            span.set_attribute("gen_ai.response.model", "gpt-4o-2024-08-06")
            span.set_attribute("gen_ai.usage.input_tokens", 100 + i)
            span.set_attribute("gen_ai.usage.output_tokens", 10 + i)
            span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
            span.set_attribute("server.address", "api.openai.com")
            span.set_attribute("server.port", 443)
            span.set_attribute("user.id", f"sdk-user-{i % 3}")
        # A non-AI span in between: Vigil counts and skips it.
        with tracer.start_as_current_span("GET /health"):
            pass
    provider.shutdown()


if __name__ == "__main__":
    grpc_endpoint, http_endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    token = os.environ.get("VIGIL_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else None
    timeout = float(os.environ.get("VIGIL_EXPORT_TIMEOUT", "10"))
    ca = os.environ.get("VIGIL_CA_CERT")
    if ca:
        import grpc

        with open(ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        grpc_exporter = GrpcExporter(endpoint=grpc_endpoint, credentials=credentials, headers=headers, timeout=timeout)
        http_exporter = HttpExporter(endpoint=http_endpoint, certificate_file=ca, headers=headers, timeout=timeout)
    else:
        grpc_exporter = GrpcExporter(endpoint=grpc_endpoint, insecure=True, headers=headers, timeout=timeout)
        http_exporter = HttpExporter(endpoint=http_endpoint, headers=headers, timeout=timeout)
    send(grpc_exporter, "sdk-grpc", count)
    send(http_exporter, "sdk-http", count)
    print(f"sent {count} GenAI spans per exporter")
