# The pipeline as data: every function, topic, secret and grant, in one place.
#
# Pure values: variables and other locals only, never a resource attribute. The resources in the other files
# are loops over these maps, and tests/unit/test_iam_graph.py evaluates this very file with
# `terraform console` (no provider, no network) to check who may do what.
#
# Adding a function is one entry in `function_table` (its zip is functions/<source>/ packaged by
# infra/package.py); adding a topic, one entry in `topics`; a Firestore index, one entry in firestore.tf's lists.

locals {
  # Topics of the pipeline (dead-letter topics are derived below). The function reads each name from `setting`.
  topics = {
    stage    = { setting = "STAGE_TOPIC", retention = "86400s", why = "submit, the poller and stage hand a claimed job to stage (staging, batch creation)" }
    poll     = { setting = "POLL_TOPIC", retention = "86400s", why = "the poller's tick fans due jobs out to poll_worker, one message each; the webhook asks for an early poll" }
    complete = { setting = "COMPLETE_TOPIC", retention = "86400s", why = "finished batches go to complete; complete queues its follow-ups there" }
    events   = { setting = "EVENTS_TOPIC", retention = "604800s", why = "public: one completion event per job (a new consumer can seek back a week)" }
  }

  # The embedding provider (var.embedding_provider; vertex.tf, infra/README.md "Vertex AI"). gemini: an API key
  # from Secret Manager. vertex: each function calls Vertex AI as its own identity (no key), and batch inputs
  # and outputs live in the output bucket under vertex_prefix, inside the staging lifecycle rule (storage.tf).
  vertex           = var.embedding_provider == "vertex"
  provider_secrets = local.vertex ? [] : ["gemini"]
  vertex_prefix    = "${var.output_prefix}_staging/_vertex/"

  # Secrets: Terraform creates the container and the readers; the value is added out of band (infra/README.md).
  # No API key under Vertex AI: nothing to create, nothing to read.
  secrets = merge(local.vertex ? {} : {
    gemini = { setting = "GEMINI_API_KEY", secret_id = var.gemini_secret_id, version = var.gemini_secret_version }
    }, {
    webhook = { setting = "WEBHOOK_SIGNING_SECRET", secret_id = var.webhook_secret_id, version = var.webhook_secret_version }
  })

  # One entry per function.
  #   source, entry_point  functions/<source>/main.py and the decorated function in it (one zip per source)
  #   trigger              "storage" (object finalized in the input bucket), a key of `topics`, or null (HTTP)
  #   caller               HTTP only: who may invoke it: "scheduler", "operators", or "public" (no IAM check)
  #   firestore            roles/datastore.user (jobs, their shards subcollection, ledgers)
  #   reads / writes       buckets ("input", "output"): roles/storage.objectViewer / roles/storage.objectUser
  #   publishes            keys of `topics`: roles/pubsub.publisher on each
  #   secrets              keys of `secrets`: roles/secretmanager.secretAccessor on each, and its env var
  #   max_delivery_attempts  event functions: deliveries before a message is dead-lettered (Pub/Sub: 5-100)
  #   sizing               defaults; var.function_sizing overrides any of it (infra/README.md, Sizing)
  function_table = {
    submit = {
      enabled     = true, source = "submit", entry_point = "submit", trigger = "storage", caller = null
      description = "Input object finalized -> a claimed job, staged for up to STAGE_BUDGET_SECONDS, its shards admitted"
      firestore   = true, reads = ["input"], writes = ["output"], publishes = ["stage", "complete", "poll", "events"], secrets = local.provider_secrets
      # A burst of uploads must not be dead-lettered: each 429 counts as a delivery attempt (infra/README.md).
      max_delivery_attempts = 100
      sizing                = { memory = "1Gi", cpu = "1", timeout_seconds = 540, max_instances = 100, concurrency = 1 }
    }
    stage = {
      enabled               = true, source = "submit", entry_point = "stage", trigger = "stage", caller = null
      description           = "The rest of a job's staging (or an upload the reconciler found) -> staged shards, admitted"
      firestore             = true, reads = ["input"], writes = ["output"], publishes = ["stage", "complete", "poll", "events"], secrets = local.provider_secrets
      max_delivery_attempts = 100
      sizing                = { memory = "1Gi", cpu = "1", timeout_seconds = 540, max_instances = 20, concurrency = 1 }
    }
    poller = {
      enabled     = true, source = "poller", entry_point = "poller", trigger = null, caller = "scheduler"
      description = "Scheduler tick -> due jobs fanned out to poll_worker; reconciles input objects without a job"
      # reads input: the reconciler lists the input bucket by time to find objects without a job.
      firestore             = true, reads = ["input"], writes = [], publishes = ["poll", "stage"], secrets = []
      max_delivery_attempts = null
      sizing                = { memory = "512Mi", cpu = "1", timeout_seconds = 180, max_instances = 2, concurrency = 1 }
    }
    poll_worker = {
      enabled               = true, source = "poller", entry_point = "poll_worker", trigger = "poll", caller = null
      description           = "Due shards and jobs -> batches polled, retried, created or handed to complete; jobs stopped or announced"
      firestore             = true, reads = [], writes = ["output"], publishes = ["complete", "stage", "poll", "events"], secrets = local.provider_secrets
      max_delivery_attempts = 100
      sizing                = { memory = "512Mi", cpu = "1", timeout_seconds = 300, max_instances = 20, concurrency = 1 }
    }
    complete = {
      enabled               = true, source = "complete", entry_point = "complete", trigger = "complete", caller = null
      description           = "Finished batches -> normalised embeddings, manifest, follow-ups and one completion event"
      firestore             = true, reads = [], writes = ["output"], publishes = ["complete", "poll", "events"], secrets = local.provider_secrets
      max_delivery_attempts = 100
      sizing                = { memory = "1Gi", cpu = "1", timeout_seconds = 540, max_instances = 10, concurrency = 1 }
    }
    status = {
      enabled               = true, source = "status", entry_point = "status", trigger = null, caller = "operators"
      description           = "Jobs API: list, get, cancel; the dashboard page"
      firestore             = true, reads = [], writes = ["output"], publishes = ["events"], secrets = local.provider_secrets
      max_delivery_attempts = null
      sizing                = { memory = "512Mi", cpu = "1", timeout_seconds = 60, max_instances = 3, concurrency = 8 }
    }
    webhook = {
      # Public by necessity: the Gemini API calls it and carries no Google identity. It verifies the Standard
      # Webhooks signature with the signing secret and only asks for an early poll (the poller stays the fallback).
      enabled               = var.enable_webhook && !local.vertex, source = "webhook", entry_point = "webhook", trigger = null, caller = "public"
      description           = "Gemini batch webhook (signed) -> an early poll of that batch's job"
      firestore             = false, reads = [], writes = [], publishes = ["poll"], secrets = ["webhook"]
      max_delivery_attempts = null
      sizing                = { memory = "512Mi", cpu = "1", timeout_seconds = 30, max_instances = 5, concurrency = 20 }
    }
  }

  functions       = { for name, fn in local.function_table : name => fn if fn.enabled }
  event_functions = { for name, fn in local.functions : name => fn if fn.trigger != null }
  sources         = toset([for fn in values(local.functions) : fn.source])

  # Effective sizing: the entry's defaults, overridden attribute by attribute by var.function_sizing.
  sizing = {
    for name, fn in local.functions : name => merge(fn.sizing, {
      for key, value in try(var.function_sizing[name], {}) : key => value if value != null
    })
  }

  # Service accounts: one per function (what it may touch), one per trigger (who may invoke its function),
  # and the callers and the build. Keys become account ids: <prefix>-<key with _ as ->.
  service_accounts = merge(
    { for name, fn in local.functions : name => "${name}: ${fn.description}" },
    { for name, fn in local.event_functions : "${name}_trigger" => "Eventarc trigger identity: delivers ${fn.trigger == "storage" ? "input-bucket events" : "${fn.trigger}-topic messages"} to ${name}" },
    {
      scheduler = "Cloud Scheduler identity: calls the poller with an OIDC token"
      operator  = "Operators' identity for the status API (operators impersonate it)"
      build     = "Cloud Build identity that builds the functions' images"
    },
  )

  # -- grants, derived: the resources in iam.tf, storage.tf, pubsub.tf, secrets.tf and functions.tf loop over these --

  # roles/datastore.user has no narrower scope than the project (one database); eventReceiver is per project by
  # design (Eventarc checks it on a Cloud Storage trigger's identity; Pub/Sub sources do not need it). The build's
  # roles are Google's documented set for a custom build service account (Artifact Registry: functions.tf).
  project_grants = merge(
    { for name, fn in local.functions : "${name}_firestore" => { sa = name, role = "roles/datastore.user" } if fn.firestore },
    { for name in local.vertex_callers : "${name}_vertex" => { sa = name, role = "roles/aiplatform.user" } if local.vertex },
    { for name, fn in local.event_functions : "${name}_trigger_receiver" => { sa = "${name}_trigger", role = "roles/eventarc.eventReceiver" } if fn.trigger == "storage" },
    {
      build_logs    = { sa = "build", role = "roles/logging.logWriter" }
      build_sources = { sa = "build", role = "roles/storage.objectAdmin" }
    },
  )

  bucket_roles = { reads = "roles/storage.objectViewer", writes = "roles/storage.objectUser" }
  bucket_grants = merge(
    { for pair in flatten([for name, fn in local.functions : [for bucket in fn.reads : { key = "${name}_reads_${bucket}", sa = name, bucket = bucket, role = local.bucket_roles.reads }]]) : pair.key => pair },
    { for pair in flatten([for name, fn in local.functions : [for bucket in fn.writes : { key = "${name}_writes_${bucket}", sa = name, bucket = bucket, role = local.bucket_roles.writes }]]) : pair.key => pair },
    { build_reads_sources = { sa = "build", bucket = "sources", role = local.bucket_roles.reads } },
  )

  # Vertex AI: the functions that call the provider (submit and stage create jobs after staging; poll_worker
  # polls, creates, retries and cancels; complete reads and deletes results; status cancels and embeds queries;
  # the poller's tick calls no provider). roles/aiplatform.user is project-wide: Vertex AI has no narrower
  # resource for batch jobs. Those without bucket-level access to the output bucket would get it under
  # vertex_prefix only (vertex.tf: an IAM condition), to write and delete batch inputs and delete outputs.
  vertex_callers = ["submit", "stage", "poll_worker", "complete", "status"]
  vertex_prefix_grants = {
    for name in local.vertex_callers : "${name}_vertex_prefix" => { sa = name, bucket = "output", role = local.bucket_roles.writes }
    if local.vertex && !contains(local.function_table[name].writes, "output")
  }

  topic_publishers = {
    for pair in flatten([for name, fn in local.functions : [for topic in fn.publishes : { key = "${name}_${topic}", sa = name, topic = topic }]]) :
    pair.key => pair
  }

  secret_readers = {
    for pair in flatten([for name, fn in local.functions : [for secret in fn.secrets : { key = "${name}_${secret}", sa = name, secret = secret }]]) :
    pair.key => pair
  }

  # Who may invoke each function (roles/run.invoker on its Cloud Run service). Emails of var.status_invoker_service_accounts
  # are added in functions.tf; the public function gets allUsers there, in a resource of its own.
  invoker_accounts = { scheduler = "scheduler", operators = "operator" }
  invokers = merge(
    { for name, fn in local.event_functions : "${name}_trigger" => { function = name, sa = "${name}_trigger" } },
    { for name, fn in local.functions : "${name}_invoker" => { function = name, sa = local.invoker_accounts[fn.caller] } if contains(keys(local.invoker_accounts), coalesce(fn.caller, "-")) },
  )
  public_functions = toset([for name, fn in local.functions : name if fn.caller == "public"])

  # Dead letters: one topic (and a hold subscription) per event function, and one for the example events subscription.
  dead_letters = merge(
    { for name, fn in local.event_functions : name => fn.max_delivery_attempts },
    { events = var.dead_letter_max_delivery_attempts },
  )
}
