# The four functions (Cloud Functions 2nd gen = Cloud Run services built from source by Cloud Build).
#
# Ingress
#   submit, complete  internal only: reached by Eventarc and Pub/Sub, which count as internal traffic in
#                     the same project.
#   poller            internal only: reached by Cloud Scheduler, also internal in the same project. Run a
#                     tick by hand with `gcloud scheduler jobs run`.
#   status            var.status_ingress (ALLOW_ALL by default: operators call it from their machines; there
#                     is no load balancer to put it behind). Never public: no allUsers binding, IAM
#                     roles/run.invoker for named identities only, and the code verifies the Google-signed
#                     ID token's audience and email again (shared/auth.py).
#
# Sizing (infra/README.md explains the numbers): var.function_sizing.

locals {
  common_env = merge(var.extra_env, {
    GOOGLE_CLOUD_PROJECT = var.project_id
    INPUT_BUCKET         = google_storage_bucket.input.name
    INPUT_PREFIX         = var.input_prefix
    OUTPUT_BUCKET        = google_storage_bucket.output.name
    OUTPUT_PREFIX        = var.output_prefix
    JOBS_COLLECTION      = var.jobs_collection
    EVENTS_TOPIC         = google_pubsub_topic.events.name
    COMPLETE_TOPIC       = google_pubsub_topic.complete.name
    LOG_LEVEL            = var.log_level
  })

  status_callers = concat([google_service_account.sa["operator"].email], var.status_invoker_service_accounts)

  function_env = {
    submit   = local.common_env
    complete = local.common_env
    # Each HTTP function verifies tokens minted for its own deterministic URL (main.tf: local.urls).
    poller = merge(local.common_env, {
      POLLER_AUDIENCE      = local.urls["poller"]
      POLLER_INVOKER_EMAIL = google_service_account.sa["scheduler"].email
    })
    status = merge(local.common_env, {
      POLLER_AUDIENCE      = local.urls["status"]
      POLLER_INVOKER_EMAIL = join(",", local.status_callers)
    })
  }

  ingress = {
    submit   = "ALLOW_INTERNAL_ONLY"
    complete = "ALLOW_INTERNAL_ONLY"
    poller   = "ALLOW_INTERNAL_ONLY"
    status   = var.status_ingress
  }

  # Event-driven functions, retried on failure (RETRY_POLICY_RETRY): the code raises only for what a retry
  # can fix and acknowledges poison events. Dead letters: see pubsub.tf. HTTP functions have no trigger.
  triggers = {
    submit = [{
      event_type   = "google.cloud.storage.object.v1.finalized"
      pubsub_topic = null
      filters      = [{ attribute = "bucket", value = google_storage_bucket.input.name }]
    }]
    complete = [{
      event_type   = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic = google_pubsub_topic.complete.id
      filters      = []
    }]
    poller = []
    status = []
  }

  descriptions = {
    submit   = "Input file finalized -> a tracked embedding job and its Gemini batches"
    complete = "Finished batch job -> normalised embeddings, manifest and one completion event"
    poller   = "Scheduler tick -> every due job moved one step"
    status   = "Jobs API: list, get, cancel"
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

resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.sa["build"].email}"
}

resource "google_cloudfunctions2_function" "fn" {
  #checkov:skip=CKV_GCP_124:Fails for status only (submit, complete and poller are ALLOW_INTERNAL_ONLY): operators call the jobs API from their machines and there is no load balancer to front it. It is not public: roles/run.invoker for named identities only (no allUsers) and shared/auth.py re-verifies the ID token's audience and email. var.status_ingress tightens it once an LB/IAP exists.
  for_each = local.function_names

  name        = local.service_names[each.key]
  location    = var.region
  description = local.descriptions[each.key]

  build_config {
    runtime           = var.runtime
    entry_point       = each.key # the decorated function in main.py has the function's name
    service_account   = google_service_account.sa["build"].id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source[each.key].name
      }
    }
  }

  service_config {
    available_memory                 = var.function_sizing[each.key].memory
    available_cpu                    = var.function_sizing[each.key].cpu
    timeout_seconds                  = var.function_sizing[each.key].timeout_seconds
    min_instance_count               = 0 # scale to zero: idle costs nothing
    max_instance_count               = var.function_sizing[each.key].max_instances
    max_instance_request_concurrency = var.function_sizing[each.key].concurrency
    ingress_settings                 = local.ingress[each.key]
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.sa[each.key].email
    environment_variables            = local.function_env[each.key]

    secret_environment_variables {
      key        = "GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id
      version    = var.gemini_secret_version
    }
  }

  dynamic "event_trigger" {
    for_each = local.triggers[each.key]
    content {
      trigger_region        = var.region # a Cloud Storage trigger must be in the bucket's location
      event_type            = event_trigger.value.event_type
      pubsub_topic          = event_trigger.value.pubsub_topic
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.sa["${each.key}-trigger"].email

      dynamic "event_filters" {
        for_each = event_trigger.value.filters
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
  }

  depends_on = [
    google_project_service.enabled,
    google_secret_manager_secret_iam_member.gemini_api_key_readers, # the secret is resolved at deployment
    google_project_iam_member.roles,                                # eventReceiver, Firestore, build logs
    google_project_iam_member.gcs_agent_publishes,                  # needed to create the storage trigger
    google_project_iam_member.build_reads_gcf_sources,
    google_artifact_registry_repository_iam_member.build_pushes_images,
    google_storage_bucket_iam_member.grants,
  ]
}

# -- who may invoke each function (Cloud Run IAM on the service, never allUsers) --------------------------

locals {
  invokers = merge(
    {
      submit_trigger   = { function = "submit", email = google_service_account.sa["submit-trigger"].email }
      complete_trigger = { function = "complete", email = google_service_account.sa["complete-trigger"].email }
      scheduler        = { function = "poller", email = google_service_account.sa["scheduler"].email }
      operator         = { function = "status", email = google_service_account.sa["operator"].email }
    },
    { for email in var.status_invoker_service_accounts : "status_${email}" => { function = "status", email = email } },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = local.invokers

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.value.function].name # the service has the function's name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${each.value.email}"
}
