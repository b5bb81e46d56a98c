"""The machine a benchmark ran on: CPU, GPU, Jetson board, library versions, ``_core`` build.

:func:`describe` is the one-line form (the ``benchmarks/`` tables' headers), :func:`machine_info`
the full record (``monst3r-rt bench``'s header and its JSON ``machine`` object). Nothing here
raises: what cannot be read is left out or says why.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from typing import Any

__all__ = ["describe", "machine_info", "format_header"]


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def describe() -> str:
    """``"<cpu model>, <n> cores"`` (Linux /proc/cpuinfo when readable)."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def _jetson() -> dict[str, Any] | None:
    """Board model (device tree) and power mode (``nvpmodel -q``) on a Jetson, else None."""
    model = _read("/proc/device-tree/model")
    if not model or "jetson" not in model.lower() and "nvidia" not in model.lower():
        return None
    info: dict[str, Any] = {"model": model}
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5).stdout
        modes = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Power Mode" in ln]
        info["power_mode"] = modes[0] if modes else None
    except (OSError, subprocess.SubprocessError):
        info["power_mode"] = None
    return info


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - missing or broken: not installed for our purposes
        return None


def _gpus() -> list[dict[str, Any]]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"name": p.name, "sm": f"{p.major}.{p.minor}",
                        "memory_mb": round(p.total_memory / 2**20)})  # fmt: skip
        return out
    except Exception:  # noqa: BLE001
        return []


def machine_info() -> dict[str, Any]:
    """Everything a benchmark table needs to name its machine.

    Returns:
        ``{"cpu", "cores", "memory_mb", "platform", "gpus": [{"name", "sm", "memory_mb"}],
        "driver", "jetson": {"model", "power_mode"} | None, "versions": {...},
        "core": _core.build_info() | {"error": ...}}``.
    """
    from .._version import __version__

    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_mb": mem,
        "platform": platform.platform(), "gpus": _gpus(), "driver": None, "jetson": _jetson(),
    }  # fmt: skip
    versions = {"monst3r_rt": __version__, "python": sys.version.split()[0]}
    for m in ("numpy", "torch", "onnxruntime", "tensorrt", "cv2"):
        versions[m] = _version(m)
    try:
        import torch

        versions["torch_cuda"] = torch.version.cuda
    except ImportError:
        pass
    info["versions"] = versions
    try:
        from .. import _core

        info["core"] = dict(_core.build_info())
        st = _core.cuda_status()
        if st.get("driver_version"):
            v = int(st["driver_version"])
            info["driver"] = f"CUDA driver API {v // 1000}.{v % 1000 // 10}"
    except Exception as exc:  # noqa: BLE001
        info["core"] = {"error": str(exc)}
    return info


def format_header(info: dict[str, Any]) -> str:
    """A few lines naming the machine of :func:`machine_info`."""
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, {info.get('memory_mb')} MiB RAM"]
    for g in info.get("gpus") or []:
        lines.append(f"GPU: {g['name']} (SM {g['sm']}, {g['memory_mb']} MiB), "
                     f"{info.get('driver') or 'driver unknown'}")  # fmt: skip
    if not info.get("gpus"):
        lines.append("GPU: none visible to torch")
    if info.get("jetson"):
        j = info["jetson"]
        lines.append(f"Jetson: {j['model']}, power mode {j.get('power_mode') or 'unreadable'}")
    v = info.get("versions", {})
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    core = info.get("core", {})
    if "error" in core:
        lines.append(f"_core: not importable ({core['error']})")
    else:
        archs = " ".join(core.get("cuda_architectures") or []) or "none"
        cuda = (f"CUDA {core.get('cuda_version')} archs {archs}" if core.get("cuda")
                else f"no CUDA ({core.get('cuda_reason')})")  # fmt: skip
        omp = core.get("omp_threads") if core.get("openmp") else "off"
        lines.append(
            f"_core: {core.get('compiler')}, {core.get('build_type')}, OpenMP {omp}, {cuda}"
        )
    return "\n".join(lines)
