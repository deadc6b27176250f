# -- where -------------------------------------------------------------------------------------------

variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions, buckets, trigger and scheduler job. The input bucket is regional in this region because an Eventarc Cloud Storage trigger must be in the bucket's location."
  type        = string
  default     = "europe-west1"
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region such as europe-west1, or a multi-region such as eur3 / nam5). Defaults to var.region. Cannot be changed after creation."
  type        = string
  default     = null
}

variable "name_prefix" {
  description = "Prefix of every resource name (functions, topics, service accounts, scheduler job). Lower case letters, digits and hyphens; short, because service account ids are limited to 30 characters (the longest, <prefix>-poll-worker-trigger, leaves 10)."
  type        = string
  default     = "emb"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,9}$", var.name_prefix))
    error_message = "name_prefix: 2-10 characters, lower case letters, digits and hyphens, starting with a letter (service account ids are at most 30 characters)."
  }
}

variable "labels" {
  description = "Labels on every resource that takes labels (provider default_labels)."
  type        = map(string)
  default = {
    app = "gemini-batch-embeddings"
  }
}

# -- buckets -----------------------------------------------------------------------------------------

variable "input_bucket_name" {
  description = "Name of the input bucket (files to embed). Default: <project_id>-<name_prefix>-input."
  type        = string
  default     = null
}

variable "output_bucket_name" {
  description = "Name of the output bucket (embeddings, manifests, staging). Default: <project_id>-<name_prefix>-output."
  type        = string
  default     = null
}

variable "source_bucket_name" {
  description = "Name of the bucket holding the functions' source zips. Default: <project_id>-<name_prefix>-sources."
  type        = string
  default     = null
}

variable "input_prefix" {
  description = "Only objects under this prefix of the input bucket become jobs (INPUT_PREFIX)."
  type        = string
  default     = "incoming/"
}

variable "output_prefix" {
  description = "Prefix of everything the pipeline writes in the output bucket (OUTPUT_PREFIX)."
  type        = string
  default     = "embeddings/"
}

variable "input_versioning" {
  description = "Keep noncurrent versions of input files. Off by default: each upload is its own generation and job anyway, and the pipeline reads the generation named in the event; turn it on to recover overwritten or deleted inputs."
  type        = bool
  default     = false
}

variable "noncurrent_version_retention_days" {
  description = "Days a noncurrent object version is kept (input bucket when versioned, and the source bucket)."
  type        = number
  default     = 30
}

variable "input_retention_days" {
  description = "Delete input files this many days after upload (0 = keep them forever)."
  type        = number
  default     = 0
}

variable "staging_cleanup_days" {
  description = "Safety net: delete staging objects (<output_prefix>_staging/...) older than this. The pipeline deletes its staging when a job ends; this only catches leftovers of jobs that never ended."
  type        = number
  default     = 7
}

variable "force_destroy_buckets" {
  description = "Let `terraform destroy` delete non-empty buckets. Keep false outside throwaway test projects."
  type        = bool
  default     = false
}

# -- Firestore ---------------------------------------------------------------------------------------

variable "create_firestore_database" {
  description = "Create the project's (default) Firestore database (native mode). Set false when it already exists (a project has one (default) database; the functions use it)."
  type        = bool
  default     = true
}

variable "firestore_delete_protection" {
  description = "Delete protection on the Firestore database."
  type        = bool
  default     = true
}

variable "jobs_collection" {
  description = "Firestore collection of the jobs (JOBS_COLLECTION); each job has a <jobs_collection>_shards subcollection."
  type        = string
  default     = "embedding_jobs"
}

variable "cache_collection" {
  description = "Firestore collection of the embeddings cache (CACHE_COLLECTION): one document per content key, with a TTL on expire_at."
  type        = string
  default     = "embedding_cache"
}

variable "cache_ttl_days" {
  description = "Days a cache entry lives after its last write (CACHE_TTL_DAYS)."
  type        = number
  default     = 90
}

variable "ledgers_collection" {
  description = "Firestore collection of the token ledgers, one document per provider and model (LEDGERS_COLLECTION)."
  type        = string
  default     = "embedding_ledgers"
}

# -- functions ---------------------------------------------------------------------------------------

variable "functions_source_dir" {
  description = "Folder with the zips built by `make package` (<name>.zip), relative to this module or absolute."
  type        = string
  default     = "../../build/functions"
}

variable "runtime" {
  description = "Cloud Functions runtime. Must match the Python the requirements were pinned for: infra/package.py packages only under that Python (python311 = CPython 3.11)."
  type        = string
  default     = "python311"

  validation {
    condition     = can(regex("^python3[0-9]+$", var.runtime))
    error_message = "runtime: a Python runtime such as python311 or python312."
  }
}

variable "function_sizing" {
  description = "Overrides of the functions' sizing, per function and attribute (defaults: pipeline.tf, local.function_table[*].sizing; reasons: infra/README.md, Sizing), e.g. { stage = { max_instances = 40 } }. Event-driven functions may not exceed 540 s."
  type = map(object({
    memory          = optional(string)
    cpu             = optional(string)
    timeout_seconds = optional(number)
    max_instances   = optional(number)
    concurrency     = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.function_sizing) : contains(["submit", "stage", "poller", "poll_worker", "complete", "status", "webhook"], name)])
    error_message = "function_sizing: keys are function names (submit, stage, poller, poll_worker, complete, status, webhook)."
  }
}

variable "log_level" {
  description = "LOG_LEVEL of the functions."
  type        = string
  default     = "INFO"
}

variable "extra_env" {
  description = "More settings for every function (any shared/config.py field, upper case), e.g. { MAX_REQUESTS_PER_BATCH = \"20000\" }. Never put secrets here: they would be stored in state and shown in the console."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.extra_env), ["GEMINI_API_KEY", "WEBHOOK_SIGNING_SECRET", "POLLER_TOKEN", "POLLER_AUDIENCE", "POLLER_INVOKER_EMAIL"])) == 0
    error_message = "extra_env must not set GEMINI_API_KEY, WEBHOOK_SIGNING_SECRET or POLLER_TOKEN (secrets) nor the auth settings Terraform derives."
  }
}

variable "status_ingress" {
  description = "Ingress of the status API. ALLOW_ALL lets operators reach it from their machines (IAM and the OIDC check still apply); ALLOW_INTERNAL_AND_GCLB once it sits behind a load balancer (IAP); ALLOW_INTERNAL_ONLY from the VPC only."
  type        = string
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.status_ingress)
    error_message = "status_ingress: ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

# -- who may call the HTTP functions ------------------------------------------------------------------

variable "operators_group" {
  description = "IAM member allowed to act as the operator service account (mint its ID tokens) to call the status API, e.g. \"group:embeddings-ops@example.com\". Empty: nobody until granted."
  type        = string
  default     = ""
}

variable "status_invoker_service_accounts" {
  description = "More service account emails allowed to call the status API (e.g. a CI identity for smoke tests). Each gets roles/run.invoker on it and is added to its allow-list."
  type        = list(string)
  default     = []
}

# -- the poller's schedule ---------------------------------------------------------------------------

variable "poll_schedule" {
  description = "Cron schedule of the poller tick."
  type        = string
  default     = "* * * * *"
}

# -- Pub/Sub -----------------------------------------------------------------------------------------

variable "dead_letter_max_delivery_attempts" {
  description = "Deliveries before a message of the example events subscription goes to its dead-letter topic (5-100). The functions' triggers have their own, per function, in pipeline.tf (max_delivery_attempts)."
  type        = number
  default     = 10

  validation {
    condition     = var.dead_letter_max_delivery_attempts >= 5 && var.dead_letter_max_delivery_attempts <= 100
    error_message = "Pub/Sub allows 5 to 100 delivery attempts."
  }
}

variable "create_example_events_subscription" {
  description = "Create an example pull subscription on the public events topic (retry policy + dead letter), for a downstream consumer to copy or use."
  type        = bool
  default     = true
}

variable "alert_notification_channels" {
  description = "Monitoring notification channels (ids: projects/P/notificationChannels/N) told when a dead-letter subscription holds messages. Empty: the incident is only in the console."
  type        = list(string)
  default     = []
}

variable "iam_propagation_wait" {
  description = "How long the first apply waits after enabling the APIs and granting the service agents' roles before it creates triggers and functions (IAM changes take effect within minutes)."
  type        = string
  default     = "120s"
}

variable "grant_pubsub_token_creator" {
  description = "Only for projects whose Pub/Sub service agent was created on or before 8 April 2021: let it mint OIDC tokens for the trigger service accounts (push to authenticated functions)."
  type        = bool
  default     = false
}

# -- the Gemini API key ------------------------------------------------------------------------------

variable "gemini_secret_id" {
  description = "Secret Manager secret holding the Gemini API key. Terraform creates the container only; add the value with `gcloud secrets versions add` (infra/README.md), so it never enters the state."
  type        = string
  default     = "gemini-api-key"
}

variable "gemini_secret_version" {
  description = "Secret version the functions read at instance start: \"latest\" or a version number (pin a number to roll keys deliberately)."
  type        = string
  default     = "latest"
}

# -- the embedding provider ----------------------------------------------------------------------------

variable "embedding_provider" {
  description = "Which service embeds (PROVIDER): \"gemini\", the Gemini API's Batch Mode with an API key from Secret Manager, or \"vertex\", Vertex AI batch prediction called with the functions' own service accounts (no API key; vertex.tf, infra/README.md \"Vertex AI\"). Named so because Terraform reserves `provider`."
  type        = string
  default     = "gemini"

  validation {
    condition     = contains(["gemini", "vertex"], var.embedding_provider)
    error_message = "embedding_provider: \"gemini\" or \"vertex\"."
  }
}

variable "vertex_location" {
  description = "Vertex AI location of gemini-embedding-001's batch jobs (VERTEX_LOCATION): one of the regions that serve it in batch. Default: var.region. gemini-embedding-2 runs in that region's multi-region (eu, us) unless extra_env sets VERTEX_MODEL_LOCATIONS."
  type        = string
  default     = null

  validation {
    condition     = var.vertex_location == null || contains(["us-central1", "us-east1", "us-east4", "us-west1", "us-west4", "europe-west1", "europe-west4"], coalesce(var.vertex_location, "-"))
    error_message = "vertex_location: a region serving gemini-embedding-001 in batch: us-central1, us-east1, us-east4, us-west1, us-west4, europe-west1 or europe-west4."
  }
}

# -- the Gemini webhook (push instead of waiting for the next poll) ------------------------------------

variable "enable_webhook" {
  description = "Deploy the public webhook function. Turn on once the webhook is registered at the Gemini API and its signing secret is stored (infra/README.md, Webhook): without the secret the function cannot deploy, and a public endpoint should not exist before it can verify anything. The poller works either way."
  type        = bool
  default     = false
}

variable "webhook_secret_id" {
  description = "Secret Manager secret holding the webhook's Standard Webhooks signing secret (WEBHOOK_SIGNING_SECRET). Terraform creates the container only."
  type        = string
  default     = "gemini-webhook-signing-secret"
}

variable "webhook_secret_version" {
  description = "Version of the signing secret the webhook reads at instance start (\"latest\" or a number)."
  type        = string
  default     = "latest"
}

# -- build -------------------------------------------------------------------------------------------

variable "keep_image_versions" {
  description = "Function images kept per package in the Artifact Registry repository (older ones are deleted)."
  type        = number
  default     = 5
}
