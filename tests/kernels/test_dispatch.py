"""Backend selection: auto picks the fastest exact backend; forcing an unfit one is an error."""

import types

import pytest
import torch

from rnnkit.kernels import dispatch, reference, triton_rnn
from rnnkit.kernels.spec import RecurrenceSpec, RecurrentWeights

U = 2


def test_auto_prefers_vendor_then_falls_back():
    assert dispatch.select(RecurrenceSpec("lstm", U)) == "vendor"
    assert dispatch.select(RecurrenceSpec("gru", U, reset_after=False)) in ("fused", "reference")
    rd = torch.ones(3, U)
    assert dispatch.select(RecurrenceSpec("lstm", U), recurrent_dropout_mask=rd) != "vendor"


def test_forcing_an_unfit_backend_names_backend_and_reason():
    with pytest.raises(ValueError, match=r"backend 'vendor' cannot run .*reset_after=False"):
        dispatch.select(RecurrenceSpec("gru", U, reset_after=False), backend="vendor")
    assert dispatch.select(RecurrenceSpec("gru", U, reset_after=False), backend="reference") == (
        "reference"
    )


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of .*received backend='cudnn'"):
        dispatch.select(RecurrenceSpec("lstm", U), backend="cudnn")


def test_registered_backend_plugs_in(monkeypatch):
    calls = []

    def run(spec, weights, inputs, initial_state, **options):
        calls.append(options)
        return reference.run(spec, weights, inputs, initial_state, **options)

    fake = types.SimpleNamespace(supports=lambda spec, **o: spec.cell == "gru", run=run)
    monkeypatch.setitem(dispatch._REGISTRY, "fused", fake)
    spec = RecurrenceSpec("gru", U, reset_after=False)
    assert dispatch.select(spec) == "fused"
    w = RecurrentWeights(torch.zeros(4, 3 * U), torch.zeros(U, 3 * U), None)
    out, _ = dispatch.run(spec, w, torch.zeros(3, 5, 4), (torch.zeros(3, U),))
    assert out.shape == (3, 5, U) and len(calls) == 1
    assert set(calls[0]) >= {"mask", "go_backwards", "zero_output_for_mask"}
    with pytest.raises(ValueError, match="backend 'fused' cannot run"):
        dispatch.select(RecurrenceSpec("simple", U, activation="elu"), backend="fused")


def test_auto_order_prefers_fused_for_masked_cpu_calls_only():
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert dispatch.auto_order(device=torch.device("cpu"), mask=mask)[0] == "fused"
    assert dispatch.auto_order(device=torch.device("cpu"), mask=None)[0] == "vendor"
    cuda = torch.device("cuda")
    assert dispatch.auto_order(device=cuda, mask=mask)[0] == "triton"


@pytest.mark.parametrize(
    "cell, batch, units, dtype, first",
    [  # the H100 sweep's cases on each side of each bound (float32 unless named)
        ("lstm", 64, 512, torch.float32, "triton"),  # the shape: Triton 1.08x, cuDNN 0.85x
        ("lstm", 16, 768, torch.float32, "triton"),
        ("lstm", 64, 128, torch.float32, "triton"),
        ("gru", 16, 256, torch.float32, "triton"),
        ("simple", 16, 1024, torch.float32, "triton"),
        ("simple", 8, 1536, torch.float32, "triton"),
        ("lstm", 256, 512, torch.float32, "vendor"),  # large products: cuDNN's TF32
        ("lstm", 8, 1536, torch.float32, "vendor"),
        ("lstm", 16, 1024, torch.float32, "vendor"),
        ("gru", 64, 768, torch.float32, "vendor"),
        ("simple", 64, 1536, torch.float32, "vendor"),
        ("lstm", 256, 1536, torch.bfloat16, "triton"),  # both on tensor cores in half precision
        ("gru", 256, 1536, torch.float16, "triton"),
    ],
)
def test_auto_order_on_cuda_follows_the_measured_bounds(cell, batch, units, dtype, first):
    spec = RecurrenceSpec(cell, units)
    order = dispatch.auto_order(device=torch.device("cuda"), spec=spec, dtype=dtype, batch=batch)
    assert order[0] == first
    assert set(order) == {"triton", "vendor", "fused", "reference"}


def test_with_tf32_products_triton_goes_first_at_every_size():
    spec, cuda = RecurrenceSpec("lstm", 1536), torch.device("cuda")
    f32 = {"device": cuda, "spec": spec, "dtype": torch.float32, "batch": 256}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert dispatch.auto_order(**f32)[0] == "vendor"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert dispatch.auto_order(**f32)[0] == "triton"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_select_passes_the_batch_size_to_the_rule(monkeypatch):
    seen = {}

    def order(**kwargs):
        seen.update(kwargs)
        return dispatch.AUTO_ORDER

    monkeypatch.setattr(dispatch, "auto_order", order)
    spec = RecurrenceSpec("simple", U)
    w = RecurrentWeights(torch.zeros(4, U), torch.zeros(U, U), None)
    dispatch.run(spec, w, torch.zeros(3, 5, 4), (torch.zeros(3, U),))
    assert seen["batch"] == 3


def test_triton_backend_is_registered():
    assert "triton" in dispatch.available()  # registered; it accepts CUDA inputs only


def test_auto_prefers_fused_where_it_is_faster_on_the_cpu(monkeypatch):
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())  # "the extension is available"
    cpu, lstm = torch.device("cpu"), RecurrenceSpec("lstm", U)
    f32 = {"device": cpu, "dtype": torch.float32}
    assert dispatch.select(lstm, **f32) == "vendor"  # inference: torch's oneDNN LSTM
    assert dispatch.select(RecurrenceSpec("gru", U), **f32) == "fused"
    assert dispatch.select(RecurrenceSpec("gru", U, reset_after=False), **f32) == "fused"  # only
    assert dispatch.select(RecurrenceSpec("simple", U), **f32) == "fused"
    f64 = {"device": cpu, "dtype": torch.float64}
    assert dispatch.select(RecurrenceSpec("gru", U), **f64) == "vendor"
    # CUDA: Triton where this machine has a GPU and Triton, else cuDNN; never the CPU's fused.
    cuda = {"device": torch.device("cuda"), "dtype": torch.float32}
    simple = RecurrenceSpec("simple", U)
    on_gpu = triton_rnn.supports(simple, **cuda)
    assert dispatch.select(simple, **cuda) == ("triton" if on_gpu else "vendor")
    monkeypatch.setattr(cpu_ext, "ops", lambda: None)  # not buildable here: torch's kernel
    assert dispatch.select(RecurrenceSpec("gru", U), **f32) == "vendor"
    assert dispatch.select(RecurrenceSpec("simple", U), **f32) == "fused"


def test_half_precision_goes_fused_where_measured_faster(monkeypatch):
    # float16 without fast float16 products: torch's kernels run scalar products (8-18x slower
    # than the fused recurrence, which projects in float32): every cell fused. bfloat16 with the
    # loops' bfloat16 products: GRU and SimpleRNN fused, the LSTM on torch's kernel.
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())
    cpu = torch.device("cpu")
    cells = {c: RecurrenceSpec(c, U) for c in ("lstm", "gru", "simple")}
    for fast, first in ((False, "fused"), (True, "vendor")):
        monkeypatch.setattr(dispatch, "fast_products", lambda device, dtype, fast=fast: fast)
        for spec in cells.values():
            assert dispatch.select(spec, device=cpu, dtype=torch.float16) == first, (spec, fast)
            if not fast:  # bfloat16 without oneDNN's bfloat16 kernels (AVX2 CPUs) alike
                assert dispatch.select(spec, device=cpu, dtype=torch.bfloat16) == "fused"
    bf16 = {"device": cpu, "dtype": torch.bfloat16, "training": True, "input_grad": True}
    for products, gru_first in ((True, "fused"), (False, "vendor")):
        monkeypatch.setattr(cpu_ext, "has_bf16_products", lambda ops, p=products: p)
        assert dispatch.select(cells["lstm"], **bf16) == "vendor"
        assert dispatch.select(cells["gru"], **bf16) == gru_first
        assert dispatch.select(cells["simple"], **bf16) == gru_first
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert dispatch.select(cells["lstm"], mask=mask, **bf16) == "fused"  # masked: as in float32


SMALL, LARGE = 2**30, 2**30 + 1  # multiply-adds of a call's products (bound: 2**30)


@pytest.mark.parametrize(
    "threads, tuned, training, input_grad, macs, first",
    [  # the measured rule: fused for training up to 1600 gate columns on 1 or 2 threads with
        # glibc's defaults or where the input needs no gradient (torch's kernel computes it
        # anyway), and tuned with the input's gradient on 1 thread where the call is small
        (1, True, True, False, LARGE, "fused"),
        (2, True, True, False, LARGE, "fused"),
        (1, True, True, True, SMALL, "fused"),
        (1, True, True, True, LARGE, "vendor"),
        (2, True, True, True, SMALL, "vendor"),  # tuned: torch's kernel gains more from 2 cores
        (1, False, True, True, LARGE, "fused"),
        (2, False, True, True, LARGE, "fused"),
        (4, False, True, False, SMALL, "vendor"),  # more threads: not measured, torch's kernel
        (1, False, False, False, SMALL, "vendor"),  # inference: torch's kernel
    ],
)
def test_lstm_training_goes_fused_where_measured_faster(
    threads, tuned, training, input_grad, macs, first, monkeypatch
):
    from rnnkit import allocator
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())  # "the extension is available"
    monkeypatch.setattr(allocator, "is_tuned", lambda: tuned)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    f32 = {"device": torch.device("cpu"), "dtype": torch.float32, "training": training}
    f32.update(input_grad=input_grad, macs=macs)
    assert dispatch.select(RecurrenceSpec("lstm", 400), **f32) == first
    # wider than 1600 gate columns (4u): measured slower (PTB-medium's 650 units: 0.81x)
    assert dispatch.select(RecurrenceSpec("lstm", 401), **f32) == "vendor"
    assert dispatch.select(RecurrenceSpec("lstm", 400), **{**f32, "dtype": torch.float64}) == (
        "vendor"
    )
    monkeypatch.setattr(cpu_ext, "ops", lambda: None)  # no compiled loops: torch's kernel
    assert dispatch.select(RecurrenceSpec("lstm", 400), **f32) == "vendor"


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("tuned", [False, True])
def test_small_lstm_calls_go_fused_on_one_or_two_threads(training, tuned, monkeypatch):
    # at most 96 tokens (batch x steps) torch's kernel's per-call costs dominate (measured:
    # 1x1 200 units 1.29x vs 0.70x, 4x20 1.08x vs 0.90x; 1x100 0.94x vs 1.03x), at any width
    from rnnkit import allocator
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())  # "the extension is available"
    monkeypatch.setattr(allocator, "is_tuned", lambda: tuned)
    threads = [2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[0])
    call = {"device": torch.device("cpu"), "dtype": torch.float32, "training": training}
    call.update(input_grad=training, macs=LARGE)  # (the training rule alone: vendor when tuned)
    wide = RecurrenceSpec("lstm", 650)
    assert dispatch.select(wide, batch=1, steps=1, **call) == "fused"
    assert dispatch.select(wide, batch=16, steps=6, **call) == "fused"
    assert dispatch.select(wide, batch=1, steps=97, **call) == "vendor"  # 97 tokens
    assert dispatch.select(wide, batch=16, **call) == "vendor"  # steps unknown: not small
    assert dispatch.select(wide, batch=1, steps=1, **{**call, "dtype": torch.float64}) == "vendor"
    threads[0] = 4  # more threads: not measured, torch's kernel
    assert dispatch.select(wide, batch=1, steps=1, **call) == "vendor"


def test_wide_lstm_inference_goes_fused_on_one_thread(monkeypatch):
    # 401-650 units, at most 1400 tokens (measured: 650 units 10x35 0.96x vs 0.87x, 4x200 1.01x
    # vs 0.92x; 64x35 0.93x vs 0.97x; 1024 units 0.84x vs 0.98x; 400 units a tie)
    from rnnkit import allocator
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())  # "the extension is available"
    monkeypatch.setattr(allocator, "is_tuned", lambda: True)
    threads = [1]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[0])
    call = {"device": torch.device("cpu"), "dtype": torch.float32, "training": False}

    def pick(units, batch, steps, **kw):
        return dispatch.select(
            RecurrenceSpec("lstm", units), batch=batch, steps=steps, **{**call, **kw}
        )

    assert pick(650, 20, 35) == "fused"
    assert pick(512, 20, 35) == "fused"
    assert pick(650, 4, 350) == "fused"  # 1400 tokens
    assert pick(650, 1, 1401) == "vendor"
    assert pick(650, 64, 35) == "vendor"
    assert pick(651, 20, 35) == "vendor"
    assert pick(400, 20, 35) == "vendor"  # 1600 gate columns
    assert pick(650, 20, None) == "vendor"  # steps unknown
    assert pick(650, 20, 35, training=True, input_grad=True, macs=LARGE) == "vendor"
    threads[0] = 2
    assert pick(650, 20, 35) == "vendor"


@pytest.mark.parametrize("threads", [1, 2])
def test_small_lstm_inference_goes_fused(threads, monkeypatch):
    # at most 2**24 multiply-adds (measured: 32x20 7->32 0.88x vs 0.77x, 16x40 32->48 0.93x vs
    # 0.83x; 8x100 64->64, 26M, 0.83x vs 0.91x)
    from rnnkit import allocator
    from rnnkit.kernels import cpu_ext

    monkeypatch.setattr(cpu_ext, "ops", lambda: object())  # "the extension is available"
    monkeypatch.setattr(allocator, "is_tuned", lambda: True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    call = {"device": torch.device("cpu"), "dtype": torch.float32, "batch": 32, "steps": 20}
    lstm = RecurrenceSpec("lstm", 32)
    assert dispatch.select(lstm, macs=2**24, **call) == "fused"
    assert dispatch.select(lstm, macs=2**24 + 1, **call) == "vendor"
    assert dispatch.select(lstm, **call) == "vendor"  # size unknown
    train = {"training": True, "input_grad": True, "macs": 2**24}
    assert dispatch.select(lstm, **call, **train) == ("fused" if threads == 1 else "vendor")
    assert dispatch.select(lstm, macs=2**24, **{**call, "dtype": torch.float64}) == "vendor"


def test_small_lstm_inference_through_the_layer_goes_fused():
    from rnnkit.kernels import cpu_ext

    if cpu_ext.ops() is None:
        pytest.skip("the compiled loops did not build here")
    from rnnkit.layers import LSTM

    small, wider = (LSTM(32, input_size=n).eval() for n in (7, 200))
    with torch.no_grad(), dispatch.record_choices() as picked:
        small(torch.randn(32, 20, 7))  # 20 x 32 x 128 x 39 = 3.2M multiply-adds
        wider(torch.randn(32, 20, 200))  # 20 x 32 x 128 x 232 = 19M: torch's kernel
    assert picked == ["fused", "vendor"]


def test_run_tells_the_rule_whether_the_call_records_and_needs_input_grads(monkeypatch):
    seen = []

    def order(**kwargs):
        seen.append((kwargs["training"], kwargs["input_grad"]))
        assert kwargs["macs"] == 3 * 5 * 4 * U * (4 + U)  # T B 4u (I + u)
        assert (kwargs["batch"], kwargs["steps"]) == (3, 5)
        return dispatch.AUTO_ORDER

    monkeypatch.setattr(dispatch, "auto_order", order)
    spec = RecurrenceSpec("lstm", U)
    w = RecurrentWeights(torch.zeros(4, 4 * U), torch.zeros(U, 4 * U), None)
    state = (torch.zeros(3, U), torch.zeros(3, U))
    x = torch.zeros(3, 5, 4)
    dispatch.run(spec, w, x, state)  # nothing needs a gradient
    dispatch.run(spec, w, x.requires_grad_(), state)
    with torch.no_grad():
        dispatch.run(spec, w, x, state)
    trained = RecurrentWeights(w.kernel.requires_grad_(), w.recurrent_kernel, None)
    dispatch.run(spec, trained, torch.zeros(3, 5, 4), state)
    assert seen == [(False, False), (True, True), (False, False), (True, False)]


def test_auto_moves_on_when_a_backend_turns_out_unavailable(monkeypatch):
    import types

    from rnnkit.kernels.spec import BackendUnavailable

    broken = []

    def run(*args, **kwargs):
        broken.append(True)
        raise BackendUnavailable("its toolchain failed")

    fake = types.SimpleNamespace(run=run, supports=lambda spec, **options: not broken)
    monkeypatch.setitem(dispatch._REGISTRY, "vendor", fake)
    spec = RecurrenceSpec("lstm", U)
    torch.manual_seed(0)
    w = RecurrentWeights(torch.randn(3, 4 * U), torch.randn(U, 4 * U), torch.randn(4 * U))
    # 4 x 25: more tokens than a small call, and no small layer's inference (both go fused first)
    monkeypatch.setattr(dispatch, "FUSED_LSTM_MAX_SMALL_INFERENCE_MACS", 0)
    x, state = torch.randn(4, 25, 3), (torch.zeros(4, U), torch.zeros(4, U))
    with pytest.warns(RuntimeWarning, match="vendor backend cannot run on this machine"):
        with dispatch.record_choices() as used:
            out, _ = dispatch.run(spec, w, x, state)
    assert used == [dispatch.select(spec, device=x.device, dtype=x.dtype)]  # the fallback's name
    assert used != ["vendor"]
    torch.testing.assert_close(out, reference.run(spec, w, x, state)[0])
    assert dispatch.select(spec, device=torch.device("cpu"), dtype=torch.float32) != "vendor"
    with pytest.raises(BackendUnavailable):  # a backend named explicitly is not replaced
        broken.clear()
        dispatch.run(spec, w, x, state, backend="vendor")


def test_record_choices_lists_each_call_s_backend_inside_its_block():
    spec = RecurrenceSpec("lstm", U)
    w = RecurrentWeights(torch.zeros(3, 4 * U), torch.zeros(U, 4 * U), None)
    x, state = torch.zeros(2, 4, 3), (torch.zeros(2, U), torch.zeros(2, U))
    dispatch.run(spec, w, x, state)  # outside any block: recorded nowhere
    with dispatch.record_choices() as outer:
        dispatch.run(spec, w, x, state, backend="reference")
        with dispatch.record_choices() as inner:
            dispatch.run(spec, w, x, state, backend="vendor")
        dispatch.run(spec, w, x, state, backend="reference")
    dispatch.run(spec, w, x, state, backend="vendor")  # after the blocks
    assert outer == ["reference", "vendor", "reference"]
    assert inner == ["vendor"]
    assert dispatch._RECORDERS == []
