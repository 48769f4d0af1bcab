"""`jdr` command line: help, one-line errors with exit 2, and end-to-end runs on a tiny model and dataset."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_data import write_beir

from jdr.cli import COMMANDS, main
from jdr.evaluate import read_trec_run


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_help():
    # the venv's bin dir is not on PATH when pytest runs as `.venv/bin/python -m pytest`
    exe = (
        shutil.which("jdr")
        or shutil.which("jdr", path=str(Path(sys.executable).parent))
        or pytest.skip("jdr console script not installed")
    )
    r = subprocess.run([exe, "evaluate", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--run-output" in r.stdout


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    root = write_beir(tmp_path / "ds")
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n')
    code = main(["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("jdr: error: ") and "corpus.jsonl:2: duplicate id" in err


def test_missing_split_exits_2(tmp_path, capsys):
    code = main(["evaluate", "--model", "x", "--data", str(write_beir(tmp_path / "ds")), "--split", "dev"])
    err = capsys.readouterr().err
    assert code == 2 and "splits present: test" in err and "Traceback" not in err


def test_bad_factory_exits_2(tmp_path, capsys):
    import numpy as np

    from jdr.index import save_embeddings

    save_embeddings(tmp_path / "emb", np.ones((4, 8), np.float32), list("abcd"))
    code = main(["index", "--embeddings", str(tmp_path / "emb"), "--factory", "Bogus", "--output", str(tmp_path / "i")])
    assert code == 2 and "faiss rejects factory 'Bogus'" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("flags", [["--factory", "IVF4,Flat"], ["--train-sample", "2"]])
def test_index_spann_refuses_faiss_only_flags(tmp_path, capsys, flags):
    import numpy as np

    from jdr.index import save_embeddings

    save_embeddings(tmp_path / "emb", np.ones((4, 8), np.float32), list("abcd"))
    code = main(["index", "--embeddings", str(tmp_path / "emb"), "--spann", *flags, "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--spann takes no {flags[0]}" in err
    assert not (tmp_path / "s").exists()


def test_argparse_usage_error_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["index", "--factory", "Flat"])
    assert e.value.code == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from jdr.models.testing import write_tiny_model

    tmp = tmp_path_factory.mktemp("cli")
    return write_tiny_model(tmp / "model"), write_beir(tmp / "ds")


def test_evaluate_json(tiny, tmp_path, capsys):
    model, ds = tiny
    code = main(
        [
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(ds),
            "--max-length",
            "32",
            "--batch-size",
            "4",
            "--run-output",
            str(tmp_path / "run.trec"),
            "--json",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    metrics = json.loads(out[-1])
    for key in ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0
    assert metrics["recall@100"] == 1.0  # 3-doc corpus, top-1000
    assert set(read_trec_run(tmp_path / "run.trec")) == {"q1", "q2"}


def test_encode_index_search(tiny, tmp_path, capsys):
    model, ds = tiny
    emb, index, run = tmp_path / "emb", tmp_path / "idx.faiss", tmp_path / "run.trec"
    assert (
        main(
            [
                "encode",
                "--model",
                str(model),
                "--input",
                str(ds / "corpus.jsonl"),
                "--output",
                str(emb),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    assert json.loads((emb / "meta.json").read_text())["dims"] == 32
    assert main(["index", "--embeddings", str(emb), "--factory", "Flat", "--output", str(index)]) == 0
    assert (tmp_path / "idx.faiss.ids.txt").read_text().split() == ["d1", "d2", "d3"]
    assert (
        main(
            [
                "search",
                "--model",
                str(model),
                "--index",
                str(index),
                "--queries",
                str(ds / "queries.jsonl"),
                "--top-k",
                "2",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    got = read_trec_run(run)
    assert set(got) == {"q1", "q2", "q3"} and all(len(d) == 2 and set(d) <= {"d1", "d2", "d3"} for d in got.values())
    lines = run.read_text().splitlines()
    assert all(len(ln.split()) == 6 and ln.split()[1] == "Q0" for ln in lines)


def test_missing_model_exits_2(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(write_beir(tmp_path / "ds"))])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no-model: not a model directory" in err
