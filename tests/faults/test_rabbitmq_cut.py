"""Every RabbitMQ connection of the workers is cut mid-run: they reconnect, unacked messages come back.

The shared RabbitMQ on 5672 is never restarted (others use it): the workers
reach it through a TCP proxy that the test owns, and the test cuts every
connection through it at once and keeps the port closed for 2 s, as a
restart of the server or a network partition looks to the workers.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from tests.faults.workload import Event, FaultRun, Mix, jobs_of
from tests.harness import RABBITMQ_URL, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.multiprocess, pytest.mark.slow]

DOWN_SECONDS = 2
#: How long after the reconnection a message delivered before the cut may still run from a worker's memory:
#: Dramatiq restarts a consumer 3 s after its connection failed, a failed ack is retried after 5 s.
STALE_MS = 3_000 + 5_000 + 2_000


def test_rabbitmq_connections_cut_workers_reconnect_and_unacked_messages_come_back(
    fault_run, pdfs, rabbitmq_url
):
    target = urlsplit(RABBITMQ_URL)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    port = proxy.start()
    try:
        url = target._replace(netloc=f"{target.username}:{target.password}@127.0.0.1:{port}").geturl()
        run: FaultRun = fault_run("rabbitmq", broker_url=url)
        run.start_workers(2)
        pids = set(run.worker_pids())
        run.send(jobs_of(Mix(), run.queue, pdfs))  # the test's producer does not go through the proxy
        run.wait_until_done(150, timeout=30)
        wait_for(lambda: run.running("cached") or run.running("slow"), timeout=10, what="a job in flight")

        cut_at = run.now()
        proxy.cut()
        time.sleep(DOWN_SECONDS)
        proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
        proxy.start(port)
        up_at = run.now()

        run.wait_outcomes(timeout=90)
        starts: list[Event] = []  # read once verify asks, when every late run is recorded

        def explained(event: Event) -> bool:
            if not starts:
                starts.extend(run.events("start"))
            return _lost_with_connection(event, starts, cut_at, up_at)

        outcome = run.verify(explained=explained)
        redelivered = _rerun_after_cut(run.events(), cut_at)
        assert redelivered, "the jobs in flight at the cut ran again: RabbitMQ gave their messages back"
        later = {e.pid for e in outcome.done if e.at > up_at}
        assert later == pids, (
            f"every worker process reconnected and went on: {sorted(later)} of {sorted(pids)}"
        )
        assert set(run.worker_pids()) == pids, "no worker process was restarted"
        print(
            f"\ncut at {cut_at:.0f} for {up_at - cut_at:.0f} ms; {len(redelivered)} jobs ran again; "
            f"{outcome.summary()}"
        )
    finally:
        proxy.cut()


def _lost_with_connection(event: Event, starts: list[Event], cut_at: float, up_at: float) -> bool:
    """A run whose ack died with its connection, so that RabbitMQ delivered the message again (at least once).

    That is a run in flight at the cut, or of a message the worker had
    prefetched before the cut and ran from its memory later: its worker
    threads go on with what they hold, and a thread whose ack failed retries
    it for 5 s first, so such a stale run may even come after the
    redelivered one.  Either way one run of the job is a redelivery, which
    RabbitMQ flags, and both are near the cut.
    """
    redelivered = any(s.job == event.job and s.extra.get("redelivered") for s in starts)
    return redelivered and cut_at - 1_000 <= event.at <= up_at + STALE_MS


def _rerun_after_cut(events: list[Event], cut_at: float) -> set[str]:
    before = {e.job for e in events if e.kind == "start" and e.at < cut_at}
    after = {e.job for e in events if e.kind == "start" and e.at > cut_at}
    return before & after
