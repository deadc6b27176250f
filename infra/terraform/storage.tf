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
  # Staging lives under <output_prefix>_staging/<name>/<generation>/ (shared/domain/paths.py: JobPaths),
  # apart from the outputs, so this prefix rule reaches staging only.
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

# One object per source folder (functions/<source>/, shared by its entry points), named after the zip's
# hash: a code change is a new object, which makes its functions rebuild; an unchanged zip
# (infra/package.py is reproducible) leaves them alone.
resource "google_storage_bucket_object" "source" {
  for_each = local.sources

  bucket       = google_storage_bucket.sources.name
  name         = "functions/${each.key}-${filesha256("${local.source_dir}/${each.key}.zip")}.zip"
  source       = "${local.source_dir}/${each.key}.zip"
  content_type = "application/zip"

  lifecycle {
    precondition {
      condition     = trimspace(file("${local.source_dir}/runtime.txt")) == var.runtime
      error_message = "The zips in functions_source_dir were packaged for another runtime than var.runtime: run `python -m infra.package --runtime ${var.runtime}` under that runtime's Python."
    }
  }
}

# -- bucket-level IAM (never project-wide storage roles for the functions) -------------------------------
# objectViewer: get + list. objectUser: get, list, create, overwrite (= delete + create) and delete, without
# any IAM administration of the bucket. Who gets which: pipeline.tf (reads / writes of each function).

locals {
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
