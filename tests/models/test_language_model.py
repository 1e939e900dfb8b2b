"""LanguageModel: the seed methods, the stream LM, its regularisers, generation, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.data import batch_producer
from rnnkit.layers import RNN
from rnnkit.models import LM_PRESETS, LanguageModel, LanguageModelConfig, resolve_recipe
from rnnkit.training import Trainer, load_checkpoint, save_checkpoint


def tiny(**kw) -> LanguageModel:
    torch.manual_seed(0)
    opts = {"embedding_dim": 4, "dropout_keep_prob": 1.0}
    opts.update(kw)
    return LanguageModel(11, 6, 5, 2, **opts)


PADDED = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0], [9, 10, 2, 1, 4]])  # (B=3, T=5)


# ----------------------------------------------------------------------------- seed methods


def test_tokenizer_is_keras_with_num_words():
    m = LanguageModel(4, 5, 3, 1)
    assert m.tokenizer.num_words == 4
    seqs = m.tokenize_text_corpus(["a b c d", "a b a"])
    assert all(0 < i < 4 for s in seqs for i in s)
    assert seqs == [[1, 2, 3], [1, 2, 1]]  # d (rank 4) is dropped, as in Keras


def test_get_input_target_sequence_pads_and_truncates():
    m = LanguageModel(20, 4, 3, 1)
    assert m.get_input_target_sequence([5, 6]) == ([5, 0, 0], [6, 0, 0])
    assert m.get_input_target_sequence([1, 2, 3, 4]) == ([1, 2, 3], [2, 3, 4])
    assert m.get_input_target_sequence([1, 2, 3, 4, 5, 6]) == ([1, 2, 3], [2, 3, 4])
    with pytest.raises(ValueError, match="max_length"):
        LanguageModel(20, None, 3, 1).get_input_target_sequence([1, 2])


def test_make_lstm_cell_converts_keep_prob_to_rate():
    m = tiny()
    cell = m.make_lstm_cell(0.75)
    assert type(cell).__name__ == "LSTMCell" and cell.units == 5
    assert cell.dropout == pytest.approx(0.25)
    assert m.make_lstm_cell(1.0).dropout == 0.0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"dropout_keep_prob must be in \(0, 1\]"):
            m.make_lstm_cell(bad)
    assert type(tiny(cell="gru").make_lstm_cell(0.5)).__name__ == "GRUCell"


def test_stacked_lstm_cells_are_the_models_own_with_seed_keep_probs():
    m = LanguageModel(11, 6, 5, 3)
    stack = m.stacked_lstm_cells(is_training=True)
    assert stack is m.cells and len(stack.cells) == 3
    assert [c.dropout for c in stack.cells] == [0.5] * 3 and stack.training
    params = {id(p) for p in m.parameters()}
    assert all(id(p) in params for p in stack.parameters())
    stack = m.stacked_lstm_cells(is_training=False)
    assert [c.dropout for c in stack.cells] == [0.0] * 3 and not stack.training


def test_get_input_embeddings_default_size_and_mask():
    m = LanguageModel(10000, 6, 5, 1)
    assert m.embedding_dim == int(10000**0.25) == 10
    emb = m.get_input_embeddings(PADDED)
    assert emb.shape == (3, 5, 10)
    assert torch.equal(m.embedding.compute_mask(PADDED), PADDED != 0)


def test_run_lstm_equals_each_sequence_unpadded():
    m = tiny()
    outputs, binary = m.run_lstm(PADDED, is_training=False)
    assert outputs.shape == (3, 5, 5)
    assert torch.equal(binary, torch.sign(PADDED))
    rnn = RNN(m.cells, return_sequences=True, backend="reference")
    for b in range(3):
        n = int(binary[b].sum())
        alone = rnn(m.get_input_embeddings(PADDED[b : b + 1, :n]))  # (1, n, H) no padding
        torch.testing.assert_close(outputs[b, :n], alone[0])
        assert torch.all(outputs[b, n:] == 0)  # padded steps are not computed


def test_run_lstm_left_padding_is_masked_too():
    m = tiny()
    left = torch.tensor([[0, 0, 3, 4, 5]])
    out, _ = m.run_lstm(left, is_training=False)
    alone = RNN(m.cells, return_sequences=True)(m.get_input_embeddings(left[:, 2:]))
    torch.testing.assert_close(out[0, 2:], alone[0])
    assert torch.all(out[0, :2] == 0)


def test_calculate_loss_ignores_padding_exactly():
    m = tiny()
    outputs, binary = m.run_lstm(PADDED, is_training=False)
    targets = torch.roll(PADDED, -1, dims=1) * binary
    loss = m.calculate_loss(outputs, binary, targets)
    logits = m.decoder(outputs)
    manual = sum(
        -torch.log_softmax(logits[b, t], -1)[targets[b, t]]
        for b in range(3)
        for t in range(5)
        if binary[b, t]
    )
    torch.testing.assert_close(loss, manual)
    # Garbage at padded positions (outputs and targets) changes nothing.
    noisy_out = torch.where(binary.bool()[..., None], outputs, torch.randn_like(outputs) * 9)
    noisy_t = torch.where(binary.bool(), targets, torch.randint(0, 11, targets.shape))
    torch.testing.assert_close(m.calculate_loss(noisy_out, binary, noisy_t), loss)
    mean = m.calculate_loss(outputs, binary, targets, reduction="mean")
    torch.testing.assert_close(mean, loss / binary.sum())
    with pytest.raises(ValueError, match="reduction"):
        m.calculate_loss(outputs, binary, targets, reduction="max")


def test_calculate_loss_of_padding_only_is_zero_with_zero_gradients():
    m = tiny()
    outputs, binary = m.run_lstm(PADDED, is_training=False)
    loss = m.calculate_loss(outputs, torch.zeros_like(binary), PADDED)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(m.decoder.weight.grad, torch.zeros_like(m.decoder.weight))


def test_word_predictions_and_next_word_probabilities():
    m = tiny()
    preds = torch.arange(15).view(3, 5)
    assert m.get_word_predictions(preds, torch.sign(PADDED), 3).tolist() == [3, 6, 14]
    probs = m.next_word_probabilities(PADDED)
    assert probs.shape == (3, 11)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    # The same numbers from the stream path (forward), row by row, unpadded.
    m.eval()
    for b, n in enumerate([4, 2, 5]):
        logits, _, _ = m(PADDED[b : b + 1, :n])
        torch.testing.assert_close(probs[b], torch.softmax(logits[0, -1], -1))
    assert torch.equal(m.predict_next_words(PADDED), probs.argmax(-1))


# ----------------------------------------------------------------------------- stream LM


def test_forward_state_carries_across_windows():
    m = tiny().eval()
    x = torch.randint(1, 11, (2, 6))
    full, _, s_full = m(x)
    a, _, s = m(x[:, :3])
    b, _, s = m(x[:, 3:], state=s)
    torch.testing.assert_close(torch.cat([a, b], 1), full)
    for u, v in zip(s, s_full, strict=True):
        torch.testing.assert_close(u, v)
    with pytest.raises(ValueError, match="expected state of shapes"):
        m(x, state=tuple(t[:1] for t in s))


def test_loss_is_mean_over_counted_targets():
    m = tiny().eval()
    x = torch.randint(1, 11, (2, 4))
    y = torch.tensor([[2, 3, -100, 0], [5, 0, 6, 7]])
    logits, loss, _ = m(x, y)
    lp = torch.log_softmax(logits, -1)
    keep = [(0, 0), (0, 1), (1, 0), (1, 2), (1, 3)]
    manual = -sum(lp[b, t, y[b, t]] for b, t in keep) / len(keep)
    torch.testing.assert_close(loss, manual)
    assert int(m.count_targets(x, y)) == 5


def test_tied_weights_share_one_tensor():
    m = tiny(embedding_dim=5, tie_weights=True)
    assert m.decoder.weight is m.embedding.embeddings
    n_untied = sum(p.numel() for p in tiny(embedding_dim=5).parameters())
    assert sum(p.numel() for p in m.parameters()) == n_untied - 11 * 5
    with pytest.raises(ValueError, match="tie_weights needs embedding_dim == num_lstm_units"):
        tiny(embedding_dim=4, tie_weights=True)


def test_dropout_per_step_and_locked():
    m = tiny(dropout_keep_prob=0.5).train()
    ones = torch.ones(4, 30, 6)
    per_step = m._dropout(ones)
    assert set(per_step.unique().tolist()) == {0.0, 2.0}
    assert not torch.all(per_step == per_step[:, :1])  # varies over time
    m_locked = tiny(dropout_keep_prob=0.5, locked_dropout=True).train()
    locked = m_locked._dropout(ones)
    assert torch.all(locked == locked[:, :1])  # one mask per sequence, constant over time
    assert not torch.all(locked == locked[:1])  # but different per sequence
    m.eval()
    x = torch.randint(1, 11, (2, 5))
    torch.testing.assert_close(m(x)[0], m(x)[0])  # eval mode is deterministic


def test_embedding_dropout_drops_whole_words():
    m = tiny(embedding_dropout=0.5).train()
    ids = torch.tensor([[3, 3, 3, 4, 4, 4]])
    emb, w = m.get_input_embeddings(ids), m.embedding.embeddings
    for t in range(6):
        row = emb[0, t]
        assert torch.allclose(row, 0 * row) or torch.allclose(row, 2 * w[ids[0, t]])
    assert torch.equal(emb[0, 0], emb[0, 1]) and torch.equal(emb[0, 3], emb[0, 5])


def test_weight_drop_is_dropconnect_on_recurrent_kernel(monkeypatch):
    m = tiny(weight_drop=0.5).train()
    assert [c.recurrent_weight_dropout for c in m.cells.cells] == [0.5, 0.5]
    x = torch.randint(1, 11, (2, 5))
    drops = {}
    for k, cell in enumerate(m.cells.cells):
        g = torch.Generator().manual_seed(k)
        drop = (torch.rand(cell.recurrent_kernel.shape, generator=g) > 0.5) * 2.0
        drops[id(cell)] = drop

        def fixed(*args, real=cell.sequence_masks, drop=drop, **kwargs):
            return {**real(*args, **kwargs), "recurrent_kernel_dropout_mask": drop}

        monkeypatch.setattr(cell, "sequence_masks", fixed)
    out, _, _ = m(x)
    ref = tiny()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for mine, theirs in zip(m.cells.cells, ref.cells.cells, strict=True):
            theirs.recurrent_kernel.mul_(drops[id(mine)])
    torch.testing.assert_close(out, ref.eval()(x)[0])
    cell = tiny(weight_drop=0.5).train().cells.cells[0]
    mask = cell.sequence_masks(2, 5)["recurrent_kernel_dropout_mask"]
    assert mask.shape == (5, 20) and set(mask.unique().tolist()) <= {0.0, 2.0}
    assert cell.eval().sequence_masks(2, 5)["recurrent_kernel_dropout_mask"] is None


def test_adaptive_softmax_head():
    m = tiny(adaptive_softmax_cutoffs=[4, 8], adaptive_softmax_div_value=2.0).eval()
    x = torch.randint(1, 11, (2, 5))
    y = torch.randint(1, 11, (2, 5))
    logp, _, _ = m(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 5))
    none, loss, _ = m(x, y)
    assert none is None
    manual = -logp.gather(-1, y[..., None]).mean()
    torch.testing.assert_close(loss, manual)
    with pytest.raises(ValueError, match="below vocab_size"):
        tiny(adaptive_softmax_cutoffs=[4, 11])
    with pytest.raises(ValueError, match="0 dimensions"):
        tiny(adaptive_softmax_cutoffs=[4, 8])  # 5 units // 4**2


def test_gru_and_init_scale():
    m = tiny(cell="gru", init_scale=0.1)
    assert all(p.abs().max() <= 0.1 for p in m.parameters())
    logits, loss, state = m(torch.randint(1, 11, (2, 3)), torch.randint(1, 11, (2, 3)))
    assert len(state) == 2 and loss.isfinite()


def test_option_validation_names_the_argument():
    with pytest.raises(ValueError, match="unknown LanguageModel option key"):
        LanguageModel(10, 5, 4, 1, hidden=3)
    with pytest.raises(ValueError, match="cell must be one of"):
        LanguageModel(10, 5, 4, 1, cell="rnn")
    with pytest.raises(ValueError, match=r"weight_drop must be in \[0, 1\)"):
        LanguageModel(10, 5, 4, 1, weight_drop=1.0)
    with pytest.raises(ValueError, match="num_lstm_units must be a positive int"):
        LanguageModel(10, 5, 0, 1)


def test_stream_lm_overfits_a_tiny_corpus():
    torch.manual_seed(0)
    stream = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8] * 40)
    m = LanguageModel(9, None, 16, 1, embedding_dim=8, dropout_keep_prob=1.0)
    trainer = Trainer(
        m, "adam", lr=0.05, stateful=True, perplexity=True, quiet=True, device="cpu",
        batch_weight=m.count_targets,
    )  # fmt: skip
    hist = trainer.fit(batch_producer(stream, 4, 8), epochs=8)
    assert hist.history["loss"][0] > 1.0
    assert hist.history["loss"][-1] < 0.05


def test_exact_perplexity_of_a_constructed_model():
    m = tiny().eval()
    with torch.no_grad():
        m.decoder.weight.zero_()
        logp = torch.log_softmax(torch.arange(11.0), 0)
        m.decoder.bias.copy_(logp)  # the same distribution at every position
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    expected = math.exp(-logp[ids[1:]].mean().item())
    for batch_size, steps in [(1, 3), (1, 100), (2, 4), (3, 2)]:
        res = m.evaluate_stream(ids, batch_size, steps)
        assert res["tokens"] == 10
        assert res["perplexity"] == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        m.decoder.bias.zero_()
    assert m.evaluate_stream(ids)["perplexity"] == pytest.approx(11.0, rel=1e-6)


# ----------------------------------------------------------------------------- generation


def test_generation_is_reproducible_with_a_seed():
    m = tiny()
    a = m.generate([3, 4], 12, seed=5, temperature=0.9)
    assert torch.equal(a, m.generate([3, 4], 12, seed=5, temperature=0.9))
    assert not torch.equal(a, m.generate([3, 4], 12, seed=6, temperature=3.0))
    assert a.shape == (12,) and a.min() >= 1  # padding id 0 is never sampled
    batch = m.generate(torch.tensor([[3], [4]]), 7, seed=1)
    assert batch.shape == (2, 7)


def test_generation_carries_state_like_a_full_rerun():
    m = tiny()
    prompt = torch.tensor([[3, 4, 5]])
    new = m.generate(prompt, 6, temperature=0.0)  # greedy
    seq = torch.cat([prompt, new], 1)
    logits, _, _ = m.eval()(seq)
    assert torch.equal(logits[0, 2:-1, 1:].argmax(-1) + 1, new[0])  # id 0 (padding) excluded


def _fixed_distribution_model(probs: list[float]) -> LanguageModel:
    m = LanguageModel(len(probs), None, 3, 1, embedding_dim=2, dropout_keep_prob=1.0)
    with torch.no_grad():
        m.decoder.weight.zero_()
        m.decoder.bias.copy_(torch.tensor(probs).log())
    return m


def test_top_k_and_top_p_restrict_the_support():
    m = _fixed_distribution_model([1e-9, 0.05, 0.1, 0.15, 0.3, 0.4])
    out = m.generate([1], 300, seed=0, top_k=2)
    assert set(out.tolist()) == {4, 5}
    out = m.generate([1], 300, seed=0, top_p=0.65)  # 0.4 + 0.3 reaches 0.65
    assert set(out.tolist()) == {4, 5}
    out = m.generate([1], 300, seed=0, top_p=0.4)
    assert set(out.tolist()) == {5}
    out = m.generate([1], 500, seed=0)
    assert set(out.tolist()) == {1, 2, 3, 4, 5}
    assert set(m.generate([1], 20, temperature=0).tolist()) == {5}
    with pytest.raises(ValueError, match="top_p must be in"):
        m.generate([1], 3, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        m.generate([1], 3, top_k=0)


def test_generation_stops_at_eos():
    m = _fixed_distribution_model([1e-9, 0.1, 0.1, 0.8])
    out = m.generate([1], 50, temperature=0, eos_id=3)
    assert out.tolist() == [3]
    rows = m.generate(torch.tensor([[1], [2]]), 50, seed=0, eos_id=3)
    assert rows.shape[1] < 50 and all(3 in r for r in rows.tolist())


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path, tie):
    m = tiny(embedding_dim=5, tie_weights=tie).eval()
    save_checkpoint(tmp_path / "ck", m, config=m.config.to_dict())
    ckpt = load_checkpoint(tmp_path / "ck")
    fresh = LanguageModel.from_config(ckpt.config)
    ckpt.load_weights(fresh)
    x = torch.randint(1, 11, (2, 6))
    torch.testing.assert_close(fresh.eval()(x)[0], m(x)[0], rtol=0, atol=0)
    if tie:
        assert fresh.decoder.weight is fresh.embedding.embeddings


def test_config_roundtrip_and_unknown_keys():
    cfg = tiny(weight_drop=0.2).config
    assert LanguageModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="valid keys are: .*num_lstm_units"):
        LanguageModelConfig.from_dict({"vocab_size": 3, "units": 2})


# ----------------------------------------------------------------------------- presets


def test_presets_match_zaremba_2014():
    small, medium, large = (LM_PRESETS[k] for k in ("small", "medium", "large"))
    assert (small["num_lstm_layers"], small["num_lstm_units"], small["num_steps"]) == (2, 200, 20)
    assert (small["batch_size"], small["init_scale"], small["lr"]) == (20, 0.1, 1.0)
    assert (small["lr_decay"], small["decay_after"], small["clip_grad_norm"]) == (0.5, 4, 5.0)
    assert (small["epochs"], small["dropout_keep_prob"]) == (13, 1.0)
    assert (medium["num_lstm_units"], medium["num_steps"], medium["dropout_keep_prob"]) == (
        650, 35, 0.5,
    )  # fmt: skip
    assert (medium["epochs"], medium["init_scale"], medium["decay_after"]) == (39, 0.05, 6)
    assert medium["lr_decay"] == pytest.approx(1 / 1.2)
    assert (large["num_lstm_units"], large["dropout_keep_prob"], large["epochs"]) == (
        1500, 0.35, 55,
    )  # fmt: skip
    assert (large["init_scale"], large["decay_after"], large["clip_grad_norm"]) == (0.04, 14, 10.0)
    assert large["lr_decay"] == pytest.approx(1 / 1.15)
    r = resolve_recipe("medium", {"epochs": 3}, {"num_lstm_units": 7, "lr": None})
    assert (r.model["num_lstm_units"], r.training.epochs, r.training.lr) == (7, 3, 1.0)
    with pytest.raises(ValueError, match="preset must be one of"):
        resolve_recipe("huge")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generation_fast_step_equals_the_cells_own_step(monkeypatch, cell):
    from rnnkit.kernels import vendor

    m = tiny(cell=cell)
    prompt = torch.tensor([[3, 4], [5, 6]])
    fast = m.generate(prompt, 8, seed=2, temperature=1.5)
    monkeypatch.setattr(vendor, "supports", lambda spec, **kw: False)
    assert torch.equal(m.generate(prompt, 8, seed=2, temperature=1.5), fast)


def test_generation_with_adaptive_softmax_and_tied_weights():
    a = tiny(adaptive_softmax_cutoffs=[4], adaptive_softmax_div_value=2.0)
    out = a.generate([3], 10, seed=0, top_k=3)
    assert out.shape == (10,) and out.min() >= 1
    t = tiny(embedding_dim=5, tie_weights=True)
    assert torch.equal(t.generate([3], 6, seed=0), t.generate([3], 6, seed=0))


def test_run_lstm_dropout_only_in_training():
    m = LanguageModel(11, 6, 5, 2, embedding_dim=4, dropout_keep_prob=0.5)
    torch.manual_seed(0)
    a, _ = m.run_lstm(PADDED, is_training=True)
    b, _ = m.run_lstm(PADDED, is_training=True)
    assert not torch.allclose(a, b)
    c, _ = m.run_lstm(PADDED, is_training=False)
    d, _ = m.run_lstm(PADDED, is_training=False)
    torch.testing.assert_close(c, d)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_language_model_works_under_torch_compile():  # (the warning: inside torch's inductor)
    # inductor could not lower the decoder's oneDNN op (products.linear) nor trace the compiled
    # recurrence; both are opaque to torch.compile now (graph breaks), the numbers unchanged
    torch.manual_seed(0)
    lm = LanguageModel(30, num_lstm_units=8, num_lstm_layers=2)
    ids = torch.randint(1, 30, (2, 6))
    compiled = torch.compile(lm)
    loss = compiled(ids[:, :-1], ids[:, 1:])[1]
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters() if p.requires_grad)
    lm.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(ids[:, :-1], ids[:, 1:])[1], lm(ids[:, :-1], ids[:, 1:])[1]
        )
