# Identities: one service account per function (what it may touch) and one per caller (who may invoke
# what), so each grant names one purpose. infra/README.md has the table with the reasons.
# Grants are on the narrowest resource that exists: buckets (storage.tf), topics (pubsub.tf), the secret
# (secrets.tf), the Cloud Run services (functions.tf). Only these have no narrower scope:
#   roles/datastore.user          Firestore access is granted per project (per database with IAM conditions
#                                 at most; the project has one database, the (default) one).
#   roles/eventarc.eventReceiver  per project by design (Eventarc checks it on the trigger's identity).
#   roles/logging.logWriter       the build's logs.

locals {
  service_accounts = {
    submit             = "submit: Cloud Storage event -> job (reads input, writes staging, Firestore, Gemini)"
    complete           = "complete: finished batch -> embeddings (output bucket, Firestore, Gemini, events)"
    poller             = "poller: moves due jobs (Firestore, Gemini, complete/events topics, input/staging)"
    status             = "status: jobs API and cancel (Firestore, Gemini cancel, events, staging cleanup)"
    "submit-trigger"   = "Eventarc trigger identity: delivers input-bucket events to submit"
    "complete-trigger" = "Eventarc trigger identity: delivers complete-topic messages to complete"
    scheduler          = "Cloud Scheduler identity: calls the poller with an OIDC token"
    operator           = "Operators' identity for the status API (impersonated by the operators group)"
    build              = "Cloud Build identity that builds the functions' images"
  }

  project_roles = {
    submit_firestore   = { sa = "submit", role = "roles/datastore.user" }
    complete_firestore = { sa = "complete", role = "roles/datastore.user" }
    poller_firestore   = { sa = "poller", role = "roles/datastore.user" }
    status_firestore   = { sa = "status", role = "roles/datastore.user" }
    trigger_receiver   = { sa = "submit-trigger", role = "roles/eventarc.eventReceiver" } # not needed for Pub/Sub sources
    build_logs         = { sa = "build", role = "roles/logging.logWriter" }
  }
}

resource "google_service_account" "sa" {
  for_each = local.service_accounts

  account_id   = "${local.prefix}-${each.key}"
  display_name = "${local.prefix} ${each.key}"
  description  = each.value

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "roles" {
  for_each = local.project_roles

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
}

# The build reads the source that Cloud Functions copies into its own gcf-v2-sources-* bucket (created by
# the service on first deployment, so it cannot be granted on directly): project-level objectViewer,
# conditioned to those buckets only.
resource "google_project_iam_member" "build_reads_gcf_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.sa["build"].email}"

  condition {
    title       = "gcf-v2-sources buckets only"
    description = "Cloud Functions' copies of the function sources"
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-${local.project_number}-\")"
  }
}

# -- Google-managed service agents ----------------------------------------------------------------------

# Eventarc's Cloud Storage triggers: the Cloud Storage service agent publishes the bucket's notifications
# to the topic Eventarc creates, whose name is not known in advance -- hence project level (Google's
# documented requirement for direct Cloud Storage events).
resource "google_project_iam_member" "gcs_agent_publishes" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = local.gcs_agent
}

# Projects whose Pub/Sub service agent predates 8 April 2021: it must be allowed to mint the trigger
# identities' OIDC tokens to push to authenticated functions. Granted on those two accounts only.
resource "google_service_account_iam_member" "pubsub_agent_mints_trigger_tokens" {
  for_each = var.grant_pubsub_token_creator ? toset(["submit-trigger", "complete-trigger"]) : toset([])

  service_account_id = google_service_account.sa[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# -- operators ------------------------------------------------------------------------------------------

# The HTTP functions accept a Google-signed ID token whose email is on their allow-list (shared/auth.py),
# so humans call the status API as the operator service account: members of var.operators_group may mint
# its ID tokens (and nothing else: not access tokens, not keys).
resource "google_service_account_iam_member" "operators_mint_id_tokens" {
  count = var.operators_group == "" ? 0 : 1

  service_account_id = google_service_account.sa["operator"].name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = var.operators_group
}
