"""Language-model recipes: the training config and the Zaremba et al. (2014) presets.

A recipe is one flat mapping of :class:`~rnnkit.models.LanguageModelConfig` fields (the
network) and :class:`LMTrainingConfig` fields (how it is trained), so a TOML file or the
command line can set any of them by name. :func:`resolve_recipe` merges a preset, a config
mapping and overrides, in that order, and rejects unknown keys listing the valid ones.

The presets are the paper's three PTB models ("Recurrent Neural Network Regularization"):

=========  =======  =====  =====  =========  ======  ======  ==========================  ====
preset     layers   steps  batch  keep prob  epochs  init    lr schedule                 clip
=========  =======  =====  =====  =========  ======  ======  ==========================  ====
small      2 x 200  20     20     1.0        13      ±0.1    1, x0.5 per epoch after 4   5
medium     2 x 650  35     20     0.5        39      ±0.05   1, x1/1.2 after 6           5
large      2 x 1500 35     20     0.35       55      ±0.04   1, x1/1.15 after 14         10
=========  =======  =====  =====  =========  ======  ======  ==========================  ====

Every parameter is drawn from ``U(-init, init)`` (biases included: the paper's forget-gate bias
is 0), the embedding size equals the hidden size, and the optimiser is plain SGD. The paper's
learning rate and clipping norm apply to the loss *summed over the window's time steps*
(averaged over the batch); rnnkit's loss is the per-token mean, so the trainer uses
``lr * num_steps`` and ``clip / num_steps``, which is the same update (``sum_over_steps=True``).

>>> recipe = resolve_recipe("small", overrides={"epochs": 2})
>>> recipe.model["num_lstm_units"], recipe.training.epochs, recipe.training.num_steps
(200, 2, 20)
>>> resolve_recipe("small", {"hidden": 3})
Traceback (most recent call last):
...
ValueError: unknown config key(s) ['hidden']; valid keys are: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rnnkit.models.language_model import LanguageModelConfig, unknown_keys_error

__all__ = ["LM_PRESETS", "LMRecipe", "LMTrainingConfig", "resolve_recipe", "recipe_keys"]


@dataclass
class LMTrainingConfig:
    """How a stream LM is trained (truncated BPTT)."""

    batch_size: int = 20  # rows of the token stream trained in parallel
    num_steps: int = 20  # BPTT window length
    epochs: int = 13  # passes over the training stream
    optimizer: str = "sgd"  # sgd, adam or adamw
    lr: float = 1.0  # learning rate (see sum_over_steps)
    lr_decay: float = 0.5  # lr multiplier per epoch after decay_after (1.0: constant)
    decay_after: int = 4  # epochs at the base lr before the decay starts
    clip_grad_norm: float | None = 5.0  # global gradient-norm clip (see sum_over_steps); None: off
    sum_over_steps: bool = True  # lr/clip refer to the loss summed over the window (Zaremba/TF)
    weight_decay: float = 0.0  # L2 penalty of the optimiser
    momentum: float = 0.0  # SGD momentum
    eval_batch_size: int = 1  # rows when evaluating (1: every token has its whole left context)
    eval_num_steps: int = 200  # window when evaluating (the state is carried: any value is exact)
    seed: int = 1  # seeds the initialisation, dropout and data order
    log_every: int = 50  # optimizer steps between step-log rows
    precision: str = "float32"  # or "bfloat16": autocast forward passes (Trainer(precision=))


LM_PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "num_lstm_units": 200,
        "num_lstm_layers": 2,
        "embedding_dim": 200,
        "dropout_keep_prob": 1.0,
        "init_scale": 0.1,
        "batch_size": 20,
        "num_steps": 20,
        "epochs": 13,
        "lr": 1.0,
        "lr_decay": 0.5,
        "decay_after": 4,
        "clip_grad_norm": 5.0,
    },
    "medium": {
        "num_lstm_units": 650,
        "num_lstm_layers": 2,
        "embedding_dim": 650,
        "dropout_keep_prob": 0.5,
        "init_scale": 0.05,
        "batch_size": 20,
        "num_steps": 35,
        "epochs": 39,
        "lr": 1.0,
        "lr_decay": 1 / 1.2,
        "decay_after": 6,
        "clip_grad_norm": 5.0,
    },
    "large": {
        "num_lstm_units": 1500,
        "num_lstm_layers": 2,
        "embedding_dim": 1500,
        "dropout_keep_prob": 0.35,
        "init_scale": 0.04,
        "batch_size": 20,
        "num_steps": 35,
        "epochs": 55,
        "lr": 1.0,
        "lr_decay": 1 / 1.15,
        "decay_after": 14,
        "clip_grad_norm": 10.0,
    },
}


@dataclass
class LMRecipe:
    """A resolved recipe: model fields (without ``vocab_size``, known from the data) and the
    training config."""

    model: dict[str, Any]
    training: LMTrainingConfig
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping (model and training keys together), e.g. to save as the run config."""
        return {"preset": self.preset, **self.model, **dataclasses.asdict(self.training)}


def _model_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(LanguageModelConfig)} - {"vocab_size"}


def _training_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(LMTrainingConfig)}


def recipe_keys() -> list[str]:
    """Every key a recipe (TOML config, overrides) may set, plus ``preset``."""
    return sorted(_model_keys() | _training_keys() | {"preset"})


def resolve_recipe(
    preset: str | None = "small",
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LMRecipe:
    """Merge a preset, a config mapping and overrides (later wins).

    Args:
        preset: a name in :data:`LM_PRESETS`, or ``None`` for the dataclass defaults. A
            ``preset`` key in ``config`` replaces it (unless overridden).
        config: flat mapping of recipe keys (e.g. a parsed TOML file).
        overrides: flat mapping of recipe keys (e.g. the command line's flags that were given).

    Raises:
        ValueError: an unknown preset or key (the message lists the valid ones).
    """
    config = dict(config or {})
    overrides = dict(overrides or {})
    valid = set(recipe_keys())
    for source in (config, overrides):
        unknown = set(source) - valid
        if unknown:
            raise unknown_keys_error("config", unknown, valid)
    preset = overrides.pop("preset", config.pop("preset", preset))
    if preset is not None and preset not in LM_PRESETS:
        raise ValueError(f"preset must be one of {sorted(LM_PRESETS)}; received preset={preset!r}")
    merged: dict[str, Any] = dict(LM_PRESETS[preset]) if preset else {}
    merged.update(config)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    model_keys = _model_keys()
    model = {k: v for k, v in merged.items() if k in model_keys}
    training = LMTrainingConfig(**{k: v for k, v in merged.items() if k not in model_keys})
    return LMRecipe(model=model, training=training, preset=preset)
