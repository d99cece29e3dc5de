locals {
  labels = merge(var.labels, {
    "app.kubernetes.io/part-of"    = "titanium"
    "app.kubernetes.io/managed-by" = "terraform"
  })
}

resource "kubernetes_namespace_v1" "app" {
  metadata {
    name = var.namespace
    labels = merge(local.labels, {
      "pod-security.kubernetes.io/enforce" = var.pod_security_enforce
      "pod-security.kubernetes.io/warn"    = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
    })
  }
}

# Caps what the namespace can consume, so a runaway rollout cannot starve the
# database that shares the cluster with it.
resource "kubernetes_resource_quota_v1" "app" {
  metadata {
    name      = "titanium-quota"
    namespace = kubernetes_namespace_v1.app.metadata[0].name
    labels    = local.labels
  }

  spec {
    hard = merge(var.resource_quota, var.resource_quota_overrides)
  }
}

# A quota on requests/limits rejects every pod that declares none; these
# defaults make such pods admissible instead of failing at creation.
resource "kubernetes_limit_range_v1" "app" {
  metadata {
    name      = "titanium-container-defaults"
    namespace = kubernetes_namespace_v1.app.metadata[0].name
    labels    = local.labels
  }

  spec {
    limit {
      type = "Container"
      default_request = {
        cpu    = var.container_defaults.request_cpu
        memory = var.container_defaults.request_memory
      }
      default = {
        cpu    = var.container_defaults.limit_cpu
        memory = var.container_defaults.limit_memory
      }
    }
  }
}
