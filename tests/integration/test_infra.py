"""Each local service really works: the smallest useful round trip against the real server.

The services come from the session fixtures in the root ``conftest.py`` (reused when already
running, else started by ``infra/`` and stopped afterwards).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.integration


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_pulsar_admin_lists_default_namespace(pulsar_admin_url: str) -> None:
    assert "public/default" in _get_json(f"{pulsar_admin_url}/admin/v2/namespaces/public")  # type: ignore[operator]


def test_pulsar_produce_consume(pulsar_url: str) -> None:
    import pulsar

    topic = f"persistent://public/default/esper-infra-test-{uuid.uuid4().hex}"
    client = pulsar.Client(
        pulsar_url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    )
    try:
        consumer = client.subscribe(topic, "infra-test", initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic)
        producer.send(b"hello esper", properties={"kind": "smoke"})
        message = consumer.receive(timeout_millis=15_000)
        consumer.acknowledge(message)
        assert message.data() == b"hello esper"
        assert message.properties() == {"kind": "smoke"}
    finally:
        client.close()


def test_pulsar_dead_letter_topic_is_auto_created(pulsar_url: str) -> None:
    import pulsar

    topic = f"persistent://public/default/esper-infra-dlq-{uuid.uuid4().hex}"
    dead_letters = f"{topic}-DLQ"
    client = pulsar.Client(
        pulsar_url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    )
    try:
        consumer = client.subscribe(
            topic,
            "worker",
            consumer_type=pulsar.ConsumerType.Shared,
            negative_ack_redelivery_delay_ms=100,
            dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
                max_redeliver_count=1, dead_letter_topic=dead_letters, initial_subscription_name="dlq"
            ),
        )
        client.create_producer(topic).send(b"poison")
        for _ in range(2):  # first delivery + one redelivery, then it goes to the DLQ
            consumer.negative_acknowledge(consumer.receive(timeout_millis=15_000))
        dlq = client.subscribe(dead_letters, "dlq")
        assert dlq.receive(timeout_millis=20_000).data() == b"poison"
    finally:
        client.close()


def test_postgres_select_1(postgres_url: str) -> None:
    import psycopg

    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("esper", "esper")


def test_s3_bucket_put_get(s3_config: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_config["endpoint_url"],
        aws_access_key_id=s3_config["access_key"],
        aws_secret_access_key=s3_config["secret_key"],
        region_name=s3_config["region"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )
    bucket = f"esper-infra-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello esper")
    assert s3.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read() == b"hello esper"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [o["Key"] for o in listed.get("Contents", [])] == ["dir/hello.txt"]
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.delete_object(Bucket=bucket, Key="dir/hello.txt")
    s3.delete_bucket(Bucket=bucket)


def test_prometheus_query_up(prometheus_url: str) -> None:
    # Prometheus scrapes itself every 5 s; the first sample may need a moment after a fresh start.
    query = urllib.parse.urlencode({"query": 'up{job="prometheus"}'})
    deadline = time.monotonic() + 30
    while True:
        body = _get_json(f"{prometheus_url}/api/v1/query?{query}")
        assert isinstance(body, dict) and body["status"] == "success"
        result = body["data"]["result"]
        if result or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result, "no 'up' sample for the self-scrape job within 30 s"
    assert result[0]["value"][1] == "1"
