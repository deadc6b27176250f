# Identities: one service account per function (what it may touch) and one per caller (who may invoke
# what), so each grant names one purpose. The accounts and every function's grant are data in pipeline.tf;
# infra/README.md has the table with the reasons. Grants are on the narrowest resource that exists: buckets
# (storage.tf), topics (pubsub.tf), secrets (secrets.tf), the Cloud Run services (functions.tf). Only the
# project-level ones are here.

resource "google_service_account" "sa" {
  for_each = local.service_accounts

  account_id   = "${local.prefix}-${replace(each.key, "_", "-")}"
  display_name = "${local.prefix} ${each.key}"
  description  = each.value

  lifecycle {
    precondition {
      condition     = length("${local.prefix}-${replace(each.key, "_", "-")}") <= 30
      error_message = "Service account ids are at most 30 characters: shorten var.name_prefix."
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "roles" {
  for_each = local.project_grants

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
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
# identities' OIDC tokens to push to authenticated functions. Granted on the trigger accounts only.
resource "google_service_account_iam_member" "pubsub_agent_mints_trigger_tokens" {
  for_each = var.grant_pubsub_token_creator ? toset([for name in keys(local.event_functions) : "${name}_trigger"]) : toset([])

  service_account_id = google_service_account.sa[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# -- operators ------------------------------------------------------------------------------------------

# The status API accepts a Google-signed ID token whose email is on its allow-list (shared/auth.py), so
# people call it *as the operator service account*. `gcloud auth print-identity-token
# --impersonate-service-account` and impersonated ADC first mint an access token of that account
# (iam.serviceAccounts.getAccessToken), then its ID token: roles/iam.serviceAccountTokenCreator carries
# both (roles/iam.serviceAccountOpenIdTokenCreator alone fails at the first step). Granted on this one
# account only, to var.operators_group.
resource "google_service_account_iam_member" "operators_impersonate" {
  count = var.operators_group == "" ? 0 : 1

  service_account_id = google_service_account.sa["operator"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = var.operators_group
}
