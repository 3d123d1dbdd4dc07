"""What ``omax.connect()``'s methods return, from plain data (no cluster)."""

from omax.notebook_views import ModelList, ProgressLines, Reply, replication
from omax.serve.runtime import ModelDetails, ModelInfo, Progress


def cluster_state():
    """An ``omax_cluster`` answer: w1 holds the model, w2 is copying it, w3 only
    started (reported by the replicator, not yet by the worker)."""
    replica = {"digest": "sha256:aa", "complete": True, "bytes_done": 100, "bytes_total": 100}
    partial = {**replica, "complete": False, "bytes_done": 10}
    return {
        "workers": [
            {"address": "tcp://w1", "replicas": {"sha256:aa": replica}, "replicating": []},
            {
                "address": "tcp://w2",
                "replicas": {"sha256:aa": partial},
                "replicating": [{"digest": "sha256:aa", "completed": 40, "total": 100}],
            },
            {
                "address": "tcp://w3",
                "replicas": {},
                "replicating": [{"digest": "sha256:aa", "completed": 5, "total": 100}],
            },
        ]
    }


def test_replication_shows_each_copy_and_its_progress():
    view = replication(cluster_state(), {"sha256:aa": "smollm2:135m"})
    assert [(r.worker, r.fraction) for r in view.of("smollm2:135m")] == [
        ("tcp://w1", 1.0),
        ("tcp://w2", 0.4),  # the transfer under way, fresher than the worker's report
        ("tcp://w3", 0.05),
    ]
    assert view.complete("smollm2:135m") == 1
    html = view._repr_html_()
    assert html.count("<progress") == 3 and "smollm2:135m" in html


def test_replication_names_unknown_digests_by_digest():
    view = replication(cluster_state(), {})
    assert view.complete("sha256:aa") == 1


def test_a_pull_of_many_blobs_is_one_bar(capsys):
    view = ProgressLines()
    view(Progress("pulling manifest"))
    for i in range(50):
        view(Progress(f"pulling {i:012x}", f"sha256:{i}", 10, 10))
    view(Progress("replicating to tcp://w1", "sha256:m", 500, 250))
    view(Progress("success"))
    view.close()
    out = capsys.readouterr()
    assert view._bars["pulling"].total == 500 and view._bars["pulling"].n == 500
    assert set(view._bars) == {"pulling", "replicating to tcp://w1"}
    assert out.out.splitlines() == ["pulling manifest", "success"]
    assert len(view.lines) == 53


def test_reply_and_model_list_read_well():
    reply = Reply("m:1", "Paris <b>", "stop", prompt_tokens=5, tokens=8, seconds=0.5)
    assert str(reply) == "Paris <b>" and reply.tokens_per_second == 16
    assert "Paris &lt;b&gt;" in reply._repr_html_() and "16.0 tokens/s" in repr(reply)
    models = ModelList(
        [ModelInfo("m:1", "sha256:" + "ab" * 32, 2_000_000, "", ModelDetails(family="llama"))]
    )
    assert models.names() == ["m:1"]
    assert "abababababab" in repr(models) and "<td>llama</td>" in models._repr_html_()
