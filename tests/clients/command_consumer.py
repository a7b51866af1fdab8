"""A command consumer not written in Rust: reads remediation commands from the
action topic with confluent-kafka and validates each against the published
JSON Schema (schemas/command.schema.json) and the AsyncAPI description.

Usage: command_consumer.py BROKERS TOPIC SCHEMA_DIR COUNT TIMEOUT_S
Prints one JSON object: {"commands": [{"id", "type", "subject", "key"}...]}.
Exits 1 (with the reason on stderr) on any invalid command or on timeout.
"""
import json
import os
import sys
import time

import jsonschema
from confluent_kafka import Consumer


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def check_asyncapi(schema_dir, topic_default):
    with open(os.path.join(schema_dir, "asyncapi.json")) as fh:
        doc = json.load(fh)
    if not doc.get("asyncapi", "").startswith("3."):
        fail("asyncapi.json: not an AsyncAPI 3 document")
    channels = doc["channels"]
    if channels["actions"]["address"] != topic_default:
        fail("asyncapi.json: the actions channel is not %s" % topic_default)
    if channels["outcomes"]["address"] != "homeostat.outcomes":
        fail("asyncapi.json: the outcomes channel is not homeostat.outcomes")
    for name in ("command", "outcome"):
        ref = doc["components"]["messages"][name]["payload"]["$ref"]
        if not os.path.exists(os.path.join(schema_dir, ref)):
            fail("asyncapi.json: %s payload %s does not exist" % (name, ref))


def main():
    brokers, topic, schema_dir, count, timeout = sys.argv[1:6]
    count, timeout = int(count), float(timeout)
    with open(os.path.join(schema_dir, "command.schema.json")) as fh:
        schema = json.load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    check_asyncapi(schema_dir, "homeostat.actions")
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "python-validator-%d" % os.getpid(),
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
    })
    consumer.subscribe([topic])
    seen = []
    deadline = time.time() + timeout
    try:
        while len(seen) < count:
            if time.time() > deadline:
                fail("timeout: %d of %d commands" % (len(seen), count))
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                print("kafka: %s" % msg.error(), file=sys.stderr)
                continue
            event = json.loads(msg.value())
            errors = sorted(validator.iter_errors(event), key=str)
            if errors:
                fail("invalid command %s: %s" % (event.get("id"), errors[0].message))
            headers = {k: v.decode() for k, v in (msg.headers() or [])}
            if headers.get("content-type") != "application/cloudevents+json":
                fail("content-type header is %r" % headers.get("content-type"))
            if headers.get("traceparent") != event.get("traceparent"):
                fail("traceparent header %r differs from the event's" % headers.get("traceparent"))
            key = (msg.key() or b"").decode()
            if key != event["subject"]:
                fail("message key %r is not the subject %r" % (key, event["subject"]))
            seen.append({"id": event["id"], "type": event["type"],
                         "subject": event["subject"], "key": key})
    finally:
        consumer.close()
    print(json.dumps({"commands": seen}))


if __name__ == "__main__":
    main()
