"""``dramatiq-turbo stats`` and ``report`` on real brokers: the table, ``--json``, ``--check``, ``--watch``.

Every command here runs with a password in its URLs, and no output shows it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dramatiq
import pytest
from dramatiq.middleware import AgeLimit

from dramatiq_turbo.cli import main
from dramatiq_turbo.monitor import QueueStatsRecorder
from tests.harness import ROOT, free_port, send_by_name, unique

pytestmark = pytest.mark.integration

SECRET = "Sup3rS3cret"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Run]]:
    def runner(*argv: str) -> Run:
        capsys.readouterr()
        with caplog.at_level(logging.DEBUG):
            code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    yield runner
    # Not in any log record either, whatever the level.
    assert SECRET not in caplog.text


def with_password(url: str, password: str = SECRET) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://:{password}@{rest}"


@dataclass
class Backlog:
    url: str
    args: list[str]
    queue: str
    broker: dramatiq.Broker


@pytest.fixture(params=["redis", "rabbitmq"])
def backlog(request: pytest.FixtureRequest, make_broker: Callable[..., dramatiq.Broker]) -> Backlog:
    """234 messages waiting on a real broker, and the command-line arguments that reach it."""
    queue = unique("q")
    if request.param == "redis":
        namespace = unique("dq")
        monitor_namespace = request.getfixturevalue("monitor_namespace")
        broker = make_broker("redis", namespace=namespace)
        broker.add_middleware(QueueStatsRecorder(namespace=monitor_namespace), before=AgeLimit)
        url = with_password(request.getfixturevalue("redis_url"))
        args = ["--broker", url, "--namespace", namespace, "--monitor-namespace", monitor_namespace]
    else:
        broker = make_broker("rabbitmq")
        url = request.getfixturevalue("rabbitmq_url")  # guest:guest: the password is "guest"
        args = ["--broker", url]
    for number in range(234):
        send_by_name(broker, "work", number, queue=queue)
    return Backlog(url, [*args, "--queue", queue], queue, broker)


def _no_secret(result: Run, url: str) -> None:
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    for text in (result.out, result.err):
        assert f":{password}@" not in text and (password == "guest" or password not in text)


def test_the_table_names_the_backlog_and_its_advice(backlog: Backlog, run: Callable[..., Run]) -> None:
    result = _until(lambda: run("stats", *backlog.args), lambda r: " 234 " in r.out)
    assert result.code == 0
    assert backlog.queue in result.out and ":***@" in result.out
    assert "High number of waiting messages (234). Consider increasing worker concurrency" in result.out
    _no_secret(result, backlog.url)


def test_json_for_machines(backlog: Backlog, run: Callable[..., Run]) -> None:
    result = _until(lambda: run("stats", *backlog.args, "--json"), lambda r: '"waiting": 234' in r.out)
    document = json.loads(result.out)
    [stats] = document["queues"]
    assert (stats["queue"], stats["waiting"], document["healthy"], document["reachable"]) == (
        backlog.queue,
        234,
        False,
        True,
    )
    # RabbitMQ counts the queue's consumers (none); a Redis broker cannot tell who consumes.
    expected = ["no_workers", "backlog"] if backlog.url.startswith("amqp") else ["backlog"]
    assert [r["rule"] for r in stats["recommendations"]] == expected
    assert document["broker"].count("***") == 1
    _no_secret(result, backlog.url)


def test_check_exit_codes(backlog: Backlog, run: Callable[..., Run]) -> None:
    assert _until(lambda: run("stats", *backlog.args, "--check"), lambda r: r.code == 1).code == 1
    backlog.broker.flush(backlog.queue)
    healthy = _until(lambda: run("stats", *backlog.args, "--check"), lambda r: r.code == 0)
    assert healthy.code == 0 and "every queue is healthy" in healthy.out


def test_the_report(backlog: Backlog, run: Callable[..., Run]) -> None:
    args = backlog.args
    if backlog.url.startswith("redis"):
        args = [a for a in args if a not in ("--queue", backlog.queue)]  # found on the broker
    text = _until(lambda: run("report", *args), lambda r: " 234 " in r.out)
    assert text.code == 0 and "Totals:" in text.out and backlog.queue in text.out
    document = json.loads(run("report", *args, "--json").out)
    assert backlog.queue in [q["queue"] for q in document["queues"]]
    assert document["totals"]["waiting"] >= 234
    _no_secret(text, backlog.url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:{free_port()}/15",
        f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}/",
    ],
)
def test_an_unreachable_broker_exits_2_without_its_secret(url: str, run: Callable[..., Run]) -> None:
    queue = ["--queue", "default"]
    checked = run("stats", "--broker", url, *queue, "--check")
    assert checked.code == 2 and "cannot reach" in checked.err and ":***@127.0.0.1" in checked.err
    as_json = run("stats", "--broker", url, *queue, "--json")
    assert as_json.code == 2 and json.loads(as_json.out)["reachable"] is False
    assert run("report", "--broker", url).code == 2
    for result in (checked, as_json):
        assert SECRET not in result.out + result.err


def test_watch_refreshes_until_interrupted(
    redis_url: str, make_broker: Callable[..., dramatiq.Broker]
) -> None:
    namespace, queue = unique("dq"), unique("q")
    broker = make_broker("redis", namespace=namespace)
    send_by_name(broker, "work", 1, queue=queue)
    command = [sys.executable, "-m", "dramatiq_turbo.cli", "stats", "--broker", with_password(redis_url)]
    command += ["--namespace", namespace, "--queue", queue, "--watch", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out.count("Queues of redis://:***@") >= 2 and SECRET not in out + err


def test_watch_and_check_do_not_mix(run: Callable[..., Run], redis_url: str) -> None:
    with pytest.raises(SystemExit) as exited:
        run("stats", "--broker", redis_url, "--watch", "1", "--check")
    assert exited.value.code == 2


def _until(attempt: Callable[[], Run], done: Callable[[Run], bool], timeout: float = 10) -> Run:
    """RabbitMQ's counts lag its publishes by a moment: ask again until they show."""
    deadline = time.monotonic() + timeout
    while True:
        result = attempt()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)
