"""Type-check the TensorRT module against tensorrt-stubs (CI; TensorRT itself cannot be installed).

tensorrt-stubs installs ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi`` without a
``py.typed`` marker (so mypy ignores them in site-packages), and its generated stubs contain a few
lines that are not valid stub syntax (a parameter named ``in``, a non-default parameter after a
default one, an import of the runtime-only ``tensorrt_libs``). This copies them into a temporary
stub folder, mends those lines, and runs mypy on ``python/monst3r_rt/deploy/tensorrt.py`` with
them on MYPYPATH. Usage: python .ci/typecheck_tensorrt.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile


def _mend_def(line: str) -> str:
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m or "=" not in m.group(2):
        return line
    parts, depth, cur = [], 0, ""
    for ch in m.group(2):
        depth += ch in "[(" and 1 or ch in "])" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    seen_default = False
    for i, p in enumerate(parts):
        if "=" in p:
            seen_default = True
        elif seen_default and ":" in p and not p.strip().startswith("*"):
            parts[i] = p + " = ..."
    return m.group(1) + ",".join(parts) + m.group(3)


def main() -> int:
    site = sysconfig.get_paths()["purelib"]
    tmp = tempfile.mkdtemp(prefix="trt-stubs-")
    for pkg in ("tensorrt", "tensorrt_bindings"):
        src = os.path.join(site, pkg)
        if not os.path.isdir(src):
            print(f"tensorrt-stubs not installed ({src} missing)")
            return 1
        shutil.copytree(src, os.path.join(tmp, pkg))
    for root, _, files in os.walk(tmp):
        for name in files:
            path = os.path.join(root, name)
            with open(path) as f:
                lines = f.read().splitlines()
            out = []
            for line in lines:
                if line.strip() == "import tensorrt_libs as tensorrt_libs":
                    continue
                line = re.sub(r"([(,] *)in: ", r"\1in_: ", line)
                out.append(_mend_def(line))
            with open(path, "w") as f:
                f.write("\n".join(out) + "\n")
    config = os.path.join(tmp, "mypy.ini")
    with open(config, "w") as f:  # the generated stubs' own errors are not ours to fix
        f.write("[mypy]\npython_version = 3.10\nignore_missing_imports = True\n"
                "[mypy-tensorrt.*]\nignore_errors = True\n"
                "[mypy-tensorrt_bindings.*]\nignore_errors = True\n")  # fmt: skip
    env = dict(os.environ, MYPYPATH=tmp)
    cmd = [sys.executable, "-m", "mypy", "--config-file", config, "--follow-imports=silent",
           "--no-incremental", "python/monst3r_rt/deploy/tensorrt.py"]  # fmt: skip
    code = subprocess.call(cmd, env=env)
    shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
