"""The IAM graph of infra/terraform, evaluated offline by Terraform itself.

pipeline.tf holds every function and grant as pure values; `terraform console` evaluates it (with
variables.tf) without a provider or a network. These tests check the graph that matters: each function's
service account holds exactly the roles it needs, each trigger's account can invoke its function (and
nothing else), only the webhook is public, and the resources really are loops over those values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "infra" / "terraform"

VIEWER, USER = "roles/storage.objectViewer", "roles/storage.objectUser"
FIRESTORE, PUBLISHER, ACCESSOR = "roles/datastore.user", "roles/pubsub.publisher", "roles/secretmanager.secretAccessor"

# What each function needs, and nothing more: (role, resource) pairs. The reasons are in infra/README.md.
EXPECTED = {
    # submit and stage run one use case (staging, then admission and creates): the same needs.
    "submit": {(FIRESTORE, "project"), (VIEWER, "bucket:input"), (USER, "bucket:output"), (PUBLISHER, "topic:stage"),
               (PUBLISHER, "topic:complete"), (PUBLISHER, "topic:poll"), (PUBLISHER, "topic:events"),
               (ACCESSOR, "secret:gemini")},
    "stage": {(FIRESTORE, "project"), (VIEWER, "bucket:input"), (USER, "bucket:output"), (PUBLISHER, "topic:stage"),
              (PUBLISHER, "topic:complete"), (PUBLISHER, "topic:poll"), (PUBLISHER, "topic:events"),
              (ACCESSOR, "secret:gemini")},
    "poller": {(FIRESTORE, "project"), (VIEWER, "bucket:input"),  # the reconciler lists the input bucket
               (PUBLISHER, "topic:poll"), (PUBLISHER, "topic:stage")},
    "poll_worker": {(FIRESTORE, "project"), (USER, "bucket:output"), (PUBLISHER, "topic:complete"),
                    (PUBLISHER, "topic:stage"), (PUBLISHER, "topic:poll"), (PUBLISHER, "topic:events"),
                    (ACCESSOR, "secret:gemini")},
    "complete": {(FIRESTORE, "project"), (USER, "bucket:output"), (PUBLISHER, "topic:complete"),
                 (PUBLISHER, "topic:poll"), (PUBLISHER, "topic:events"), (ACCESSOR, "secret:gemini")},
    "status": {(FIRESTORE, "project"), (USER, "bucket:output"), (PUBLISHER, "topic:events"),
               (ACCESSOR, "secret:gemini")},
    "webhook": {(PUBLISHER, "topic:poll"), (ACCESSOR, "secret:webhook")},
}
EVENT_FUNCTIONS = {"submit": "storage", "stage": "stage", "poll_worker": "poll", "complete": "complete"}


def _terraform() -> str:
    found = shutil.which("terraform")
    if found is None:
        pytest.fail("terraform is not on PATH (it is on this project's machines: make lint runs terraform fmt)")
    return found


@cache
def evaluate(enable_webhook: bool = True, embedding_provider: str = "gemini") -> dict:
    """The pipeline's locals as Terraform computes them from pipeline.tf and variables.tf alone."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        for name in ("pipeline.tf", "variables.tf"):
            shutil.copyfile(TERRAFORM_DIR / name, Path(work) / name)
        expression = ("jsonencode({functions = local.functions, event_functions = local.event_functions, "
                      "service_accounts = local.service_accounts, "
                      "project_grants = local.project_grants, bucket_grants = local.bucket_grants, "
                      "topic_publishers = local.topic_publishers, secret_readers = local.secret_readers, "
                      "invokers = local.invokers, public = local.public_functions, topics = local.topics, "
                      "secrets = local.secrets, dead_letters = local.dead_letters, sizing = local.sizing, "
                      "vertex_prefix_grants = local.vertex_prefix_grants})")
        result = subprocess.run(
            [_terraform(), "console", "-no-color", "-var", "project_id=p", "-var", f"enable_webhook={str(enable_webhook).lower()}",
             "-var", f"embedding_provider={embedding_provider}"],
            input=expression, capture_output=True, text=True, cwd=work, timeout=120,
            env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"},
        )
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))


def grants_of(graph: dict) -> dict[str, set[tuple[str, str]]]:
    """Every grant, by service account key: (role, resource)."""
    grants: dict[str, set[tuple[str, str]]] = {sa: set() for sa in graph["service_accounts"]}
    for grant in graph["project_grants"].values():
        grants[grant["sa"]].add((grant["role"], "project"))
    for grant in graph["bucket_grants"].values():
        grants[grant["sa"]].add((grant["role"], f"bucket:{grant['bucket']}"))
    for grant in graph["topic_publishers"].values():
        grants[grant["sa"]].add((PUBLISHER, f"topic:{grant['topic']}"))
    for grant in graph["secret_readers"].values():
        grants[grant["sa"]].add((ACCESSOR, f"secret:{grant['secret']}"))
    for grant in graph["invokers"].values():
        grants[grant["sa"]].add(("roles/run.invoker", f"function:{grant['function']}"))
    for grant in graph.get("vertex_prefix_grants", {}).values():  # vertex.tf: conditioned on the Vertex prefix
        grants[grant["sa"]].add((grant["role"], f"bucket:{grant['bucket']}/vertex-prefix"))
    return grants


def test_each_function_account_holds_exactly_the_roles_it_needs():
    grants = grants_of(evaluate())
    assert set(evaluate()["functions"]) == set(EXPECTED)
    for name, needed in EXPECTED.items():
        assert grants[name] == needed, f"{name}: extra {grants[name] - needed}, missing {needed - grants[name]}"


def test_each_trigger_account_invokes_its_function_and_nothing_else():
    graph = evaluate()
    grants = grants_of(graph)
    triggers = {name: fn["trigger"] for name, fn in graph["functions"].items() if fn["trigger"] is not None}
    assert triggers == EVENT_FUNCTIONS
    for name, trigger in triggers.items():
        expected = {("roles/run.invoker", f"function:{name}")}
        if trigger == "storage":  # Eventarc checks eventReceiver on a Cloud Storage trigger's identity
            expected.add(("roles/eventarc.eventReceiver", "project"))
        assert grants[f"{name}_trigger"] == expected, name
        if trigger != "storage":
            assert trigger in graph["topics"], f"{name} is triggered by an unknown topic {trigger}"


def test_http_callers_invoke_only_their_function():
    grants = grants_of(evaluate())
    assert grants["scheduler"] == {("roles/run.invoker", "function:poller")}
    assert grants["operator"] == {("roles/run.invoker", "function:status")}
    build = {("roles/logging.logWriter", "project"), ("roles/storage.objectAdmin", "project"),
             (VIEWER, "bucket:sources")}
    assert grants["build"] == build  # + artifactregistry.writer on the functions' repository (functions.tf)


def test_every_function_can_be_invoked_by_someone_and_only_the_webhook_by_anyone():
    graph = evaluate()
    invoked = {grant["function"] for grant in graph["invokers"].values()} | set(graph["public"])
    assert invoked == set(graph["functions"])
    assert graph["public"] == ["webhook"]


def test_the_webhook_and_its_grants_exist_only_when_enabled():
    graph = evaluate(enable_webhook=False)
    assert "webhook" not in graph["functions"] and graph["public"] == []
    assert not [g for g in graph["topic_publishers"].values() if g["sa"] == "webhook"]
    assert not [g for g in graph["secret_readers"].values() if g["secret"] == "webhook"]
    assert "webhook" not in graph["service_accounts"]


def test_grants_name_only_known_buckets_topics_and_secrets():
    graph = evaluate()
    assert {g["bucket"] for g in graph["bucket_grants"].values()} <= {"input", "output", "sources"}
    assert {g["topic"] for g in graph["topic_publishers"].values()} <= set(graph["topics"])
    assert {g["secret"] for g in graph["secret_readers"].values()} <= set(graph["secrets"])


def test_every_event_function_has_a_dead_letter_path_that_survives_a_burst():
    graph = evaluate()
    for name in EVENT_FUNCTIONS:
        assert graph["dead_letters"][name] == 100, name  # infra/README.md: "An upload burst"
    assert graph["sizing"]["submit"]["max_instances"] >= 100


# Under Vertex AI: no API key anywhere, roles/aiplatform.user for the provider's callers, and the Vertex prefix
# of the output bucket for those without bucket-level access to it (none today: every caller writes the output
# bucket already). The poller's tick calls no provider. No webhook: Vertex AI has no batch webhooks.
AIPLATFORM = ("roles/aiplatform.user", "project")
EXPECTED_VERTEX = {
    name: {grant for grant in grants if grant[0] != ACCESSOR} | (
        {AIPLATFORM} if name in ("submit", "stage", "poll_worker", "complete", "status") else set())
    for name, grants in EXPECTED.items() if name != "webhook"
}


def test_under_vertex_functions_hold_exactly_the_vertex_roles_and_no_key():
    graph = evaluate(enable_webhook=True, embedding_provider="vertex")
    grants = grants_of(graph)
    assert set(graph["functions"]) == set(EXPECTED_VERTEX), "no webhook under Vertex AI"
    for name, needed in EXPECTED_VERTEX.items():
        assert grants[name] == needed, f"{name}: extra {grants[name] - needed}, missing {needed - grants[name]}"
    assert "gemini" not in graph["secrets"] and not graph["secret_readers"]
    assert not [g for g in evaluate()["project_grants"].values() if g["role"] == AIPLATFORM[0]], "none under gemini"
    assert evaluate()["vertex_prefix_grants"] == {}


def test_vertex_grants_to_the_service_agent_are_conditioned_on_the_vertex_prefixes():
    text = (TERRAFORM_DIR / "vertex.tf").read_text()
    agent = _blocks()["google_storage_bucket_iam_member.vertex_agent"]
    assert "member = google_project_service_identity.aiplatform[0].member" in agent
    assert "condition {" in agent and 'objectListPrefix' in agent
    assert 'reads_inputs   = { role = "roles/storage.objectViewer", prefix = local.vertex_inputs' in text
    assert 'writes_outputs = { role = "roles/storage.objectUser", prefix = local.vertex_outputs' in text
    assert "condition {" in _blocks()["google_storage_bucket_iam_member.vertex_prefix"]
    assert _for_each(_blocks()["google_storage_bucket_iam_member.vertex_prefix"]) == "local.vertex_prefix_grants"


def test_service_account_ids_fit_30_characters_with_the_longest_prefix():
    longest_prefix = "a" * 10  # variables.tf: name_prefix is at most 10 characters
    for key in evaluate()["service_accounts"]:
        account_id = f"{longest_prefix}-{key.replace('_', '-')}"
        assert 6 <= len(account_id) <= 30, account_id


# -- the resources are loops over those values ------------------------------------------------------------

LOOPS = ("functions", "event_functions", "service_accounts", "project_grants", "bucket_grants", "topic_publishers",
         "secret_readers", "invokers", "public_functions", "dead_letters", "topics", "secrets", "sources",
         "vertex_prefix_grants")


@pytest.mark.parametrize("enable_webhook", [True, False])
def test_terraform_plans_a_loop_over_each_table(tmp_path, enable_webhook):
    """`terraform plan` (offline: only the built-in terraform_data resource) accepts every table as a for_each
    value, and plans one instance per key."""
    for name in ("pipeline.tf", "variables.tf"):
        shutil.copyfile(TERRAFORM_DIR / name, tmp_path / name)
    (tmp_path / "loops.tf").write_text("".join(
        f'resource "terraform_data" "{loop}" {{\n  for_each = local.{loop}\n  input    = each.key\n}}\n' for loop in LOOPS))
    env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
    init = subprocess.run([_terraform(), "init", "-input=false", "-no-color"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    plan = subprocess.run([_terraform(), "plan", "-input=false", "-no-color", "-out=plan", "-var", "project_id=p",
                           "-var", f"enable_webhook={str(enable_webhook).lower()}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    shown = subprocess.run([_terraform(), "show", "-json", "plan"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    planned: dict[str, set[str]] = {}
    for change in json.loads(shown.stdout)["resource_changes"]:
        planned.setdefault(change["name"], set()).add(change["index"])
    graph = evaluate(enable_webhook)
    for loop in LOOPS:
        expected = set(graph[loop]) if loop in graph else None
        if expected is not None:
            assert planned.get(loop, set()) == expected, loop
    assert planned.get("public_functions", set()) == set(graph["public"])
    assert planned["sources"] == ({"submit", "poller", "complete", "status"} | ({"webhook"} if enable_webhook else set()))


def _blocks(kind: str = "resource") -> dict[str, str]:
    """`TYPE.NAME` -> the block's text, for every block of the configuration (terraform fmt's layout)."""
    blocks = {}
    for path in TERRAFORM_DIR.glob("*.tf"):
        text = path.read_text()
        for match in re.finditer(rf'^{kind} "([\w-]+)" "([\w-]+)" \{{\n(.*?)^\}}', text, re.M | re.S):
            blocks[f"{match[1]}.{match[2]}"] = match[3]
    return blocks


def _for_each(block: str) -> str:
    found = re.search(r"^  for_each\s*=\s*(.+)$", block, re.M)
    return found[1].strip() if found else ""


def test_iam_resources_loop_over_the_pipeline_table():
    blocks = _blocks()
    assert _for_each(blocks["google_service_account.sa"]) == "local.service_accounts"
    assert _for_each(blocks["google_project_iam_member.roles"]) == "local.project_grants"
    assert _for_each(blocks["google_storage_bucket_iam_member.grants"]) == "local.bucket_grants"
    assert _for_each(blocks["google_pubsub_topic_iam_member.publishers"]) == "local.topic_publishers"
    assert _for_each(blocks["google_secret_manager_secret_iam_member.readers"]) == "local.secret_readers"
    assert _for_each(blocks["google_cloudfunctions2_function.fn"]) == "local.functions"
    assert _for_each(blocks["google_cloud_run_v2_service_iam_member.invokers"]) == "local.invoker_members"
    assert _for_each(blocks["google_cloud_run_v2_service_iam_member.public"]) == "local.public_functions"
    functions = (TERRAFORM_DIR / "functions.tf").read_text()
    assert "for key, grant in local.invokers :" in functions
    fn = blocks["google_cloudfunctions2_function.fn"]
    assert "service_account_email            = google_service_account.sa[each.key].email" in fn
    assert 'service_account_email = google_service_account.sa["${each.key}_trigger"].email' in fn
    assert "entry_point       = each.value.entry_point" in fn


def test_no_other_resource_grants_roles_to_a_function_account():
    """Grants to the functions' and triggers' accounts come from the table only."""
    looped = {"google_project_iam_member.roles", "google_storage_bucket_iam_member.grants",
              "google_storage_bucket_iam_member.vertex_prefix",
              "google_pubsub_topic_iam_member.publishers", "google_secret_manager_secret_iam_member.readers",
              "google_cloud_run_v2_service_iam_member.invokers", "google_cloud_run_v2_service_iam_member.public"}
    for address, block in _blocks().items():
        if "_iam_" not in address.split(".")[0] or address in looped:
            continue
        members = re.findall(r"^\s*member\s*=\s*(.+)$", block, re.M)
        for member in members:
            assert "google_service_account.sa" not in member or '"build"' in member, (address, member)


def test_every_referenced_local_and_resource_is_declared():
    """What `terraform validate` would catch first, checked without the providers: no dangling name."""
    text = "\n".join(path.read_text() for path in TERRAFORM_DIR.glob("*.tf"))
    # Comments, and the old addresses of moved blocks (moved.tf), name nothing that must exist.
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines() if not line.strip().startswith("from "))
    declared_locals = set(re.findall(r"^  ([a-z_][a-z0-9_]*)\s*=", "\n".join(
        m for m in re.findall(r"^locals \{\n(.*?)^\}", text, re.M | re.S)), re.M))
    used_locals = set(re.findall(r"\blocal\.([a-z_][a-z0-9_]*)", code))
    assert used_locals <= declared_locals, used_locals - declared_locals
    resources = set(_blocks()) | {f"data.{a}" for a in _blocks("data")}
    used = {f"{m[0]}.{m[1]}" for m in re.findall(r"(?<![\w.\"])((?:data\.)?google[\w-]*|time_sleep)\.([a-z_][a-z0-9_]*)\b", code)}
    used = {u for u in used if not u.startswith("google-beta.")}
    assert used <= resources, used - resources
    declared_vars = set(re.findall(r'^variable "([a-z_0-9]+)"', text, re.M))
    assert set(re.findall(r"\bvar\.([a-z_0-9]+)", code)) <= declared_vars
