"""The dashboard page renders a registry snapshot: pure, no server."""

from omax.plugins.dashboard import render


def test_render_progress_replicas_and_models():
    state = {
        "workers": [
            {
                "address": "tcp://10.0.0.1:9000",
                "slots": [{"id": "cuda:0", "name": "H100", "memory_total": 80 * 2**30}],
                "replicas": {
                    "sha256:" + "a" * 64: {"complete": False, "bytes_done": 5, "bytes_total": 10}
                },
                "replicating": [{"digest": "sha256:" + "a" * 64, "completed": 5, "total": 10}],
                "loaded": [
                    {
                        "name": "llama3:8b",
                        "slot": "cuda:0",
                        "memory": 16 * 2**30,
                        "in_flight": 3,
                        "ready": True,
                        "expires_at": 130.0,
                    }
                ],
            }
        ]
    }
    page = render(state, now=100.0)
    assert "tcp://10.0.0.1:9000" in page and "H100" in page
    assert "<progress value=5 max=10>" in page and "50%" in page
    assert "partial" in page and "llama3:8b" in page and "in 30 s" in page
    assert "<progress value=17179869184 max=85899345920>" in page  # reserved memory
