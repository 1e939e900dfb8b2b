import json
import os

import pytest
import safetensors.torch
import torch
from training_toys import TinyClassifier, TinyStreamLM, classification_data, loader

from rnnkit.training import (
    CheckpointError,
    ModelCheckpoint,
    Trainer,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    set_seed,
)
from rnnkit.training import checkpoint as ckpt_mod


def trained(tmp_path, epochs=2):
    set_seed(0)
    x, y = classification_data()
    trainer = Trainer(
        TinyClassifier(), "adam", lr=0.01, quiet=True, device="cpu", run_dir=tmp_path,
        model_config={"features": 4, "classes": 3}, artifacts={"labels": ["a", "b", "c"]},
        callbacks=[ModelCheckpoint(monitor="val_loss")],
    )  # fmt: skip
    trainer.fit(loader(x, y), val_data=loader(x, y, shuffle=False), epochs=epochs)
    return trainer, x


def test_round_trip_identical_outputs_and_optimizer_state(tmp_path):
    trainer, x = trained(tmp_path)
    ckpt = load_checkpoint(tmp_path, prefer="last")
    assert ckpt.path == tmp_path / "checkpoints" / "last"
    assert ckpt.config == {"features": 4, "classes": 3}
    assert ckpt.artifacts == {"labels": ["a", "b", "c"]}
    model = TinyClassifier(**ckpt.config)
    ckpt.load_weights(model)
    model.eval(), trainer.model.eval()
    torch.testing.assert_close(model(x)[0], trainer.model(x)[0], rtol=0, atol=0)

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    opt.load_state_dict(ckpt.training_state["optimizer"])
    a, b = opt.state_dict(), trainer.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid, st in b["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(a["state"][pid][k], v, rtol=0, atol=0)
    assert ckpt.manifest["epoch"] == 2 and ckpt.manifest["step"] == 12
    assert ckpt.training_state["history"]["epoch"] == [1, 2]


def test_run_folder_prefers_best_and_file_paths_resolve(tmp_path):
    trained(tmp_path)
    best = tmp_path / "checkpoints" / "best"
    assert resolve_checkpoint(tmp_path) == best
    assert resolve_checkpoint(best / "model.safetensors") == best
    assert resolve_checkpoint(best / "manifest.json") == best
    assert load_checkpoint(tmp_path).path == best


def test_tied_weights_are_saved_once_and_retied(tmp_path):
    set_seed(1)
    lm = TinyStreamLM(tie=True)
    save_checkpoint(tmp_path / "c", lm, config={"vocab": 7})
    stored = safetensors.torch.load_file(str(tmp_path / "c" / "model.safetensors"))
    assert len(stored) == len(lm.state_dict()) - 1  # the tied matrix is stored once
    fresh = TinyStreamLM(tie=True)
    load_checkpoint(tmp_path / "c", model=fresh)
    assert fresh.out.weight is fresh.embed.weight
    torch.testing.assert_close(fresh.embed.weight, lm.embed.weight, rtol=0, atol=0)
    inp = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(fresh(inp)[0], lm(inp)[0], rtol=0, atol=0)


def test_bare_safetensors_file_loads_weights(tmp_path):
    lm = TinyClassifier()
    safetensors.torch.save_model(lm, str(tmp_path / "w.safetensors"))
    fresh = TinyClassifier()
    ckpt = load_checkpoint(tmp_path / "w.safetensors", model=fresh)
    assert ckpt.config is None and ckpt.training_state is None
    torch.testing.assert_close(fresh.net[0].weight, lm.net[0].weight, rtol=0, atol=0)


def test_weights_mismatch_is_clear(tmp_path):
    save_checkpoint(tmp_path / "c", TinyClassifier(hidden=8))
    with pytest.raises(CheckpointError, match="do not match the model"):
        load_checkpoint(tmp_path / "c", model=TinyClassifier(hidden=5))


@pytest.mark.parametrize(
    "name",
    ["model.safetensors", "config.json", "training_state.json", "training_state.safetensors",
     "artifacts/labels.json"],
)  # fmt: skip
def test_truncated_file_names_the_file(tmp_path, name):
    trained(tmp_path, epochs=1)
    path = tmp_path / "checkpoints" / "last" / name
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match=rf"{name}.* truncated or corrupted"):
        load_checkpoint(tmp_path, prefer="last")


def test_corrupted_bytes_are_detected(tmp_path):
    trained(tmp_path, epochs=1)
    path = tmp_path / "checkpoints" / "last" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupted: its sha256"):
        load_checkpoint(tmp_path, prefer="last")


def test_truncated_manifest_and_missing_manifest(tmp_path):
    trained(tmp_path, epochs=1)
    manifest = tmp_path / "checkpoints" / "last" / "manifest.json"
    manifest.write_text(manifest.read_text()[:20])
    with pytest.raises(CheckpointError, match=r"manifest.json is truncated or corrupted"):
        load_checkpoint(tmp_path, prefer="last")
    manifest.unlink()
    with pytest.raises(CheckpointError, match=r"manifest.json is missing.*incomplete"):
        load_checkpoint(tmp_path, prefer="last")


def test_truncated_bare_weights_file(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_model(TinyClassifier(), str(path))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(CheckpointError, match=r"w.safetensors is truncated or corrupted"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_checkpoint(tmp_path / "x.txt")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = TinyClassifier()
    dest = tmp_path / "ckpt"
    save_checkpoint(dest, model, config={"v": 1}, training_state={"x": torch.ones(2)})
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}

    real = ckpt_mod._write_json
    calls = []

    def failing(path, obj):  # the disk fills up after the weights were written
        calls.append(path)
        if path.name == "training_state.json":
            raise OSError("No space left on device")
        real(path, obj)

    monkeypatch.setattr(ckpt_mod, "_write_json", failing)
    with torch.no_grad():
        model.net[0].weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(dest, model, config={"v": 2}, training_state={"x": torch.zeros(2)})
    assert calls  # it failed midway, after writing some files
    after = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind
    assert load_checkpoint(dest).config == {"v": 1}


def test_interrupted_swap_falls_back_to_old_copy(tmp_path):
    model = TinyClassifier()
    save_checkpoint(tmp_path / "checkpoints" / "last", model, config={"v": 1})
    # simulate a crash between the two renames of _replace_dir
    os.replace(tmp_path / "checkpoints" / "last", tmp_path / "checkpoints" / ".last.old-1234")
    assert load_checkpoint(tmp_path).config == {"v": 1}


def test_unpicklable_state_is_refused(tmp_path):
    with pytest.raises(TypeError, match="nothing is pickled"):
        save_checkpoint(tmp_path / "c", TinyClassifier(), training_state={"f": object()})
    with pytest.raises(ValueError, match="artifact names"):
        save_checkpoint(tmp_path / "c", TinyClassifier(), artifacts={"../x": 1})
    assert not (tmp_path / "c").exists()


def test_state_encoding_round_trip():
    tensors = {}
    state = {0: {"step": torch.tensor(3.0), "betas": (0.9, 0.99)}, "s": [None, float("inf")]}
    enc = ckpt_mod.encode_state(state, tensors)
    dec = ckpt_mod.decode_state(json.loads(json.dumps(enc)), tensors)
    assert dec[0]["betas"] == (0.9, 0.99) and dec["s"] == [None, float("inf")]
    assert torch.equal(dec[0]["step"], torch.tensor(3.0))
