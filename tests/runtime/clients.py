"""Real clients no one here wrote, in virtual environments of their own.

``llama-stack-client`` 0.0.40 is the release whose ``inference.chat_completion`` posts to
``/inference/chat_completion``; it needs ``httpx<0.28``, which our environment cannot have (the OpenAI
SDK and vLLM want newer), so it lives in its own venv under the per-user cache, made with the same uv
the Makefile installs. ``make setup`` runs ``python -m tests.runtime.clients``; the test fixture calls
:func:`llama_stack_client_python` too, so a bare ``pytest`` also installs it from nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

LLAMA_STACK_CLIENT = ("llama-stack-client==0.0.40", "httpx==0.27.2")
UV_VERSION = "0.13.8"
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nim-operator"


def _uv() -> str:
    """The Makefile's uv, else one on PATH."""
    pinned = CACHE_HOME / f"uv-{UV_VERSION}" / "bin" / "uv"
    if pinned.is_file():
        return str(pinned)
    found = shutil.which("uv")
    if found is None:
        raise RuntimeError(f"uv is not installed: run `make env` (it installs uv {UV_VERSION} into {pinned.parent})")
    return found


def llama_stack_client_python() -> Path:
    """The interpreter of a venv holding llama-stack-client 0.0.40, made on first use (a few seconds)."""
    venv = CACHE_HOME / "clients" / "-".join(p.replace("==", "-") for p in LLAMA_STACK_CLIENT)
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.is_file() and python.is_file():
        return python
    uv = _uv()
    # The venv gets this interpreter (no download of another Python); the packages come from PyPI.
    subprocess.run([uv, "venv", "--quiet", "--no-python-downloads", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), *LLAMA_STACK_CLIENT], check=True)
    stamp.write_text("\n".join(LLAMA_STACK_CLIENT) + "\n")
    return python


if __name__ == "__main__":
    print(llama_stack_client_python())
