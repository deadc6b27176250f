"""cloudbuild.yaml against what its steps need, read offline (no container can run here).

What `make test` needs comes from the Makefile itself (`make -n test`: the commands its recipes run) and
from the local stack (Java and the Google Cloud CLI's emulators); each must be provided to the test step by
its image, by tools/cloudbuild_test.sh, or by an earlier step. The deploy steps need gcloud, bash, curl and
the terraform binary, and no Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
STEPS = {step["id"]: step for step in BUILD["steps"]}
TEST_SCRIPT = ROOT / "tools" / "cloudbuild_test.sh"

# What each image brings (the official images' documented contents): commands on PATH.
IMAGES = {
    "python:3.11-trixie": {"python3", "make", "bash", "sh", "curl", "gpg", "apt-get", "git"},
    "hashicorp/terraform": {"terraform", "sh"},
    "gcr.io/google.com/cloudsdktool/google-cloud-cli:stable": {"gcloud", "bash", "sh", "curl", "sha256sum"},
}
# Debian package -> the command it puts on PATH.
PACKAGES = {"openjdk-21-jre-headless": "java", "npm": "npm", "google-cloud-cli": "gcloud", "curl": "curl",
            "gnupg": "gpg", "chromium": "chromium"}
# The local stack's emulators (tests/integration) beside what the Makefile runs.
STACK_NEEDS = {"java", "gcloud"}
STACK_PACKAGES = {"google-cloud-cli-firestore-emulator", "google-cloud-cli-pubsub-emulator"}
MIN_JAVA_FOR_CURRENT_EMULATORS = 21  # Firestore emulator releases since mid-2025 (gcloud 523+)


def _image(step: dict) -> str:
    return re.sub(r":\$\{_TERRAFORM_VERSION\}$", "", step["name"])


def _needed_by_make_test() -> set[str]:
    """The external commands in `make test`'s recipes (make -n -B prints them all, as on a fresh machine, without running them)."""
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-B", "test", "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "MAKEFLAGS": ""})
    assert dry.returncode == 0, dry.stderr
    commands = set()
    for line in dry.stdout.replace("\\\n", " ").splitlines():
        line = re.sub(r"'[^']*'|\"[^\"]*\"", "''", line)  # quoted arguments name no command
        for part in re.split(r"&&|\|\||;|\|", line):
            words = part.strip().lstrip("({ ").split()
            if words and not words[0].startswith((".", "$", "-")) and "=" not in words[0]:
                commands.add(words[0])
    script = (ROOT / "tools" / "ensure_chromium.sh").read_text()
    if "apt-get install" in script:  # make browser installs chromium with apt-get (as root)
        commands |= {"apt-get"}
    builtins = {"test", "touch", "mkdir", "cd", "command", "echo", "exit", "true", "false", "}"}
    return commands - builtins


def _installed_by(script: str) -> set[str]:
    packages = set()
    for command in re.findall(r"apt-get install ([^\n>]*)", script.replace("\\\n", " ")):
        packages |= {word for word in command.split() if not word.startswith("-")}
    return packages


def test_the_test_step_runs_make_test_with_everything_it_needs():
    step = STEPS["test"]
    assert step["entrypoint"] == "bash" and step["args"] == ["tools/cloudbuild_test.sh"]
    script = TEST_SCRIPT.read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test", "the step is the README's test command"
    packages = _installed_by(script)
    provided = IMAGES[_image(step)] | {PACKAGES[p] for p in packages if p in PACKAGES}
    # terraform: copied by the terraform step into .tools/bin, which the script puts first on PATH
    assert 'export PATH="$PWD/.tools/bin:$PATH"' in script
    assert "terraform" in STEPS["test"]["waitFor"] and ".tools/bin/terraform" in " ".join(STEPS["terraform"]["args"])
    provided.add("terraform")
    needed = _needed_by_make_test() | STACK_NEEDS
    assert {"terraform", "npm", "apt-get", "python3"} <= needed, needed  # the dry run sees the Makefile's tools
    assert needed <= provided, needed - provided
    assert packages >= STACK_PACKAGES


def test_java_is_new_enough_for_the_current_emulators():
    versions = [int(v) for v in re.findall(r"openjdk-(\d+)-jre", TEST_SCRIPT.read_text())]
    assert versions and min(versions) >= MIN_JAVA_FOR_CURRENT_EMULATORS


def test_python_images_are_the_runtimes_python():
    from infra import package

    wanted = package.python_of(package.default_runtime())
    for step in BUILD["steps"]:
        if step["name"].startswith("python:"):
            assert step["name"].startswith(f"python:{wanted}-"), step["name"]


def test_the_tests_run_on_the_packages_that_are_deployed():
    assert "package" in STEPS["test"]["waitFor"]
    assert "PACKAGED_FUNCTIONS_DIR=/workspace/build/functions" in STEPS["test"]["env"]
    assert STEPS["package"]["args"][0] == "package"
    deploy_env = dict(item.split("=", 1) for item in STEPS["deploy"]["env"])
    assert deploy_env["SKIP_PACKAGE"] == "1"


def test_deploy_steps_have_their_tools_and_run_after_the_tests():
    assert STEPS["deploy"]["waitFor"] == ["test"] and STEPS["smoke"]["waitFor"] == ["deploy"]
    script = (ROOT / "infra" / "deploy.sh").read_text()
    for step_id, verb in (("deploy", "apply"), ("smoke", "smoke")):
        step = STEPS[step_id]
        assert step["args"] == ["infra/deploy.sh", verb]
        env = dict(item.split("=", 1) for item in step["env"])
        assert env["TERRAFORM"] == "/workspace/.tools/bin/terraform"
        provided = IMAGES[_image(step)] | {"terraform"}
        assert {"gcloud", "bash", "curl", "sha256sum", "terraform"} <= provided
    assert 'CURL="${CURL:-curl}"' in script and "sha256sum" in script


def test_every_substitution_used_is_declared():
    text = (ROOT / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", text))
    assert used <= set(BUILD["substitutions"]), used - set(BUILD["substitutions"])


@pytest.mark.parametrize("script", [TEST_SCRIPT, ROOT / "infra" / "deploy.sh", ROOT / "tools" / "ensure_chromium.sh"])
def test_step_scripts_parse(script):
    result = subprocess.run([shutil.which("bash"), "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_inline_step_scripts_parse():
    for step in BUILD["steps"]:
        if step.get("entrypoint") in ("sh", "bash") and step["args"][0] == "-c":
            body = step["args"][1].replace("$$", "$")
            result = subprocess.run([shutil.which("bash"), "-n", "-c", body], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, (step["id"], result.stderr)
