#!/usr/bin/env bash
# Deploy the embeddings pipeline: package -> terraform apply -> dead letters -> smoke test.
# Cloud Build (cloudbuild.yaml) runs the same steps through this script, so a manual deploy and a CI
# deploy do the same thing.
#
#   PROJECT_ID=my-project infra/deploy.sh            # everything
#   infra/deploy.sh package|plan|apply|dead-letters|smoke
#
# Environment:
#   PROJECT_ID        project (default: gcloud's configured project)
#   REGION            region (default: europe-west1)
#   STATE_BUCKET      Terraform state bucket, created (versioned) if missing (default: <project>-tfstate)
#   STATE_PREFIX      state prefix in it (default: embeddings)
#   TF_VAR_FILE       a .tfvars file for more variables (see infra/terraform/terraform.tfvars.example)
#   GEMINI_API_KEY    first deployment only: stored as the secret's first version (never printed, never in state)
#   AUTO_APPROVE      1 to apply without asking (default 1 under CI=true, else 0)
#   SKIP_PACKAGE      1 to deploy the zips already in build/functions (Cloud Build packages in an earlier step)
#   SMOKE_TIMEOUT     seconds to wait for the smoke test's completion event (default 1800)
#   SMOKE_ALLOW_PENDING  1: a job still waiting for Gemini at the timeout passes with a warning (default 0)
#   SMOKE_IMPERSONATE service account to impersonate for the status API check (optional; see infra/README.md)
#   PYTHON, TERRAFORM, GCLOUD  the tools (defaults: .venv/bin/python or python3, terraform, gcloud);
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
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-1800}"
if [[ "${CI:-}" == "true" ]]; then AUTO_APPROVE="${AUTO_APPROVE:-1}"; else AUTO_APPROVE="${AUTO_APPROVE:-0}"; fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

[[ -n "$PROJECT_ID" ]] || die "set PROJECT_ID (or: gcloud config set project PROJECT)"
for tool in "$GCLOUD" "$TERRAFORM"; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see infra/README.md, prerequisites)"
done

# The -var arguments of every terraform plan and apply (the .tfvars path made absolute: terraform runs in TF_DIR).
TF_VARS=(-var "project_id=$PROJECT_ID" -var "region=$REGION")
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
  for name in submit complete poller status; do
    [[ -f "$ROOT/build/functions/$name.zip" ]] || die "build/functions/$name.zip is missing: run make package"
  done
}

ensure_secret() {
  # The functions cannot deploy without a readable version of the Gemini key. Terraform creates the secret
  # (container only); the value goes straight from the environment to Secret Manager.
  local secret_id="${GEMINI_SECRET_ID:-gemini-api-key}"
  if ! g secrets describe "$secret_id" >/dev/null 2>&1; then
    log "creating the secret $secret_id (container only)"
    tf apply -input=false -auto-approve "${TF_VARS[@]}" -target=google_secret_manager_secret.gemini_api_key
  fi
  if [[ -z "$(g secrets versions list "$secret_id" --filter='state=ENABLED' --limit=1 --format='value(name)')" ]]; then
    [[ -n "${GEMINI_API_KEY:-}" ]] || die "secret $secret_id has no enabled version. Add the key once:
  printf '%s' \"\$GEMINI_API_KEY\" | gcloud secrets versions add $secret_id --data-file=- --project $PROJECT_ID
or run this script with GEMINI_API_KEY set."
    log "adding the Gemini API key as the first version of $secret_id"
    printf '%s' "$GEMINI_API_KEY" | g secrets versions add "$secret_id" --data-file=- >/dev/null
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
  for fn in poller status; do
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
  # Eventarc owns the push subscriptions behind the submit and complete triggers, so Terraform cannot set
  # their dead-letter policy; Google's "Retry events" guide updates the trigger's subscription instead.
  # Idempotent: safe on every deployment.
  local agent attempts fn trigger sub dlq
  agent="$(tf_out pubsub_service_agent)"
  attempts="$(tf_out dead_letter_max_delivery_attempts)"
  for fn in submit complete; do
    trigger="$(g functions describe "$(tf_out "${fn}_function")" --gen2 --region "$REGION" \
      --format='value(eventTrigger.trigger)')"
    [[ -n "$trigger" ]] || die "$fn has no Eventarc trigger"
    sub="$(g eventarc triggers describe "${trigger##*/}" --location "$REGION" \
      --format='value(transport.pubsub.subscription)')"
    [[ -n "$sub" ]] || die "no Pub/Sub subscription behind $trigger"
    dlq="$(tf_out "${fn}_dead_letter_topic")"
    log "dead letters: ${sub##*/} -> ${dlq##*/} after $attempts attempts"
    # The Pub/Sub service agent acknowledges on the source subscription when it forwards a dead letter.
    g pubsub subscriptions add-iam-policy-binding "$sub" --member="serviceAccount:$agent" \
      --role=roles/pubsub.subscriber >/dev/null
    # 600 s ack deadline: no second delivery while a 540 s invocation is still running.
    g pubsub subscriptions update "$sub" --dead-letter-topic="$dlq" --max-delivery-attempts="$attempts" \
      --min-retry-delay=10s --max-retry-delay=600s --ack-deadline=600 --message-retention-duration=7d >/dev/null
  done
}

smoke() {
  # Upload a two-line file and wait for its completion event on a temporary, filtered subscription.
  local bucket prefix topic run object sub tmp deadline status generation job_id
  bucket="$(tf_out input_bucket)"; prefix="$(tf_out input_prefix)"; topic="$(tf_out events_topic)"
  run="smoke-$(date -u +%Y%m%d-%H%M%S)-$RANDOM"
  object="${prefix}smoke/${run}.jsonl"
  sub="${topic}-${run}"
  log "smoke test: gs://$bucket/$object"
  g pubsub subscriptions create "$sub" --topic "$topic" --filter="attributes.source_name = \"$object\"" \
    --ack-deadline=60 --message-retention-duration=1h --expiration-period=1d >/dev/null
  # shellcheck disable=SC2064  # expand now: the names are fixed
  trap "\"$GCLOUD\" --project \"$PROJECT_ID\" --quiet pubsub subscriptions delete \"$sub\" >/dev/null 2>&1 || true" EXIT
  tmp="$(mktemp)"
  printf '%s\n' '{"id": "smoke-1", "text": "The quick brown fox jumps over the lazy dog."}' \
    '{"id": "smoke-2", "text": "Embeddings pipeline smoke test."}' >"$tmp"
  g storage cp "$tmp" "gs://$bucket/$object" --content-type=application/jsonl >/dev/null
  rm -f "$tmp"
  deadline=$((SECONDS + SMOKE_TIMEOUT))
  while ((SECONDS < deadline)); do
    # The event's attributes carry its status and job id (shared/domain/events.py): no JSON parsing needed.
    status="$(g pubsub subscriptions pull "$sub" --auto-ack --limit=1 \
      --format='value(message.attributes.status,message.attributes.job_id)')"
    if [[ -n "$status" ]]; then
      log "completion event: $status"
      case "$status" in
        SUCCEEDED*) return 0 ;;
        *) die "smoke test: the job ended $status" ;;
      esac
    fi
    sleep "${SMOKE_POLL_SECONDS:-15}"
  done
  generation="$(g storage objects describe "gs://$bucket/$object" --format='value(generation)')"
  job_id="job-$(printf '%s\n%s\n%s' "$bucket" "$object" "$generation" | sha256sum | cut -c1-20)"
  if [[ -n "${SMOKE_IMPERSONATE:-}" ]]; then
    local token url
    url="$(tf_out status_url)"
    token="$("$GCLOUD" auth print-identity-token --impersonate-service-account="$SMOKE_IMPERSONATE" \
      --audiences="$url" --include-email 2>/dev/null || true)"
    if [[ -n "$token" ]]; then
      log "job $job_id according to the status API:"
      curl -fsS -H "Authorization: Bearer $token" "$url/jobs/$job_id" >&2 || true
      echo >&2
    fi
  fi
  if [[ "${SMOKE_ALLOW_PENDING:-0}" == "1" ]]; then
    printf 'deploy: WARNING: no completion event for job %s within %ss (Gemini batches may take longer); passing because SMOKE_ALLOW_PENDING=1\n' "$job_id" "$SMOKE_TIMEOUT" >&2
    return 0
  fi
  die "smoke test: no completion event for job $job_id within ${SMOKE_TIMEOUT}s"
}

main() {
  local step="${1:-all}"
  case "$step" in
    package) package ;;
    plan) package; bootstrap; init; plan ;;
    apply) package; bootstrap; init; ensure_secret; apply; check_urls; dead_letters ;;
    dead-letters) init; dead_letters ;;
    smoke) init; smoke ;;
    all) package; bootstrap; init; ensure_secret; apply; check_urls; dead_letters; smoke ;;
    *) die "unknown step $step (all, package, plan, apply, dead-letters, smoke)" ;;
  esac
}

main "$@"
