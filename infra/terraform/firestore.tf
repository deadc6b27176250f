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

# The jobs API lists by state, newest first: where state == X order by created_at desc, __name__ desc
# (shared/adapters/firestore_jobs.py). An index's implicit last field (__name__) follows the direction of
# the field before it, so (state, created_at desc) serves that query. The unfiltered list (order by
# created_at desc, __name__ desc) and the poller's due-jobs query (next_poll_at <= now order by
# next_poll_at) are served by the automatic single-field indexes.
resource "google_firestore_index" "jobs_by_state" {
  project    = var.project_id
  database   = "(default)"
  collection = var.jobs_collection

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "created_at"
    order      = "DESCENDING"
  }

  depends_on = [google_firestore_database.default]
}
