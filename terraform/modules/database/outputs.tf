output "host" {
  description = "Service name the services use as POSTGRES_HOST inside the namespace."
  value       = kubernetes_service_v1.postgresql.metadata[0].name
}

output "fqdn" {
  description = "Fully qualified DNS name of the Service, for clients in other namespaces."
  value       = "${kubernetes_service_v1.postgresql.metadata[0].name}.${var.namespace}.svc.cluster.local"
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
  description = "Secret holding POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB for the StatefulSet."
  value       = kubernetes_secret_v1.credentials.metadata[0].name
}

output "pod_name" {
  description = "Name of the PostgreSQL pod, for kubectl exec."
  value       = "${kubernetes_stateful_set_v1.postgresql.metadata[0].name}-0"
}
