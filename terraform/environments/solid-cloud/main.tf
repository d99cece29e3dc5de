locals {
  # The namespace the solid-cloud Kustomize overlay deploys the services to.
  namespace = "titanium-prod"
  labels    = { environment = "solid-cloud" }
}

module "network" {
  source = "../../modules/network"

  name              = "titanium"
  zone              = var.zone
  project           = var.cloudstack_project
  vpc_cidr          = var.vpc_cidr
  subnet_cidr       = var.subnet_cidr
  api_allowed_cidrs = var.api_allowed_cidrs
}

module "kubernetes" {
  source = "../../modules/kubernetes"

  namespace                      = local.namespace
  labels                         = local.labels
  install_local_path_provisioner = var.install_local_path_provisioner
  storage_class_name             = "local-path"
}

module "database" {
  source = "../../modules/database"

  # Both come from module outputs, so the namespace and (when installed) a
  # running provisioner exist before the StatefulSet is created.
  namespace          = module.kubernetes.namespace
  storage_class_name = module.kubernetes.storage_class_name
  labels             = local.labels

  postgres_user     = var.postgres_user
  postgres_password = var.postgres_password
}
