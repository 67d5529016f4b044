"""python -m model.bench tokenizers: one row per tokenizer, consistent with the data it prepares, and a plot."""

from __future__ import annotations


from model.bench import tokenizer_choice
from helpers import ROOT



def test_table_rows_and_plot(tmp_path, shakespeare_text, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare_text[:30_000] + "naïve café 東京\n", encoding="utf-8")
    plot = tmp_path / "tok.png"
    assert tokenizer_choice.main([f"--input={corpus}", "--vocab_sizes=257,300", "--budget=0.2", "--no_gpt2",
                                  f"--config={ROOT / 'configs' / 'shakespeare_char_cpu.toml'}",
                                  f"--plot={plot}", "--perf_mb=0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "tokenizer" not in line]
    assert [r[0].strip() for r in rows] == ["char", "bpe 257", "bpe 300"]
    bytes_per_token = {r[0].strip(): float(r[4]) for r in rows}
    # characters and bare bytes differ only on the non-ASCII ones; merges make tokens longer
    assert bytes_per_token["char"] > 1.0 and bytes_per_token["bpe 257"] == 1.0 < bytes_per_token["bpe 300"]
    assert all(int(r[5].replace(",", "")) >= 1 and 0 < float(r[7]) < 20 for r in rows)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_too_little_text_for_the_speed_check_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be\n" * 50, encoding="utf-8")
    assert tokenizer_choice.main([f"--input={corpus}", "--speed_only", "--perf_mb=0.01"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "too few distinct adjacent pairs" in err and err.count("\n") == 1
