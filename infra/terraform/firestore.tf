# The jobs live in the project's (default) Firestore database, native mode (the functions' clients use
# the default database). A project has one: set create_firestore_database = false where it exists already.
#
# No TTL policy: a job document is the pipeline's idempotency record for its object generation (a late or
# replayed finalize event must find it, not recreate the job) and its audit trail; documents are a few KB,
# so a million jobs cost cents a month. Add one only with an explicit expiry field (e.g. `expire_at` set
# when a job ends) -- the Job model has none today, and a TTL on `created_at` would delete running jobs.

resource "google_firestore_database" "default" {
  count = var.create_firestore_database ? 1 : 0

  project                 = var.project_id
  name                    = "(default)"
  location_id             = coalesce(var.firestore_location, var.region)
  type                    = "FIRESTORE_NATIVE"
  concurrency_mode        = "PESSIMISTIC" # the repository updates jobs in transactions
  delete_protection_state = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy         = "ABANDON" # `terraform destroy` leaves the data in place
  # Point-in-time recovery (7 days of versions) is billed as extra storage; the jobs are re-derivable from
  # the inputs, so it stays off. Set POINT_IN_TIME_RECOVERY_ENABLED if jobs become a record of their own.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_DISABLED"

  depends_on = [google_project_service.enabled]
}

# -- indexes: one list each, one entry per index ------------------------------------------------------------
#
# Collections: var.jobs_collection (one document per job), its subcollection "<jobs_collection>_shards"
# (one document per shard; a collection group named after the jobs collection, so two deployments sharing
# a database never see each other's shards), var.ledgers_collection (one document per provider and model).

locals {
  shards_collection = "${var.jobs_collection}_shards" # shared/adapters/firestore_jobs.py shards_collection

  # Composite indexes, one per query shape of shared/adapters/firestore_jobs.py:
  # - jobs_by_state: the jobs API lists by state, newest first (where state == X order by created_at desc,
  #   __name__ desc; the implicit last field follows the direction of the one before it).
  # - shard_queue: a ledger's queue over every job's shards (collection group): where state == STAGED and
  #   ledger == L order by priority desc, fair_key, created_at; the same index serves the queue-position
  #   aggregates (count and sum of estimated_tokens where priority > p, or priority == p and fair_key < f).
  # - shards_by_state: one job's shards in some states, by index (its subcollection).
  # The due-jobs query (next_poll_at <= now order by next_poll_at) uses the automatic single-field index; the
  # collection-group ones are enabled below (collection_group_fields).
  composite_indexes = {
    jobs_by_state = {
      collection  = var.jobs_collection
      query_scope = "COLLECTION"
      fields      = [{ path = "state", order = "ASCENDING" }, { path = "created_at", order = "DESCENDING" }]
    }
    shard_queue = {
      collection  = local.shards_collection
      query_scope = "COLLECTION_GROUP"
      fields = [
        { path = "state", order = "ASCENDING" }, { path = "ledger", order = "ASCENDING" },
        { path = "priority", order = "DESCENDING" }, { path = "fair_key", order = "ASCENDING" },
        { path = "created_at", order = "ASCENDING" },
      ]
    }
    shards_by_state = {
      collection  = local.shards_collection
      query_scope = "COLLECTION"
      fields      = [{ path = "state", order = "ASCENDING" }, { path = "index", order = "ASCENDING" }]
    }
  }

  # Single fields queried over the shards collection group (automatic single-field indexes have collection
  # scope only): due shards (next_poll_at <= now order by next_poll_at) and the shard of a batch a webhook
  # names (batch_name == X).
  collection_group_fields = {
    shards_next_poll_at = { collection = local.shards_collection, field = "next_poll_at" }
    shards_batch_name   = { collection = local.shards_collection, field = "batch_name" }
  }

  # Fields exempted from the automatic single-field indexes: large maps and arrays that no query filters or
  # orders on. Each indexed map key and array element is an index entry (a document may have at most 40,000,
  # and every one is written on each update), so indexing them only costs write latency and storage.
  index_exemptions = {
    jobs_input_problems = { collection = var.jobs_collection, field = "input_problems" }
    jobs_output         = { collection = var.jobs_collection, field = "output" }
    jobs_source_meta    = { collection = var.jobs_collection, field = "source.metadata" }
    jobs_staging        = { collection = var.jobs_collection, field = "staging" }
    jobs_error          = { collection = var.jobs_collection, field = "error" }
    jobs_last_error     = { collection = var.jobs_collection, field = "last_error" }
    shards_output       = { collection = local.shards_collection, field = "output" }
    shards_error        = { collection = local.shards_collection, field = "provider_error" }
    shards_records_uri  = { collection = local.shards_collection, field = "records_uri" }
    ledgers_holds       = { collection = var.ledgers_collection, field = "holds" }
    ledgers_kept_files  = { collection = var.ledgers_collection, field = "kept_files" }
    cache_vector        = { collection = var.cache_collection, field = "v" }
  }
}

# The embeddings cache (shared/adapters/firestore_cache.py): one document per content key, deleted by
# Firestore's TTL once `expire_at` passes (set CACHE_TTL_DAYS after the entry's last write; deletion runs
# within about a day of it, and a read of an expired entry is only a miss: the passage is embedded again).
# `expire_at` itself is exempt from indexing: nothing queries it, and TTL needs no index.
resource "google_firestore_field" "cache_ttl" {
  project    = var.project_id
  database   = "(default)"
  collection = var.cache_collection
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_database.default]
}

resource "google_firestore_index" "composite" {
  for_each = local.composite_indexes

  project     = var.project_id
  database    = "(default)"
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.path
      order      = fields.value.order
    }
  }

  depends_on = [google_firestore_database.default]
}

# An empty index_config removes every single-field index of the field (ascending, descending, array-contains).
resource "google_firestore_field" "not_indexed" {
  for_each = local.index_exemptions

  project    = var.project_id
  database   = "(default)"
  collection = each.value.collection
  field      = each.value.field

  index_config {}

  depends_on = [google_firestore_database.default]
}

# Ascending single-field indexes with collection-group scope (and the automatic ones kept for the collection).
resource "google_firestore_field" "collection_group" {
  for_each = local.collection_group_fields

  project    = var.project_id
  database   = "(default)"
  collection = each.value.collection
  field      = each.value.field

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION"
    }
  }

  depends_on = [google_firestore_database.default]
}
