"""The explorers' LRU table and background worker: newest job wins, stale results are dropped."""

import asyncio
import threading

import pytest

from curvlab.widgets._worker import LRU, BackgroundWorker, alongside

TIMEOUT = 30


def test_lru_keeps_the_most_recently_used_entries():
    made = []
    table = LRU(2)

    def get(key):
        return table.get(key, lambda: made.append(key) or key.upper())

    assert [get(k) for k in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert made == ["a", "b", "c", "b"]  # "b" was the least recently used when "c" came
    assert len(table) == 2 and "a" in table and "c" not in table

    def fail():
        raise ValueError("bad formula")

    with pytest.raises(ValueError, match="bad formula"):
        table.get("d", fail)
    assert "d" not in table and len(table) == 2
    with pytest.raises(ValueError, match="maxsize"):
        LRU(0)


def run_on_loop(body):
    async def main():
        return await body(asyncio.get_running_loop())

    return asyncio.run(main())


async def settle(worker, delivered, count):
    assert await asyncio.to_thread(worker.wait, TIMEOUT)
    for _ in range(100):
        if len(delivered) >= count:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # nothing more arrives


def test_the_newest_job_wins_and_results_arrive_on_the_event_loop():
    worker = BackgroundWorker()
    gate, ran, delivered = threading.Event(), [], []

    def job(name):
        def run():
            ran.append(name)
            if name == "first":
                assert gate.wait(TIMEOUT)
            return name

        return run

    async def body(loop):
        loop_thread = threading.current_thread()

        def deliver(result, error):
            assert threading.current_thread() is loop_thread and error is None
            delivered.append(result)

        worker.submit(job("first"), deliver, loop)
        while not ran:
            await asyncio.sleep(0.001)
        worker.submit(job("second"), deliver, loop)  # replaced before it starts
        worker.submit(job("third"), deliver, loop)
        assert worker.busy
        gate.set()
        await settle(worker, delivered, 1)

    run_on_loop(body)
    assert ran == ["first", "third"]  # "second" never ran
    assert delivered == ["third"]  # "first" finished after newer submits: stale, not delivered
    assert not worker.busy


def test_invalidate_drops_a_running_jobs_result_and_errors_are_delivered():
    worker = BackgroundWorker()
    gate, delivered = threading.Event(), []

    async def body(loop):
        worker.submit(lambda: gate.wait(TIMEOUT), lambda r, e: delivered.append(r), loop)
        worker.invalidate()  # a newer refresh without a job of its own
        gate.set()
        await settle(worker, delivered, 0)
        assert delivered == []

        def boom():
            raise RuntimeError("failed in the background")

        worker.submit(boom, lambda r, e: delivered.append(e), loop)
        await settle(worker, delivered, 1)

    run_on_loop(body)
    assert len(delivered) == 1 and isinstance(delivered[0], RuntimeError)


def test_without_a_loop_results_are_delivered_on_the_worker_thread():
    worker, where = BackgroundWorker(), []
    worker.submit(lambda: 42, lambda r, e: where.append((r, threading.current_thread().name)))
    assert worker.wait(TIMEOUT) and where == [(42, "curvlab-worker")]


def test_alongside_runs_a_call_on_another_thread():
    here = threading.current_thread()
    assert alongside(lambda x: (x + 1, threading.current_thread() is here), 1).result(TIMEOUT) == (2, False)
