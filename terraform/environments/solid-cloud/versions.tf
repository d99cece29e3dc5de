terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    cloudstack = {
      source  = "cloudstack/cloudstack"
      version = "~> 0.5"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.0"
    }
  }

  # State is local (terraform.tfstate, git-ignored) until a shared backend is
  # chosen. The state holds the database password in clear text, so a shared
  # backend must be access-controlled and encrypted at rest. A backend block
  # cannot read variables, which is why this one is a commented example rather
  # than wired to var.kubeconfig_path. To switch: uncomment, adjust, then run
  # `terraform init -migrate-state`. The kubernetes backend keeps the state in
  # a Secret of the same cluster and locks it with a Lease:
  #
  # backend "kubernetes" {
  #   secret_suffix  = "titanium-solid-cloud"
  #   namespace      = "kube-system"
  #   config_path    = "~/.kube/solid-cloud.yaml"
  #   config_context = "solid-cloud"
  # }
}
