"""step() and Timer: child spans, the job's step table and its bottleneck."""

from __future__ import annotations

import asyncio
import logging
import time

import dramatiq
import pytest
from opentelemetry.trace import StatusCode

from dramatiq_turbo import Timer, step
from dramatiq_turbo.telemetry import StepTable, current_steps

from .conftest import Otel, Traced


def test_timer_measures_milliseconds() -> None:
    timer = Timer()
    time.sleep(0.05)
    elapsed = timer.end()
    assert 45 <= elapsed < 500
    time.sleep(0.02)
    assert timer.end() == elapsed  # ended once
    with Timer() as block:
        time.sleep(0.01)
    assert block.elapsed >= 9


def test_table_marks_the_slowest_step() -> None:
    table = StepTable()
    table.add("download", 1250)
    table.add("extract", 850)
    table.add("ai", 12500)
    assert (
        table.format(14600) == "download: 1250ms\nextract: 850ms\nai: 12500ms <- Bottleneck!\nTotal: 14600ms"
    )
    assert table.bottleneck == "ai"


def test_repeated_steps_are_one_row_and_one_step_has_no_bottleneck() -> None:
    table = StepTable()
    table.add("page", 3.5)
    assert table.bottleneck is None
    table.add("page", 4.25)
    table.add("save", 1.0)
    assert table.format(20) == "page: 7.75ms (x2) <- Bottleneck!\nsave: 1.00ms\nTotal: 20ms"


def test_a_table_rebuilt_from_rows_keeps_their_counts() -> None:
    original = StepTable()
    for ms in (3.5, 4.25, 1.0):
        original.add("page", ms)
    original.add("save", 2.0)
    rebuilt = StepTable()
    for name, ms, count in original.rows:
        rebuilt.add(name, ms, count=count)
    assert rebuilt.rows == original.rows == [("page", 8.75, 3), ("save", 2.0, 1)]
    with pytest.raises(ValueError, match="count"):
        rebuilt.add("page", 1.0, count=0)


def test_steps_outside_a_job_use_an_explicit_table() -> None:
    assert current_steps() is None
    with StepTable() as table:
        with step("a"):
            time.sleep(0.01)

        @step("b")
        def b() -> int:
            return 2

        assert b() == 2
        assert current_steps() is table
    assert current_steps() is None
    assert [name for name, _, _ in table.rows] == ["a", "b"]


def test_steps_in_a_job_are_child_spans_and_a_logged_table(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    @step("extract")
    def extract() -> str:
        time.sleep(0.01)
        return "text"

    @step("generate")
    async def generate(text: str) -> str:
        await asyncio.sleep(0.06)
        return text.upper()

    @dramatiq.actor(queue_name="pdf")
    def pdf_to_notes() -> None:
        with step("download"):
            time.sleep(0.02)
        text = extract()
        asyncio.run(generate(text))

    caplog.set_level(logging.INFO, logger="dramatiq_turbo.telemetry")
    message = pdf_to_notes.send()
    traced.worker()
    traced.broker.join("pdf")

    otel: Otel = traced.otel
    (process,) = otel.spans("process pdf")
    steps = {name: otel.spans(name)[0] for name in ("download", "extract", "generate")}
    for span in steps.values():
        assert span.parent is not None and span.parent.span_id == process.context.span_id
        assert span.context.trace_id == process.context.trace_id
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Steps of")]
    lines = record.getMessage().splitlines()
    assert lines[0] == f"Steps of pdf_to_notes (message {message.message_id}):"
    assert [line.split(":")[0] for line in lines[1:]] == ["download", "extract", "generate", "Total"]
    assert lines[3].endswith("<- Bottleneck!")
    assert sum("Bottleneck" in line for line in lines) == 1


def test_a_failing_step_is_an_error_span_and_still_recorded(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("t")
    with StepTable(tracer=tracer) as table, pytest.raises(OSError), step("upload"):
        raise OSError("disk full")
    (span,) = otel.spans("upload")
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert [name for name, _, _ in table.rows] == ["upload"]


def test_step_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name"):
        step("")
