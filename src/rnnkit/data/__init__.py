"""Text data for rnnkit: tokenizers, vocabularies, corpora, datasets and batching.

``rnnkit.data`` imports nothing from the rest of rnnkit: everything here works on plain
strings, lists, numpy arrays and torch tensors.
"""

# --- tokenizers, vectorisation, readers, datasets (vocabulary/corpora/classification/datasets) ---

# --- batching and Reber grammars (batching.py, reber.py): append imports below this line ---
