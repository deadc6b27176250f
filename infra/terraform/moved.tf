# Addresses renamed when the functions, topics and secrets became loops over pipeline.tf. A state applied
# before that keeps its topics (and their retained messages and subscriptions), the Gemini key's secret
# (and its versions), the service accounts (and their unique ids) and the index, instead of destroying and
# recreating them. The IAM members move too: destroying an old address after creating a new one with the
# same role and member would remove the binding both stand for.

moved {
  from = google_pubsub_topic.complete
  to   = google_pubsub_topic.pipeline["complete"]
}

moved {
  from = google_pubsub_topic.events
  to   = google_pubsub_topic.pipeline["events"]
}

moved {
  from = google_secret_manager_secret.gemini_api_key
  to   = google_secret_manager_secret.secret["gemini"]
}

moved {
  from = google_firestore_index.jobs_by_state
  to   = google_firestore_index.composite["jobs_by_state"]
}

moved {
  from = google_service_account.sa["submit-trigger"]
  to   = google_service_account.sa["submit_trigger"]
}

moved {
  from = google_service_account.sa["complete-trigger"]
  to   = google_service_account.sa["complete_trigger"]
}

moved {
  from = google_project_iam_member.roles["trigger_receiver"]
  to   = google_project_iam_member.roles["submit_trigger_receiver"]
}

moved {
  from = google_storage_bucket_iam_member.grants["complete_write_output"]
  to   = google_storage_bucket_iam_member.grants["complete_writes_output"]
}

moved {
  from = google_storage_bucket_iam_member.grants["status_deletes_output"]
  to   = google_storage_bucket_iam_member.grants["status_writes_output"]
}

moved {
  from = google_secret_manager_secret_iam_member.gemini_api_key_readers["complete"]
  to   = google_secret_manager_secret_iam_member.readers["complete_gemini"]
}

moved {
  from = google_secret_manager_secret_iam_member.gemini_api_key_readers["status"]
  to   = google_secret_manager_secret_iam_member.readers["status_gemini"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.invokers["scheduler"]
  to   = google_cloud_run_v2_service_iam_member.invokers["poller_invoker"]
}

moved {
  from = google_cloud_run_v2_service_iam_member.invokers["operator"]
  to   = google_cloud_run_v2_service_iam_member.invokers["status_invoker"]
}
