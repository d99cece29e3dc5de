# database_ha = true: PostgreSQL is the CloudNativePG Cluster titanium-db of
# k8s/components/database-ha (three instances, synchronous replication), which
# the solid-cloud overlay deploys and the operator runs. Terraform then owns only
# the Cluster's credentials: the StatefulSet, both Services and the
# NetworkPolicy of main.tf are not created (count 0), and the overlay's
# policies guard the Cluster's pods instead.
#
# Same name as the single instance's Secret, so the exporter and the docs name
# one Secret in both modes, but the form CloudNativePG reads for
# bootstrap.initdb.secret: kubernetes.io/basic-auth with username (the owner of
# the database titanium, the role the services log in as) and password.
resource "kubernetes_secret_v1" "cluster_credentials" {
  count = var.database_ha ? 1 : 0

  metadata {
    name      = local.secret_name
    namespace = var.namespace
    labels    = local.labels
  }

  type = "kubernetes.io/basic-auth"
  data = {
    username = local.ha_owner
    password = var.postgres_password
  }
}
