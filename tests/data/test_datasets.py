"""Dataset registry and downloader, against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from rnnkit.data import datasets as ds
from rnnkit.data.corpora import LMCorpus

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared acceptance data not present at {SHARED}"
)

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
PTB_TRAIN = b" the cat <unk> sat \n the dog \n"
PTB_VALID = b" the cat \n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


PTB_TGZ = tgz(
    {
        "./simple-examples/data/ptb.train.txt": PTB_TRAIN,
        "./simple-examples/data/ptb.valid.txt": PTB_VALID,
        "./simple-examples/data/ptb.test.txt": PTB_VALID,
        "./simple-examples/README": b"x",
    }
)
WIKI_ZIP = zipped(
    {
        "wikitext-2/wiki.train.tokens": PTB_TRAIN,
        "wikitext-2/wiki.valid.tokens": PTB_VALID,
        "wikitext-2/wiki.test.tokens": PTB_VALID,
    }
)
ROUTES = {"/input.txt": TEXT, "/simple-examples.tgz": PTB_TGZ, "/wikitext-2-v1.zip": WIKI_ZIP}


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Handler.hits.append(self.path)
        if self.path.startswith("/truncated"):
            body = TEXT[:100]
            self.send_response(200)
            self.send_header("Content-Length", str(len(TEXT)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        body = ROUTES.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def shakespeare(url: str, sha256: str | None = sha(TEXT)) -> ds.DatasetSpec:
    return ds.replace_url(ds.get_spec("tiny-shakespeare"), url, sha256=sha256)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith(".part"))


def test_good_download_verify_and_load(server, tmp_path):
    spec = shakespeare(f"{server}/input.txt")
    corpus = ds.load_dataset(spec, tmp_path, progress=True)
    assert isinstance(corpus, LMCorpus)
    assert corpus.train.numel() + corpus.valid.numel() == len(TEXT)
    path = tmp_path / "tiny-shakespeare" / "input.txt"
    assert path.read_bytes() == TEXT
    assert leftovers(tmp_path) == []
    n = len(Handler.hits)
    ds.load_dataset(spec, tmp_path)  # found locally: no second request
    assert len(Handler.hits) == n


def test_wrong_checksum_is_removed_and_reported(server, tmp_path):
    spec = shakespeare(f"{server}/input.txt", sha256="0" * 64)
    with pytest.raises(
        ds.ChecksumError, match=r"sha256 mismatch for http://127\.0\.0\.1:\d+/input\.txt"
    ):
        ds.fetch_dataset(spec, tmp_path, progress=False)
    assert not (tmp_path / "tiny-shakespeare" / "input.txt").exists()
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_removed_and_reported(server, tmp_path):
    spec = shakespeare(f"{server}/truncated/input.txt")
    with pytest.raises(
        ds.DownloadError, match=rf"truncated download .*received 100 of {len(TEXT)} bytes"
    ):
        ds.fetch_dataset(spec, tmp_path, progress=False)
    assert not (tmp_path / "tiny-shakespeare" / "input.txt").exists()
    assert leftovers(tmp_path) == []


def test_http_404(server, tmp_path):
    spec = shakespeare(f"{server}/nothing-here.txt")
    dest = tmp_path / "tiny-shakespeare" / "input.txt"
    with pytest.raises(ds.DownloadError, match=rf"HTTP 404 .* place it at {dest}"):
        ds.fetch_dataset(spec, tmp_path, progress=False)
    assert leftovers(tmp_path) == []


def test_offline_message_names_url_and_path(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/input.txt"
    with pytest.raises(
        ds.DownloadError, match=r"cannot download .*input\.txt .*offline.*place it at"
    ):
        ds.fetch_dataset(shakespeare(url), tmp_path, progress=False)
    with pytest.raises(ds.DatasetNotFoundError, match=rf"download {url} and place it at"):
        ds.fetch_dataset(shakespeare(url), tmp_path, download=False)


def test_stale_partial_file_is_removed(server, tmp_path):
    dest = tmp_path / "input.txt"
    (tmp_path / "input.txt.part").write_bytes(b"half")
    with pytest.warns(UserWarning, match="partial download"):
        ds.download_file(f"{server}/input.txt", dest, sha256=sha(TEXT), progress=False)
    assert dest.read_bytes() == TEXT and leftovers(tmp_path) == []


def test_tgz_extraction_member_checksums_and_recorded_digest(server, tmp_path):
    spec = ds.replace_url(
        ds.get_spec("ptb"),
        f"{server}/simple-examples.tgz",
        member_sha256={"train": sha(PTB_TRAIN), "valid": sha(PTB_VALID), "test": None},
    )
    corpus = ds.load_dataset(spec, tmp_path, progress=False)
    assert corpus.vocab.tokens[:4] == ["<pad>", "<unk>", "the", "<eos>"]
    assert corpus.test is not None
    cache = tmp_path / "ptb"
    assert (cache / "ptb.train.txt").read_bytes() == PTB_TRAIN
    recorded = (cache / "simple-examples.tgz.sha256").read_text().split()[0]
    assert recorded == sha(PTB_TGZ)  # no published digest: the first download's is kept
    # A member corrupted in the cache is detected and removed.
    (cache / "ptb.valid.txt").write_bytes(b"tampered\n")
    with pytest.raises(ds.ChecksumError, match="ptb.valid.txt: sha256 mismatch"):
        ds.fetch_dataset(spec, tmp_path, progress=False)
    assert not (cache / "ptb.valid.txt").exists()


def test_corrupt_cached_archive_is_redownloaded(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path))
    spec = shakespeare(f"{server}/input.txt")
    target = tmp_path / "tiny-shakespeare" / "input.txt"
    target.parent.mkdir(parents=True)
    target.write_bytes(TEXT[:10])  # a corrupt file where the cache keeps the download
    with pytest.raises(ds.ChecksumError, match="sha256 mismatch"):
        ds.fetch_dataset(spec)  # found in the cache, verified strictly, removed
    assert not target.exists()
    assert ds.fetch_dataset(spec, progress=False) == {"train": target}
    assert target.read_bytes() == TEXT


def test_zip_extraction(server, tmp_path):
    spec = ds.replace_url(
        ds.get_spec("wikitext-2"), f"{server}/wikitext-2-v1.zip", member_sha256={}
    )
    files = ds.fetch_dataset(spec, tmp_path, progress=False)
    assert sorted(files) == ["test", "train", "valid"]
    assert files["train"].read_bytes() == PTB_TRAIN


def test_missing_member_in_archive(server, tmp_path):
    spec = ds.replace_url(
        ds.get_spec("ptb"), f"{server}/wikitext-2-v1.zip", filename="x.zip", member_sha256={}
    )
    with pytest.raises(ds.DownloadError, match="members not found in the archive"):
        ds.fetch_dataset(spec, tmp_path, progress=False)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(ds.ENV_VAR, str(tmp_path / "d"))
    assert ds.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv(ds.ENV_VAR)
    assert ds.default_data_dir().name == "rnnkit"


def test_registry():
    assert ds.list_datasets() == ["imdb", "ptb", "ptb-char", "tiny-shakespeare", "wikitext-2"]
    for name in ds.list_datasets():
        spec = ds.get_spec(name)
        assert spec.url.startswith(("http://", "https://")) and spec.url.endswith(spec.filename)
        assert "train" in spec.members
        for digest in [spec.sha256, *spec.member_sha256.values()]:
            assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0)
    assert ds.get_spec("imdb").sha256.startswith("c40f74a1")
    with pytest.raises(ValueError, match="unknown dataset 'ptb2'; known datasets"):
        ds.get_spec("ptb2")
    with pytest.raises(ValueError, match="already registered"):
        ds.register_dataset(ds.get_spec("ptb"))


def test_local_file_with_other_checksum_warns(tmp_path):
    (tmp_path / "ptb.train.txt").write_bytes(PTB_TRAIN)
    with pytest.warns(ds.ChecksumWarning, match="differs from the published"):
        corpus = ds.load_dataset("ptb", tmp_path, download=False)
    assert corpus.valid is None


@needs_shared
def test_shared_folders_load_without_network():
    ptb = ds.load_dataset("ptb", SHARED / "ptb", download=False)
    assert ptb.vocab.num_tokens == 10_000 and ptb.train.numel() == 929_589
    char = ds.load_dataset("ptb-char", SHARED, download=False)  # finds SHARED/ptb/
    assert char.vocab.num_tokens == 50
    files = ds.fetch_dataset("wikitext-2", SHARED, download=False)
    assert set(files) == {"train", "valid"}  # test is optional
    imdb = ds.fetch_dataset("imdb", SHARED, download=False)
    assert imdb == {"archive": SHARED / "imdb" / "aclImdb_train.tar.gz"}
    shakes = ds.fetch_dataset("tiny-shakespeare", SHARED / "tinyshakespeare" / "input.txt")
    assert shakes["train"].name == "input.txt"
