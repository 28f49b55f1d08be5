"""Independent Kafka consumer for the end-to-end tests (kafka-python, not the bridge's code).

Usage: consume.py BOOTSTRAP TOPIC EXPECTED TIMEOUT_SECONDS

Reads every partition of TOPIC from the beginning, without a consumer group, until EXPECTED
messages arrived and no more came for two seconds, or TIMEOUT_SECONDS passed. Prints one JSON
line per message: {"partition", "offset", "key", "value"} (key and value as text, or null).
"""

import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main():
    bootstrap, topic, expected, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    deadline = time.time() + timeout
    partitions = None
    while partitions is None and time.time() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            time.sleep(0.2)
    if partitions is None:
        print(f"topic {topic} not found", file=sys.stderr)
        return 2
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    seen = 0
    last_new = time.time()
    while time.time() < deadline:
        batch = consumer.poll(timeout_ms=200, max_records=5000)
        for records in batch.values():
            for m in records:
                print(json.dumps({
                    "partition": m.partition,
                    "offset": m.offset,
                    "key": None if m.key is None else m.key.decode("utf-8", "replace"),
                    "value": None if m.value is None else m.value.decode("utf-8", "replace"),
                }))
                seen += 1
                last_new = time.time()
        if seen >= expected and time.time() - last_new > 2.0:
            break
    sys.stdout.flush()
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
