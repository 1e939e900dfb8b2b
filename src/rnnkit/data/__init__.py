"""Text data for rnnkit: tokenizers, vocabularies, corpora, datasets and batching.

``rnnkit.data`` imports nothing from the rest of rnnkit: everything here works on plain
strings, lists, numpy arrays and torch tensors.
"""

# --- tokenizers, vectorisation, readers, datasets (vocabulary/corpora/classification/datasets) ---
from .classification import (
    LabelMap,
    SkippedRow,
    SkippedRowsWarning,
    TextClassificationData,
    read_class_folders,
    read_csv,
    read_imdb,
    read_jsonl,
)
from .corpora import (
    InvalidUTF8Error,
    LMCorpus,
    build_lm_vocabulary,
    encode_file,
    find_split_files,
    iter_encoded,
    iter_line_tokens,
    iter_lines,
    iter_text_files,
    read_text,
)
from .datasets import (
    DATASETS,
    ChecksumError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    default_data_dir,
    download_file,
    fetch_dataset,
    list_datasets,
    load_dataset,
)
from .sequences import pad_sequences
from .vectorization import TextVectorization, standardize_text
from .vocabulary import Tokenizer, Vocabulary, text_to_word_sequence

__all__ = [
    "ChecksumError",
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "InvalidUTF8Error",
    "LMCorpus",
    "LabelMap",
    "SkippedRow",
    "SkippedRowsWarning",
    "TextClassificationData",
    "TextVectorization",
    "Tokenizer",
    "Vocabulary",
    "build_lm_vocabulary",
    "default_data_dir",
    "download_file",
    "encode_file",
    "fetch_dataset",
    "find_split_files",
    "iter_encoded",
    "iter_line_tokens",
    "iter_lines",
    "iter_text_files",
    "list_datasets",
    "load_dataset",
    "pad_sequences",
    "read_class_folders",
    "read_csv",
    "read_imdb",
    "read_jsonl",
    "read_text",
    "standardize_text",
    "text_to_word_sequence",
]

# --- batching and Reber grammars (batching.py, reber.py): append imports below this line,
# --- and extend the public names with `__all__ += [...]` ---
from .batching import (  # noqa: E402
    BPTTBatches,
    BucketBatchSampler,
    ClassificationCollate,
    ClassificationDataset,
    LMBatch,
    LMCollate,
    batch_producer,
    lm_batch,
    pad_batch,
    padding_fraction,
)
from .reber import (  # noqa: E402
    EMBEDDED_REBER_GRAMMAR,
    REBER_GRAMMAR,
    GrammarEntropy,
    generate_corrupted_string,
    generate_valid_string,
    grammar_entropy,
    is_valid,
    optimal_perplexity,
    str2onehot,
)

__all__ += [
    "BPTTBatches",
    "BucketBatchSampler",
    "ClassificationCollate",
    "ClassificationDataset",
    "EMBEDDED_REBER_GRAMMAR",
    "GrammarEntropy",
    "LMBatch",
    "LMCollate",
    "REBER_GRAMMAR",
    "batch_producer",
    "generate_corrupted_string",
    "generate_valid_string",
    "grammar_entropy",
    "is_valid",
    "lm_batch",
    "optimal_perplexity",
    "pad_batch",
    "padding_fraction",
    "str2onehot",
]
