"""The packaged functions, served the way Cloud Functions serves them: from their own folder, nothing else.

Each function in `build/functions/<name>/` (freshly packaged into a temporary folder, or the artifacts in
PACKAGED_FUNCTIONS_DIR when set, e.g. by Cloud Build before it deploys them) is started with
`python -m functions_framework --target NAME --source <folder>/main.py --signature-type ...`:

- cwd and PYTHONPATH = the packaged folder, and nothing else of this repository;
- the interpreter is a throwaway virtualenv whose only extra path is this environment's site-packages,
  added by a plain .pth line. Site-packages' own .pth hooks are then not run, so the project's editable
  install (which maps `shared` to the repository) is out of the picture: `test_repo_is_not_importable`
  proves it;
- the environment holds no credentials: a fresh HOME, no GOOGLE_APPLICATION_CREDENTIALS, the metadata
  server pointed at a closed loopback port (no traffic leaves the machine), dummy settings.

HTTP functions must answer 401 to a request without a token. CloudEvent functions must acknowledge a
poison event (2xx) instead of asking for a redelivery.
"""

from __future__ import annotations

import base64
import json
import os
import site
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra import package
from infra.local.processes import ManagedProcess, base_env, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIGNATURES = {"submit": "cloudevent", "complete": "cloudevent", "poller": "http", "status": "http"}
# The entry points parse the event before they build the Google clients, so a poison event is acknowledged
# with or without credentials: both cases are tested.


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    given = os.environ.get("PACKAGED_FUNCTIONS_DIR")
    if given:
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("packaged") / "functions"
    package.build_all(out)
    return out


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory) -> Path:
    """A virtualenv without pip whose only addition is this environment's site-packages (no .pth hooks)."""
    home = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(home)
    python = home / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    own_site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(own_site, "_installed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    closed = f"127.0.0.1:{free_port()}"  # nothing listens here
    return {
        "HOME": str(home),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "PYTHONDONTWRITEBYTECODE": "1",
        "GOOGLE_CLOUD_PROJECT": "test",
        "GEMINI_API_KEY": "dummy-key-for-tests",
        "GEMINI_API_BASE_URL": f"http://{closed}",
        "INPUT_BUCKET": "test-input",
        "OUTPUT_BUCKET": "test-output",
        "EVENTS_TOPIC": "test-events",
        "COMPLETE_TOPIC": "test-complete",
        # As deployed: the poller and status verify Google-signed OIDC tokens (no shared token).
        "POLLER_AUDIENCE": "https://poller-123456789.europe-west1.run.app",
        "POLLER_INVOKER_EMAIL": "scheduler@test.iam.gserviceaccount.com",
    }


def _env(folder: Path, interpreter: Path, clean_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**clean_env, "PYTHONPATH": str(folder), "VIRTUAL_ENV": str(interpreter.parent.parent), **extra}


def _serve(name: str, packaged: Path, interpreter: Path, env: dict[str, str], logs: Path) -> ManagedProcess:
    folder = packaged / name
    port = free_port()
    process = ManagedProcess(
        name=name,
        argv=[
            str(interpreter), "-m", "functions_framework", "--target", name, "--source", str(folder / "main.py"),
            "--signature-type", SIGNATURES[name], "--port", str(port), "--host", "127.0.0.1",
        ],
        log_path=logs / f"{name}.log",
        health_url=f"http://127.0.0.1:{port}/",  # any answer below 500 (401, 405) means it serves
        env=env,
        cwd=folder,
        inherit_env=False,  # PATH, HOME... only: never the caller's credentials
    )
    process.start()
    try:
        process.wait_ready(timeout=60)
    except Exception:
        process.stop()
        raise
    process.url = f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
    return process


@pytest.fixture
def serve(packaged, interpreter, clean_env, tmp_path) -> Iterator:
    started: list[ManagedProcess] = []

    def start(name: str, **extra_env: str) -> ManagedProcess:
        env = _env(packaged / name, interpreter, clean_env, **extra_env)
        process = _serve(name, packaged, interpreter, env, tmp_path / "logs")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _emulator_hosts() -> dict[str, str]:
    closed = f"127.0.0.1:{free_port()}"
    return {"FIRESTORE_EMULATOR_HOST": closed, "STORAGE_EMULATOR_HOST": f"http://{closed}",
            "PUBSUB_EMULATOR_HOST": closed}


def _cloudevent(url: str, ce_type: str, source: str, data: object) -> httpx.Response:
    headers = {
        "ce-id": "poison-1", "ce-specversion": "1.0", "ce-type": ce_type, "ce-source": source,
        "ce-time": "2026-01-01T00:00:00Z", "Content-Type": "application/json",
    }
    return httpx.post(url, headers=headers, content=json.dumps(data), timeout=30, trust_env=False)


POISON = {
    "submit": [
        ("google.cloud.storage.object.v1.finalized", "//storage.googleapis.com/projects/_/buckets/test-input",
         {"kind": "storage#object", "unexpected": True}),
        ("google.cloud.storage.object.v1.finalized", "//storage.googleapis.com/projects/_/buckets/test-input",
         {"bucket": "test-input", "name": "incoming/a.jsonl", "generation": "not-a-number", "size": "x"}),
    ],
    "complete": [
        ("google.cloud.pubsub.topic.v1.messagePublished", "//pubsub.googleapis.com/projects/test/topics/test-complete",
         {"message": {"data": "!!! not base64 !!!", "messageId": "1"}}),
        ("google.cloud.pubsub.topic.v1.messagePublished", "//pubsub.googleapis.com/projects/test/topics/test-complete",
         {"message": {"data": base64.b64encode(b'{"no_job_id": true}').decode(), "messageId": "2"}}),
    ],
}


def test_repo_is_not_importable(packaged, interpreter, clean_env):
    """In the functions' exact environment: `shared` resolves inside the package, the repository does not."""
    probe = r"""
import importlib, importlib.util, json, pkgutil, sys
import shared
modules = {}
for info in pkgutil.walk_packages(shared.__path__, "shared."):
    modules[info.name] = importlib.import_module(info.name).__file__
print(json.dumps({
    "path": sys.path,
    "meta_path": [getattr(f, "__module__", "") + "." + getattr(f, "__qualname__", type(f).__name__) for f in sys.meta_path],
    "shared": shared.__file__,
    "modules": modules,
    "infra": importlib.util.find_spec("infra") is not None,
    "tests": importlib.util.find_spec("tests") is not None,
    "functions": importlib.util.find_spec("functions") is not None,
}))
"""
    probes = {  # one per function, side by side: each imports every module of its package
        name: subprocess.Popen(
            [str(interpreter), "-c", probe], cwd=packaged / name, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**base_env(), **_env(packaged / name, interpreter, clean_env)}, text=True,
        )
        for name in SIGNATURES
    }
    for name, running in probes.items():
        folder = packaged / name
        stdout, stderr = running.communicate(timeout=180)
        assert running.returncode == 0, stderr
        seen = json.loads(stdout)
        assert str(ROOT) not in [str(Path(p).resolve()) for p in seen["path"] if p], seen["path"]
        assert not any("editable" in finder for finder in seen["meta_path"]), seen["meta_path"]
        assert Path(seen["shared"]).is_relative_to(folder)
        assert seen["modules"], "no shared modules found"
        outside = {m: f for m, f in seen["modules"].items() if not Path(f).is_relative_to(folder)}
        assert not outside, outside
        assert not (seen["infra"] or seen["tests"] or seen["functions"])


@pytest.mark.parametrize("name", ["poller", "status"])
def test_http_functions_refuse_requests_without_a_token(serve, name):
    process = serve(name)
    for method in ("GET", "POST"):
        response = httpx.request(method, process.url, timeout=30, trust_env=False)
        assert response.status_code == 401, (method, response.text, process.log_tail())
    response = httpx.post(process.url, headers={"Authorization": "Basic dXNlcjpwYXNz"}, timeout=30, trust_env=False)
    assert response.status_code == 401, process.log_tail()
    if name == "status":
        response = httpx.get(process.url + "jobs/some-job", timeout=30, trust_env=False)
        assert response.status_code == 401


@pytest.mark.parametrize("name", ["submit", "complete"])
def test_cloudevent_functions_acknowledge_poison_events(serve, name):
    process = serve(name, **_emulator_hosts())
    for ce_type, source, data in POISON[name]:
        response = _cloudevent(process.url, ce_type, source, data)
        assert 200 <= response.status_code < 300, (data, response.status_code, process.log_tail())
    assert "POISON_EVENT" in process.log_tail(), "the poison event was not recorded as such"


@pytest.mark.parametrize("name", ["submit", "complete"])
def test_poison_events_need_no_credentials(serve, name):
    process = serve(name)
    ce_type, source, data = POISON[name][0]
    response = _cloudevent(process.url, ce_type, source, data)
    assert 200 <= response.status_code < 300, process.log_tail()
