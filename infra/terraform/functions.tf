# The Cloud Functions (2nd gen = Cloud Run services built from source by Cloud Build), one per entry of
# pipeline.tf's function table.
#
# Ingress
#   event functions   internal only: reached by Eventarc and Pub/Sub, which count as internal traffic in the
#                     same project.
#   poller            internal only: reached by Cloud Scheduler, also internal in the same project. Run a
#                     tick by hand with `gcloud scheduler jobs run`.
#   status            var.status_ingress (ALLOW_ALL by default: operators call it from their machines; there
#                     is no load balancer to put it behind). Never public: roles/run.invoker for named
#                     identities only, and the code verifies the Google-signed ID token's audience and email
#                     again (shared/auth.py). Browsers reach it through `embedpipe dashboard` (infra/README.md).
#   webhook           ALLOW_ALL and public (allUsers may invoke): the Gemini API calls it with no Google
#                     identity. The function verifies the Standard Webhooks signature (HMAC with the signing
#                     secret from Secret Manager) and the timestamp before anything else, and can only ask for
#                     an early poll: the worst a forged call could do is cost one poll.
#
# Sizing: pipeline.tf (defaults) and var.function_sizing (overrides); infra/README.md explains the numbers.

locals {
  common_env = merge(var.extra_env, {
    GOOGLE_CLOUD_PROJECT = var.project_id
    INPUT_BUCKET         = google_storage_bucket.input.name
    INPUT_PREFIX         = var.input_prefix
    OUTPUT_BUCKET        = google_storage_bucket.output.name
    OUTPUT_PREFIX        = var.output_prefix
    JOBS_COLLECTION      = var.jobs_collection
    LEDGERS_COLLECTION   = var.ledgers_collection
    CACHE_COLLECTION     = var.cache_collection
    CACHE_TTL_DAYS       = tostring(var.cache_ttl_days)
    LOG_LEVEL            = var.log_level
    }, local.provider_env, {
    for key, topic in local.topics : topic.setting => google_pubsub_topic.pipeline[key].name
  })

  status_callers = concat([google_service_account.sa["operator"].email], var.status_invoker_service_accounts)

  # The HTTP functions that check a Google-signed ID token verify one minted for their own deterministic URL
  # (main.tf: local.urls), from the identities allowed to call them.
  token_callers = {
    scheduler = [google_service_account.sa["scheduler"].email]
    operators = local.status_callers
  }
  function_env = {
    for name, fn in local.functions : name => merge(local.common_env, try({
      POLLER_AUDIENCE      = local.urls[name]
      POLLER_INVOKER_EMAIL = join(",", local.token_callers[fn.caller]) # fails (so: nothing) for other callers
    }, {}))
  }

  ingress = { for name, fn in local.functions : name => (
    fn.caller == "public" ? "ALLOW_ALL" : fn.caller == "operators" ? var.status_ingress : "ALLOW_INTERNAL_ONLY"
  ) }

  trigger_events = {
    storage = {
      event_type   = "google.cloud.storage.object.v1.finalized"
      pubsub_topic = null
      filters      = [{ attribute = "bucket", value = google_storage_bucket.input.name }]
    }
    topic = {
      event_type   = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic = null # the function's topic, below
      filters      = []
    }
  }
}

# Function images: a repository of our own, so old images are cleaned up (the default gcf-artifacts
# repository keeps every build forever).
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption: the images hold this repository's public-source code and open-source dependencies, nothing confidential.
  location               = var.region
  repository_id          = "${local.prefix}-functions"
  format                 = "DOCKER"
  description            = "Images of the embeddings pipeline's Cloud Functions"
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.keep_image_versions
    }
  }

  cleanup_policies {
    id     = "delete-older-than-30-days"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.enabled]
}

# Google documents roles/artifactregistry.writer on the project for a custom build account; with
# build_config.docker_repository set, the builds push only here, so the grant is on this repository.
resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.sa["build"].email}"
}

resource "google_cloudfunctions2_function" "fn" {
  #checkov:skip=CKV_GCP_124:Fails for status and webhook only (every other function is ALLOW_INTERNAL_ONLY). status: operators call the jobs API from their machines and there is no load balancer to front it; it is not public (roles/run.invoker for named identities only, and shared/auth.py re-verifies the ID token's audience and email); var.status_ingress tightens it once an LB/IAP exists. webhook: the Gemini API calls it from the internet; it verifies a Standard Webhooks signature itself.
  for_each = local.functions

  name        = local.service_names[each.key]
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = var.runtime
    entry_point       = each.value.entry_point # the decorated function in functions/<source>/main.py
    service_account   = google_service_account.sa["build"].id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source[each.value.source].name
      }
    }
  }

  service_config {
    available_memory                 = local.sizing[each.key].memory
    available_cpu                    = local.sizing[each.key].cpu
    timeout_seconds                  = local.sizing[each.key].timeout_seconds
    min_instance_count               = 0 # scale to zero: idle costs nothing
    max_instance_count               = local.sizing[each.key].max_instances
    max_instance_request_concurrency = local.sizing[each.key].concurrency
    ingress_settings                 = local.ingress[each.key]
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.sa[each.key].email
    environment_variables            = local.function_env[each.key]

    dynamic "secret_environment_variables" {
      for_each = toset(each.value.secrets)
      content {
        key        = local.secrets[secret_environment_variables.key].setting
        project_id = var.project_id
        secret     = google_secret_manager_secret.secret[secret_environment_variables.key].secret_id
        version    = local.secrets[secret_environment_variables.key].version
      }
    }
  }

  dynamic "event_trigger" {
    for_each = each.value.trigger == null ? [] : [each.value.trigger == "storage" ? "storage" : "topic"]
    content {
      trigger_region        = var.region # a Cloud Storage trigger must be in the bucket's location
      event_type            = local.trigger_events[event_trigger.value].event_type
      pubsub_topic          = event_trigger.value == "topic" ? google_pubsub_topic.pipeline[each.value.trigger].id : null
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.sa["${each.key}_trigger"].email

      dynamic "event_filters" {
        for_each = local.trigger_events[event_trigger.value].filters
        content {
          attribute = event_filters.value.attribute
          value     = event_filters.value.value
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length("${local.service_names[each.key]}-${local.project_number}") <= 63
      error_message = "Cloud Run assigns no deterministic URL when SERVICE-PROJECT_NUMBER exceeds 63 characters, and POLLER_AUDIENCE is derived from it: shorten var.name_prefix."
    }
    precondition {
      condition     = local.sizing[each.key].timeout_seconds >= 1 && local.sizing[each.key].timeout_seconds <= (each.value.trigger == null ? 3600 : 540)
      error_message = "Timeouts: event-driven functions at most 540 s, HTTP functions at most 3600 s (function_sizing)."
    }
  }

  # Created only after the APIs, the service agents and every grant have had time to take effect.
  depends_on = [
    time_sleep.iam_propagation,
    google_artifact_registry_repository_iam_member.build_pushes_images,
  ]
}

# -- who may invoke each function (Cloud Run IAM on the service) ------------------------------------------

locals {
  invoker_members = merge(
    { for key, grant in local.invokers : key => { function = grant.function, member = "serviceAccount:${google_service_account.sa[grant.sa].email}" } },
    { for email in var.status_invoker_service_accounts : "status_${email}" => { function = "status", member = "serviceAccount:${email}" } },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.invoker_members

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.value.function].name # the service has the function's name
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The webhook is the one public function (pipeline.tf: caller = "public"): the Gemini API's deliveries carry
# no Google identity, so Cloud Run IAM cannot check them; the function authenticates each delivery by its
# Standard Webhooks signature instead (signing secret in Secret Manager, old timestamps refused).
resource "google_cloud_run_v2_service_iam_member" "public" {
  # (checkov 3.3.30 applies CKV_GCP_102, "not publicly accessible", to the v1 Cloud Run IAM resources only; the
  # waiver below states the reason for when it covers v2 too. The ingress waiver, CKV_GCP_124, is on the function.)
  #checkov:skip=CKV_GCP_102:The Gemini API's webhook deliveries carry no Google identity; the function verifies their Standard Webhooks signature with a secret from Secret Manager and can only request an early poll.
  for_each = local.public_functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
