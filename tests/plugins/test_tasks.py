"""Background tasks are owned, named, logged when they fail and cancelled at close."""

import asyncio
import logging

from omax.plugins.tasks import Tasks


def test_a_failure_is_logged_with_the_task_name(caplog):
    async def boom():
        raise RuntimeError("it broke")

    async def main():
        tasks = Tasks()
        task = tasks.spawn(boom(), name="omax: test boom")
        assert task.get_name() == "omax: test boom" and len(tasks) == 1
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        return len(tasks)

    caplog.set_level(logging.DEBUG, logger="omax.plugins.tasks")
    assert asyncio.run(main()) == 0  # a finished task is not kept
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "omax: test boom failed: it broke" in record.getMessage()


def test_a_chosen_level_logs_without_a_traceback_and_success_logs_nothing(caplog):
    async def fail():
        raise ValueError("expected")

    async def ok():
        return 1

    async def main():
        tasks = Tasks()
        tasks.spawn(fail(), name="quiet", level=logging.INFO)
        good = tasks.spawn(ok(), name="fine")
        await asyncio.sleep(0.01)
        return good.result()

    caplog.set_level(logging.DEBUG, logger="omax.plugins.tasks")
    assert asyncio.run(main()) == 1
    [record] = caplog.records
    assert record.levelno == logging.INFO and record.exc_info is None


def test_cancel_all_ends_every_task_without_logging_it(caplog):
    async def forever():
        await asyncio.sleep(3600)

    async def main():
        tasks = Tasks()
        running = [tasks.spawn(forever(), name=f"loop {i}") for i in range(3)]
        assert tasks.names() == ["loop 0", "loop 1", "loop 2"]
        await tasks.cancel_all()
        return running, len(tasks)

    caplog.set_level(logging.DEBUG, logger="omax.plugins.tasks")
    running, left = asyncio.run(main())
    assert all(t.cancelled() for t in running) and left == 0
    assert caplog.records == []
