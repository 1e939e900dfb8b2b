"""``rnnkit bench --quick``: the table's structure, never a speed."""

import json
import os

import pytest
import torch

from rnnkit import allocator, bench
from rnnkit.cli.main import main
from rnnkit.kernels import dispatch


def test_bench_quick_writes_every_configuration_and_reference_ratios(tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "plots" / "bench.png"
    assert main(["bench", "--quick", "--json", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["config"] for r in rows} == {c.name for c in bench.CONFIGS}
    by = {(r["config"], r["backend"]): r for r in rows}
    # every configuration runs through rnnkit auto and reference: no configuration is n/a
    for config in bench.CONFIGS:
        for backend in ("rnnkit auto", "rnnkit reference"):
            row = by[(config.name, backend)]
            assert row["note"] == "", row
            assert row["train_tokens_per_s"] > 0 and row["infer_tokens_per_s"] > 0
            assert row["train_ratio"] > 0 and row["peak_mb"] > 0
        # the kernels each rnnkit row ran on: named backends run their own, auto picks one that
        # computes the configuration exactly (torch's kernel cannot do layer norm)
        assert by[(config.name, "rnnkit reference")]["kernels"] == {
            "train": ["reference"], "infer": ["reference"]
        }  # fmt: skip
        picked = by[(config.name, "rnnkit auto")]["kernels"]
        assert set(picked) == {"train", "infer"} and all(picked.values())
        assert set(picked["train"] + picked["infer"]) <= set(dispatch.available())
    ln = by[("lstm layer_norm", "rnnkit auto")]["kernels"]
    assert "vendor" not in ln["train"] + ln["infer"]
    assert by[("lstm standard", "torch.nn.LSTM")]["kernels"] is None
    # the reference rows exist, have ratio 1 by definition, and are the median of one
    # measurement per configuration of their cell (re-measured between the others)
    counts = {"lstm": 0, "gru": 0, "simple": 0}
    for config in bench.CONFIGS:
        counts[config.cell] += 1
    for cell, name in (("lstm", "LSTM"), ("gru", "GRU"), ("simple", "RNN")):
        row = by[(f"{cell} standard", f"torch.nn.{name}")]
        assert row["train_ratio"] == 1.0 and row["samples"] == counts[cell]
    # torch.nn is not offered where it cannot run the configuration exactly
    assert ("lstm left-padded", "torch.nn.LSTM") not in by
    assert result["roofline_gflops"] > 0
    assert result["lm"]["rnnkit"]["tokens_per_s"] > 0
    table = capsys.readouterr().out
    assert "roofline" in table and "lstm layer_norm" in table
    label = "+".join(ln["train"]) if ln["train"] == ln["infer"] else None
    if label is not None:  # the table names auto's pick
        assert f"rnnkit auto ({label})" in table


def test_bench_only_filters_keeps_the_baseline_and_rejects_unknown(tmp_path, capsys):
    out = tmp_path / "only.json"
    assert main(["bench", "--quick", "--only", "gru layer_norm", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["config"] for r in rows} == {"gru layer_norm", "gru standard"}
    # progress: one line per measurement, counted, with the time so far (and left, from the 2nd)
    lines = [line for line in capsys.readouterr().err.splitlines() if "measuring" in line]
    chosen = [c for c in bench.CONFIGS if c.name in ("gru standard", "gru layer_norm")]
    n = sum(len(bench._candidates(c, bench.QUICK)) for c in chosen) + 1  # + the baseline again
    assert len(lines) == n
    assert lines[0].startswith(f"  [1/{n}, 0:0") and "left" not in lines[0]
    assert lines[-1].startswith(f"  [{n}/{n}, ")
    assert "left] measuring gru standard / torch.nn.GRU" in lines[-1]
    assert all(r["train_ratio"] > 0 for r in rows if not r["note"])
    assert main(["bench", "--quick", "--only", "no such config"]) == 1
    assert "matches no configuration" in capsys.readouterr().err


def test_peak_memory_counts_allocations_alive_at_the_same_time():

    def two_blocks_alive():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 20)  # 4 MiB, while a is alive
        return a.sum() + b.sum()

    def one_block_at_a_time():
        for _ in range(2):
            torch.ones(1 << 20).sum()

    both = bench.peak_memory_bytes(two_blocks_alive)
    single = bench.peak_memory_bytes(one_block_at_a_time)
    assert both >= 8 * 2**20 > single >= 4 * 2**20


class _ScratchInBackward(torch.autograd.Function):
    """A backward pass that allocates an 8 MiB scratch buffer and frees it on return."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        scratch = torch.ones(1 << 21)  # allocated by a child op, freed by the backward node
        return grad * 2 + scratch[: grad.numel()].sum() * 0


def test_peak_memory_counts_temporaries_a_backward_node_frees():
    # the profiler charges the scratch's free to the backward node (which starts before the
    # scratch exists): counted at the node's start, the 8 MiB were invisible
    x = torch.ones(16, requires_grad=True)

    def step():
        _ScratchInBackward.apply(x).sum().backward()

    assert bench.peak_memory_bytes(step) >= 8 * 2**20


def test_ratios_use_the_median_of_the_baseline_measurements():
    def row(config, backend, train, infer):
        return bench.Row(config, backend, train_tokens_per_s=train, infer_tokens_per_s=infer)

    rows = [row("lstm standard", "torch.nn.LSTM", 100, 10.0), row("lstm x", "rnnkit auto", 120, 9)]
    again = [row("lstm standard", "torch.nn.LSTM", t, i) for t, i in ((80, 8.0), (60, 12.0))]
    out = bench._with_ratios(rows, {"lstm": again})
    base, other = out
    assert (base.train_tokens_per_s, base.infer_tokens_per_s, base.samples) == (80, 10.0, 3)
    assert base.train_ratio == 1.0
    assert other.train_ratio == 120 / 80 and other.infer_ratio == 9 / 10.0


def test_allocator_setting_is_recorded(tmp_path):
    out = tmp_path / "fresh.json"
    args = ["bench", "--quick", "--only", "simple standard", "--json", str(out)]
    assert main([*args, "--fresh-allocator"]) == 0
    assert json.loads(out.read_text())["machine"]["allocator"] == "default"
    assert main(args) == 0
    steady = json.loads(out.read_text())["machine"]["allocator"]
    assert steady == (allocator.TUNED if allocator.tune() else allocator.DEFAULT)


def test_training_steps_compute_the_input_gradient_unless_told_not_to(tmp_path, capsys):
    inputs = []

    class Probe(torch.nn.Module):  # keeps the input of each call
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, mask):
            inputs.append(x)
            return x * self.w

    for input_grad in (True, False):
        inputs.clear()
        step = bench._prepare(bench.CONFIGS[0], Probe, bench.QUICK, input_grad)
        step.train()
        grad = inputs[-1].grad
        assert (grad is not None) == input_grad
        if input_grad:  # the gradient of one step (not summed over steps)
            step.train()
            torch.testing.assert_close(inputs[-1].grad, grad)
    out = tmp_path / "raw.json"
    args = ["bench", "--quick", "--only", "simple standard", "--json", str(out)]
    assert main([*args, "--no-input-grad"]) == 0
    assert json.loads(out.read_text())["input_grad"] is False
    assert "training steps without the input's gradient" in capsys.readouterr().out
    assert main(args) == 0
    assert json.loads(out.read_text())["input_grad"] is True
    assert "training steps with the input's gradient" in capsys.readouterr().out


def test_bench_dtype_measures_every_backend_in_that_precision(tmp_path, capsys, monkeypatch):
    # --dtype bfloat16: each backend's module and input in bfloat16 (torch.nn's bfloat16 kernel
    # the baseline), the roofline in that dtype too, Keras left out; the LM stays float32
    dtypes = []
    prepare = bench._prepare

    def spy(config, make, shape, input_grad=True, dtype=torch.float32):
        def made():
            module = make()
            module.register_forward_pre_hook(lambda m, args: dtypes.append(args[0].dtype))
            return module

        return prepare(config, made, shape, input_grad, dtype)

    monkeypatch.setattr(bench, "_prepare", spy)
    monkeypatch.setattr(bench, "keras_module", lambda: pytest.fail("Keras in bfloat16"))
    out = tmp_path / "bf16.json"
    args = ["bench", "--quick", "--only", "lstm layer_norm", "--json", str(out)]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    result = json.loads(out.read_text())
    assert result["dtype"] == "bfloat16" and result["dtype_roofline_gflops"] > 0
    assert dtypes and set(dtypes) == {torch.bfloat16}
    rows = {(r["config"], r["backend"]): r for r in result["rows"]}
    for key in (("lstm standard", "torch.nn.LSTM"), ("lstm layer_norm", "rnnkit auto")):
        assert rows[key]["note"] == "" and rows[key]["train_ratio"] > 0
    table = capsys.readouterr().out
    assert ", bfloat16; training steps" in table
    assert "roofline in bfloat16:" in table and "LM training (float32;" in table
    # --from cannot apply a precision to a saved run; an unknown one is refused
    assert main(["bench", "--from", str(out), "--dtype", "float16"]) == 2
    assert "it takes no --dtype" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--dtype", "int8"])
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        bench.run_benchmarks(quick=True, configs=(), dtype="float64")


def test_bench_measures_keras_own_layers_where_keras_runs_on_torch(tmp_path):
    # the issue's "Keras if keras is importable": Keras 3's layers on its torch backend, for the
    # configurations Keras has (not layer norm, zoneout or DropConnect)
    if bench.keras_module() is None:  # (it sets KERAS_BACKEND=torch before importing keras)
        pytest.skip("keras is not installed, or imports here with another backend than torch")
    out = tmp_path / "keras.json"
    only = ["--only", "lstm recurrent_dropout", "--json", str(out)]
    assert main(["bench", "--quick", *only]) == 0
    rows = {(r["config"], r["backend"]): r for r in json.loads(out.read_text())["rows"]}
    for config in ("lstm standard", "lstm recurrent_dropout=0.25"):
        row = rows[(config, bench.KERAS_BACKEND_NAME)]
        assert row["note"] == "" and row["train_ratio"] > 0 and row["infer_tokens_per_s"] > 0
    names = {c.name: c for c in bench.CONFIGS}
    for config in ("lstm layer_norm", "lstm zoneout=0.1", "lstm DropConnect=0.3"):
        assert bench.KERAS_BACKEND_NAME not in bench._candidates(names[config], bench.QUICK)
    for config in ("gru reset_after=False", "lstm bidirectional", "lstm gelu"):
        assert bench.KERAS_BACKEND_NAME in bench._candidates(names[config], bench.QUICK)


def test_keras_rows_need_keras_on_its_torch_backend(monkeypatch):
    import sys
    import types

    other = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", other)
    assert bench.keras_module() is None
    monkeypatch.setitem(sys.modules, "keras", None)  # (import raises ImportError)
    assert bench.keras_module() is None
    assert bench.KERAS_BACKEND_NAME not in bench._candidates(bench.CONFIGS[0], bench.QUICK)


def test_peak_memory_hides_native_stderr_lines_and_restores_stderr(capfd):
    # the profiler's C++ backend writes "USDT ... profiler_start" to file descriptor 2
    with bench._quiet_native_stderr():
        os.write(2, b"native line\n")
    assert "native line" not in capfd.readouterr().err

    def fails():
        raise RuntimeError("boom inside the step")

    with pytest.raises(RuntimeError, match="boom inside the step"):
        bench.peak_memory_bytes(fails)
    os.write(2, b"after the block\n")
    assert "after the block" in capfd.readouterr().err


def test_timings_use_the_thread_count_that_was_set():
    threads = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        bench.median_seconds(lambda: seen.append(torch.get_num_threads()), min_run_time=0.01)
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {2}  # torch.utils.benchmark.Timer alone would run on 1


def test_paired_ratio_alternates_sides_and_divides_their_times():
    # a fake clock: each call of `base` takes 2 units, each call of `fn` 1 unit
    now, order = [0.0], []

    def base():
        now[0] += 2.0
        order.append("b")

    def fn():
        now[0] += 1.0
        order.append("f")

    median, q1, q3 = bench.paired_ratio(base, fn, rounds=4, calls=2, clock=lambda: now[0])
    assert (median, q1, q3) == (2.0, 2.0, 2.0)
    # a warm-up call of each, then rounds of 2 + 2 calls, which side goes first alternating
    assert "".join(order) == "bf" + "bbff" + "ffbb" + "bbff" + "ffbb"
    with pytest.raises(ValueError, match="rounds and calls must be >= 1; received 0 and 1"):
        bench.paired_ratio(base, fn, rounds=0)


def test_bench_paired_adds_paired_ratios(tmp_path, capsys):
    out = tmp_path / "paired.json"
    args = ["bench", "--quick", "--only", "lstm layer_norm", "--paired", "2", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["paired_rounds"] == 2
    measured = [r for r in result["rows"] if not r["note"]]
    assert {r["config"] for r in measured} == {"lstm standard", "lstm layer_norm"}
    for r in measured:
        assert r["train_paired"] > 0 and r["infer_paired"] > 0
        q1, q3 = r["train_paired_iqr"]
        assert q1 <= r["train_paired"] <= q3
    assert "paired = the ratio measured alternating" in capsys.readouterr().out
    assert main(["bench", "--quick", "--paired", "-1"]) == 1
    assert "--paired must be >= 1 rounds; received -1" in capsys.readouterr().err


def _saved_result(rows):
    return {
        "machine": {"platform": "p", "processor": "cpu", "torch": "2", "threads": 1},
        "paired_rounds": 3,
        "input_grad": True,
        "shape": {"batch": 2, "time": 3, "input_size": 4, "units": 5},
        "roofline_gflops": 10.0,
        "rows": rows,
        "lm": {
            "shape": {},
            "rnnkit": {"tokens_per_s": 2.0, "gflops": 1.0, "roofline_fraction": 0.1},
            "torch.nn": {"tokens_per_s": 1.0, "gflops": 0.5, "roofline_fraction": 0.05},
        },
    }


def _row(config, backend, ratio, paired=None, note=""):
    return {
        "config": config, "backend": backend, "train_tokens_per_s": 1.0, "train_ratio": ratio,
        "infer_tokens_per_s": 1.0, "infer_ratio": ratio / 2, "peak_mb": 1.0,
        "train_paired": paired, "infer_paired": None, "note": note,
    }  # fmt: skip


def test_ratio_series_groups_backends_and_prefers_paired_ratios():
    result = _saved_result([
        _row("lstm standard", "torch.nn.LSTM", 1.0, paired=1.0),
        _row("lstm standard", "nn.LSTMCell loop", 0.4),
        _row("lstm standard", "rnnkit auto", 0.9, paired=0.95),
        _row("lstm gelu", "rnnkit auto", 0.8),
        _row("lstm gelu", "keras (torch backend)", 0.3, note="n/a: not in keras"),
        _row("gru standard", "torch.nn.GRU", 1.0),
        _row("gru standard", "nn.GRUCell loop", 0.6),
    ])  # fmt: skip
    configs, series = bench.ratio_series(result, "train")
    assert configs == ["lstm standard", "lstm gelu", "gru standard"]
    # rnnkit first; each cell's torch.nn layer and cell loop on one series; the n/a Keras row
    # leaves no series
    assert list(series) == ["rnnkit auto", "torch.nn", "loop"]
    assert series["rnnkit auto"] == [0.95, 0.8, None]  # paired where measured
    assert series["torch.nn"] == [1.0, None, 1.0]
    assert series["loop"] == [0.4, None, 0.6]
    _, infer = bench.ratio_series(result, "infer")
    assert infer["rnnkit auto"] == [0.45, 0.4, None]
    with pytest.raises(ValueError, match="phase must be 'train' or 'infer'; received 'eval'"):
        bench.ratio_series(result, "eval")
    with pytest.raises(ValueError, match="no measured rows"):
        bench.plot_results(_saved_result([_row("lstm gelu", "rnnkit auto", 1, note="n/a")]), "x")


def test_bench_from_prints_and_plots_a_saved_run_without_measuring(tmp_path, capsys, monkeypatch):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_saved_result([
        _row("lstm standard", "torch.nn.LSTM", 1.0), _row("lstm standard", "rnnkit auto", 0.9)
    ])))  # fmt: skip

    def measure(**_):
        raise AssertionError("--from must not measure")

    monkeypatch.setattr(bench, "run_benchmarks", measure)
    png = tmp_path / "run.png"
    assert main(["bench", "--from", str(saved), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "lstm standard" in out and "rnnkit auto" in out and f"wrote {png}" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    # options that change what is measured cannot apply to a saved run
    assert main(["bench", "--from", str(saved), "--quick", "--threads", "2"]) == 2
    assert "it takes no --quick, --threads" in capsys.readouterr().err
    assert main(["bench", "--from", str(tmp_path / "none.json")]) == 1
    assert "none.json" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    assert main(["bench", "--from", str(other)]) == 1
    err = capsys.readouterr().err
    assert "not an `rnnkit bench --json` result: missing machine, shape" in err
    other.write_text("{")
    assert main(["bench", "--from", str(other)]) == 1
    assert "is not JSON" in capsys.readouterr().err
