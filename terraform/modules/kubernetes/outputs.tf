output "namespace" {
  description = "Name of the application namespace."
  value       = kubernetes_namespace_v1.app.metadata[0].name
}

output "labels" {
  description = "Common labels for objects that belong to Titanium."
  value       = local.labels
}

output "storage_class_name" {
  description = "StorageClass for the database volume; when the provisioner is installed, reading it waits for the provisioner to run."
  value       = var.install_local_path_provisioner ? kubernetes_storage_class_v1.local_path[0].metadata[0].name : var.storage_class_name
}

output "local_path_provisioner_namespace" {
  description = "Namespace of the Local Path Provisioner, or null when it is not installed."
  value       = one(kubernetes_namespace_v1.local_path_storage[*].metadata[0].name)
}
