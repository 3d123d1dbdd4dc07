"""The scheduler plugin's work per Dask event does not grow with the number of tasks:
it hooks no per-task event, only workers joining and leaving."""

from distributed import SchedulerPlugin

from omax.plugins.scheduler import OmaxSchedulerPlugin

PER_TASK_HOOKS = ("transition", "update_graph", "add_keys", "log_event")


def test_no_per_task_hooks():
    for hook in PER_TASK_HOOKS:
        if hasattr(SchedulerPlugin, hook):
            assert getattr(OmaxSchedulerPlugin, hook) is getattr(SchedulerPlugin, hook), hook


def test_membership_hooks_touch_only_that_worker():
    plugin = OmaxSchedulerPlugin()
    for i in range(1000):
        plugin.omax_report(worker=f"tcp://w{i}:1", host=f"h{i}", slots=[], replicas={})
    assert len(plugin.workers) == 1000
    plugin.remove_worker(None, "tcp://w7:1", stimulus_id="test")
    assert len(plugin.workers) == 999 and "tcp://w7:1" not in plugin.workers


def test_decisions_wait_for_a_joining_workers_state():
    """A worker Dask has registered but whose omax state is still on its way is waited
    for (bounded) before a pull or a load decides, instead of being left out."""
    import asyncio

    class FakeWorkerRpc:  # stands in for a remote worker answering slowly
        async def omax_state(self):
            await asyncio.sleep(0.3)
            return {"host": "h", "slots": [], "replicas": {}, "disk_budget": 0}

    class FakeScheduler:
        workers = {"tcp://w:1": object()}

        def rpc(self, address):
            return FakeWorkerRpc()

    async def main():
        plugin = OmaxSchedulerPlugin()
        plugin.scheduler = FakeScheduler()
        plugin.add_worker(plugin.scheduler, "tcp://w:1")
        assert "tcp://w:1" not in plugin.workers  # its state has not arrived yet
        await plugin._settle()
        assert "tcp://w:1" in plugin.workers and not plugin._joining

    asyncio.run(main())
