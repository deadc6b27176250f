"""Package each Cloud Function as a deployable folder and a reproducible zip.

    python -m infra.package                      # all functions -> build/functions/
    python infra/package.py --functions poller   # one of them

For every `functions/<name>/main.py` (one source folder; it may hold several entry points, each deployed as
its own function by infra/terraform/pipeline.tf) this writes

    build/functions/<name>/main.py            the entry point, unchanged
    build/functions/<name>/shared/            the project's package (no caches)
    build/functions/<name>/requirements.txt   `name==version` lines, pinned from this environment
    build/functions/<name>.zip                the three above, byte-for-byte reproducible
    build/functions/runtime.txt               the Cloud Functions runtime they were built for (python311)

It packages only under the runtime's own Python (3.11 for python311, the default of `var.runtime` in
infra/terraform/variables.tf): the pins are the versions installed here, and another Python can have
resolved other versions, or wheels that do not exist for the runtime. Terraform refuses zips whose
runtime.txt is not its `var.runtime`.

The requirements are the transitive closure of `[project.dependencies]` in pyproject.toml, walked through
`importlib.metadata` with markers evaluated for the target runtime (Linux, CPython 3.11 by default) and with
the extras each requirement asks for (`google-api-core[grpc]` brings grpcio). The project's own optional
extras (dev, emulator, cli) are never requested, so none of them leak in. Versions are the installed ones:
what the test suite ran against is what gets deployed.

The zip is reproducible: entries sorted, fixed timestamps (1980-01-01), fixed permissions (0644), fixed
compression level. Two runs over the same tree give the same bytes, so its hash (which Terraform puts in
the source object's name) changes only when the code or a pinned version does.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import re
import shutil
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "PackagedFunction",
    "PackagingError",
    "build_all",
    "build_function",
    "discover_functions",
    "pinned_requirements",
    "runtime_closure",
    "write_zip",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "functions"
RUNTIME_FILE = "runtime.txt"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
FILE_MODE = 0o100644  # regular file, rw-r--r--
COMPRESS_LEVEL = 9
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".DS_Store")


class PackagingError(RuntimeError):
    """The environment cannot produce a correct package (a dependency is missing or out of range)."""


@dataclass(frozen=True)
class PackagedFunction:
    name: str
    folder: Path
    zip_path: Path
    sha256: str


def default_runtime(variables: Path = ROOT / "infra" / "terraform" / "variables.tf") -> str:
    """The default of `var.runtime` in the Terraform configuration (python311)."""
    block = re.search(r'variable "runtime" \{(.*?)\n\}', variables.read_text(), re.S)
    found = re.search(r'default\s*=\s*"(python3\d+)"', block[1]) if block else None
    if not found:
        raise PackagingError(f"no default runtime in {variables}")
    return found[1]


def python_of(runtime: str) -> str:
    """python311 -> 3.11."""
    match = re.fullmatch(r"python3(\d+)", runtime)
    if not match:
        raise PackagingError(f"{runtime!r} is not a Python runtime (python311, python312, ...)")
    return f"3.{match[1]}"


def check_interpreter(runtime: str, running: tuple[int, int] = sys.version_info[:2]) -> str:
    """The runtime's Python version, if this interpreter is it; else a `PackagingError` saying what to do."""
    wanted = python_of(runtime)
    here = f"{running[0]}.{running[1]}"
    if here != wanted:
        raise PackagingError(
            f"the {runtime} runtime needs packages pinned under Python {wanted}, and this is Python {here}: "
            f"run it with a Python {wanted} environment (`make setup PYTHON=python{wanted}`), or deploy another "
            f"runtime with --runtime and var.runtime together"
        )
    return wanted


DEFAULT_PYTHON = "3.11"  # marker evaluation's default; packaging itself follows the runtime


def target_environment(python_version: str = DEFAULT_PYTHON) -> dict[str, str]:
    """Marker environment of the Cloud Functions runtime (Ubuntu, x86_64, CPython), not of this host."""
    env = dict(default_environment())
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        platform_machine="x86_64",
    )
    return env


def project_dependencies(project: Mapping[str, Any]) -> list[Requirement]:
    """`[project.dependencies]` of pyproject.toml's `[project]` table only: the optional extras are for
    development, never for deployment."""
    return [Requirement(line) for line in project.get("dependencies", [])]


def _applies(requirement: Requirement, extras: Iterable[str], env: Mapping[str, str]) -> bool:
    if requirement.marker is None:
        return True
    # A marker without `extra` must hold as it is; one with `extra` holds for one of the requested extras.
    return any(requirement.marker.evaluate({**env, "extra": extra}) for extra in (*extras, ""))


def runtime_closure(
    roots: Iterable[Requirement], env: Mapping[str, str] | None = None
) -> dict[str, metadata.Distribution]:
    """Every installed distribution the roots need at run time, by canonical name.

    Raises `PackagingError` when a needed distribution is not installed or its installed version does
    not satisfy a specifier that asked for it.
    """
    env = dict(env or target_environment())
    found: dict[str, metadata.Distribution] = {}
    requested_extras: dict[str, set[str]] = {}
    pending: list[tuple[Requirement, str]] = [(r, "pyproject.toml") for r in roots if _applies(r, (), env)]
    while pending:
        requirement, wanted_by = pending.pop()
        name = canonicalize_name(requirement.name)
        try:
            dist = found.get(name) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise PackagingError(f"{requirement} (needed by {wanted_by}) is not installed") from None
        if requirement.specifier and not requirement.specifier.contains(dist.version, prereleases=True):
            raise PackagingError(
                f"installed {dist.metadata['Name']} {dist.version} does not satisfy {requirement} "
                f"(needed by {wanted_by})"
            )
        new_extras = set(requirement.extras) - requested_extras.get(name, set())
        if name in found and not new_extras:
            continue
        found[name] = dist
        requested_extras.setdefault(name, set()).update(requirement.extras)
        extras = requested_extras[name]
        for line in dist.requires or []:
            dependency = Requirement(line)
            if _applies(dependency, extras, env):
                pending.append((dependency, dist.metadata["Name"]))
    return found


def pinned_requirements(python_version: str = DEFAULT_PYTHON, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """requirements.txt text: one `name==version` line per distribution of the runtime closure, sorted."""
    project = tomllib.loads(pyproject.read_text())["project"]
    closure = runtime_closure(project_dependencies(project), target_environment(python_version))
    own = canonicalize_name(project["name"])
    pins = {name: dist.version for name, dist in closure.items() if name != own}
    return "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def discover_functions(root: Path = ROOT) -> list[str]:
    """The function names: every `functions/<name>/main.py`, sorted."""
    return sorted(p.parent.name for p in (root / "functions").glob("*/main.py"))


def _files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def write_zip(folder: Path, zip_path: Path) -> str:
    """Zip `folder`'s files (paths relative to it) reproducibly; return the zip's sha256."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for path in _files(folder):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
            info.external_attr = FILE_MODE << 16
            info.create_system = 3  # Unix, whatever the host: the mode bits above are Unix bits
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=COMPRESS_LEVEL)
    tmp.replace(zip_path)
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def build_function(name: str, out: Path, requirements: str, root: Path = ROOT) -> PackagedFunction:
    """Lay out `out/<name>/` afresh and zip it to `out/<name>.zip`."""
    source = root / "functions" / name / "main.py"
    if not source.is_file():
        raise PackagingError(f"no function {name!r}: {source} does not exist")
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "main.py")
    shutil.copytree(root / "shared", folder / "shared", ignore=_IGNORED)
    (folder / "requirements.txt").write_text(requirements)
    zip_path = out / f"{name}.zip"
    return PackagedFunction(name, folder, zip_path, write_zip(folder, zip_path))


def build_all(
    out: Path = DEFAULT_OUT,
    names: Iterable[str] | None = None,
    runtime: str | None = None,
    root: Path = ROOT,
) -> list[PackagedFunction]:
    """Package every function (or `names`) for `runtime` (default: Terraform's), under that runtime's Python."""
    runtime = runtime or default_runtime()
    python_version = check_interpreter(runtime)
    requirements = pinned_requirements(python_version, root / "pyproject.toml")
    packaged = [build_function(name, out, requirements, root) for name in (names or discover_functions(root))]
    (out / RUNTIME_FILE).write_text(f"{runtime}\n")
    return packaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build/functions)")
    parser.add_argument("--functions", nargs="*", help="function names (default: every functions/*/main.py)")
    parser.add_argument("--runtime", help="Cloud Functions runtime, as var.runtime (default: its default in "
                                              "infra/terraform/variables.tf); this Python must be its version")
    args = parser.parse_args(argv)
    try:
        packaged = build_all(args.out.resolve(), args.functions, args.runtime)
    except PackagingError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    for function in packaged:
        print(f"{function.zip_path}  sha256={function.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
