terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.x: google_cloudfunctions2_function with build_config.service_account, storage soft_delete_policy,
      # google_cloud_run_v2_service_iam_member. The lock file is created by the first `terraform init`
      # (it cannot be generated offline); commit it then.
      version = "~> 6.0"
    }
  }

  # Remote state in a GCS bucket (versioned, created by infra/deploy.sh if missing). Partial configuration:
  # `terraform init -backend-config="bucket=..." -backend-config="prefix=..."`.
  backend "gcs" {}
}

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}
