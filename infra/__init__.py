"""Infrastructure: the cloud (Terraform) and the local stack that plays it on one machine."""
