"""The objective seam of the train step: what a step encodes, how it scores, and which state it carries besides
the parameters. `jdr.train.step.make_train_step` is the one step; an objective is everything that differs.

An objective is one module of `jdr.train.objectives` holding one `Objective` subclass decorated with
`@register` (config name -> class, as big_vision picks its model and loss by name). Its docstring says, like a
sentence-transformers loss: what it optimises, the batch keys it reads, the config fields it uses and their
requirements. Adding one is adding that file: the registry finds it, the trainer calls only the methods below.

Life of an objective in `jdr.train.trainer`:
  1. `cls.validate(cfg, per_device)` before anything is loaded or compiled: one-line `ValueError`s.
  2. `obj = cls.from_config(cfg)` (cheap: reads the config only).
  3. `obj.optimizer(tx)`, `obj.init_state(params, tx, spec=, seed=)`: the state the step transforms and the
     checkpointer saves; extra fields (a `TrainState` subclass) are the objective's extra state.
  4. `obj.attach(run, progress=)` after a resume: load what the objective needs from the run (LTRe's index),
     wrap `run.batches` when its batches differ from the contrastive layout.
  5. `make_train_step(encode_fn, obj, ...)` compiles `obj.loss` into the one step; `obj.wrap_pmapped` may wrap the
     pmapped step with host work between steps (LTRe's host search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import optax

from jdr.train.state import TrainState

# (params, input_ids[N,L], attention_mask[N,L], tower, deterministic, rng) -> [N,H]: an encoder (the trainer's
# partial of jdr.models.encoder.encode, or GradCache's chunked wrapper of it).
EncodeFn = Callable[..., jax.Array]
# (params, input_ids[N,L], attention_mask[N,L], tower, rng) -> [N,H]: the step's encoder with its dropout setting
# bound (see make_train_step); GradCache's chunked encoder has the same signature.
Encode = Callable[..., jax.Array]
CONTRASTIVE_BATCH_KEYS = ("query_ids", "query_mask", "passage_ids", "passage_mask")


class Objective:
    """Base class of training objectives (see the module docstring for the life cycle).

    Class attributes: `name` (the config's `train.objective` value). Instance attribute `batch_keys`: the arrays a
    device batch must hold (the step checks them before tracing anything else).
    """

    name: ClassVar[str] = ""
    batch_keys: tuple[str, ...] = CONTRASTIVE_BATCH_KEYS

    @classmethod
    def validate(cls, cfg, per_device: int) -> None:
        """Config checks of this objective, before anything is compiled; `per_device` = queries per device.
        Raise `ValueError` with one line naming the config key."""

    @classmethod
    def from_config(cls, cfg) -> Objective:
        raise NotImplementedError

    def check_encoder(self, params, spec) -> None:
        """Checks against the loaded encoder (e.g. a width the objective needs), before the workdir is written:
        raise `ValueError` with one line naming the config key."""

    def masks_false_negatives(self) -> bool:
        """Whether batches should carry `false_negatives` (the batch builder's relevance mask): True for an
        objective that scores in-batch passages (or other passages that may be a query's own positives)."""
        return False

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The optimizer the step applies (LTRe freezes the passage tower)."""
        return tx

    def init_state(self, params, tx: optax.GradientTransformation, *, spec=None, seed: int = 0) -> TrainState:
        """The step-0 state. An objective with extra state returns a `TrainState` subclass (orbax saves it whole).
        Trainable weights of the objective's own (a scoring head) must be in `params` to be trained (the step
        differentiates `params` only); checkpoints and the end-of-run `export_encoder` then see them too."""
        return TrainState.create(params, tx)

    def attach(self, run, *, progress: bool = True) -> None:
        """Hook after the run is prepared (and resumed): load resources, wrap `run.batches`."""

    def loss(
        self, encode: Encode, params, state: TrainState, batch: dict, rng: jax.Array, *, axis_name: str
    ) -> tuple[jax.Array, dict, dict[str, Any]]:
        """`(loss, aux, updates)` for this device's `batch`, differentiated with respect to `params`.

        `encode` embeds a tower; `state` is the state before the step (its extra fields); `rng` is this step's
        and this device's key (the step already folded in `state.step` and the axis index). `aux`: float
        metrics, pmeaned over `axis_name` by the step (a psummed count is equal on every device, so its pmean is
        itself). `updates`: new values of the state's extra fields (`{}` if none); they must not depend on
        `params` through a gradient path (wrap in `lax.stop_gradient`).
        """
        raise NotImplementedError

    def wrap_pmapped(self, step: Callable, encode: Encode, *, axis_name: str) -> Callable:
        """The pmapped `step(state, batch, rng)` as the loop calls it; default unchanged."""
        return step

    # The model the objective trains. Default: the dual encoder (`jdr.models.hf`); an objective training another
    # kind of model (the cross-encoder) overrides all three.
    def load_model(self, cfg):
        """`(params, spec, tokenizer, model_dir)` the run starts from (`cfg.model.path`: any model reference,
        `jdr.models.resolve`); `spec` has the token budgets the data pipeline reads (`query_max_length`,
        `passage_max_length`)."""
        from jdr.models.resolve import load_model

        m = load_model(
            cfg.model.path,
            tied=cfg.model.tied,
            dtype=cfg.model.dtype,
            query_max_length=cfg.model.query_max_length,
            passage_max_length=cfg.model.passage_max_length,
            pooling=cfg.model.pooling,
            normalize=cfg.model.normalize,
            query_prefix=cfg.model.query_prefix,
            passage_prefix=cfg.model.passage_prefix,
        )
        return m.params, m.spec, m.tokenizer, m.path

    def save_description(self, workdir, spec, model_dir) -> None:
        """Write what makes the workdir a model source (`encoder/`): spec and tokenizer files."""
        from jdr.models.workdir import save_encoder_description

        save_encoder_description(workdir, spec, model_dir)

    def export(self, params, spec, model_dir, out_dir) -> None:
        """Write the trained model as an HF / sentence-transformers dir (the end-of-run export)."""
        from jdr.models.hf import export_encoder

        export_encoder(params, spec, model_dir, out_dir)


OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` selectable as `train.objective = cls.name`."""
    if not cls.name or cls.name in OBJECTIVES:
        raise ValueError(f"objective name {cls.name!r} is empty or already registered")
    OBJECTIVES[cls.name] = cls
    return cls
