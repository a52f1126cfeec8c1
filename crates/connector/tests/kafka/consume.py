"""Reads a topic back for the kafka connector's tests, with librdkafka 2.x (confluent_kafka).

Usage: consume.py BROKERS TOPIC EXPECTED [SECONDS]

Assigns every partition from the beginning (no consumer group offsets are used or committed) and
prints one JSON line per record: key, value, headers, partition, offset. It stops once EXPECTED
records arrived and nothing more came for a second (so duplicates would show), or after SECONDS
(default 15). Broker watermarks are not used to find the end: tansu's are not exact per record.
"""

import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def main():
    brokers, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    deadline = time.monotonic() + (float(sys.argv[4]) if len(sys.argv) > 4 else 15.0)
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"storeline-test-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    meta = c.list_topics(topic, timeout=10)
    parts = meta.topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(parts)])
    got, quiet_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            if got >= expected and time.monotonic() - quiet_since > 1.0:
                break
            continue
        if m.error():
            print(json.dumps({"error": str(m.error())}), flush=True)
            continue
        got += 1
        quiet_since = time.monotonic()
        print(json.dumps({
            "key": text(m.key()),
            "value": json.loads(m.value()),
            "headers": {k: text(v) for k, v in (m.headers() or [])},
            "partition": m.partition(),
            "offset": m.offset(),
        }), flush=True)
    c.close()


if __name__ == "__main__":
    main()
