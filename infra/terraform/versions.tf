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
    # google_project_service_identity (the Pub/Sub and Eventarc service agents) exists only in google-beta.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.0"
    }
    # time_sleep: the wait for IAM propagation on a fresh project (main.tf).
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
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

provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = var.labels
}
