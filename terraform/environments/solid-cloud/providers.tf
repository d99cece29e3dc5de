provider "cloudstack" {
  api_url    = var.cloudstack_api_url
  api_key    = var.cloudstack_api_key
  secret_key = var.cloudstack_secret_key
}

# Both the file and the context are explicit inputs: relying on whatever
# ~/.kube/config currently points at is how a plan lands on the wrong cluster.
provider "kubernetes" {
  config_path    = var.kubeconfig_path
  config_context = var.kubeconfig_context
}
