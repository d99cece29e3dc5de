locals {
  # The namespace the solid-cloud Kustomize overlay deploys the services to.
  namespace = "titanium-prod"
  labels    = { environment = "solid-cloud" }

  # database_ha runs three PostgreSQL instances where the StatefulSet runs one,
  # and while the operator builds or rebuilds a standby, a join Job of an
  # instance's size next to them: three instances more than the default quota
  # holds (k8s/components/database-ha/cluster.yaml: 250m/512Mi requests, 1 CPU/1Gi
  # limits each; tests/test_database_ha.py adds it up).
  ha_quota_overrides = {
    "requests.cpu"    = "5"
    "requests.memory" = "10Gi"
    "limits.cpu"      = "11"
    "limits.memory"   = "19Gi"
  }
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
  resource_quota_overrides       = var.database_ha ? local.ha_quota_overrides : {}
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

  # With the solid-cloud overlay's component database-ha, never alone.
  database_ha = var.database_ha
}
