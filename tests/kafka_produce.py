#!/usr/bin/env python3
"""Writes to Kafka what an OpenTelemetry Collector's Kafka exporter writes, and reads the dead-letter topic.

`produce`: COUNT messages to TOPIC, each one protobuf TracesData (the Collector's `otlp_proto`) holding SPANS
GenAI chat spans. Message i (from --first, default 1) has trace id i (32 hex digits) and is keyed by it, as the
Collector does with `partition_traces_by_id`; span ids are 1..SPANS. So the event ids a consumer stores
are known in advance and a test can check every one arrived exactly once. --rate spreads the messages
over time so that a consumer can be killed while they flow; --poison adds one undecodable message.

`dlq`: prints, one JSON line per message of the dead-letter topic, its headers and payload length.

Uses confluent-kafka (librdkafka 2.x) because Debian's kcat links a librdkafka too old for some brokers.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

POISON = b"\x0a\xff\xff\x01not a TracesData"


def kv(key, value):
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def traces_data(index, spans):
    start = 1_700_000_000_000_000_000 + index * 1_000_000
    trace_id = index.to_bytes(16, "big")
    span_list = [
        Span(
            trace_id=trace_id,
            span_id=(s + 1).to_bytes(8, "big"),
            name="chat gpt-4o",
            kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start + s * 1000,
            end_time_unix_nano=start + s * 1000 + 250_000_000,
            attributes=[
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.provider.name", "openai"),
                kv("gen_ai.request.model", "gpt-4o"),
                kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
                kv("gen_ai.usage.input_tokens", 100 + s),
                kv("gen_ai.usage.output_tokens", 20),
                kv("user.id", f"user-{index % 7}"),
            ],
        )
        for s in range(spans)
    ]
    resource = Resource(attributes=[kv("service.name", f"svc-{index % 3}")])
    scope = ScopeSpans(scope=InstrumentationScope(name="kafka_produce.py"), spans=span_list)
    return TracesData(resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])])


def produce(args):
    if args.first < 1:
        sys.exit("--first must be at least 1: trace id 0 is the invalid all-zero trace id")
    producer = Producer({"bootstrap.servers": args.brokers, "acks": "all", "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    started = time.monotonic()
    for n in range(args.count):
        index = args.first + n
        value = traces_data(index, args.spans).SerializeToString()
        producer.produce(args.topic, value=value, key=index.to_bytes(16, "big").hex(), on_delivery=delivered)
        producer.poll(0)
        if args.rate:
            delay = started + (n + 1) / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    if args.poison:
        producer.produce(args.topic, value=POISON, key=b"poison", on_delivery=delivered)
    remaining = producer.flush(30)
    if failures or remaining:
        sys.exit(f"produce failed: {remaining} undelivered, errors: {failures[:3]}")
    print(f"produced {args.count} messages x {args.spans} spans to {args.topic}" + (" + 1 poison" if args.poison else ""))


def read_dlq(args):
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"dlq-reader-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout
    seen = 0
    while time.monotonic() < deadline and (args.expect is None or seen < args.expect):
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        print(json.dumps({"headers": headers, "payload_len": len(msg.value() or b""), "key": (msg.key() or b"").decode(errors="replace")}))
        seen += 1
    consumer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--topic", default="otlp_spans")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--spans", type=int, default=3)
    # Not 0: an all-zero trace id is invalid in OTLP, and Vigil stores such spans without a trace id.
    p.add_argument("--first", type=int, default=1, help="index of the first message (its trace id); at least 1")
    p.add_argument("--rate", type=float, default=0, help="messages per second (0: as fast as possible)")
    p.add_argument("--poison", action="store_true", help="also send one undecodable message")
    d = sub.add_parser("dlq")
    d.add_argument("--topic", default="vigil_dlq")
    d.add_argument("--expect", type=int, help="stop after this many messages")
    d.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()
    produce(args) if args.command == "produce" else read_dlq(args)


if __name__ == "__main__":
    main()
