output "vpc_id" {
  description = "ID of the Titanium VPC."
  value       = module.network.vpc_id
}

output "network_id" {
  description = "ID of the Kubernetes node tier."
  value       = module.network.network_id
}

output "namespace" {
  description = "Namespace of the services and the database."
  value       = module.kubernetes.namespace
}

output "storage_class_name" {
  description = "StorageClass of the database volume."
  value       = module.kubernetes.storage_class_name
}

output "postgres_host" {
  description = "POSTGRES_HOST for the services in the namespace."
  value       = module.database.host
}

output "postgres_fqdn" {
  description = "Fully qualified DNS name of the database Service."
  value       = module.database.fqdn
}

output "postgres_port" {
  description = "POSTGRES_PORT."
  value       = module.database.port
}

output "postgres_database" {
  description = "POSTGRES_DB."
  value       = module.database.database
}

output "postgres_secret_name" {
  description = "Secret with the database's own credentials (not titanium-secrets)."
  value       = module.database.secret_name
}

output "postgres_pod" {
  description = "PostgreSQL pod name, for kubectl exec (null with database_ha: the primary moves)."
  value       = module.database.pod_name
}

output "postgres_cluster" {
  description = "CloudNativePG Cluster name with database_ha, else null."
  value       = module.database.cluster_name
}

output "app_config" {
  description = "Non-secret settings for the solid-cloud ConfigMap of the services."
  value = {
    USE_POSTGRES  = "true"
    POSTGRES_HOST = module.database.host
    POSTGRES_PORT = tostring(module.database.port)
    POSTGRES_DB   = module.database.database
  }
}
