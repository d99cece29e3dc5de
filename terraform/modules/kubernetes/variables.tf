variable "namespace" {
  type        = string
  description = "Namespace the application and its database live in."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label (lower-case letters, digits and dashes, at most 63 characters)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for every object this module creates, on top of app.kubernetes.io/part-of=titanium and managed-by=terraform."
  default     = {}
}

variable "pod_security_enforce" {
  type        = string
  description = "Pod Security Admission level enforced on the namespace; violations of 'restricted' are always warned and audited."
  default     = "baseline"

  validation {
    condition     = contains(["privileged", "baseline", "restricted"], var.pod_security_enforce)
    error_message = "pod_security_enforce must be one of privileged, baseline, restricted."
  }
}

variable "resource_quota" {
  type        = map(string)
  description = "Hard limits of the namespace ResourceQuota (keys as in ResourceQuota.spec.hard)."
  default = {
    "requests.cpu"           = "4"
    "requests.memory"        = "8Gi"
    "limits.cpu"             = "8"
    "limits.memory"          = "16Gi"
    "pods"                   = "40"
    "persistentvolumeclaims" = "10"
    "requests.storage"       = "50Gi"
  }
}

variable "resource_quota_overrides" {
  type        = map(string)
  description = "Keys of resource_quota to replace, e.g. the larger limits the three instances of database_ha need; empty keeps resource_quota as it is."
  default     = {}
}

variable "container_defaults" {
  type = object({
    request_cpu    = string
    request_memory = string
    limit_cpu      = string
    limit_memory   = string
  })
  description = "LimitRange defaults for containers that declare no resources, so the ResourceQuota never rejects them for it."
  default = {
    request_cpu    = "100m"
    request_memory = "128Mi"
    limit_cpu      = "500m"
    limit_memory   = "512Mi"
  }
}

variable "install_local_path_provisioner" {
  type        = bool
  description = "Install the Rancher Local Path Provisioner and its StorageClass; needed when the cluster has no StorageClass, or PersistentVolumeClaims stay Pending."
  default     = false
}

variable "local_path_provisioner_image" {
  type        = string
  description = "Local Path Provisioner image, pinned to a release tag."
  default     = "rancher/local-path-provisioner:v0.0.32"

  validation {
    condition     = can(regex(":v[0-9]+\\.[0-9]+\\.[0-9]+$", var.local_path_provisioner_image))
    error_message = "local_path_provisioner_image must carry an exact release tag such as :v0.0.32."
  }
}

variable "local_path_helper_image" {
  type        = string
  description = "Image of the short-lived helper pod that creates and removes volume directories on the node, pinned to a release tag."
  default     = "busybox:1.37.0"

  validation {
    condition     = can(regex(":[0-9]+\\.[0-9]+\\.[0-9]+$", var.local_path_helper_image))
    error_message = "local_path_helper_image must carry an exact version tag such as :1.37.0."
  }
}

variable "local_path_node_path" {
  type        = string
  description = "Directory on every node under which the provisioner creates volume directories."
  default     = "/opt/local-path-provisioner"

  validation {
    condition     = startswith(var.local_path_node_path, "/") && var.local_path_node_path != "/"
    error_message = "local_path_node_path must be an absolute path other than /."
  }
}

variable "storage_class_name" {
  type        = string
  description = "Name of the StorageClass for the database volume: the one this module creates, or an existing one when the provisioner is not installed."
  default     = "local-path"
}

variable "storage_reclaim_policy" {
  type        = string
  description = "Reclaim policy of the local-path StorageClass. Delete removes a volume's data when its claim is deleted; Retain keeps the directory on the node."
  default     = "Delete"

  validation {
    condition     = contains(["Delete", "Retain"], var.storage_reclaim_policy)
    error_message = "storage_reclaim_policy must be Delete or Retain."
  }
}
