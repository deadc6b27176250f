"""`make test` sets itself up on a fresh machine: tools/ensure_chromium.sh and what `.ci/run` calls."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "ensure_chromium.sh"


def _run(path_dirs: list[Path], **env: str) -> subprocess.CompletedProcess:
    """The script with PATH limited to `path_dirs` (bash itself is called by its absolute path)."""
    return subprocess.run(
        [shutil.which("bash"), str(SCRIPT)], capture_output=True, text=True, timeout=60,
        env={"PATH": os.pathsep.join(map(str, path_dirs)), "HOME": os.environ.get("HOME", "/tmp"), **env},
    )


def _tool(folder: Path, name: str, body: str = "exit 0") -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f"#!{shutil.which('bash')}\n{body}\n")
    tool.chmod(0o755)
    return tool


def test_an_installed_chromium_is_left_alone(tmp_path):
    bin_dir = tmp_path / "bin"
    _tool(bin_dir, "chromium")
    marker = tmp_path / "apt-called"
    _tool(bin_dir, "apt-get", f"touch {marker}")
    result = _run([bin_dir])
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "apt-get must not run when chromium is there"


def test_without_apt_get_it_stops_and_names_what_to_do(tmp_path):
    result = _run([tmp_path / "empty"], CHROMIUM="chromium-that-is-not-installed")
    assert result.returncode == 1
    assert "make test needs Chromium for the dashboard test" in result.stderr
    assert "package manager" in result.stderr


def test_as_root_with_apt_get_it_installs_debians_chromium(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the install path runs only as root")
    bin_dir = tmp_path / "bin"
    calls = tmp_path / "apt-calls"
    # A stand-in for apt-get that records its arguments and "installs" chromium into the same folder.
    _tool(bin_dir, "apt-get", f'echo "$*" >> {calls}; if [[ "$*" == *install* ]]; then '
                              f'printf "#!/bin/sh\\nexit 0\\n" > {bin_dir}/chromium; {shutil.which("chmod")} +x {bin_dir}/chromium; fi')
    result = _run([bin_dir])
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "update -qq"
    assert lines[1].split()[-1] == "chromium" and lines[1].startswith("install -y")


def test_ci_only_calls_make_test():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test"
    assert not [c for c in commands if "apt-get" in c or "chromium" in c], commands


def test_make_test_installs_the_browser_before_the_suite():
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "MAKEFLAGS": ""})
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    browser = next(i for i, line in enumerate(lines) if "tools/ensure_chromium.sh" in line)
    suite = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert browser < suite
