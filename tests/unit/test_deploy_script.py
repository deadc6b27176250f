"""infra/deploy.sh's smoke test and smoke-check, driven through stand-ins for gcloud, terraform and curl.

The stand-ins are ours (small scripts on PATH that answer what the script asks); they let the script's own
logic run for real: the job id it derives, when it passes, fails or gives up, and the exit codes it ends with.
Nothing here reaches Google.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.domain.jobs import job_id_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "deploy.sh"
BASH = shutil.which("bash")

OUTPUTS = {"input_bucket": "proj-emb-input", "input_prefix": "incoming/", "jobs_collection": "embedding_jobs",
           "status_url": "https://emb-status-123.europe-west1.run.app"}
GENERATION = "1733222222333444"


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{BASH}\nset -euo pipefail\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def fakes(tmp_path):
    """A folder of stand-ins; `states` is the queue of job states the Firestore read returns, one per call
    (the last one repeats; an empty line is a 404: no document yet)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    states = tmp_path / "states"
    outputs = "\n".join(f'  {key}) echo -n "{value}" ;;' for key, value in OUTPUTS.items())
    _tool(bin_dir, "terraform", f'''
if [[ "$*" == *"output -raw"* ]]; then
  case "${{@: -1}}" in
{outputs}
    *) echo "no output ${{@: -1}}" >&2; exit 1 ;;
  esac
fi''')
    _tool(bin_dir, "gcloud", f'''
echo "$*" >> {tmp_path}/gcloud-calls
case "$*" in
  *"storage objects describe"*) echo {GENERATION} ;;
  *"auth print-access-token"*) echo access-token ;;
  *"auth print-identity-token"*) echo "ERROR: Permission iam.serviceAccounts.getAccessToken denied" >&2; exit 1 ;;
esac''')
    _tool(bin_dir, "curl", f'''
out=""; url=""
while (($#)); do case "$1" in -o) out="$2"; shift 2 ;; -w|-H) shift 2 ;; -*) shift ;; *) url="$1"; shift ;; esac; done
echo "$url" >> {tmp_path}/curl-urls
state="$(head -n1 {states})"
if (( $(wc -l < {states}) > 1 )); then sed -i 1d {states}; fi
if [[ -z "$state" ]]; then echo -n '{{"error": {{"code": 404}}}}' > "$out"; echo -n 404; exit 0; fi
printf '{{\\n "name": "x",\\n "fields": {{\\n  "state": {{\\n   "stringValue": "%s"\\n  }}\\n }}\\n}}' "$state" > "$out"
echo -n 200''')
    _tool(bin_dir, "sleep", "exit 0")  # the script's poll interval: no wall-clock waits in tests

    def run(*args: str, queue: list[str], **env: str) -> subprocess.CompletedProcess:
        states.write_text("\n".join(queue) + "\n")
        environment = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "PROJECT_ID": "proj",
            "SMOKE_JOB_FILE": str(tmp_path / "smoke-job"), "SMOKE_POLL_SECONDS": "0", **env,
        }
        return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                              timeout=120, cwd=tmp_path)

    run.tmp = tmp_path
    return run


def _uploaded_object(tmp: Path) -> str:
    calls = (tmp / "gcloud-calls").read_text()
    cp = next(line for line in calls.splitlines() if "storage cp" in line)
    return cp.split("gs://proj-emb-input/")[1].split()[0]


def test_the_job_id_is_the_pipelines():
    for bucket, name, generation in [("b", "incoming/a.jsonl", "17"), ("proj-in", "incoming/ü dir/x.txt", GENERATION)]:
        result = subprocess.run([BASH, "-c", f'source "{SCRIPT}"; job_id_for "$0" "$1" "$2"', bucket, name, generation],
                                capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == job_id_for(bucket, name, generation)


def test_smoke_passes_once_the_job_is_accepted_and_progressing(fakes):
    result = fakes("smoke", queue=["", "SUBMITTING", "RUNNING"])
    assert result.returncode == 0, result.stderr
    object_name = _uploaded_object(fakes.tmp)
    job = job_id_for("proj-emb-input", object_name, GENERATION)
    assert (fakes.tmp / "smoke-job").read_text().strip() == job
    assert f"job {job} is RUNNING: accepted and progressing" in result.stderr
    urls = (fakes.tmp / "curl-urls").read_text().splitlines()
    assert len(urls) == 3 and all(url.endswith(f"/embedding_jobs/{job}?mask.fieldPaths=state") for url in urls)


def test_smoke_fails_when_the_job_ends_badly(fakes):
    result = fakes("smoke", queue=["SUBMITTING", "FAILED"])
    assert result.returncode == 1
    assert "ended FAILED" in result.stderr


def test_smoke_gives_up_with_the_state_it_saw(fakes):
    result = fakes("smoke", queue=[""], SMOKE_TIMEOUT="0")
    assert result.returncode == 1
    assert "is not created after 0s" in result.stderr


def test_smoke_does_not_hide_a_token_that_cannot_be_minted(fakes):
    result = fakes("smoke", queue=["RUNNING"], SMOKE_IMPERSONATE="ops@proj.iam.gserviceaccount.com")
    assert result.returncode == 1
    assert "cannot mint an ID token as ops@proj.iam.gserviceaccount.com" in result.stderr


@pytest.mark.parametrize(("state", "code", "says"), [
    ("SUCCEEDED", 0, "SUCCEEDED"),
    ("RUNNING", 3, "still RUNNING"),
    ("PARTIALLY_SUCCEEDED", 1, "ended PARTIALLY_SUCCEEDED"),
    ("", 1, "no job job-"),
])
def test_smoke_check_tells_completion_apart(fakes, state, code, says):
    (fakes.tmp / "smoke-job").write_text("job-0123456789abcdef0123\n")
    result = fakes("smoke-check", queue=[state])
    assert result.returncode == code, result.stderr
    assert says in result.stderr


def test_smoke_check_without_a_job_says_what_to_do(fakes):
    result = fakes("smoke-check", queue=["RUNNING"])
    assert result.returncode == 1
    assert "run the smoke test first" in result.stderr


def test_an_unknown_step_is_refused(fakes):
    result = fakes("deploy-everything", queue=[""])
    assert result.returncode == 1 and "unknown step deploy-everything" in result.stderr
