"""A byte-level BPE learned from the user's corpus: exact round trips, the same ids as Hugging Face
`tokenizers` itself, bad input in one line, and every tool taking it from the dataset or checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import checkpoint
from model.cli import hf_main, prepare_main, sample_main, train_main, visualize_main
from model.data.dataset import TokenDataset, prepare
from model.data.tokenizer import EOT, BPETokenizer, from_meta
from model.errors import TinyGPTError
from helpers import tiny_overrides


AWKWARD = ["", "\n", "\n\n\n", "  \t \r\n", "héllo wörld", "e\u0301 a\u0308\u0323", "😀👍🏽 🇫🇷", "中文，日本語のテキスト",
           "x" * 3000, "it's  'll 've 123 4567", f"a {EOT} b", "\x00\x01\x7f", "ROMEO:\nBut soft!\n"]


@pytest.fixture(scope="module")
def bpe(shakespeare_text) -> BPETokenizer:
    return BPETokenizer.train(shakespeare_text[:50_000], 512)


def test_learns_the_asked_vocabulary_deterministically(bpe, shakespeare_text):
    assert bpe.vocab_size == 512 and bpe.eot_token is not None
    assert BPETokenizer.train(shakespeare_text[:50_000], 512).hf_json == bpe.hf_json
    assert len(bpe.encode(shakespeare_text[:5000])) < 5000 * 0.6  # it compresses: merges were learned


@pytest.mark.parametrize("text", AWKWARD)
def test_round_trip_of_awkward_text(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert (ids == []) == (text == "")


def hf_ids(bpe: BPETokenizer, text: str) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(bpe.hf_json)
    tok.encode_special_tokens = True  # "<|endoftext|>" in a text is text, as tinygpt encodes it
    return tok.encode(text).ids


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_round_trips_and_matches_hugging_face_tokenizers(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert ids == hf_ids(bpe, text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["the", " the", "thee", "ing", "'s", "  ", "\n", "ROMEO", ":", "é", "1", "23"]), max_size=40))
def test_wordlike_text_matches_hugging_face_tokenizers(bpe, pieces):
    text = "".join(pieces)
    assert bpe.encode(text) == hf_ids(bpe, text)


def test_same_ids_as_hugging_face_on_a_whole_corpus(bpe, shakespeare_text):
    text = shakespeare_text[-100_000:]
    assert bpe.encode(text) == hf_ids(bpe, text)


def test_meta_round_trip(bpe):
    again = from_meta(json.loads(json.dumps(bpe.to_meta())))
    assert again.encode("To be, or not") == bpe.encode("To be, or not") and again.vocab_size == 512


@pytest.mark.parametrize("args, message", [
    (["--vocab_size=256"], "at least 257"),
    ([], "needs --vocab_size"),
    (["--vocab_size=100000"], "is more than the training text can give: its 45,000 bytes allow at most 45,257"),
    (["--vocab_size=4294967296"], "is more than the training text can give"),  # tokenizers would allocate 283 GB
    ([f"--vocab_size={10**20}"], "is more than the training text can give"),  # an OverflowError in tokenizers
])
def test_bad_vocab_size_is_one_line(tmp_path, corpus, capsys, args, message):
    code = prepare_main([f"--input={corpus}", "--dataset=b", f"--data_dir={tmp_path}", "--tokenizer=bpe", "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "b" / "meta.json").exists()


def test_a_vocab_size_the_text_has_too_few_pairs_for_is_one_line(tmp_path, capsys):
    (tmp_path / "ab.txt").write_text("ab " * 300)  # 900 bytes, but only a handful of distinct pairs
    code = prepare_main([f"--input={tmp_path / 'ab.txt'}", "--dataset=b", f"--data_dir={tmp_path}", "--tokenizer=bpe",
                         "--quiet", "--vocab_size=600"])
    err = capsys.readouterr().err
    assert code == 1 and "too few distinct adjacent pairs" in err and err.count("\n") == 1, err


def test_non_utf8_corpus_and_vocab_size_for_char_are_one_line(tmp_path, corpus, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff\xfe more")
    assert prepare_main([f"--input={bad}", f"--data_dir={tmp_path}", "--tokenizer=bpe", "--vocab_size=300"]) == 1
    assert "not UTF-8" in capsys.readouterr().err
    assert prepare_main([f"--input={corpus}", f"--data_dir={tmp_path}", "--tokenizer=char", "--vocab_size=300"]) == 1
    assert "--vocab_size applies to --tokenizer=bpe only" in capsys.readouterr().err


def test_merges_are_learned_from_the_training_split_only(tmp_path, shakespeare_text):
    # a word frequent only in the last 10% (the validation split) must not become a token
    text = shakespeare_text[:45_000] + " zyzzyva" * 600
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    assert len(text) * 0.9 < 45_000
    prepare("v", tmp_path, str(tmp_path / "c.txt"), tokenizer="bpe", vocab_size=400, quiet=True)
    tok = TokenDataset(tmp_path / "v").tokenizer()
    assert len(tok.encode(" zyzzyva")) >= 4
    # the same text in the training split does give it a token
    (tmp_path / "d.txt").write_text(" zyzzyva" * 600 + shakespeare_text[:45_000], encoding="utf-8")
    prepare("w", tmp_path, str(tmp_path / "d.txt"), tokenizer="bpe", vocab_size=400, quiet=True)
    assert len(TokenDataset(tmp_path / "w").tokenizer().encode(" zyzzyva")) == 1


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory, shakespeare_text) -> Path:
    root = tmp_path_factory.mktemp("bpe")
    (root / "corpus.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
    assert prepare_main([f"--input={root / 'corpus.txt'}", "--dataset=tiny", f"--data_dir={root / 'data'}",
                         "--tokenizer=bpe", "--vocab_size=384", "--quiet"]) == 0
    return root / "data"


def test_dataset_keeps_the_tokenizer_in_a_file_that_meta_json_names(bpe_data, tmp_path):
    meta = json.loads((bpe_data / "tiny" / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["file"] == "tokenizer.json"
    assert meta["vocab_size"] == 384 and "json" not in meta["tokenizer"]
    dataset = TokenDataset(bpe_data / "tiny")
    assert dataset.tokenizer().decode(dataset.splits["val"].concatenated().tolist()) == \
        (bpe_data.parent / "corpus.txt").read_text()[45_000:]
    copy = Path(shutil.copytree(bpe_data / "tiny", tmp_path / "tiny"))
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text() + " ")
    with pytest.raises(TinyGPTError, match="does not match meta.json"):
        TokenDataset(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(TinyGPTError, match="tokenizer file .* is missing"):
        TokenDataset(copy)


def test_own_bpe_model_trains_samples_resumes_exports_and_draws_with_no_extra_flags(bpe_data, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    flags = [f"--{k}={v}" for k, v in tiny_overrides(bpe_data, out, max_iters=4, eval_interval=2).items()]
    assert train_main(flags + ["--quiet"]) == 0
    ckpt = checkpoint.load_checkpoint(out / checkpoint.LATEST)
    assert ckpt["tokenizer"]["kind"] == "bpe" and ckpt["model_config"]["vocab_size"] == 384

    # the checkpoint carries the tokenizer: the tools work with the dataset gone
    shutil.move(bpe_data / "tiny" / "tokenizer.json", tmp_path / "aside.json")
    try:
        capsys.readouterr()
        assert sample_main([f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=20", "--start=ROMEO:",
                            "--quiet"]) == 0
        assert capsys.readouterr().out.startswith("ROMEO:")
        assert visualize_main([f"--out_dir={out}", "--start=But soft, what light", f"--out={tmp_path / 'a.png'}"]) == 0
        assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
        assert hf_main([str(out), str(tmp_path / "hf")]) == 0
    finally:
        shutil.move(tmp_path / "aside.json", bpe_data / "tiny" / "tokenizer.json")

    # resume continues from the checkpoint with the same tokenizer
    assert train_main(flags + ["--init_from=resume", "--max_iters=6", "--quiet"]) == 0
    assert checkpoint.load_checkpoint(out / checkpoint.LATEST)["iter_num"] == 6

    # transformers: the same ids from AutoTokenizer, the same logits from the model
    model, tok, _ = checkpoint.load_model(out / checkpoint.LATEST)
    assert hf_main([str(out / checkpoint.LATEST), str(tmp_path / "hf")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in AWKWARD:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token_id == tok.eot_token
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.tensor([tok.encode("ROMEO: But soft, what light through yonder")[:32]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf_model(idx).logits, rtol=0, atol=1e-4)
