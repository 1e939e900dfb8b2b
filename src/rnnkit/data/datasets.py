"""Named datasets: where they come from, how to check them, and how to load them.

``load_dataset("ptb")`` finds the files in a local folder or the cache, downloads them (with a
progress bar) when missing, verifies checksums, extracts the member files it needs, and returns
the splits:

============== ===================== ===================================================
name           returns               source
============== ===================== ===================================================
ptb            :class:`LMCorpus`     Mikolov's ``simple-examples.tgz`` (``ptb.*.txt``)
ptb-char       :class:`LMCorpus`     the same archive (``ptb.char.*.txt``)
wikitext-2     :class:`LMCorpus`     Salesforce ``wikitext-2-v1.zip``
imdb           dict of split ->      Stanford ``aclImdb_v1.tar.gz`` (read from the archive)
               TextClassificationData
tiny-shakespeare :class:`LMCorpus`   karpathy/char-rnn ``input.txt`` (char level, 90/10)
============== ===================== ===================================================

Where files are looked for (first hit wins):

1. ``data_dir`` if given (a folder holding the files, e.g. ``../shared/data/ptb``, or a folder
   with one sub-folder per dataset, or the archive/file itself);
2. otherwise the cache: ``$RNNKIT_DATA`` or the platform cache folder (``~/.cache/rnnkit`` on
   Linux, ``~/Library/Caches/rnnkit`` on macOS, ``%LOCALAPPDATA%\\rnnkit\\Cache`` on Windows),
   in a sub-folder per dataset.

Downloads go to ``<root>/<dataset>/`` through a temporary ``.part`` file renamed into place
only when complete and verified; a truncated transfer or a checksum mismatch removes the
partial file and raises :class:`DownloadError`. Where no published sha256 exists for an
archive (see ``DATASETS``), the digest of the first download is recorded next to it
(``<file>.sha256``) and checked on later use, and the extracted member files are checked
against their known sha256 where known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .classification import TextClassificationData, read_imdb
from .corpora import LMCorpus

__all__ = [
    "DATASETS",
    "ChecksumError",
    "ChecksumWarning",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "default_data_dir",
    "download_file",
    "fetch_dataset",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "replace_url",
    "sha256_file",
]

ENV_VAR = "RNNKIT_DATA"
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A download failed (network error, HTTP error, truncated transfer, bad checksum)."""


class ChecksumError(DownloadError):
    """A file's sha256 is not the expected one; the file has been removed."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not present and downloading is off (or impossible)."""


class ChecksumWarning(UserWarning):
    """A user-supplied local file does not have the published sha256 (it is still used)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and what is inside.

    Attributes:
        name: registry name (``"ptb"``).
        kind: ``"lm"`` (word-level lines), ``"lm-char"`` (PTB char format), ``"text-char"``
            (one plain text, characters), or ``"imdb"``.
        url: canonical public URL of the archive (or single file).
        filename: name of the downloaded file in the cache.
        sha256: published sha256 of that file, or ``None`` where none could be found.
        members: split -> path inside the archive (``""`` for a single-file download;
            for ``imdb`` the archive is read directly and members are not extracted).
        member_sha256: split -> sha256 of the extracted member, or ``None``.
        local_names: other names under which the files may sit in a local folder
            (sub-folders or archive names), e.g. ``("tinyshakespeare",)``.
        cache_subdir: cache sub-folder (datasets sharing an archive share it).
        description: one line for ``rnnkit data list``.
        homepage: where the dataset is described.
    """

    name: str
    kind: str
    url: str
    filename: str
    sha256: str | None
    members: Mapping[str, str]
    member_sha256: Mapping[str, str | None] = field(default_factory=dict)
    local_names: tuple[str, ...] = ()
    cache_subdir: str | None = None
    description: str = ""
    homepage: str = ""

    @property
    def subdir(self) -> str:
        return self.cache_subdir or self.name


_PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"

DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> None:
    """Add a dataset to the registry (``overwrite=True`` to replace one)."""
    if spec.name in DATASETS and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass overwrite=True")
    DATASETS[spec.name] = spec


for _spec in (
    DatasetSpec(
        name="ptb",
        kind="lm",
        url=_PTB_URL,
        filename="simple-examples.tgz",
        sha256=None,  # no published sha256 found (torchtext/keras/tfds publish none for it)
        members={
            "train": "simple-examples/data/ptb.train.txt",
            "valid": "simple-examples/data/ptb.valid.txt",
            "test": "simple-examples/data/ptb.test.txt",
        },
        member_sha256={
            "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            "test": None,
        },
        local_names=("penn", "simple-examples/data"),
        cache_subdir="ptb",
        description="Penn Treebank, Mikolov's LM version: 10k words, 929k train tokens",
        homepage="http://www.fit.vutbr.cz/~imikolov/rnnlm/",
    ),
    DatasetSpec(
        name="ptb-char",
        kind="lm-char",
        url=_PTB_URL,
        filename="simple-examples.tgz",
        sha256=None,
        members={
            "train": "simple-examples/data/ptb.char.train.txt",
            "valid": "simple-examples/data/ptb.char.valid.txt",
            "test": "simple-examples/data/ptb.char.test.txt",
        },
        member_sha256={
            "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
            "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
            "test": None,
        },
        local_names=("ptb", "penn", "simple-examples/data"),
        cache_subdir="ptb",
        description="Penn Treebank, character level (chars space-separated, '_' between words)",
        homepage="http://www.fit.vutbr.cz/~imikolov/rnnlm/",
    ),
    DatasetSpec(
        name="wikitext-2",
        kind="lm",
        url="https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        filename="wikitext-2-v1.zip",
        sha256=None,  # no published sha256 found (torchtext publishes only an MD5)
        members={
            "train": "wikitext-2/wiki.train.tokens",
            "valid": "wikitext-2/wiki.valid.tokens",
            "test": "wikitext-2/wiki.test.tokens",
        },
        member_sha256={
            "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
            "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "test": None,
        },
        local_names=("wikitext2", "wikitext-2-v1"),
        description="WikiText-2 (tokenised, <unk> applied): 33,278 words, 2.09M train tokens",
        homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
    ),
    DatasetSpec(
        name="imdb",
        kind="imdb",
        url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        filename="aclImdb_v1.tar.gz",
        sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
        members={"train": "aclImdb/train", "test": "aclImdb/test"},
        local_names=("aclImdb_train.tar.gz", "aclImdb", "aclImdb_v1"),
        description="IMDB Large Movie Review Dataset v1.0: 25k train + 25k test reviews, pos/neg",
        homepage="https://ai.stanford.edu/~amaas/data/sentiment/",
    ),
    DatasetSpec(
        name="tiny-shakespeare",
        kind="text-char",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        members={"train": ""},
        local_names=("tinyshakespeare", "tiny_shakespeare"),
        description="tiny-shakespeare, 1.1M characters (65 distinct), char-level LM",
        homepage="https://github.com/karpathy/char-rnn",
    ),
):
    register_dataset(_spec)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted.

    Example:
        >>> list_datasets()
        ['imdb', 'ptb', 'ptb-char', 'tiny-shakespeare', 'wikitext-2']
    """
    return sorted(DATASETS)


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (``ValueError`` listing the known names)."""
    if isinstance(name, DatasetSpec):
        return name
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {list_datasets()}") from None


def default_data_dir() -> Path:
    """``$RNNKIT_DATA`` if set, else the platform's user cache folder + ``rnnkit``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "rnnkit" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "rnnkit"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "rnnkit"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled
    )


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically and verify it.

    The bytes go to ``dest`` + ``.part`` and are renamed to ``dest`` only when the transfer is
    complete (``Content-Length`` bytes received) and the sha256 matches (when given). On any
    failure the partial file is removed and :class:`DownloadError` (or :class:`ChecksumError`)
    says what happened, naming the URL and where to put the file by hand. A leftover ``.part``
    file from an interrupted earlier run is removed first.

    Args:
        url: what to download.
        dest: final path.
        sha256: expected hex digest, or ``None`` (not verified).
        progress: show a tqdm progress bar.
        timeout: socket timeout in seconds.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists():
        warnings.warn(f"removing a partial download left by an earlier run: {part}", stacklevel=2)
        part.unlink()
    by_hand = f"download it by hand and place it at {dest}"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}; {by_hand}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url} ({reason}); if this machine is offline, {by_hand} "
            "(or point data_dir / --data-dir at a folder that has the files)"
        ) from None
    digest = hashlib.sha256()
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        try:
            with open(part, "wb") as out, _progress_bar(total, dest.name, progress) as bar:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except http.client.IncompleteRead as exc:
                        chunk = exc.partial
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (TimeoutError, OSError) as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {url} failed after {received} bytes ({exc}); partial file "
                f"removed; retry, or {by_hand}"
            ) from None
    if total is not None and received != total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"truncated download of {url}: received {received} of {total} bytes; partial file "
            f"removed; retry, or {by_hand}"
        )
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {url}: expected {sha256}, got {actual} ({received} bytes); "
            f"the corrupt file was removed; retry, or {by_hand}"
        )
    os.replace(part, dest)
    if sha256 is None:
        # No published digest: remember this one so later corruption is detected.
        Path(str(dest) + ".sha256").write_text(f"{actual}  {dest.name}\n", encoding="utf-8")
    return dest


def _recorded_sha256(path: Path) -> str | None:
    side = Path(str(path) + ".sha256")
    if side.is_file():
        text = side.read_text(encoding="utf-8").split()
        return text[0] if text else None
    return None


def _norm(name: str) -> str:
    """Archive member name without leading ``./`` (tar files made with ``tar c .`` have it)."""
    while name.startswith("./"):
        name = name[2:]
    return str(PurePosixPath(name))


def _extract_members(archive: Path, wanted: Mapping[str, str], out_dir: Path) -> None:
    """Extract the member files ``wanted`` (split -> member path) to ``out_dir/<basename>``,
    each atomically."""
    targets = {_norm(m): out_dir / PurePosixPath(m).name for m in wanted.values()}
    found: set[str] = set()

    def write(name: str, src) -> None:
        dest = targets[name]
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as fh:
            shutil.copyfileobj(src, fh, _CHUNK)
        os.replace(tmp, dest)
        found.add(name)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _norm(info.filename)
                if name in targets:
                    with zf.open(info) as src:
                        write(name, src)
    else:
        try:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    name = _norm(member.name)
                    if name in targets and member.isfile():
                        src = tf.extractfile(member)
                        if src is not None:
                            write(name, src)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DownloadError(f"{archive}: cannot read the archive ({exc})") from None
    missing = sorted(set(targets) - found)
    if missing:
        raise DownloadError(f"{archive}: members not found in the archive: {missing}")


def _verify_member(path: Path, expected: str | None, *, local: bool) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual == expected:
        return
    if local:
        warnings.warn(
            f"{path}: sha256 {actual} differs from the published {expected}; using it anyway",
            ChecksumWarning,
            stacklevel=3,
        )
        return
    path.unlink(missing_ok=True)
    raise ChecksumError(
        f"{path}: sha256 mismatch after extraction (expected {expected}, got {actual}); "
        "the file was removed; delete the cached archive and retry"
    )


def _candidate_dirs(spec: DatasetSpec, root: Path) -> list[Path]:
    names = [spec.name, spec.subdir, *spec.local_names]
    dirs = [root] + [root / n for n in dict.fromkeys(names)]
    return [d for d in dirs if d.is_dir()]


def _find_local(spec: DatasetSpec, root: Path) -> dict[str, Path] | None:
    """Files of ``spec`` already under ``root`` (a folder, or the file itself), or ``None``."""
    if root.is_file():
        if spec.kind in ("imdb", "text-char"):
            return {"archive" if spec.kind == "imdb" else "train": root}
        return None
    dirs = _candidate_dirs(spec, root)
    if spec.kind == "imdb":
        names = [spec.filename, *spec.local_names]
        for d in dirs:
            for n in names:
                p = d / n
                if p.is_file() or (p.is_dir() and (p / "train").is_dir()):
                    return {"archive": p}
            if (d / "train" / "pos").is_dir():
                return {"archive": d}
        return None
    for d in dirs:
        files: dict[str, Path] = {}
        for split, member in spec.members.items():
            base = PurePosixPath(member).name if member else spec.filename
            for p in (d / base, d / member) if member else (d / base,):
                if p.is_file():
                    files[split] = p
                    break
        if "train" in files:
            return files
    return None


def fetch_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> dict[str, Path]:
    """Make sure a dataset's files are present; return split -> file (``{"archive": path}``
    for ``imdb``).

    Args:
        name: a registered name or a :class:`DatasetSpec`.
        data_dir: a folder with the files (or the file itself); downloads go to
            ``data_dir/<dataset>/``. ``None``: the cache (:func:`default_data_dir`).
        download: download what is missing; ``False`` raises :class:`DatasetNotFoundError`
            naming the URL and where to put the file.
        progress: show a progress bar while downloading.
    """
    spec = get_spec(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    local = data_dir is not None
    found = _find_local(spec, root)
    target_dir = root / spec.subdir if not root.is_file() else root.parent
    if found is not None:
        # Files we downloaded (the cache, or next to our archive) are verified strictly and
        # removed when corrupt; a user's own files only get a warning.
        ours = (target_dir / spec.filename).is_file()
        for split, path in found.items():
            strict = not local or (ours and path.parent == target_dir)
            if path.is_file() and split in spec.member_sha256:
                _verify_member(path, spec.member_sha256[split], local=not strict)
            elif path.is_file() and path.name == spec.filename and spec.sha256:
                _verify_member(path, spec.sha256, local=not strict)
        return found
    archive = target_dir / spec.filename
    if not download and not archive.is_file():
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} not found under {root} and downloading is off; download "
            f"{spec.url} and place it at {archive} (or pass data_dir= / --data-dir pointing at "
            "a folder with the files)"
        )
    if archive.is_file():
        expected = spec.sha256 or _recorded_sha256(archive)
        if expected is not None and sha256_file(archive) != expected:
            warnings.warn(
                f"{archive}: cached file is corrupt (sha256 mismatch); removing it",
                stacklevel=2,
            )
            archive.unlink()
            if not download:
                raise DatasetNotFoundError(
                    f"cached {archive} was corrupt and has been removed; download {spec.url} "
                    f"and place it at {archive}"
                )
    if not archive.is_file():
        download_file(spec.url, archive, sha256=spec.sha256, progress=progress)
    if spec.kind == "imdb":
        return {"archive": archive}
    if spec.kind == "text-char" or all(not m for m in spec.members.values()):
        return {"train": archive}
    _extract_members(archive, spec.members, target_dir)
    files = {}
    for split, member in spec.members.items():
        path = target_dir / PurePosixPath(member).name
        _verify_member(path, spec.member_sha256.get(split), local=False)
        files[split] = path
    return files


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    **kwargs,
) -> LMCorpus | dict[str, TextClassificationData]:
    """Load a named dataset, downloading it if needed (see :func:`fetch_dataset`).

    Args:
        name: ``"ptb"``, ``"ptb-char"``, ``"wikitext-2"``, ``"imdb"``, ``"tiny-shakespeare"``,
            or a :class:`DatasetSpec`.
        data_dir: folder with the files, or ``None`` for the cache.
        download: allow downloading.
        progress: progress bar while downloading.
        **kwargs: passed to the reader (:meth:`LMCorpus.from_files`,
            :meth:`LMCorpus.from_text` or :func:`read_imdb`).

    Returns:
        An :class:`LMCorpus` (``.train``/``.valid``/``.test`` id streams and ``.vocab``), or for
        ``imdb`` a dict ``{"train": TextClassificationData, "test": ...}`` of the splits present.
    """
    spec = get_spec(name)
    files = fetch_dataset(spec, data_dir, download=download, progress=progress)
    if spec.kind == "imdb":
        archive = files["archive"]
        out = {"train": read_imdb(archive, "train", **kwargs)}
        try:
            out["test"] = read_imdb(archive, "test", **kwargs)
        except (ValueError, FileNotFoundError):
            pass  # a train-only copy (the official archive has both)
        return out
    if spec.kind == "text-char":
        return LMCorpus.from_text(files["train"], **kwargs)
    if spec.kind == "lm-char":
        kwargs.setdefault("unk_token", None)
    return LMCorpus.from_files(files["train"], files.get("valid"), files.get("test"), **kwargs)


def replace_url(spec: DatasetSpec, url: str, **changes) -> DatasetSpec:
    """A copy of ``spec`` with another URL (mirrors, tests against a local server)."""
    return dataclasses.replace(spec, url=url, **changes)
