"""Benchmarks of the recurrent layers and of LM training: the engine behind ``rnnkit bench``.

For each configuration (standard LSTM/GRU/SimpleRNN, masked left-/right-padded, bidirectional,
recurrent dropout, layer norm, custom activations (hard-sigmoid gates, GELU), zoneout, DropConnect,
the GRU with ``reset_after=False``) and each backend that can
run it (rnnkit ``auto``, ``fused``, ``reference``, ``torch.nn`` where exactly applicable, a naive
``nn.LSTMCell``-style loop, and Keras 3's own layer on its torch backend where ``keras`` imports
with that backend: :func:`keras_module`), this measures tokens per second of a training step
(forward + backward) and of inference, as the median of :class:`torch.utils.benchmark.Timer`
runs, and the ratio to ``torch.nn.<LSTM|GRU|RNN>`` in its standard configuration, measured in the
same run.
Tokens are ``batch * time`` positions (padding included), so ratios compare equal work. The
training step computes the input's gradient too, as it is needed after an embedding or another
layer (``input_grad=False``: a first layer on raw features; torch's kernels compute it either way,
rnnkit's fused loops only when it is needed).

Also measured: the machine's matrix-product roofline (GFLOP/s of a large float32 product), the
peak memory of a training step (forward + backward; see :func:`peak_memory_bytes`), and
end-to-end LM training throughput (PTB-small shapes) with its fraction of the roofline.
``dtype="bfloat16"`` or ``"float16"`` measures the layers in that precision (every backend's
module and input cast to it, ``torch.nn``'s half-precision kernels as the baselines; Keras left
out) and adds the roofline of a product in that dtype; the LM benchmark stays float32.
:func:`format_table` prints a result, :func:`plot_results` draws it (ratio bars per
configuration and backend), :func:`load_results` reads one back from its JSON.

Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark
from torch import nn

from rnnkit import allocator
from rnnkit.kernels import dispatch
from rnnkit.layers import GRU, LSTM, Bidirectional, SimpleRNN, lengths_to_mask
from rnnkit.models import LanguageModel
from rnnkit.models.presets import resolve_recipe

LAYERS = {"lstm": LSTM, "gru": GRU, "simple": SimpleRNN}
TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "simple": nn.RNN}
TORCH_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "simple": nn.RNNCell}
# the precisions the layers are measured in (``rnnkit bench --dtype``)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Shape:
    """Benchmark shapes: ``(batch, time, input) -> units``."""

    batch: int = 32
    time: int = 100
    input_size: int = 128
    units: int = 256

    @property
    def tokens(self) -> int:
        return self.batch * self.time


FULL = Shape()
QUICK = Shape(batch=4, time=8, input_size=8, units=16)


@dataclass(frozen=True)
class Config:
    """One layer configuration to benchmark."""

    name: str
    cell: str  # "lstm" | "gru" | "simple"
    options: dict = field(default_factory=dict)  # layer constructor arguments
    padding: str | None = None  # None | "right" | "left": masked batch, lengths in [T/2, T]
    bidirectional: bool = False

    @property
    def standard(self) -> bool:
        return not self.options and self.padding is None and not self.bidirectional


CONFIGS: tuple[Config, ...] = (
    Config("lstm standard", "lstm"),
    Config("lstm right-padded", "lstm", padding="right"),
    Config("lstm left-padded", "lstm", padding="left"),
    Config("lstm bidirectional", "lstm", bidirectional=True),
    Config("lstm recurrent_dropout=0.25", "lstm", {"recurrent_dropout": 0.25}),
    Config("lstm layer_norm", "lstm", {"layer_norm": True}),
    Config("lstm hard_sigmoid gates", "lstm", {"recurrent_activation": "hard_sigmoid"}),
    Config("lstm zoneout=0.1", "lstm", {"zoneout": 0.1}),
    Config("lstm DropConnect=0.3", "lstm", {"recurrent_weight_dropout": 0.3}),
    Config("lstm gelu", "lstm", {"activation": "gelu"}),
    Config("gru standard", "gru"),
    Config("gru left-padded", "gru", padding="left"),
    Config("gru recurrent_dropout=0.25", "gru", {"recurrent_dropout": 0.25}),
    Config("gru layer_norm", "gru", {"layer_norm": True}),
    Config("gru reset_after=False", "gru", {"reset_after": False}),
    Config("simple standard", "simple"),
    Config("simple recurrent_dropout=0.25", "simple", {"recurrent_dropout": 0.25}),
)


@dataclass
class Row:
    """One measured (configuration, backend) pair."""

    config: str
    backend: str
    train_tokens_per_s: float | None = None  # forward + backward
    infer_tokens_per_s: float | None = None  # forward under no_grad, eval mode
    train_ratio: float | None = None  # vs torch.nn standard of the same cell, training
    infer_ratio: float | None = None
    peak_mb: float | None = None  # peak memory of one training step (forward + backward)
    # the ratios measured by alternating with the baseline call by call (paired_ratio): median
    # and quartiles over the rounds; None unless asked for (run_benchmarks(paired_rounds=...))
    train_paired: float | None = None
    train_paired_iqr: tuple[float, float] | None = None
    infer_paired: float | None = None
    infer_paired_iqr: tuple[float, float] | None = None
    note: str = ""
    samples: int = 1  # baseline rows: the median of this many measurements spread over the run
    # rnnkit rows: the backends its recurrences ran on, {"train": [...], "infer": [...]} (what
    # ``auto`` picked; both directions of a bidirectional layer, once each when they agree)
    kernels: dict[str, list[str]] | None = None


# ----------------------------------------------------------------------------- measuring
def median_seconds(fn: Callable[[], object], min_run_time: float) -> float:
    """Median seconds per call of ``fn`` (after one warm-up call), with torch's current thread
    count (``Timer`` would otherwise run it on one thread)."""
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def paired_ratio(
    base: Callable[[], object],
    fn: Callable[[], object],
    rounds: int,
    calls: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, float]:
    """``(median, q1, q3)`` over ``rounds`` of (seconds of ``base``) / (seconds of ``fn``), the
    two timed back to back in each round (``calls`` calls each, which one goes first alternating
    between rounds), after one warm-up call of each.

    On a shared machine a neighbour's load comes and goes within seconds and moves separate
    measurements by 10-25%; a round's two timings see nearly the same load, so the ratio of each
    round is much steadier than the ratio of two medians taken minutes apart.
    """
    if rounds < 1 or calls < 1:
        raise ValueError(f"rounds and calls must be >= 1; received {rounds} and {calls}")
    base()
    fn()

    def seconds(f: Callable[[], object]) -> float:
        start = clock()
        for _ in range(calls):
            f()
        return clock() - start

    ratios = []
    for r in range(rounds):
        if r % 2 == 0:
            b = seconds(base)
            ratios.append(b / seconds(fn))
        else:
            f = seconds(fn)
            ratios.append(seconds(base) / f)
    if rounds == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 inside the block: torch's profiler backend (kineto) prints a
    ``USDT ... profiler_start/stop`` line from C++ on every start and stop, and no setting turns
    it off. Python exceptions raised inside still propagate and are reported after the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded interpreters): leave it
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated while ``fn()`` runs, on top of what existed before it (an upper
    bound).

    From ``torch.profiler`` with ``profile_memory=True``: the maximum over time of the running
    sum of every op's own allocations and frees, each allocation counted from the start of its
    op, each free from its end. The profiler charges a free to the innermost op running when it
    happens, not to the op that allocated: a backward node that allocates temporaries in its
    children and frees them (and older buffers) itself has a negative delta of its own; counted
    at its start, that hid the temporaries (measured, the fused LSTM's backward: 17.6 MiB of
    transposed operands invisible). For a training step this is the activation memory held
    between forward and backward plus the backward's temporaries; it counts tensors a custom
    ``autograd.Function`` keeps on ``ctx`` too (saved-tensor hooks would miss them).
    """
    from torch.profiler import ProfilerActivity, profile

    with (
        _quiet_native_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    deltas = sorted(
        (e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end,
         e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage != 0
    )  # fmt: skip
    current = peak = 0
    for _, delta in deltas:
        current += delta
        peak = max(peak, current)
    return peak


def roofline_gflops(
    size: int = 2048, min_run_time: float = 1.0, dtype: torch.dtype = torch.float32
) -> float:
    """GFLOP/s of a ``size x size`` matrix product in ``dtype`` (float32 unless given): the
    machine's matrix-product ceiling.

    The faster of ``torch.mm`` (MKL or OpenBLAS) and oneDNN's linear (what torch.nn.LSTM and the
    fused backend use on x86): on AMD CPUs with AVX-512, MKL runs its AVX2 code at about half of
    oneDNN's speed, and a roofline from ``torch.mm`` alone would be half the real ceiling.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    products = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        try:
            linear = torch.ops.mkldnn._linear_pointwise
            linear(a[:2], b, None, "none", [], "")
            products.append(lambda: linear(a, b, None, "none", [], ""))
        except (AttributeError, RuntimeError):  # an older torch without the op
            pass
    seconds = min(median_seconds(f, min_run_time) for f in products)
    return 2 * size**3 / seconds / 1e9


# ----------------------------------------------------------------------------- models
def _mask(config: Config, shape: Shape, generator: torch.Generator) -> torch.Tensor | None:
    if config.padding is None:
        return None
    lengths = torch.randint(shape.time // 2, shape.time + 1, (shape.batch,), generator=generator)
    side = "post" if config.padding == "right" else "pre"
    return lengths_to_mask(lengths, shape.time, padding=side)


class _CellLoop(nn.Module):
    """The naive baseline users write when ``torch.nn.LSTM`` cannot do their configuration."""

    def __init__(self, cell: str, input_size: int, units: int):
        super().__init__()
        self.kind = cell
        self.cell = TORCH_CELLS[cell](input_size, units)
        self.units = units

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], self.units)
        state = (h, h) if self.kind == "lstm" else h
        outputs = []
        for t in range(x.shape[1]):
            new = self.cell(x[:, t], state)
            if mask is not None:
                valid = mask[:, t, None]
                new = (
                    tuple(torch.where(valid, n, s) for n, s in zip(new, state, strict=True))
                    if self.kind == "lstm"
                    else torch.where(valid, new, state)
                )
            state = new
            outputs.append(state[0] if self.kind == "lstm" else state)
        return torch.stack(outputs, 1)


class _TorchLayer(nn.Module):
    """``torch.nn.LSTM/GRU/RNN``; masks only when right-padded (packed sequences)."""

    def __init__(self, config: Config, input_size: int, units: int):
        super().__init__()
        self.rnn = TORCH_LAYERS[config.cell](
            input_size, units, batch_first=True, bidirectional=config.bidirectional
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.rnn(x)[0]
        lengths = mask.sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, True, enforce_sorted=False)
        out = self.rnn(packed)[0]
        return nn.utils.rnn.pad_packed_sequence(out, True, total_length=x.shape[1])[0]


class _RnnkitLayer(nn.Module):
    def __init__(self, config: Config, shape: Shape, backend: str):
        super().__init__()
        layer = LAYERS[config.cell](
            shape.units,
            return_sequences=True,
            backend=backend,
            input_size=shape.input_size,
            **config.options,
        )
        self.layer = Bidirectional(layer) if config.bidirectional else layer

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.layer(x, mask=mask)


# the layer options Keras' own LSTM / GRU / SimpleRNN take (layer norm, zoneout and DropConnect
# on the recurrent kernel are rnnkit's)
_KERAS_OPTIONS = {"recurrent_dropout", "activation", "recurrent_activation", "reset_after"}
KERAS_BACKEND_NAME = "keras (torch backend)"


def keras_module():
    """Keras 3 on its torch backend, for the bench's Keras rows; ``None`` where it does not
    import, or imports with another backend. Sets ``KERAS_BACKEND=torch`` for this process when
    unset and Keras is not imported yet (its layers are then ``torch.nn.Module`` s)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:  # noqa: BLE001 - not installed, or its backend fails to import
        return None
    return keras if keras.backend.backend() == "torch" else None


class _KerasLayer(nn.Module):
    """Keras' own recurrent layer (torch backend), as a Keras user runs it on PyTorch."""

    def __init__(self, keras, config: Config, shape: Shape):
        super().__init__()
        cls = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple": keras.layers.SimpleRNN}
        layer = cls[config.cell](shape.units, return_sequences=True, **config.options)
        self.layer = keras.layers.Bidirectional(layer) if config.bidirectional else layer
        self.layer.build((shape.batch, shape.time, shape.input_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.layer(x, mask=mask, training=self.training)


def _candidates(
    config: Config, shape: Shape, dtype: torch.dtype = torch.float32
) -> dict[str, Callable[[], nn.Module]]:
    """Backend name -> constructor of the module that runs ``config`` on it (Keras only in
    float32: its layers keep their own dtype policy)."""
    out: dict[str, Callable[[], nn.Module]] = {
        "rnnkit auto": lambda: _RnnkitLayer(config, shape, "auto"),
        "rnnkit fused": lambda: _RnnkitLayer(config, shape, "fused"),
        "rnnkit reference": lambda: _RnnkitLayer(config, shape, "reference"),
    }
    if not config.options and config.padding != "left":
        out[f"torch.nn.{TORCH_LAYERS[config.cell].__name__}"] = lambda: _TorchLayer(
            config, shape.input_size, shape.units
        )
    if not config.options and not config.bidirectional:
        name = f"nn.{TORCH_CELLS[config.cell].__name__} loop"
        out[name] = lambda: _CellLoop(config.cell, shape.input_size, shape.units)
    keras = keras_module() if dtype == torch.float32 else None
    if keras is not None and set(config.options) <= _KERAS_OPTIONS:
        out[KERAS_BACKEND_NAME] = lambda: _KerasLayer(keras, config, shape)
    return out


# ----------------------------------------------------------------------------- running
@dataclass
class _Step:
    """A module on fixed inputs: one training step (forward + backward) and one inference."""

    train: Callable[[], None]
    infer: Callable[[], None]


def _prepare(
    config: Config,
    make: Callable[[], nn.Module],
    shape: Shape,
    input_grad: bool = True,
    dtype: torch.dtype = torch.float32,
) -> _Step:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.time, shape.input_size, generator=generator).to(dtype)
    x.requires_grad_(input_grad)
    mask = _mask(config, shape, generator)
    module = make().to(dtype)

    def train() -> None:
        module.train()
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x, mask).sum().backward()

    def infer() -> None:
        module.eval()
        with torch.no_grad():
            module(x, mask)

    return _Step(train, infer)


def measure(
    config: Config,
    backend: str,
    make: Callable[[], nn.Module],
    shape: Shape,
    min_run_time: float,
    baseline: _Step | None = None,
    paired_rounds: int = 0,
    paired_calls: int = 1,
    input_grad: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Row:
    """Time one backend on one configuration; unsupported combinations give a note, not a row.
    With ``baseline`` and ``paired_rounds``, also the ratios to it by :func:`paired_ratio`;
    ``input_grad``: the training step computes the input's gradient; ``dtype``: the module and
    its input in that precision."""
    try:
        step = _prepare(config, make, shape, input_grad, dtype)
        train_s = median_seconds(step.train, min_run_time)
        peak = peak_memory_bytes(step.train)
        infer_s = median_seconds(step.infer, min_run_time)
        row = Row(
            config.name,
            backend,
            train_tokens_per_s=shape.tokens / train_s,
            infer_tokens_per_s=shape.tokens / infer_s,
            peak_mb=peak / 2**20,
        )
        if backend.startswith("rnnkit"):
            row.kernels = {}
            for phase, fn in (("train", step.train), ("infer", step.infer)):
                with dispatch.record_choices() as used:
                    fn()
                row.kernels[phase] = list(dict.fromkeys(used))
        if baseline is not None and paired_rounds > 0:
            rounds, calls = paired_rounds, paired_calls
            m, q1, q3 = paired_ratio(baseline.train, step.train, rounds, calls)
            row.train_paired, row.train_paired_iqr = m, (q1, q3)
            m, q1, q3 = paired_ratio(baseline.infer, step.infer, rounds, calls)
            row.infer_paired, row.infer_paired_iqr = m, (q1, q3)
    except (TypeError, ValueError) as exc:
        return Row(config.name, backend, note=f"n/a: {exc}")
    return row


def _is_baseline(row: Row) -> bool:
    cell = row.config.split()[0]
    return row.config == f"{cell} standard" and row.backend.startswith("torch.nn.")


def _with_ratios(rows: list[Row], resamples: dict[str, list[Row]] | None = None) -> list[Row]:
    """Ratios to each cell's ``torch.nn`` standard row; with ``resamples`` (more measurements of
    that row, taken between the other configurations) the baseline is the median of all of them,
    so that one measurement taken while the shared machine was unusually fast or slow does not
    shift every ratio of the cell."""
    base: dict[str, Row] = {}
    for row in rows:
        if _is_baseline(row):
            cell = row.config.split()[0]
            samples = [row, *(resamples or {}).get(cell, [])]
            ok = [r for r in samples if r.train_tokens_per_s is not None]
            if len(ok) > 1:
                row.train_tokens_per_s = statistics.median(r.train_tokens_per_s for r in ok)
                row.infer_tokens_per_s = statistics.median(r.infer_tokens_per_s for r in ok)
                row.samples = len(ok)
            base[cell] = row
    for row in rows:
        ref = base.get(row.config.split()[0])
        if ref is None or row.train_tokens_per_s is None:
            continue
        row.train_ratio = row.train_tokens_per_s / ref.train_tokens_per_s
        row.infer_ratio = row.infer_tokens_per_s / ref.infer_tokens_per_s
    return rows


def lm_training_benchmark(quick: bool, roofline: float, min_run_time: float) -> dict:
    """Tokens/s of a training step of a PTB-small LM (embedding -> 2x LSTM -> softmax).

    Two models of identical shapes: rnnkit's :class:`~rnnkit.models.LanguageModel` as ``rnnkit lm
    train --preset small`` builds it (no dropout, ``backend="auto"``, its decoder on oneDNN's
    products) and plain ``torch.nn`` (``nn.Embedding -> nn.LSTM -> nn.Linear``), one SGD step
    each. FLOPs per token counted as 3x the forward matrix products (forward + 2x for backward).
    """
    vocab, units, layers, batch, steps = (200, 16, 2, 4, 8) if quick else (10000, 200, 2, 20, 20)

    class _TorchLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, units)
            self.rnn = nn.LSTM(units, units, layers, batch_first=True)
            self.out = nn.Linear(units, vocab)

        def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            logits = self.out(self.rnn(self.embed(ids))[0])
            return nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    class _RnnkitLM(nn.Module):  # (ids, targets) -> the LanguageModel's mean loss
        def __init__(self):
            super().__init__()
            options = {**resolve_recipe("small").model, "embedding_dim": units}
            options.update(num_lstm_units=units, num_lstm_layers=layers)
            self.lm = LanguageModel(vocab, **options)

        def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return self.lm(ids, targets)[1]

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, steps + 1), generator=generator)  # (0: padding)
    flops_per_token = 3 * 2 * (layers * (units + units) * 4 * units + units * vocab)
    result = {
        "shape": {"vocab": vocab, "units": units, "layers": layers, "batch": batch, "steps": steps}
    }
    for name, make in (("rnnkit", _RnnkitLM), ("torch.nn", _TorchLM)):
        model = make()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            model(ids[:, :-1], ids[:, 1:]).backward()
            optimizer.step()

        seconds = median_seconds(step, min_run_time)
        tokens_per_s = batch * steps / seconds
        result[name] = {
            "tokens_per_s": tokens_per_s,
            "gflops": tokens_per_s * flops_per_token / 1e9,
            "roofline_fraction": tokens_per_s * flops_per_token / 1e9 / roofline,
        }
    return result


def run_benchmarks(
    quick: bool = False,
    configs: tuple[Config, ...] = CONFIGS,
    progress: Callable[[str], None] | None = None,
    tune_allocator: bool = True,
    paired_rounds: int = 0,
    input_grad: bool = True,
    dtype: str = "float32",
) -> dict:
    """Measure everything; returns a JSON-able dict (``machine``, ``roofline_gflops``, ``rows``,
    ``lm``). ``quick`` uses tiny shapes and short timings (for the test suite); ``tune_allocator``
    measures with :func:`rnnkit.allocator.tune` (large freed blocks kept in the heap, as rnnkit's
    training commands run; without it every large buffer page-faults on every step);
    ``paired_rounds > 0`` also measures every ratio by alternating the row's layer with its
    cell's ``torch.nn`` standard layer (:func:`paired_ratio`, 2 calls a side per round; the
    baseline row paired with itself shows the method's own spread); ``input_grad``: training
    steps compute the input's gradient (as any layer after an embedding or another layer does);
    ``dtype``: the layers' precision, a name in :data:`DTYPES` (the result's ``dtype``; not
    float32: also ``dtype_roofline_gflops``, the roofline in that dtype)."""
    if paired_rounds < 0:
        raise ValueError(f"paired_rounds must be >= 0; received {paired_rounds}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; received {dtype!r}")
    precision = DTYPES[dtype]
    setting = allocator.TUNED if tune_allocator and allocator.tune() else allocator.DEFAULT
    shape = QUICK if quick else FULL
    min_run_time = 0.02 if quick else 1.0
    roofline = roofline_gflops(256 if quick else 2048, min_run_time)
    extra = {}
    if precision != torch.float32:
        size = 256 if quick else 2048
        extra["dtype_roofline_gflops"] = roofline_gflops(size, min_run_time, precision)
    rows: list[Row] = []
    baselines = {  # cell -> (config, backend, constructor) of its torch.nn standard layer
        c.cell: (c, b, make)
        for c in configs
        if c.standard
        for b, make in _candidates(c, shape, precision).items()
        if b.startswith("torch.nn.")
    }
    steps = (  # cell -> the baseline's step functions, the other side of the paired ratios
        {
            cell: _prepare(c, make, shape, input_grad, precision)
            for cell, (c, _, make) in baselines.items()
        }
        if paired_rounds
        else {}
    )
    calls = 1 if quick else 2
    resamples: dict[str, list[Row]] = {}
    plan = [(c, _candidates(c, shape, precision)) for c in configs]
    total = sum(len(cands) + (c.cell in baselines and not c.standard) for c, cands in plan)
    done, start = 0, time.perf_counter()

    def report(what: str) -> None:
        nonlocal done
        if progress:
            elapsed = time.perf_counter() - start
            left = f", ~{_clock(elapsed / done * (total - done))} left" if done else ""
            progress(f"[{done + 1}/{total}, {_clock(elapsed)} elapsed{left}] measuring {what}")
        done += 1

    for config, candidates in plan:
        for backend, make in candidates.items():
            report(f"{config.name} / {backend}")
            base = steps.get(config.cell)
            rows.append(
                measure(
                    config,
                    backend,
                    make,
                    shape,
                    min_run_time,
                    base,
                    paired_rounds,
                    calls,
                    input_grad,
                    precision,
                )
            )
        if config.cell in baselines and not config.standard:
            base_config, base_backend, base_make = baselines[config.cell]
            report(f"{base_config.name} / {base_backend} (again, for the baseline median)")
            again = measure(
                base_config,
                base_backend,
                base_make,
                shape,
                min_run_time,
                input_grad=input_grad,
                dtype=precision,
            )
            resamples.setdefault(config.cell, []).append(again)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "allocator": setting,
        },
        "paired_rounds": paired_rounds,
        "input_grad": input_grad,
        "dtype": dtype,
        "shape": asdict(shape),
        "roofline_gflops": roofline,
        **extra,
        "rows": [asdict(r) for r in _with_ratios(rows, resamples)],
        "lm": lm_training_benchmark(quick, roofline, min_run_time),
    }


def _clock(seconds: float) -> str:
    """``m:ss``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def _auto_kernel(row: dict, phase: str) -> str | None:
    """The kernel(s) an ``auto`` row ran on in ``phase`` (``"fused"``, ``"fused+vendor"``); else
    ``None`` (another backend, or a run that did not record them)."""
    used = (row.get("kernels") or {}).get(phase) if row["backend"] == "rnnkit auto" else None
    return "+".join(used) if used else None


def _picked(row: dict) -> str | None:
    """``"vendor"``, or ``"fused / vendor"`` (training / inference), for an ``auto`` row that
    recorded its kernels; else ``None``."""
    train, infer = _auto_kernel(row, "train"), _auto_kernel(row, "infer")
    if train is None or infer is None:
        return None
    return train if train == infer else f"{train} / {infer}"


def _backend_label(row: dict) -> str:
    picked = _picked(row)
    return row["backend"] if picked is None else f"{row['backend']} ({picked})"


def format_table(result: dict) -> str:
    """The human-readable report of :func:`run_benchmarks`."""
    s = result["shape"]
    grad = "with" if result.get("input_grad", True) else "without"
    lines = [
        f"machine: {result['machine']['processor']}, {result['machine']['threads']} threads, "
        f"torch {result['machine']['torch']}, allocator {result['machine'].get('allocator', '?')}",
        f"shapes: batch {s['batch']}, time {s['time']}, {s['input_size']} -> {s['units']}, "
        f"{result.get('dtype', 'float32')}; training steps {grad} the input's gradient;"
        " tokens/s = batch*time/median seconds; ratio vs torch.nn standard of the same "
        "cell (its median over the run, * = that many measurements)",
        f"roofline (float32 matrix product, faster of torch.mm and oneDNN): "
        f"{result['roofline_gflops']:.1f} GFLOP/s",
        "",
    ]
    if "dtype_roofline_gflops" in result:
        lines.insert(
            3, f"roofline in {result['dtype']}: {result['dtype_roofline_gflops']:.1f} GFLOP/s"
        )
    paired = bool(result.get("paired_rounds"))
    if paired:
        lines[1] += (
            f"; paired = the ratio measured alternating with that layer call by call, median "
            f"of {result['paired_rounds']} rounds"
        )
    pair_head = f" {'paired':>6}" if paired else ""
    lines[1] += "; rnnkit auto (x): the kernel it picked (training / inference where they differ)"
    lines.append(
        f"{'configuration':<30} {'backend':<30} {'train tok/s':>12} {'ratio':>6}{pair_head} "
        f"{'infer tok/s':>12} {'ratio':>6}{pair_head} {'peak MB':>8}"
    )
    for r in result["rows"]:
        backend = _backend_label(r)
        if r["note"]:
            lines.append(f"{r['config']:<30} {backend:<30} {r['note'][:60]}")
            continue
        samples = f" *{r['samples']}" if r.get("samples", 1) > 1 else ""
        train_pair = f" {_fmt(r.get('train_paired'), '6.2f')}" if paired else ""
        infer_pair = f" {_fmt(r.get('infer_paired'), '6.2f')}" if paired else ""
        lines.append(
            f"{r['config']:<30} {backend:<30} {_fmt(r['train_tokens_per_s'], '12,.0f')} "
            f"{_fmt(r['train_ratio'], '6.2f')}{train_pair} "
            f"{_fmt(r['infer_tokens_per_s'], '12,.0f')} {_fmt(r['infer_ratio'], '6.2f')}"
            f"{infer_pair} {_fmt(r['peak_mb'], '8.1f')}{samples}"
        )
    lm = result["lm"]
    lines += [
        "",
        "LM training (float32; embedding -> 2x LSTM -> softmax; rnnkit: its LanguageModel, "
        f"PTB-small preset; torch.nn: nn.LSTM + nn.Linear), shapes {lm['shape']}:",
    ]
    for name in ("rnnkit", "torch.nn"):
        m = lm[name]
        lines.append(
            f"  {name:<9} {m['tokens_per_s']:10,.0f} tokens/s  {m['gflops']:7.1f} GFLOP/s  "
            f"{100 * m['roofline_fraction']:5.1f}% of roofline"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading, drawing
_RESULT_KEYS = ("machine", "shape", "roofline_gflops", "rows", "lm")


def load_results(path: str | os.PathLike) -> dict:
    """A result of :func:`run_benchmarks` read back from the JSON that ``rnnkit bench --json``
    wrote (to print or plot it again without measuring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a bench result (the missing keys are named).
    """
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from exc
    missing = [k for k in _RESULT_KEYS if not isinstance(result, dict) or k not in result]
    if missing:
        raise ValueError(
            f"{path} is not an `rnnkit bench --json` result: missing {', '.join(missing)}"
        )
    return result


# the backends as the plot groups them (each cell's torch.nn layer and cell loop together), in
# drawing order: rnnkit first, then what users would otherwise run
_ROLES = (
    ("rnnkit auto", "rnnkit auto", "#1f77b4"),
    ("rnnkit fused", "rnnkit fused", "#9ecae1"),
    ("torch.nn", "torch.nn.LSTM / GRU / RNN", "#2ca02c"),
    ("keras", "Keras 3 (torch backend)", "#d62728"),
    ("loop", "nn.LSTMCell / GRUCell / RNNCell loop", "#ff7f0e"),
    ("rnnkit reference", "rnnkit reference (Python loop)", "#bdbdbd"),
)


def _role(backend: str) -> str:
    """The plot's name for a backend row: ``torch.nn.GRU`` -> ``torch.nn``, ``nn.GRUCell loop``
    -> ``loop``, the Keras rows -> ``keras``; rnnkit's own names as they are."""
    if backend.startswith("torch.nn."):
        return "torch.nn"
    if backend.endswith(" loop"):
        return "loop"
    if backend.startswith("keras"):
        return "keras"
    return backend


def ratio_series(result: dict, phase: str = "train") -> tuple[list[str], dict[str, list]]:
    """What :func:`plot_results` draws for ``phase`` (``"train"`` or ``"infer"``): the
    configurations in the run's order and, per backend (each cell's ``torch.nn`` layers as
    ``"torch.nn"``, its cell loops as ``"loop"``, Keras as ``"keras"``; rnnkit first), the speed
    relative to the cell's ``torch.nn`` standard layer for each configuration: the paired ratio
    where the run measured one, else the ratio of medians; ``None`` where the backend has no row
    or its row is n/a. Backends without any value are left out."""
    if phase not in ("train", "infer"):
        raise ValueError(f"phase must be 'train' or 'infer'; received {phase!r}")
    order = [key for key, _, _ in _ROLES]
    configs = list(dict.fromkeys(r["config"] for r in result["rows"]))
    roles = sorted(
        dict.fromkeys(_role(r["backend"]) for r in result["rows"]),
        key=lambda b: (order.index(b) if b in order else len(order), b),
    )
    series: dict[str, list] = {b: [None] * len(configs) for b in roles}
    for r in result["rows"]:
        value = r.get(f"{phase}_paired")
        if value is None:
            value = r.get(f"{phase}_ratio")
        if value is not None and not r.get("note"):
            series[_role(r["backend"])][configs.index(r["config"])] = float(value)
    return configs, {b: v for b, v in series.items() if any(x is not None for x in v)}


def plot_results(result: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw a bench result to a PNG: for training and inference, one group of horizontal bars per
    configuration, one bar per backend that ran it, labelled with its speed relative to
    ``torch.nn``'s standard layer of the same cell (1.0, the dashed line; paired ratios where
    the run measured them, see :func:`ratio_series`); ``rnnkit auto``'s bars also name the kernel
    it picked where the run recorded it.

    Returns:
        The path written (folders are created).

    Raises:
        ValueError: the result has no measured rows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = [("train", "training step (forward + backward)"), ("infer", "inference")]
    drawn = [(label, *ratio_series(result, phase)) for phase, label in panels]
    values = [v for _, _, s in drawn for vals in s.values() for v in vals if v is not None]
    if not values:
        raise ValueError("the bench result has no measured rows: nothing to plot")
    configs = drawn[0][1]
    style = {key: (label, colour) for key, label, colour in _ROLES}
    roles = list(dict.fromkeys(b for _, _, s in drawn for b in s))
    colours = {b: style.get(b, (b, f"C{k}"))[1] for k, b in enumerate(roles)}

    # each configuration a band of height 1 holding the bars of the backends that ran it
    def ran(backend: str, i: int) -> bool:
        return any(s.get(backend, [None] * len(configs))[i] is not None for _, _, s in drawn)

    present = [[b for b in roles if ran(b, i)] for i in range(len(configs))]
    bars_total = sum(len(p) for p in present)
    width = 0.84 / max(len(p) for p in present)
    fig = Figure(figsize=(13, 1.6 + 0.17 * bars_total), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(ncols=2, sharey=True)
    for ax, (phase, _), (label, _, series) in zip(axes, panels, drawn, strict=True):
        picked = {  # the auto bars' labels name the kernel auto picked
            r["config"]: kernel for r in result["rows"] if (kernel := _auto_kernel(r, phase))
        }
        for i, here in enumerate(present):  # bars of one thickness, centred in the band
            for k, backend in enumerate(here):
                value = series.get(backend, [None] * len(configs))[i]
                if value is None:
                    continue
                y = i + (k - (len(here) - 1) / 2) * width
                bar = ax.barh(y, value, height=width * 0.92, color=colours[backend])
                text = f"{value:.2f}"
                if backend == "rnnkit auto" and configs[i] in picked:
                    text += f" ({picked[configs[i]]})"
                ax.bar_label(bar, labels=[text], padding=2, fontsize=7)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, max(values) * 1.12)
        ax.set_title(label)
        ax.set_xlabel("speed relative to torch.nn's standard layer of the cell (dashed: 1.0)")
        ax.grid(True, axis="x", alpha=0.3)
        for i in range(1, len(configs)):
            ax.axhline(i - 0.5, color="grey", linewidth=0.4, alpha=0.5)
    axes[0].set_yticks(range(len(configs)), configs)
    axes[0].set_ylim(len(configs) - 0.5, -0.5)
    fig.legend(
        handles=[Patch(color=colours[b], label=style.get(b, (b,))[0]) for b in roles],
        loc="outside lower center",
        ncols=min(len(roles), 3),
    )
    m, s = result["machine"], result["shape"]
    grad = "with" if result.get("input_grad", True) else "without"
    kind = "paired ratios" if result.get("paired_rounds") else "ratios of medians"
    fig.suptitle(
        title
        or f"rnnkit bench: batch {s['batch']}, {s['time']} steps, {s['input_size']} -> "
        f"{s['units']}, {result.get('dtype', 'float32')}; {m['threads']} thread(s), torch "
        f"{m['torch']}; training {grad} the input's gradient; {kind}"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
