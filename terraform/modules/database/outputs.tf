output "host" {
  description = "Service name the services use as POSTGRES_HOST inside the namespace: postgresql-service, or with database_ha the Cluster's primary, titanium-db-rw."
  value       = var.database_ha ? local.ha_service_name : kubernetes_service_v1.postgresql[0].metadata[0].name
}

output "fqdn" {
  description = "Fully qualified DNS name of that Service, for clients in other namespaces."
  value       = "${var.database_ha ? local.ha_service_name : kubernetes_service_v1.postgresql[0].metadata[0].name}.${var.namespace}.svc.cluster.local"
}

output "port" {
  description = "PostgreSQL port (POSTGRES_PORT)."
  value       = local.port
}

output "database" {
  description = "Database name (POSTGRES_DB)."
  value       = local.database
}

output "secret_name" {
  description = "The database's own Secret: POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB for the StatefulSet, or with database_ha the Cluster's basic-auth username and password."
  value       = var.database_ha ? kubernetes_secret_v1.cluster_credentials[0].metadata[0].name : kubernetes_secret_v1.credentials[0].metadata[0].name
}

output "pod_name" {
  description = "Name of the PostgreSQL pod, for kubectl exec; null with database_ha, where the primary moves (kubectl get pods -l cnpg.io/instanceRole=primary)."
  value       = var.database_ha ? null : "${kubernetes_stateful_set_v1.postgresql[0].metadata[0].name}-0"
}

output "cluster_name" {
  description = "Name of the CloudNativePG Cluster the solid-cloud overlay deploys with database_ha; null without."
  value       = var.database_ha ? local.ha_cluster_name : null
}
