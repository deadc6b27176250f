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
  description = "Prefix of every resource name (functions, topics, service accounts, scheduler job). Lower case letters, digits and hyphens; short, because service account ids are limited to 30 characters."
  type        = string
  default     = "emb"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,11}$", var.name_prefix))
    error_message = "name_prefix: 2-12 characters, lower case letters, digits and hyphens, starting with a letter."
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
  description = "Firestore collection of the jobs (JOBS_COLLECTION)."
  type        = string
  default     = "embedding_jobs"
}

# -- functions ---------------------------------------------------------------------------------------

variable "functions_source_dir" {
  description = "Folder with the zips built by `make package` (<name>.zip), relative to this module or absolute."
  type        = string
  default     = "../../build/functions"
}

variable "runtime" {
  description = "Cloud Functions runtime. Must match the Python the requirements were pinned for (infra/package.py --python-version)."
  type        = string
  default     = "python311"
}

variable "function_sizing" {
  description = "Per function: memory, vCPU, timeout (s), max instances, requests per instance. See infra/README.md (Sizing). Event-driven functions (submit, complete) may not exceed 540 s."
  type = map(object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    max_instances   = number
    concurrency     = number
  }))
  default = {
    # Streams multi-GB inputs in chunks (bounded memory) and writes request files; one file per instance.
    submit = { memory = "1Gi", cpu = "1", timeout_seconds = 540, max_instances = 10, concurrency = 1 }
    # Normalises up to 100k x 768 float32 (~300 MB) in blocks, writes JSONL + Parquet; one job per instance.
    complete = { memory = "1Gi", cpu = "1", timeout_seconds = 540, max_instances = 10, concurrency = 1 }
    # One tick a minute, a 50 s work budget (POLL_TIME_BUDGET_SECONDS); two instances cover an overlap.
    poller = { memory = "512Mi", cpu = "1", timeout_seconds = 180, max_instances = 2, concurrency = 1 }
    # Small JSON API for operators; I/O bound, so several requests share an instance.
    status = { memory = "512Mi", cpu = "1", timeout_seconds = 60, max_instances = 3, concurrency = 8 }
  }

  validation {
    condition     = alltrue([for name in ["submit", "complete", "poller", "status"] : contains(keys(var.function_sizing), name)])
    error_message = "function_sizing needs an entry for each of submit, complete, poller and status."
  }

  validation {
    condition = alltrue([
      for name, size in var.function_sizing :
      size.timeout_seconds >= 1 && size.timeout_seconds <= (contains(["submit", "complete"], name) ? 540 : 3600)
    ])
    error_message = "Timeouts: event-driven functions (submit, complete) at most 540 s; HTTP functions at most 3600 s."
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
    condition     = length(setintersection(keys(var.extra_env), ["GEMINI_API_KEY", "POLLER_TOKEN", "POLLER_AUDIENCE", "POLLER_INVOKER_EMAIL"])) == 0
    error_message = "extra_env must not set GEMINI_API_KEY or POLLER_TOKEN (secrets) nor the auth settings Terraform derives."
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
  description = "Deliveries of a message before it goes to its dead-letter topic (5-100)."
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

# -- build -------------------------------------------------------------------------------------------

variable "keep_image_versions" {
  description = "Function images kept per package in the Artifact Registry repository (older ones are deleted)."
  type        = number
  default     = 5
}
