"""rnnkit's compiled CPU step loops: ``csrc/fused_cpu.cpp``, built on first use.

The fused backend's per-step loops (:mod:`rnnkit.kernels.fused`) cost, in Python, a few
microseconds per tensor operation: at batch 32 and 256 units about 55 us per LSTM step against
89 us for the step's matrix product. ``csrc/fused_cpu.cpp`` runs the same loops (LSTM, GRU in both
forms, SimpleRNN) in C++ (same buffers, same numbers up to float rounding): the
step's product on oneDNN's brgemm kernel, the element-wise gate math in one pass (every named
activation), the work of a step split between threads by hidden units.

It is compiled once per machine with :func:`torch.utils.cpp_extension.load` (the system C++
compiler and ``ninja``, about 15 s) into torch's extension cache (``$TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``), under a name that includes a digest of the source, the
compile flags and the CPU's instruction-set flags (the code is built with ``-march=native``).
When it cannot be built (no compiler, no ``ninja``) rnnkit warns once and the fused backend runs
its Python loops: same results, slower. ``RNNKIT_CPU_EXT=0`` turns the extension off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

from rnnkit.switches import switched_on

SOURCE = Path(__file__).parent / "csrc" / "fused_cpu.cpp"
ENV_SWITCH = "RNNKIT_CPU_EXT"
# Activation ids understood by the C++ loops (enum Act in fused_cpu.cpp).
ACTIVATION_IDS = {
    "linear": 0,
    "sigmoid": 1,
    "tanh": 2,
    "hard_sigmoid": 3,
    "relu": 4,
    "elu": 5,
    "selu": 6,
    "softsign": 7,
    "softplus": 8,
    "exponential": 9,
    "silu": 10,
    "gelu": 11,
}


def covers(cell: str) -> bool:
    """Whether the compiled loops implement this cell (LSTM, GRU in both forms, SimpleRNN)."""
    return cell in ("lstm", "gru", "simple")


_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops": the loaded op namespace or None, "error": why not


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def compile_flags() -> list[str]:
    """The C++ compiler's flags: optimised for this CPU, and OpenMP for ``at::parallel_for``
    (without ``-fopenmp`` its header-only loops run on one thread; linked, the process keeps the
    one OpenMP runtime torch loaded)."""
    flags = ["-O3", "-std=c++17", "-fno-trapping-math"]  # the last: vectorised selects
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=native")
    if sys.platform.startswith("linux"):
        flags.append("-fopenmp")
    return flags


def build_name() -> str:
    """The extension's name: a digest of the source, the compile flags, the CPU's flags and the
    torch version."""
    digest = hashlib.sha256()
    parts = (SOURCE.read_bytes(), " ".join(compile_flags()), _cpu_flags(), torch.__version__)
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
    return f"rnnkit_fused_cpu_{digest.hexdigest()[:12]}"


def enabled() -> bool:
    """False when ``RNNKIT_CPU_EXT=0`` (or ``false``/``off``) is set."""
    return switched_on(ENV_SWITCH)


def _already_built(cpp_extension, name: str) -> bool:
    try:  # torch's own cache folder for this name (a private helper: any failure means "no")
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001
        return False
    return (folder / f"{name}.so").exists()


def _build():
    from torch.utils import cpp_extension

    # ninja may come from the virtual environment's bin folder, which is not always on PATH
    bindir = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    flags = compile_flags()
    name = build_name()
    if not _already_built(cpp_extension, name):
        print("rnnkit: compiling the CPU kernels (once per machine, about 15 s)", file=sys.stderr)
    cpp_extension.load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.rnnkit_cpu


def ops():
    """The compiled ops (``torch.ops.rnnkit_cpu``), or ``None`` when off or not buildable."""
    if not enabled():
        return None
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                try:
                    _state["ops"] = _build()
                except Exception as exc:  # noqa: BLE001 - any build failure: use the Python loops
                    _state["ops"] = None
                    _state["error"] = f"{type(exc).__name__}: {exc}"
                    warnings.warn(
                        "rnnkit could not compile its fused CPU kernels; the fused backend runs "
                        f"its Python loops instead (same results, slower). Reason: {exc}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return _state["ops"]


def has_brgemm(ops) -> bool:
    """Whether the compiled loops run their float32 step products on oneDNN's brgemm kernel
    (torch builds that export ``at::native::cpublas::brgemm`` for float32)."""
    if "brgemm" not in _state:
        _state["brgemm"] = bool(ops.has_brgemm())
    return bool(_state["brgemm"])


def has_bf16_products(ops) -> bool:
    """Whether the compiled loops run a step's products in bfloat16 when handed bfloat16
    weights (torch's brgemm on a CPU with bfloat16 dot products: AVX512-BF16 or AMX)."""
    if "bf16" not in _state:
        _state["bf16"] = bool(ops.has_bf16_products())
    return bool(_state["bf16"])


def weight_grads_max_cols(ops) -> int:
    """The widest ``b`` (columns) for which ``ops.weight_grads`` (brgemm) sums ``a^T b`` faster
    than oneDNN's linear of transposed chunks (0 without brgemm)."""
    if not has_brgemm(ops):
        return 0
    if "grad_cols" not in _state:
        _state["grad_cols"] = int(ops.weight_grads_max_cols())
    return int(_state["grad_cols"])


def build_error() -> str | None:
    """Why the extension is not available (after :func:`ops` returned ``None``), else ``None``."""
    return _state.get("error")  # type: ignore[return-value]
