"""The operator caps glibc's malloc arenas unless the environment already decides."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from nim_operator.malloc_arenas import limit_arenas

PROBE = "from nim_operator.malloc_arenas import limit_arenas; print(limit_arenas())"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena limit is glibc's")
def test_arenas_are_capped_in_a_fresh_process() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


def test_an_arena_limit_in_the_environment_is_left_to_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False
