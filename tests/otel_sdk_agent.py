"""An agent run traced with the OpenTelemetry Python SDK, exported span by span as each ends.

Usage: otel_sdk_agent.py GRPC_ENDPOINT
Env VIGIL_TOKEN: sent as `authorization: Bearer <token>`.

The `invoke_agent` span ends after the tool calls it makes, so its tool calls reach Vigil in earlier
exports than the agent's own span, without naming the agent: what every agent run longer than the batch
span processor's 5 s interval looks like. One call is inside the agent's allowlist, one is not.
"""
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

from otel_sdk_send import Checked  # this directory is on the path of a script run from it


if __name__ == "__main__":
    token = os.environ.get("VIGIL_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else None
    exporter = Checked(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True, headers=headers, timeout=10))
    provider = TracerProvider(resource=Resource.create({"service.name": "support-desk"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("otel-sdk-agent-e2e")
    with tracer.start_as_current_span("invoke_agent support-agent") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent.set_attribute("gen_ai.agent.id", "support-agent")
        agent.set_attribute("gen_ai.agent.name", "support-agent")
        agent.set_attribute("user.id", "priya@example.com")
        for tool in ["search_kb", "export_all_customers"]:
            with tracer.start_as_current_span(f"execute_tool {tool}") as call:
                call.set_attribute("gen_ai.operation.name", "execute_tool")
                call.set_attribute("gen_ai.tool.name", tool)
                call.set_attribute("gen_ai.tool.call.arguments", '{"query": "refunds"}')
    provider.shutdown()
    print(f"{exporter.exports} exports")
