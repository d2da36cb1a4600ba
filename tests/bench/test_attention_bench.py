"""``sparsedino bench attention`` end to end on a tiny shape: the JSON a user compares runs with."""

import json

from sparsedino.bench import attention as bench


def _run(tmp_path, *extra):
    out = tmp_path / "a.json"
    argv = ["--shapes", "2x2x37x16", "--repeats", "1", "--warmup", "0", "--no-memory", "--json", str(out)]
    assert bench.main([*argv, *extra]) == 0
    return json.loads(out.read_text())


def test_rows_carry_ratios_and_the_attention_density(tmp_path):
    data = _run(tmp_path)
    rows = data["rows"]
    assert rows[0]["impl"] == "sdpa softmax" and rows[0]["fwd_bwd_ratio"] == 1.0
    assert {r["impl"] for r in rows} >= {"ours entmax15", "entmax.entmax15 (reference)"}
    for row in rows:
        assert row["shape"] == [2, 2, 37, 16] and row["input_std"] == bench.INPUT_STD
        assert 0.0 < row["density"] < 1.0 and row["fwd_ms"] > 0
    flat = _run(tmp_path, "--input-std", "0.05")["rows"][0]
    assert flat["density"] > rows[0]["density"]  # flatter scores keep more keys


def test_input_std_must_be_positive(tmp_path, capsys):
    assert bench.main(["--input-std", "0", "--json", str(tmp_path / "a.json")]) == 2
    assert "sparsedino bench attention: error: --input-std" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
