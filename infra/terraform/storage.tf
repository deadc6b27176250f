# Buckets: uniform bucket-level access (IAM only, no object ACLs), public access prevention enforced,
# Google-managed encryption, soft delete at its 7-day default (recovers accidental deletes).
#
# Versioning policy:
#   input   off by default (var.input_versioning). Every upload is a new generation, the event names it and
#           the pipeline reads exactly that generation; a job never needs an old version. Turn it on to
#           recover overwritten inputs; noncurrent versions are then deleted after N days.
#   output  off. Outputs are regenerable (upload the input again) and the pipeline overwrites fixed names
#           (manifest.json, embeddings-00000.*) on a retried completion: versioning would keep every
#           retry's copy and bill for it. Soft delete still covers accidental deletes for 7 days.
#   sources on, so a previous function build stays available for a rollback; old versions expire.

resource "google_storage_bucket" "input" {
  #checkov:skip=CKV_GCP_62:Access logs: Cloud Audit Logs (Data Access for Cloud Storage) are the supported alternative to legacy usage logs; enable them at the project/org level.
  #checkov:skip=CKV_GCP_78:Versioning is a choice here (var.input_versioning, default off): each upload is its own generation and job; soft delete covers accidental deletes.
  name                        = local.input_bucket
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets

  versioning {
    enabled = var.input_versioning
  }

  dynamic "lifecycle_rule" {
    for_each = var.input_versioning ? [1] : []
    content {
      condition {
        days_since_noncurrent_time = var.noncurrent_version_retention_days
      }
      action {
        type = "Delete"
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.input_retention_days > 0 ? [1] : []
    content {
      condition {
        age            = var.input_retention_days
        matches_prefix = var.input_prefix == "" ? null : [var.input_prefix]
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket" "output" {
  #checkov:skip=CKV_GCP_62:Access logs: Cloud Audit Logs (Data Access for Cloud Storage) are the supported alternative to legacy usage logs; enable them at the project/org level.
  #checkov:skip=CKV_GCP_78:Versioning off by design: outputs are regenerable and overwritten under fixed names on retries; versions would only bill for stale copies. Soft delete covers accidental deletes.
  name                        = local.output_bucket
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets

  versioning {
    enabled = false
  }

  # Safety net for staging leftovers of jobs that never ended (the pipeline deletes its own staging).
  # NOTE: a lifecycle condition matches object-name prefixes, so this rule covers staging written under
  # <output_prefix>_staging/. See infra/README.md ("Staging cleanup") for the path layout it assumes.
  lifecycle_rule {
    condition {
      age            = var.staging_cleanup_days
      matches_prefix = ["${var.output_prefix}_staging/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Access logs: Cloud Audit Logs (Data Access for Cloud Storage) are the supported alternative to legacy usage logs; enable them at the project/org level.
  name                        = local.source_bucket
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.enabled]
}

# One object per function, named after the zip's hash: a code change is a new object, which makes the
# function rebuild; an unchanged zip (infra/package.py is reproducible) leaves the function alone.
resource "google_storage_bucket_object" "source" {
  for_each = local.function_names

  bucket       = google_storage_bucket.sources.name
  name         = "functions/${each.key}-${filesha256("${local.source_dir}/${each.key}.zip")}.zip"
  source       = "${local.source_dir}/${each.key}.zip"
  content_type = "application/zip"
}

# -- bucket-level IAM (never project-wide storage roles) -------------------------------------------------
# objectViewer: get + list. objectUser: get, list, create, overwrite (= delete + create) and delete, without
# any IAM administration of the bucket.

locals {
  bucket_grants = {
    submit_reads_input    = { bucket = "input", role = "roles/storage.objectViewer", sa = "submit" }
    poller_reads_input    = { bucket = "input", role = "roles/storage.objectViewer", sa = "poller" }  # resumes stale submissions
    submit_writes_output  = { bucket = "output", role = "roles/storage.objectUser", sa = "submit" }   # staging
    poller_writes_output  = { bucket = "output", role = "roles/storage.objectUser", sa = "poller" }   # staging on resume
    complete_write_output = { bucket = "output", role = "roles/storage.objectUser", sa = "complete" } # outputs, follow-ups
    status_deletes_output = { bucket = "output", role = "roles/storage.objectUser", sa = "status" }   # cancel: list + delete staging
    build_reads_sources   = { bucket = "sources", role = "roles/storage.objectViewer", sa = "build" }
  }
  buckets = {
    input   = google_storage_bucket.input.name
    output  = google_storage_bucket.output.name
    sources = google_storage_bucket.sources.name
  }
}

resource "google_storage_bucket_iam_member" "grants" {
  for_each = local.bucket_grants

  bucket = local.buckets[each.value.bucket]
  role   = each.value.role
  member = "serviceAccount:${google_service_account.sa[each.value.sa].email}"
}
