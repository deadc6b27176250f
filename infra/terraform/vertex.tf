# Vertex AI batch prediction as the embedding provider (var.embedding_provider = "vertex"). Nothing here exists
# under "gemini". What Vertex AI needs, and who gets what (the functions' grants are rows of pipeline.tf):
#
#   API            aiplatform.googleapis.com
#   functions      roles/aiplatform.user for the functions that call the provider (pipeline.tf: vertex_callers),
#                  through the table (project_grants), and objectUser under vertex_prefix for those without
#                  bucket-level access to the output bucket (below). No API key: no Gemini secret is created
#                  and no function reads one (pipeline.tf: provider_secrets).
#   service agent  service-PROJECT_NUMBER@gcp-sa-aiplatform.iam.gserviceaccount.com reads and writes the
#                  objects of the jobs: it reads the inputs under <vertex_prefix>inputs/ and writes the outputs
#                  under <vertex_prefix>outputs/, each granted on the output bucket with an IAM condition on the
#                  object name (and on the list prefix, since list is a bucket-level call), never the whole bucket.
#   layout         inputs and outputs live under <output_prefix>_staging/_vertex/, so storage.tf's staging
#                  lifecycle rule (var.staging_cleanup_days, 7 by default: longer than a job's 72 h queue plus
#                  24 h run) deletes what a job that never ended left behind.
#
# The functions read PROVIDER and VERTEX_* from local.provider_env (functions.tf merges it into their environment).

locals {
  vertex_location = coalesce(var.vertex_location, var.region)

  vertex_inputs  = "${local.vertex_prefix}inputs/"
  vertex_outputs = "${local.vertex_prefix}outputs/"

  provider_env = merge({ PROVIDER = var.embedding_provider }, local.vertex ? {
    VERTEX_PROJECT        = var.project_id
    VERTEX_LOCATION       = local.vertex_location
    VERTEX_STAGING_PREFIX = "gs://${local.output_bucket}/${local.vertex_inputs}"
    VERTEX_OUTPUT_PREFIX  = "gs://${local.output_bucket}/${local.vertex_outputs}"
  } : {})

  # The service agent's object access, by prefix of the output bucket (CEL: the object's resource name for
  # get/create/delete, the request's list prefix for list).
  vertex_agent_grants = local.vertex ? {
    reads_inputs   = { role = "roles/storage.objectViewer", prefix = local.vertex_inputs, why = "reads the batch inputs" }
    writes_outputs = { role = "roles/storage.objectUser", prefix = local.vertex_outputs, why = "writes the batch outputs" }
  } : {}
}

resource "google_project_service" "aiplatform" {
  count = local.vertex ? 1 : 0

  project            = var.project_id
  service            = "aiplatform.googleapis.com"
  disable_on_destroy = false

  lifecycle {
    precondition {
      condition     = contains(["us-central1", "us-east1", "us-east4", "us-west1", "us-west4", "europe-west1", "europe-west4"], local.vertex_location)
      error_message = "Vertex AI serves gemini-embedding-001 in batch in us-central1, us-east1, us-east4, us-west1, us-west4, europe-west1 and europe-west4 only: set var.vertex_location to one of them."
    }
  }
}

# Created explicitly (as main.tf does for Pub/Sub and Eventarc): the agent must exist before it is granted anything.
resource "google_project_service_identity" "aiplatform" {
  provider = google-beta
  count    = local.vertex ? 1 : 0

  project = var.project_id
  service = "aiplatform.googleapis.com"

  depends_on = [google_project_service.aiplatform]
}

resource "google_storage_bucket_iam_member" "vertex_agent" {
  for_each = local.vertex_agent_grants

  bucket = google_storage_bucket.output.name
  role   = each.value.role
  member = google_project_service_identity.aiplatform[0].member

  condition {
    title       = "vertex-${replace(each.key, "_", "-")}"
    description = "Vertex AI's service agent ${each.value.why}, under ${each.value.prefix} only"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.output.name}/objects/${each.value.prefix}\") || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${each.value.prefix}\")"
  }
}

# The functions that call Vertex AI without bucket-level access to the output bucket (pipeline.tf:
# vertex_prefix_grants): objectUser under the Vertex prefix only.
resource "google_storage_bucket_iam_member" "vertex_prefix" {
  for_each = local.vertex_prefix_grants

  bucket = local.buckets[each.value.bucket]
  role   = each.value.role
  member = "serviceAccount:${google_service_account.sa[each.value.sa].email}"

  condition {
    title       = "vertex-batches"
    description = "Vertex AI batch inputs and outputs only (${local.vertex_prefix})"
    expression  = "resource.name.startsWith(\"projects/_/buckets/${local.buckets[each.value.bucket]}/objects/${local.vertex_prefix}\") || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${local.vertex_prefix}\")"
  }
}

output "vertex_service_agent" {
  description = "Vertex AI's service agent (reads batch inputs, writes batch outputs), when embedding_provider is vertex."
  value       = local.vertex ? google_project_service_identity.aiplatform[0].email : null
}
