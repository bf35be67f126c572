"""The operator tunes glibc's malloc at start unless the environment already decides."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from nim_operator.malloc_settings import ENVIRONMENT, M_ARENA_MAX, M_MMAP_THRESHOLD, SETTINGS

PROBE = "import json; from nim_operator.malloc_settings import tune_malloc; print(json.dumps(tune_malloc()))"
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _tuned_in_a_fresh_process(**env: str) -> dict[int, bool]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, check=True
    )
    return {int(param): done for param, done in json.loads(out.stdout).items()}


@glibc_only
def test_every_setting_is_applied_in_a_fresh_process() -> None:
    assert _tuned_in_a_fresh_process() == dict.fromkeys(SETTINGS, True)


@glibc_only
def test_a_setting_in_the_environment_is_left_to_glibc() -> None:
    tuned = _tuned_in_a_fresh_process(**{ENVIRONMENT[M_MMAP_THRESHOLD]: "65536"})
    assert tuned[M_MMAP_THRESHOLD] is False
    assert tuned[M_ARENA_MAX] is True


def test_every_setting_has_its_environment_variable() -> None:
    assert set(SETTINGS) <= set(ENVIRONMENT)
