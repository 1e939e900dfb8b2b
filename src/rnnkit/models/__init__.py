"""Models: the seeds' ``LanguageModel`` (padded sentences and stream LM) and its PTB recipes.

The classifier (``rnnkit.models.classifier``) adds its names below.
"""

from rnnkit.models.language_model import IGNORE_INDEX, LanguageModel, LanguageModelConfig
from rnnkit.models.presets import LM_PRESETS, LMRecipe, LMTrainingConfig, resolve_recipe

__all__ = [
    "IGNORE_INDEX",
    "LM_PRESETS",
    "LMRecipe",
    "LMTrainingConfig",
    "LanguageModel",
    "LanguageModelConfig",
    "resolve_recipe",
]

# --- classifier (rnnkit.models.classifier) ---
from rnnkit.models.classifier import (  # noqa: E402
    CharOneHot,
    ClassifierConfig,
    SequenceClassifier,
    build_text_classifier,
    load_classifier,
    save_classifier,
)

__all__ += [
    "CharOneHot",
    "ClassifierConfig",
    "SequenceClassifier",
    "build_text_classifier",
    "load_classifier",
    "save_classifier",
]
