# The Gemini API key. Terraform creates the secret (the container) and who may read it; the value is added
# out of band, so it is never in Terraform's state or plan output:
#
#   printf '%s' "$GEMINI_API_KEY" | gcloud secrets versions add gemini-api-key --data-file=- --project=PROJECT
#
# (infra/deploy.sh does exactly this on the first deployment when GEMINI_API_KEY is set.) The functions
# read it at instance start as the GEMINI_API_KEY environment variable (secret_environment_variables);
# shared/logging.py redacts it from every log line.

resource "google_secret_manager_secret" "gemini_api_key" {
  secret_id = var.gemini_secret_id

  replication {
    auto {}
  }

  depends_on = [google_project_service.enabled]
}

# Only the four runtime identities may read this one secret (no project-wide accessor role).
resource "google_secret_manager_secret_iam_member" "gemini_api_key_readers" {
  for_each = local.function_names

  secret_id = google_secret_manager_secret.gemini_api_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.sa[each.key].email}"
}
