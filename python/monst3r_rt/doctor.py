"""``monst3r-rt doctor``: what will run on this machine, and why not when it will not."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass
class Check:
    """One row of the doctor table."""

    name: str
    ok: bool
    detail: str


def _module_version(module: str) -> tuple[bool, str, object | None]:
    """(importable, version or reason, module)."""
    if importlib.util.find_spec(module) is None:
        return False, "not installed", None
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason to report
        return False, f"import failed: {type(exc).__name__}: {exc}".splitlines()[0], None
    return True, str(getattr(mod, "__version__", "unknown version")), mod


def run_checks() -> list[Check]:
    """Collect every row of the doctor table; never raises."""
    rows: list[Check] = []
    try:
        from . import _core
    except ImportError as exc:
        rows.append(Check("C++ core (_core)", False, f"not importable: {exc}"))
        return rows

    info = _core.build_info()
    omp = f"OpenMP, {info['omp_threads']} threads" if info["openmp"] else "no OpenMP (1 thread)"
    rows.append(Check("CPU kernels", True, f"{info['compiler']}, {omp}"))
    if info["cuda"]:
        archs = " ".join(info["cuda_architectures"])
        rows.append(Check("CUDA kernels compiled", True, f"CUDA {info['cuda_version']}: {archs}"))
    else:
        rows.append(Check("CUDA kernels compiled", False, info["cuda_reason"]))

    st = _core.cuda_status()
    if st["device_count"] > 0:
        rows.append(Check("GPU visible", True, ", ".join(st["devices"])))
    else:
        rows.append(Check("GPU visible", False, f"none ({st['reason']})"))

    ok, detail, torch = _module_version("torch")
    if ok and torch is not None:
        cuda = torch.cuda.is_available()  # type: ignore[attr-defined]
        detail += ", CUDA available" if cuda else ", CPU only"
    rows.append(Check("torch", ok, detail if ok else f"{detail} (pip install 'monst3r-rt[torch]')"))

    ok, detail, ort = _module_version("onnxruntime")
    rows.append(
        Check("onnxruntime", ok, detail if ok else f"{detail} (pip install 'monst3r-rt[onnx]')")
    )
    if ok and ort is not None:
        providers = ort.get_available_providers()  # type: ignore[attr-defined]
        rows.append(Check("onnxruntime providers", True, ", ".join(providers)))

    try:
        from .deploy.tensorrt import import_tensorrt

        ok, detail = True, str(import_tensorrt().__version__)
    except RuntimeError as exc:
        ok, detail = False, str(exc)
    rows.append(Check("TensorRT", ok, detail))

    ok, detail, _ = _module_version("cupy")
    rows.append(Check("cupy", ok, detail if ok else f"{detail} (pip install 'monst3r-rt[cuda]')"))
    return rows


def format_table(rows: list[Check]) -> str:
    """Plain-text table: component | status | detail."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'component':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {'yes' if r.ok else 'no':<6}  {r.detail}")
    return "\n".join(lines)
