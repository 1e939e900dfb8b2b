"""Model-agnostic training: ``Trainer`` (fit/evaluate), callbacks, checkpoints, logs and plots.

The package knows nothing about the models it trains: a model is any ``torch.nn.Module`` with
``model(inputs, targets, **extra) -> (logits, loss)`` (or, with ``Trainer(stateful=True)``,
``model(inputs, targets, state=state, **extra) -> (logits, loss, new_state)``).
See :mod:`rnnkit.training.trainer` for the contract and :mod:`rnnkit.training.checkpoint` for the
checkpoint layout.
"""

from rnnkit.training.callbacks import (
    Callback,
    EarlyStopping,
    LRScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    ZarembaDecay,
    zaremba_lr,
)
from rnnkit.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from rnnkit.training.history import History
from rnnkit.training.metrics import Accuracy, MeanMetric, Metric, perplexity
from rnnkit.training.plotting import plot_history
from rnnkit.training.trainer import (
    StatefulModel,
    TrainableModel,
    Trainer,
    build_optimizer,
    unpack_batch,
)
from rnnkit.training.utils import detach_state, move_to_device, select_device, set_seed

__all__ = [
    "Accuracy",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LRScheduler",
    "MeanMetric",
    "Metric",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "StatefulModel",
    "TrainableModel",
    "Trainer",
    "ZarembaDecay",
    "build_optimizer",
    "detach_state",
    "load_checkpoint",
    "move_to_device",
    "perplexity",
    "plot_history",
    "resolve_checkpoint",
    "save_checkpoint",
    "select_device",
    "set_seed",
    "unpack_batch",
    "zaremba_lr",
]
