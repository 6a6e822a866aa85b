"""configure_telemetry: OTLP/HTTP export from OTEL_* variables, per process after a fork.

``configure_telemetry`` sets the process's global providers, so every case
runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.harness import ROOT, wait_for

from .otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_forked_child_exports_with_its_own_fresh_providers(receiver: OtlpReceiver) -> None:
    result = run_python(
        f"""
        import os
        from opentelemetry import metrics, trace
        from dramatiq_turbo import configure_telemetry

        setup = configure_telemetry("forky", endpoint="{receiver.url}")
        tracer = trace.get_tracer("t")
        counter = metrics.get_meter("t").create_counter("jobs")
        with tracer.start_as_current_span("before fork"):
            counter.add(5)
        # Both stay buffered (the batch processor waits 5 s) when we fork.
        pid = os.fork()
        if pid == 0:
            trace.get_tracer("t").start_span("in child").end()
            metrics.get_meter("t").create_counter("jobs").add(1)
            setup.force_flush()
            os._exit(0)
        os.waitpid(pid, 0)
        setup.force_flush()
        print(os.getpid(), pid)
        """
    )
    assert result.returncode == 0, result.stderr
    parent_pid, child_pid = map(int, result.stdout.split())
    by_name = {span.name: span for span in receiver.spans}
    assert sorted(span.name for span in receiver.spans) == ["before fork", "in child"]  # nothing twice
    assert by_name["before fork"].resource["process.pid"] == parent_pid
    assert by_name["in child"].resource["process.pid"] == child_pid
    assert by_name["in child"].resource["service.name"] == "forky"
    jobs = {point.resource["process.pid"]: point.value for point in receiver.points if point.metric == "jobs"}
    # The child's counter starts from zero: the parent's 5 are not reported again.
    assert jobs == {parent_pid: 5, child_pid: 1}


def test_the_standard_variables_choose_the_endpoint_and_exporters(receiver: OtlpReceiver) -> None:
    result = run_python(
        """
        from opentelemetry import trace
        from dramatiq_turbo import configure_telemetry

        setup = configure_telemetry("from-env")
        trace.get_tracer("t").start_span("hello").end()
        setup.force_flush()
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_METRICS_EXPORTER="none",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: receiver.spans, timeout=10, what="the span")
    (span,) = receiver.spans
    assert span.resource["service.name"] == "from-env"
    assert span.resource["deployment.environment"] == "test"
    assert "/v1/metrics" not in receiver.requests


def test_otel_sdk_disabled_exports_nothing(receiver: OtlpReceiver) -> None:
    result = run_python(
        """
        from opentelemetry import trace
        from dramatiq_turbo import configure_telemetry

        setup = configure_telemetry("off")
        span = trace.get_tracer("t").start_span("hello")
        assert not span.is_recording()
        span.end()
        setup.force_flush()
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SDK_DISABLED="true",
    )
    assert result.returncode == 0, result.stderr
    assert receiver.requests == []


def test_a_missing_exporter_names_the_extra() -> None:
    result = run_python(
        """
        import sys
        sys.modules["opentelemetry.exporter.otlp.proto.http.trace_exporter"] = None
        from dramatiq_turbo import configure_telemetry
        try:
            configure_telemetry("x")
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'dramatiq-turbo[otlp]'" in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ("''", {}, "service_name"),
        ("'svc', endpoint='collector:4318'", {}, "endpoint must be an http"),
        ("'svc'", {"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger'"),
        ("'svc'", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http/protobuf"),
    ],
)
def test_bad_configuration_is_refused_clearly(args: str, env: dict[str, str], message: str) -> None:
    result = run_python(
        f"""
        from dramatiq_turbo import configure_telemetry
        try:
            configure_telemetry({args})
        except ValueError as error:
            print(error)
        """,
        **env,
    )
    assert result.returncode == 0, result.stderr
    assert message in result.stdout


def test_telemetry_follows_a_second_configure_telemetry(receiver: OtlpReceiver) -> None:
    result = run_python(
        """
        from dramatiq.brokers.stub import StubBroker
        import dramatiq
        from dramatiq_turbo import Telemetry, configure_telemetry

        first = configure_telemetry("first")
        broker = StubBroker(middleware=[Telemetry()])

        @dramatiq.actor(broker=broker)
        def job() -> None: ...

        job.send()
        first.force_flush()
        second = configure_telemetry("second")  # shuts the first providers down
        job.send()
        second.force_flush()
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_METRICS_EXPORTER="none",
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(receiver.spans) >= 2, timeout=10, what="a send span from each configuration")
    assert sorted(span.resource["service.name"] for span in receiver.spans) == ["first", "second"]
