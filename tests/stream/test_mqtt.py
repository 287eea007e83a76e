"""`--mqtt`: results and status events on a real Mosquitto broker, read by a real paho client;
a broker restart in the middle of a run; bad URLs."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
import pytest

from stream.capture import SourceSpec
from stream.errors import UserError
from stream.mqtt import MqttPublisher, parse_mqtt_url
from stream.pipeline import Pipeline, PipelineConfig
from tests.conftest import run_cli
from tests.mqtt.fixtures import free_port
from tests.stream.conftest import wait_for


class Subscriber:
    """A paho client subscribed to `PREFIX/#`, again after every reconnect."""

    def __init__(self, port: int, prefix: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.reconnect_delay_set(0.1, 0.5)
        client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{prefix}/#", qos=1)
        client.on_subscribe = lambda *a: self.subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        wait_for(self.subscribed.is_set, 10, "the subscription")

    def _on_message(self, _c, _u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://h/p", "expected mqtt://[user:pass@]HOST[:PORT]/PREFIX, got 'http://h/p'"),
        ("mqtt:///p", "expected mqtt://[user:pass@]HOST[:PORT]/PREFIX, got 'mqtt:///p'"),
        ("mqtt://u:pw@h:99999/p", "not an MQTT URL: 'mqtt://u:***@h:99999/p' (bad port)"),
        ("mqtt://h/a/+/b", "MQTT topic prefix 'a/+/b' must not contain + or #"),
    ],
)
def test_bad_mqtt_urls(url, error):
    with pytest.raises(UserError) as exc:
        parse_mqtt_url(url)
    assert str(exc.value) == error


def test_mqtt_url_parts_and_masking():
    target = parse_mqtt_url("mqtt://me:p%40ss@broker.local/plant/line1")
    assert (target.host, target.port, target.prefix) == ("broker.local", 1883, "plant/line1")
    assert (target.username, target.password) == ("me", "p@ss")
    assert target.masked == "mqtt://me:***@broker.local:1883/plant/line1"
    assert target.topic("cam/1+", "result") == "plant/line1/cam_1_/result"


def test_no_broker_drops_and_counts_without_blocking():
    publisher = MqttPublisher(parse_mqtt_url(f"mqtt://127.0.0.1:{free_port()}/x"))
    publisher.start(wait_s=0.2)
    try:
        assert [publisher.publish_result("a", b"{}") for _ in range(5)] == [False] * 5
        assert publisher.stats()["mqtt_dropped"] == 5
    finally:
        publisher.close()


@pytest.mark.slow
def test_subscriber_receives_exactly_the_jsonl(model, clip_factory, tmp_path, mosquitto):
    clip = clip_factory(160, 90, 25, 40, name="mqtt_cam")
    out = tmp_path / "r.jsonl"
    sub = Subscriber(mosquitto.port, "site")
    url = f"mqtt://operator:hunter2@127.0.0.1:{mosquitto.port}/site"
    try:
        proc = run_cli(
            "ovstream", "-v", "run", str(clip), "--model", str(model), "--publish", "none",
            "--output", str(out), "--mqtt", url, "--no-progress", timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        # `offline` is the last message of the run's connection: everything before it arrived.
        wait_for(lambda: b"offline" in sub.on("site/availability"), 20, "availability offline")
        lines = out.read_bytes().splitlines()
        assert len(lines) == 40
        assert sub.on("site/mqtt_cam/result") == lines
        assert sub.on("site/availability") == [b"online", b"offline"]
        events = [json.loads(p)["event"] for p in sub.on("site/mqtt_cam/status")]
        assert events[-1] == "end_of_stream"
    finally:
        sub.close()
    assert "hunter2" not in proc.stderr + proc.stdout
    assert "mqtt://operator:***@127.0.0.1" in proc.stderr
    assert "0 result(s) dropped (mqtt_dropped)" in proc.stderr
    late = Subscriber(mosquitto.port, "site")  # availability is retained
    try:
        wait_for(lambda: late.on("site/availability") == [b"offline"], 10, "retained offline")
    finally:
        late.close()


@pytest.mark.slow
@pytest.mark.parametrize("qos", [0, 1])
def test_broker_restart_mid_run(model, clip_factory, mosquitto, qos):
    """A file read as a live source (it loops, 10 results/s) runs while the broker is killed and
    restarted on the same port: results flow again, the run ends normally on stop(), and the
    results published meanwhile are counted as dropped, not queued."""
    clip = clip_factory(160, 90, 25, 50, name="mqtt_loop")
    config = PipelineConfig(
        sources=[SourceSpec("loop", str(clip), live=True, fps=10.0)],
        model=str(model),
        publish=None,
        mqtt=f"mqtt://127.0.0.1:{mosquitto.port}/plant",
        mqtt_qos=qos,
    )
    pipeline = Pipeline(config)
    sub = Subscriber(mosquitto.port, "plant")
    problems: list[BaseException] = []
    marks: dict[str, int] = {}

    def publish_stats() -> dict:
        return pipeline.supervisor.stats("publish") if pipeline.supervisor else {}

    def results() -> list[dict]:
        return [json.loads(p) for p in sub.on("plant/loop/result")]

    def operate() -> None:
        try:
            wait_for(lambda: len(results()) >= 5, 60, "results before the restart")
            mosquitto.kill()
            marks["before"] = max(r["frame_index"] for r in results())
            wait_for(lambda: publish_stats().get("mqtt_dropped", 0) > 0, 30, "a dropped result")
            mosquitto.start()
            wait_for(
                lambda: any(r["frame_index"] > marks["before"] for r in results()),
                60,
                "results after the restart",
            )
        except BaseException as exc:  # reported by the test below
            problems.append(exc)
        finally:
            pipeline.stop()

    thread = threading.Thread(target=operate, daemon=True)
    thread.start()
    try:
        summary = pipeline.run()
    finally:
        thread.join(120)
        sub.close()
    assert not problems, problems
    assert summary.exit_code == 0 and summary.interrupted
    publish = summary.stages["publish"]
    dropped, sent = publish["mqtt_dropped"], publish["mqtt_published"]
    assert dropped > 0 and publish["mqtt_connects"] == 2
    assert sent + dropped >= summary.results
    received = {r["frame_index"] for r in results()}
    assert len(received) <= summary.results - dropped
    assert max(received) > marks["before"]
