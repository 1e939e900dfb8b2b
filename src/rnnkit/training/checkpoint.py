"""Checkpoints without pickles: safetensors for tensors, JSON for everything else, atomic writes.

A checkpoint is a directory::

    <checkpoint>/
      manifest.json                 written last: format, version, epoch/step, size+sha256/file
      model.safetensors             the weights (tied/shared tensors stored once)
      config.json                   the model config the caller gave (the model is rebuilt from it)
      artifacts/<name>.json         caller artefacts: tokenizer/vocabulary, label map, ...
      training_state.json           optimizer/scheduler/callback state, RNG states, epoch/step,
                                    history; tensors are replaced by {"__tensor__": key} ...
      training_state.safetensors    ... and stored here (optimizer moments, torch RNG state, ...)

and a run folder written by :class:`~rnnkit.training.callbacks.ModelCheckpoint` holds
``checkpoints/best/`` and ``checkpoints/last/``.

The directory is written under a temporary name beside its destination and renamed into place,
so an interrupted save leaves the previous checkpoint intact. Loading verifies every file against
the manifest, so a truncated or corrupted file is reported by name.

>>> import tempfile
>>> model = torch.nn.Linear(2, 1)
>>> with tempfile.TemporaryDirectory() as d:
...     _ = save_checkpoint(f"{d}/ckpt", model, config={"in": 2}, artifacts={"labels": ["a"]})
...     ckpt = load_checkpoint(d + "/ckpt")
...     fresh = torch.nn.Linear(2, 1)
...     _ = ckpt.load_weights(fresh)
...     (ckpt.config, ckpt.artifacts, torch.equal(fresh.weight, model.weight))
({'in': 2}, {'labels': ['a']}, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "atomic_write_text",
    "encode_state",
    "decode_state",
]

FORMAT = "rnnkit-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ARTIFACTS = "artifacts"
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, truncated or corrupted; the message names the file."""


# ----------------------------------------------------------------------------- atomic files


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     atomic_write_text(f"{d}/a.txt", "hi")
    ...     open(f"{d}/a.txt").read()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------- nested state <-> JSON


def encode_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Turn a nested structure into JSON-able data, moving tensors into ``tensors``.

    Tensors become ``{"__tensor__": key}``; tuples ``{"__tuple__": [...]}``; dicts with non-string
    keys (optimizer state is keyed by int) ``{"__items__": [[key, value], ...]}``. Only
    ``None``, bools, ints, floats, strings, lists, tuples, dicts and tensors are allowed: nothing
    is pickled.

    >>> t = {}
    >>> encode_state({0: (torch.ones(1), 0.9)}, t)
    {'__items__': [[0, {'__tuple__': [{'__tensor__': 't.0'}, 0.9]}]]}
    >>> decode_state(encode_state({0: (1, 2)}, {}), {})
    {0: (1, 2)}
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [encode_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, tensors, prefix) for k, v in obj.items()}
        return {"__items__": [[k, encode_state(v, tensors, prefix)] for k, v in obj.items()]}
    raise TypeError(
        f"cannot store a {type(obj).__name__} in a checkpoint (only tensors and JSON-able "
        f"values are allowed; nothing is pickled): {obj!r:.80}"
    )


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_key(k): decode_state(v, tensors) for k, v in obj["__items__"]}
        return {k: decode_state(v, tensors) for k, v in obj.items()}
    return obj


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


# ------------------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    config: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically.

    Args:
        path: the checkpoint directory to (re)place.
        model: the module whose weights are saved (tied parameters are stored once).
        config: JSON-able model config from which the caller rebuilds the model.
        artifacts: ``{name: JSON-able value}``; each is written to ``artifacts/<name>.json``.
        training_state: nested state (tensors allowed, see :func:`encode_state`).
        metadata: small JSON-able facts copied into the manifest (``epoch``, ``step``, metrics).

    Returns:
        The checkpoint directory.

    Raises:
        TypeError: something in the state is neither a tensor nor JSON-able.
        ValueError: an artefact name is not a plain file name.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        _write_checkpoint_files(tmp, model, config, artifacts, training_state, metadata)
        _fsync_dir(tmp)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_checkpoint_files(tmp, model, config, artifacts, training_state, metadata) -> None:
    safetensors.torch.save_model(model, str(tmp / WEIGHTS))
    files = [WEIGHTS]
    if config is not None:
        _write_json(tmp / CONFIG, dict(config))
        files.append(CONFIG)
    for name, value in (artifacts or {}).items():
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"artifact names must be plain file names; received {name!r}")
        (tmp / ARTIFACTS).mkdir(exist_ok=True)
        _write_json(tmp / ARTIFACTS / f"{name}.json", value)
        files.append(f"{ARTIFACTS}/{name}.json")
    if training_state is not None:
        tensors: dict[str, torch.Tensor] = {}
        encoded = encode_state(dict(training_state), tensors)
        safetensors.torch.save_file(tensors, str(tmp / STATE_TENSORS))
        _write_json(tmp / STATE_JSON, encoded)
        files += [STATE_JSON, STATE_TENSORS]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **dict(metadata or {}),
        "files": {f: {"size": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)} for f in files},
    }
    _write_json(tmp / MANIFEST, manifest)  # last: a directory with a manifest is complete


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, dest: Path) -> None:
    # rename(2) cannot replace a non-empty directory: move the old one aside first. If the process
    # dies between the two renames, ``.<name>.old-*`` still holds the previous checkpoint and
    # resolve_checkpoint() falls back to it.
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    _fsync_dir(dest.parent)


# ------------------------------------------------------------------------------------- load


@dataclass
class Checkpoint:
    """A loaded checkpoint (tensors on CPU).

    Attributes:
        path: the checkpoint directory.
        config: the model config (``None`` if none was saved).
        artifacts: ``{name: value}`` from ``artifacts/``.
        training_state: the decoded training state (``None`` for weights-only checkpoints).
        manifest: the manifest (``epoch``, ``step``, metrics, file list).
    """

    path: Path
    config: dict[str, Any] | None
    artifacts: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS if self.path.is_dir() else self.path

    def load_weights(
        self, model: torch.nn.Module, *, strict: bool = True, device: str | torch.device = "cpu"
    ) -> torch.nn.Module:
        """Load the weights into ``model`` (rebuilt from :attr:`config`), re-tying shared tensors.

        Raises:
            CheckpointError: the weights do not match the model (missing/unexpected keys, shapes).
        """
        try:
            missing, unexpected = safetensors.torch.load_model(
                model, str(self.weights_path), strict=strict, device=str(device)
            )
        except RuntimeError as err:
            raise CheckpointError(
                f"weights in {self.weights_path} do not match the model: {err}"
            ) from err
        return model

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The stored tensors (shared tensors appear once, under one of their names)."""
        return safetensors.torch.load_file(str(self.weights_path))


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """Find the checkpoint directory (or weights file) that ``path`` designates.

    ``path`` may be a checkpoint directory, a file inside one (``manifest.json``,
    ``model.safetensors``), a bare ``.safetensors`` file, or a run folder containing
    ``checkpoints/best`` and/or ``checkpoints/last`` (also ``best``/``last`` directly);
    ``prefer`` picks which of the two first (``"best"`` for inference, ``"last"`` to resume).

    Raises:
        CheckpointError: nothing loadable is found.
    """
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last'; received prefer={prefer!r}")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name == MANIFEST or (p.name == WEIGHTS and (p.parent / MANIFEST).exists()):
            return p.parent
        if p.suffix == ".safetensors":
            return p
        raise CheckpointError(
            f"{p} is not a checkpoint: expected a checkpoint directory, a run folder, "
            f"{MANIFEST} or a .safetensors file"
        )
    if (p / MANIFEST).exists() or (p / WEIGHTS).exists():
        return p
    order = ("best", "last") if prefer == "best" else ("last", "best")
    for base in (p / "checkpoints", p):
        for name in order:
            if (base / name).is_dir():
                return base / name
        for name in order:  # a save interrupted between its two renames
            olds = sorted(base.glob(f".{name}.old-*")) if base.is_dir() else []
            if olds:
                return olds[-1]
    raise CheckpointError(
        f"no checkpoint in {p}: expected {MANIFEST} there, or checkpoints/best or checkpoints/last"
    )


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module | None = None,
    *,
    prefer: str = "best",
    verify: bool = True,
) -> Checkpoint:
    """Load a checkpoint (see :func:`resolve_checkpoint` for what ``path`` may be).

    Args:
        path: run folder, checkpoint directory or file.
        model: if given, its weights are loaded (strictly).
        prefer: in a run folder, ``"best"`` (default) or ``"last"``.
        verify: check every file's size and sha256 against the manifest.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        CheckpointError: a file is missing, truncated, corrupted or unreadable (named in the
            message), or the format is not an rnnkit checkpoint.
    """
    p = resolve_checkpoint(path, prefer=prefer)
    if p.is_file():  # a bare weights file
        _check_safetensors(p)
        cfg_path = p.with_name(CONFIG)
        cfg = _read_json(cfg_path) if cfg_path.exists() else None
        ckpt = Checkpoint(path=p, config=cfg)
        if model is not None:
            ckpt.load_weights(model)
        return ckpt
    manifest_path = p / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(
            f"{manifest_path} is missing: the checkpoint in {p} is incomplete (interrupted save?)"
        )
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path} is not an rnnkit checkpoint manifest")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{manifest_path} has format version {manifest.get('version')}; this rnnkit reads "
            f"versions up to {VERSION}"
        )
    files = manifest.get("files", {})
    for name, info in files.items():
        f = p / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing")
        if verify:
            size = f.stat().st_size
            if size != info["size"]:
                raise CheckpointError(
                    f"checkpoint file {f} is truncated or corrupted: {size} bytes, "
                    f"the manifest says {info['size']}"
                )
            if _sha256(f) != info["sha256"]:
                raise CheckpointError(
                    f"checkpoint file {f} is corrupted: its sha256 does not match the manifest"
                )
    _check_safetensors(p / WEIGHTS)
    config = _read_json(p / CONFIG) if CONFIG in files else None
    artifacts = {
        name[len(ARTIFACTS) + 1 : -len(".json")]: _read_json(p / name)
        for name in files
        if name.startswith(ARTIFACTS + "/")
    }
    training_state = None
    if STATE_JSON in files:
        tensors = _load_tensors(p / STATE_TENSORS)
        training_state = decode_state(_read_json(p / STATE_JSON), tensors)
    ckpt = Checkpoint(
        path=p,
        config=config,
        artifacts=artifacts,
        training_state=training_state,
        manifest=manifest,
    )
    if model is not None:
        ckpt.load_weights(model)
    return ckpt


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_constant=lambda c: {"NaN": math.nan}.get(c, float(c)))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {err}") from err
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {err}") from err


def _check_safetensors(path: Path) -> None:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as err:  # safetensors raises its own SafetensorError / OSError
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {err}") from err
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"checkpoint file {path} is truncated: {size} bytes")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {err}") from err
