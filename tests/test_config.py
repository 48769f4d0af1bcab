"""Configs: every shipped config loads; typos and wrong types are one-line errors naming the key."""

from pathlib import Path

import pytest

from jdr.cli import main
from jdr.config import ConfigError, apply_overrides, load_config, split_config_args, train_config

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.train.steps >= 1 or "vq" in cfg


def test_scifact_configs_differ_only_where_they_say():
    """random vs BM25 negatives compare negatives and nothing else; the main job (ANN) adds only its lengths
    (train and refresh at 128 tokens, evaluate at 256), bfloat16 compute and a cheaper evaluation; its async
    variant differs in refresh_mode and in float32, what its table was measured in."""
    from jdr.config import to_dict

    root = Path(__file__).parents[1] / "configs"
    runs = {name: to_dict(load_config(root / f"scifact_{name}.py")) for name in ("rand", "bm25", "ance", "ance_async")}

    def without(cfg, *keys):
        out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items() if k != "negatives"}
        for key in keys:
            section, field = key.split(".")
            out[section].pop(field)
        return out

    assert without(runs["bm25"]) == without(runs["rand"])
    main_job = (
        "model.passage_max_length",
        "model.dtype",
        "eval.passage_max_length",
        "eval.batch_size",
        "eval.corpus_sample",
    )
    assert without(runs["ance"], *main_job) == without(runs["rand"], *main_job)
    assert (runs["ance"]["model"]["passage_max_length"], runs["ance"]["eval"]["passage_max_length"]) == (128, 256)
    # the async table was measured in float32 before the main job moved to bfloat16
    async_as_measured = {**runs["ance"], "model": {**runs["ance"]["model"], "dtype": "float32"}}
    assert runs["ance_async"] == {
        **async_as_measured,
        "negatives": {**runs["ance"]["negatives"], "refresh_mode": "async"},
    }
    assert [runs[n]["negatives"]["source"] for n in ("rand", "bm25", "ance")] == ["random", "bm25", "ann"]
    assert runs["ance"]["negatives"]["refresh_mode"] == "sync"


def test_readme_main_job_config_exists():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    main_job = next(line for line in readme.splitlines() if "jdr train --config" in line)
    config = main_job.split("--config ")[1].split()[0]
    assert load_config(Path(__file__).parents[1] / config).negatives.source == "ann"


def test_every_default_field_has_a_comment():
    import inspect

    import jdr.config as module

    source = inspect.getsource(module.train_config)
    for line in source.splitlines():
        if line.strip().startswith("c.") and "=" in line and "ConfigDict()" not in line and "lock()" not in line:
            previous = source.splitlines()[source.splitlines().index(line) - 1]
            assert "#" in line or previous.strip().startswith("#"), f"no comment on: {line.strip()}"


def test_overrides_coerce_types():
    cfg = train_config()
    apply_overrides(
        cfg,
        [
            "train.lr=3e-4",
            "train.steps=7",
            "model.tied=false",
            "negatives.source=bm25",
            "train.warmup_steps=0",
            "train.lr=1",
            "negatives.denoise_threshold=0.1",
        ],
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and cfg.model.tied is False and cfg.negatives.source == "bm25"
    assert cfg.negatives.denoise_threshold == 0.1


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("train.steps=1.5", "config key 'train.steps' expects int, got 1.5"),
        ("model.tied=maybe", "config key 'model.tied' expects bool"),
        ("train=3", "is a section"),
        ("train.steps", "must look like key=value"),
        ("negatives.denoise_threshold=abc", "negatives.denoise_threshold"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(train_config(), [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_typo_inside_a_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from jdr.config import train_config\n\ndef get_config():\n"
        "    c = train_config()\n    c.train.lrr = 1.0\n    return c\n"
    )
    with pytest.raises(ConfigError, match="bad.py.*lrr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.py")


def test_split_config_args():
    rest, over = split_config_args(["train", "--config", "c.py", "--config.train.lr=1", "--config.seed", "3"])
    assert rest == ["train", "--config", "c.py"] and over == ["train.lr=1", "seed=3"]


def test_cli_train_typo_is_one_line_exit_2(tmp_path, capsys):
    code = main(["train", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"), "--config.train.lrr=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("jdr: error: unknown config key 'train.lrr'") and "\n" not in err
    assert not (tmp_path / "w").exists()
