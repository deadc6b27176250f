# The embeddings pipeline on Google Cloud. Files are split by concern:
#   pipeline.tf   the pipeline as data: functions, topics, secrets and every grant (pure values, tested offline)
#   main.tf       names, project data, APIs, service agents and the wait for IAM to propagate
#   storage.tf    input, output and source buckets (+ bucket-level IAM)
#   firestore.tf  the (default) database, composite indexes and indexing exemptions
#   pubsub.tf     pipeline topics, dead-letter topics, subscriptions (+ topic-level IAM)
#   secrets.tf    the Gemini API key's and the webhook signing secret's containers
#   iam.tf        one service account per function and per caller, project-level roles, operators
#   functions.tf  the Cloud Functions (2nd gen) and who may invoke them
#   scheduler.tf  the poller's tick
#   monitoring.tf the alert on dead letters

data "google_project" "this" {
  project_id = var.project_id
}

# The Cloud Storage service agent publishes the bucket's notifications for Eventarc.
data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.enabled]
}

locals {
  prefix         = var.name_prefix
  project_number = data.google_project.this.number

  input_bucket  = coalesce(var.input_bucket_name, "${var.project_id}-${local.prefix}-input")
  output_bucket = coalesce(var.output_bucket_name, "${var.project_id}-${local.prefix}-output")
  source_bucket = coalesce(var.source_bucket_name, "${var.project_id}-${local.prefix}-sources")

  # Cloud Run service name = function name = <prefix>-<name with _ as ->.
  service_names = { for name in keys(local.functions) : name => "${local.prefix}-${replace(name, "_", "-")}" }

  # The poller's audience is its own URL, but a function cannot reference its own `service_config.uri`
  # (a cycle). Cloud Run gives every service a deterministic URL, https://SERVICE-PROJECT_NUMBER.REGION.run.app,
  # known before the service exists: POLLER_AUDIENCE, the scheduler's target and its OIDC audience are all
  # derived from it here, so they agree by construction. (A precondition in functions.tf checks the
  # 63-character limit above which Cloud Run assigns no deterministic URL.)
  urls = { for name, service in local.service_names : name => "https://${service}-${local.project_number}.${var.region}.run.app" }

  pubsub_agent = google_project_service_identity.agents["pubsub"].member
  gcs_agent    = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"

  source_dir = abspath(startswith(var.functions_source_dir, "/") ? var.functions_source_dir : "${path.module}/${var.functions_source_dir}")
}

# -- APIs ----------------------------------------------------------------------------------------------
# deploy.sh enables serviceusage, cloudresourcemanager, iam and storage with gcloud first: Terraform needs
# them to read the project and to enable the rest. Nothing is disabled on destroy (other workloads may use them).

resource "google_project_service" "enabled" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # operators mint the operator account's ID tokens (impersonation)
    "logging.googleapis.com",
    "monitoring.googleapis.com", # the dead-letter alert
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# -- service agents, and the wait for IAM ---------------------------------------------------------------
# A fresh project races IAM propagation on the first apply: the APIs, the service agents and their grants
# are made in the same apply as the Cloud Storage trigger, whose creation then fails with "Permission
# denied while using the Eventarc Service Agent" (terraform-provider-google #25294, #14584). So the agents
# are created explicitly (google_project_service_identity, google-beta only), granted their roles, and
# everything that uses them waits var.iam_propagation_wait after that (time_sleep, as the
# terraform-google-modules do). The Cloud Storage agent is created by its data source (main.tf, top).

resource "google_project_service_identity" "agents" {
  provider = google-beta
  for_each = toset(["pubsub", "eventarc"])

  project = var.project_id
  service = "${each.key}.googleapis.com"

  depends_on = [google_project_service.enabled]
}

# Granted by Google when the API is enabled, but asynchronously: granted here too, so the wait below covers it.
resource "google_project_iam_member" "eventarc_agent" {
  #checkov:skip=CKV_GCP_49:The Eventarc service agent's own predefined role, on Google's own agent: exactly what Google grants when the API is enabled (it mints the trigger identities' tokens). Granted here only so the first apply can wait for it.
  project = var.project_id
  role    = "roles/eventarc.serviceAgent"
  member  = google_project_service_identity.agents["eventarc"].member
}

resource "time_sleep" "iam_propagation" {
  create_duration = var.iam_propagation_wait

  # A new agent or grant waits again; an unchanged configuration does not.
  triggers = {
    apis   = join(",", sort([for api in google_project_service.enabled : api.service]))
    agents = join(",", [local.pubsub_agent, local.gcs_agent, google_project_iam_member.eventarc_agent.member])
    grants = join(",", sort(concat(keys(local.project_grants), keys(local.bucket_grants), keys(local.topic_publishers), keys(local.secret_readers))))
  }

  depends_on = [
    google_project_service.enabled,
    google_project_iam_member.eventarc_agent,
    google_project_iam_member.gcs_agent_publishes,
    google_project_iam_member.roles,
    google_storage_bucket_iam_member.grants,
    google_pubsub_topic_iam_member.publishers,
    google_pubsub_topic_iam_member.dead_letter_publisher,
    google_secret_manager_secret_iam_member.readers,
  ]
}
