# Secrets (pipeline.tf: local.secrets). Terraform creates each secret (the container) and who may read it;
# the value is added out of band, so it is never in Terraform's state or plan output:
#
#   printf '%s' "$GEMINI_API_KEY" | gcloud secrets versions add gemini-api-key --data-file=- --project=PROJECT
#
# (infra/deploy.sh does exactly this on the first deployment when GEMINI_API_KEY is set; the webhook's
# signing secret comes from registering the webhook, infra/README.md.) The functions read a secret at
# instance start as the environment variable named by its `setting` (secret_environment_variables);
# shared/logging.py redacts it from every log line.

resource "google_secret_manager_secret" "secret" {
  for_each = local.secrets

  secret_id = each.value.secret_id

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# Only the functions that use a secret may read it (no project-wide accessor role): pipeline.tf, `secrets`
# of each function.
resource "google_secret_manager_secret_iam_member" "readers" {
  for_each = local.secret_readers

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
}
