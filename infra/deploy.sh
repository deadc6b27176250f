#!/usr/bin/env bash
# Deploy the embeddings pipeline: package -> terraform apply -> dead letters -> smoke test.
# Cloud Build (cloudbuild.yaml) runs the same steps through this script, so a manual deploy and a CI
# deploy do the same thing.
#
#   PROJECT_ID=my-project infra/deploy.sh            # everything
#   infra/deploy.sh package|plan|apply|dead-letters|smoke|smoke-check [JOB_ID]
#
# The smoke test passes once its job is accepted and progressing (its batches were created at Gemini);
# whether it completes is checked separately, later, by `smoke-check` (Gemini's batch target is 24 h).
#
# Environment:
#   PROJECT_ID        project (default: gcloud's configured project)
#   REGION            region (default: europe-west1)
#   STATE_BUCKET      Terraform state bucket, created (versioned) if missing (default: <project>-tfstate)
#   STATE_PREFIX      state prefix in it (default: embeddings)
#   TF_VAR_FILE       a .tfvars file for more variables, local or gs:// (see infra/terraform/terraform.tfvars.example)
#   EMBEDDING_PROVIDER  gemini (default: the Gemini API with an API key) or vertex (Vertex AI, IAM, no key)
#   GEMINI_API_KEY    first deployment only: stored as the secret's first version (never printed, never in state)
#   WEBHOOK_SIGNING_SECRET  the Gemini webhook's signing secret, stored as a version of its secret when given
#   AUTO_APPROVE      1 to apply without asking (default 1 under CI=true, else 0)
#   SKIP_PACKAGE      1 to deploy the zips already in build/functions (Cloud Build packages in an earlier step)
#   SMOKE_TIMEOUT     seconds to wait for the smoke job to be accepted and progressing (default 900)
#   SMOKE_JOB_FILE    where `smoke` writes its job id and `smoke-check` reads it (default build/smoke-job)
#   SMOKE_IMPERSONATE service account to impersonate to also read the job through the status API (optional;
#                     a failure to mint its token or a refusal fails the smoke test)
#   PYTHON, TERRAFORM, GCLOUD, CURL  the tools (defaults: .venv/bin/python or python3, terraform, gcloud, curl);
#                     Python is needed only to package (not with SKIP_PACKAGE=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TF_DIR="$ROOT/infra/terraform"
GCLOUD="${GCLOUD:-gcloud}"
TERRAFORM="${TERRAFORM:-terraform}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
PROJECT_ID="${PROJECT_ID:-$("$GCLOUD" config get-value project 2>/dev/null || true)}"
REGION="${REGION:-europe-west1}"
STATE_BUCKET="${STATE_BUCKET:-${PROJECT_ID}-tfstate}"
STATE_PREFIX="${STATE_PREFIX:-embeddings}"
CURL="${CURL:-curl}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-900}"
SMOKE_JOB_FILE="${SMOKE_JOB_FILE:-$ROOT/build/smoke-job}"
if [[ "${CI:-}" == "true" ]]; then AUTO_APPROVE="${AUTO_APPROVE:-1}"; else AUTO_APPROVE="${AUTO_APPROVE:-0}"; fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

# The source folders whose zips Terraform deploys (infra/terraform/pipeline.tf: `source` of each function).
SOURCES=(submit complete poller status webhook)

require_tools() {
  [[ -n "$PROJECT_ID" ]] || die "set PROJECT_ID (or: gcloud config set project PROJECT)"
  local tool
  for tool in "$GCLOUD" "$TERRAFORM" "$CURL"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see infra/README.md, prerequisites)"
  done
}

# The -var arguments of every terraform plan and apply (the .tfvars path made absolute: terraform runs in TF_DIR).
# A gs:// TF_VAR_FILE is copied first: *.tfvars are git-ignored, so Cloud Build reads its values from a bucket.
TF_VARS=(-var "project_id=$PROJECT_ID" -var "region=$REGION" -var "embedding_provider=${EMBEDDING_PROVIDER:-gemini}")
if [[ "${TF_VAR_FILE:-}" == gs://* ]]; then
  local_vars="$(mktemp --suffix=.tfvars)"
  "$GCLOUD" --project "$PROJECT_ID" storage cp "$TF_VAR_FILE" "$local_vars" >/dev/null || die "cannot copy $TF_VAR_FILE"
  TF_VAR_FILE="$local_vars"
fi
if [[ -n "${TF_VAR_FILE:-}" ]]; then
  [[ -f "$TF_VAR_FILE" ]] || die "TF_VAR_FILE $TF_VAR_FILE does not exist"
  TF_VARS+=(-var-file="$(cd "$(dirname "$TF_VAR_FILE")" && pwd)/$(basename "$TF_VAR_FILE")")
fi

tf() { "$TERRAFORM" -chdir="$TF_DIR" "$@"; }
tf_out() { tf output -raw "$1"; }
g() { "$GCLOUD" --project "$PROJECT_ID" --quiet "$@"; }

bootstrap() {
  # Terraform needs these to read the project and enable the rest (main.tf: google_project_service).
  log "enabling the bootstrap APIs"
  g services enable serviceusage.googleapis.com cloudresourcemanager.googleapis.com iam.googleapis.com \
    storage.googleapis.com secretmanager.googleapis.com
  if ! g storage buckets describe "gs://$STATE_BUCKET" >/dev/null 2>&1; then
    log "creating the state bucket gs://$STATE_BUCKET"
    g storage buckets create "gs://$STATE_BUCKET" --location "$REGION" --uniform-bucket-level-access \
      --public-access-prevention
    g storage buckets update "gs://$STATE_BUCKET" --versioning
  fi
}

init() {
  log "terraform init (state: gs://$STATE_BUCKET/$STATE_PREFIX)"
  tf init -input=false -reconfigure -backend-config="bucket=$STATE_BUCKET" -backend-config="prefix=$STATE_PREFIX" >/dev/null
}

package() {
  if [[ "${SKIP_PACKAGE:-0}" == "1" ]]; then
    log "using the packages in build/functions"
  else
    log "packaging the functions"
    (cd "$ROOT" && "$PYTHON" -m infra.package)
  fi
  local name
  for name in "${SOURCES[@]}"; do
    if [[ ! -d "$ROOT/functions/$name" ]]; then
      log "functions/$name/ does not exist yet: the functions built from it cannot be enabled"
      continue
    fi
    [[ -f "$ROOT/build/functions/$name.zip" ]] || die "build/functions/$name.zip is missing: run make package"
  done
}

# The secret's container exists (Terraform creates it; first deployment: a targeted apply) and, when the
# value is given in the environment variable, that value is its newest version. The value goes straight from
# the environment to Secret Manager: never printed, never in Terraform's state.
store_secret() {
  local key="$1" secret_id="$2" variable="$3"
  if ! g secrets describe "$secret_id" >/dev/null 2>&1; then
    log "creating the secret $secret_id (container only)"
    tf apply -input=false -auto-approve "${TF_VARS[@]}" "-target=google_secret_manager_secret.secret[\"$key\"]"
  fi
  log "adding \$$variable as a new version of $secret_id"
  printf '%s' "${!variable}" | g secrets versions add "$secret_id" --data-file=- >/dev/null
}

has_version() {
  [[ -n "$(g secrets versions list "$1" --filter='state=ENABLED' --limit=1 --format='value(name)' 2>/dev/null)" ]]
}

ensure_secrets() {
  # The functions cannot deploy without a readable version of the Gemini key (under Vertex AI there is none:
  # the functions authenticate with their service accounts).
  local gemini="${GEMINI_SECRET_ID:-gemini-api-key}" webhook="${WEBHOOK_SECRET_ID:-gemini-webhook-signing-secret}"
  if [[ "${EMBEDDING_PROVIDER:-gemini}" == "vertex" ]]; then
    log "provider vertex: no Gemini API key needed"
  elif ! has_version "$gemini"; then
    [[ -n "${GEMINI_API_KEY:-}" ]] || die "secret $gemini has no enabled version. Add the key once:
  printf '%s' \"\$GEMINI_API_KEY\" | gcloud secrets versions add $gemini --data-file=- --project $PROJECT_ID
or run this script with GEMINI_API_KEY set."
    store_secret gemini "$gemini" GEMINI_API_KEY
  fi
  # The webhook's signing secret: only when given (the webhook is deployed with enable_webhook = true, after it).
  if [[ -n "${WEBHOOK_SIGNING_SECRET:-}" ]]; then
    store_secret webhook "$webhook" WEBHOOK_SIGNING_SECRET
  fi
}

plan() {
  tf plan -input=false "${TF_VARS[@]}"
}

apply() {
  local approve=()
  [[ "$AUTO_APPROVE" == "1" ]] && approve=(-auto-approve)
  log "terraform apply"
  tf apply -input=false "${approve[@]}" "${TF_VARS[@]}"
}

check_urls() {
  # POLLER_AUDIENCE and the scheduler's target are the deterministic run.app URL (main.tf: local.urls);
  # make sure Cloud Run really serves the services under it.
  local fn url urls
  local http=(poller status)
  [[ "$(tf_out webhook_enabled)" == "true" ]] && http+=(webhook)
  for fn in "${http[@]}"; do
    url="$(tf_out "${fn}_url")"
    urls="$(g run services describe "$(tf_out "${fn}_function")" --region "$REGION" \
      --format='value(metadata.annotations["run.googleapis.com/urls"])' 2>/dev/null || true)"
    if [[ "$urls" == *"$url"* ]]; then
      log "$fn serves $url"
    else
      printf 'deploy: WARNING: %s is not among the URLs of %s (%s): its token audience would not match\n' \
        "$url" "$fn" "${urls:-unknown}" >&2
    fi
  done
}

dead_letters() {
  # Eventarc owns the push subscriptions behind the event functions' triggers, so Terraform cannot set their
  # dead-letter policy; Google's "Retry events" guide updates the trigger's subscription instead. Each
  # function's attempts come from infra/terraform/pipeline.tf (dead_letter_routes). Idempotent: safe on every
  # deployment. Operators (operators_group) may also read these subscriptions and, for the Cloud Storage
  # trigger, publish to Eventarc's own topic: `embedpipe dead-letters replay` sends a message back there.
  local agent operators route function dlq attempts trigger sub topic
  agent="$(tf_out pubsub_service_agent)"
  operators="$(tf_out operators_group)"
  for route in $(tf_out dead_letter_routes); do
    IFS=: read -r function dlq attempts <<<"$route"
    trigger="$(g functions describe "$function" --gen2 --region "$REGION" --format='value(eventTrigger.trigger)')"
    [[ -n "$trigger" ]] || die "$function has no Eventarc trigger"
    sub="$(g eventarc triggers describe "${trigger##*/}" --location "$REGION" --format='value(transport.pubsub.subscription)')"
    topic="$(g eventarc triggers describe "${trigger##*/}" --location "$REGION" --format='value(transport.pubsub.topic)')"
    [[ -n "$sub" ]] || die "no Pub/Sub subscription behind $trigger"
    log "dead letters: ${sub##*/} -> ${dlq##*/} after $attempts attempts"
    # The Pub/Sub service agent acknowledges on the source subscription when it forwards a dead letter.
    g pubsub subscriptions add-iam-policy-binding "$sub" --member="serviceAccount:$agent" \
      --role=roles/pubsub.subscriber >/dev/null
    # 600 s ack deadline: no second delivery while a 540 s invocation is still running.
    g pubsub subscriptions update "$sub" --dead-letter-topic="$dlq" --max-delivery-attempts="$attempts" \
      --min-retry-delay=10s --max-retry-delay=600s --ack-deadline=600 --message-retention-duration=7d >/dev/null
    if [[ -n "$operators" ]]; then
      g pubsub subscriptions add-iam-policy-binding "$sub" --member="$operators" --role=roles/pubsub.viewer >/dev/null
      # Our own topics' publishers are in Terraform; Eventarc's topic (the Cloud Storage trigger's) is not.
      if [[ -n "$topic" && "${topic##*/}" == eventarc-* ]]; then
        g pubsub topics add-iam-policy-binding "$topic" --member="$operators" --role=roles/pubsub.publisher >/dev/null
      fi
    fi
  done
}

# -- smoke test --------------------------------------------------------------------------------------------

# The job id of an object generation, as shared/domain/jobs.py computes it: job- + sha256(bucket\nname\ngeneration)[:20].
job_id_for() {
  printf '%s\n%s\n%s' "$1" "$2" "$3" | sha256sum | cut -c1-20 | sed 's/^/job-/'
}

# The state of a job from its Firestore document ("" while there is none), read with the deployer's token.
job_state() {
  local job_id="$1" url code body
  url="https://firestore.googleapis.com/v1/projects/$PROJECT_ID/databases/(default)/documents/$(tf_out jobs_collection)/$job_id?mask.fieldPaths=state"
  body="$(mktemp)"
  code="$("$CURL" -sS -o "$body" -w '%{http_code}' -H "Authorization: Bearer $("$GCLOUD" auth print-access-token)" "$url")" \
    || { rm -f "$body"; die "cannot reach Firestore to read job $job_id"; }
  case "$code" in
    200) tr -d ' \n' <"$body" | sed -n 's/.*"state":{"stringValue":"\([A-Z_]*\)"}.*/\1/p' ;;
    404) ;;
    *) rm -f "$body"; die "Firestore answered $code for job $job_id (the deployer needs roles/datastore.viewer or more)" ;;
  esac
  rm -f "$body"
}

# What a smoke job's state means: accepted and progressing (pass), not yet (wait), or a failure.
smoke_verdict() {
  case "$1" in
    RUNNING | COMPLETING | SUCCEEDED) echo pass ;;
    "" | SUBMITTING) echo wait ;;
    *) echo fail ;;
  esac
}

status_api_check() {
  # With SMOKE_IMPERSONATE: the job through the status API, as an operator would read it. No `|| true`:
  # a token that cannot be minted (roles/iam.serviceAccountTokenCreator missing, iamcredentials API off) or
  # a refusal fails the smoke test, with gcloud's or the API's own message.
  local job_id="$1" url token
  [[ -n "${SMOKE_IMPERSONATE:-}" ]] || return 0
  url="$(tf_out status_url)"
  token="$("$GCLOUD" auth print-identity-token --impersonate-service-account="$SMOKE_IMPERSONATE" \
    --audiences="$url" --include-email)" || die "cannot mint an ID token as $SMOKE_IMPERSONATE (see infra/README.md, Operators)"
  log "job $job_id according to the status API:"
  "$CURL" -fsS -H "Authorization: Bearer $token" "$url/jobs/$job_id" >&2 || die "the status API refused or failed for job $job_id"
  echo >&2
}

smoke() {
  # Upload a two-line file; pass once its job is accepted and progressing. Completion: `smoke-check`, later.
  local bucket prefix object tmp generation job_id state verdict deadline
  bucket="$(tf_out input_bucket)"; prefix="$(tf_out input_prefix)"
  object="${prefix}smoke/smoke-$(date -u +%Y%m%d-%H%M%S)-$RANDOM.jsonl"
  log "smoke test: gs://$bucket/$object"
  tmp="$(mktemp)"
  printf '%s\n' '{"id": "smoke-1", "text": "The quick brown fox jumps over the lazy dog."}' \
    '{"id": "smoke-2", "text": "Embeddings pipeline smoke test."}' >"$tmp"
  g storage cp "$tmp" "gs://$bucket/$object" --content-type=application/jsonl >/dev/null
  rm -f "$tmp"
  generation="$(g storage objects describe "gs://$bucket/$object" --format='value(generation)')"
  job_id="$(job_id_for "$bucket" "$object" "$generation")"
  mkdir -p "$(dirname "$SMOKE_JOB_FILE")" && printf '%s\n' "$job_id" >"$SMOKE_JOB_FILE"
  deadline=$((SECONDS + SMOKE_TIMEOUT))
  while :; do
    state="$(job_state "$job_id")"
    verdict="$(smoke_verdict "$state")"
    case "$verdict" in
      pass)
        log "job $job_id is $state: accepted and progressing (completion: infra/deploy.sh smoke-check $job_id)"
        status_api_check "$job_id"
        return 0 ;;
      fail) die "smoke test: job $job_id ended $state" ;;
    esac
    ((SECONDS < deadline)) || die "smoke test: job $job_id is ${state:-not created} after ${SMOKE_TIMEOUT}s (submit and stage should take seconds: see their logs)"
    sleep "${SMOKE_POLL_SECONDS:-10}"
  done
}

smoke_check() {
  # Has the smoke job completed? 0 SUCCEEDED, 3 still running (Gemini's target is 24 h), 1 anything else.
  local job_id="${1:-}" state
  if [[ -z "$job_id" ]]; then
    [[ -f "$SMOKE_JOB_FILE" ]] || die "no job id given and no $SMOKE_JOB_FILE (run the smoke test first)"
    job_id="$(<"$SMOKE_JOB_FILE")"
  fi
  state="$(job_state "$job_id")"
  case "$state" in
    SUCCEEDED) log "job $job_id SUCCEEDED"; return 0 ;;
    SUBMITTING | RUNNING | COMPLETING) log "job $job_id is still $state (Gemini batches may take up to 24 h)"; return 3 ;;
    "") die "no job $job_id" ;;
    *) die "job $job_id ended $state" ;;
  esac
}

main() {
  local step="${1:-all}"
  require_tools
  case "$step" in
    package) package ;;
    plan) package; bootstrap; init; plan ;;
    apply) package; bootstrap; init; ensure_secrets; apply; check_urls; dead_letters ;;
    dead-letters) init; dead_letters ;;
    smoke) init; smoke ;;
    smoke-check) init; smoke_check "${2:-}" ;;
    all) package; bootstrap; init; ensure_secrets; apply; check_urls; dead_letters; smoke ;;
    *) die "unknown step $step (all, package, plan, apply, dead-letters, smoke, smoke-check)" ;;
  esac
}

# Sourcing the script (tests) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
