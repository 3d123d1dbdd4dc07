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
