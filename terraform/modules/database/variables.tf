variable "namespace" {
  type        = string
  description = "Namespace to deploy PostgreSQL into; it must already exist."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label."
  }
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for every object this module creates."
  default     = {}
}

variable "image" {
  type        = string
  description = "PostgreSQL 15 image with an exact minor tag. Use a Debian-based tag: its postgres user is uid/gid 999, which the security context relies on (Alpine's is 70)."
  default     = "postgres:15.15"

  validation {
    condition     = can(regex(":15\\.[0-9]+(-(bookworm|trixie))?$", var.image))
    error_message = "image must be PostgreSQL 15 with an exact minor tag such as postgres:15.15 (not latest, not a bare 15, not Alpine)."
  }
}

variable "postgres_user" {
  type        = string
  description = "Name of the superuser the image creates on first start (POSTGRES_USER)."

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.postgres_user))
    error_message = "postgres_user must be a lower-case PostgreSQL identifier of at most 63 characters."
  }
}

variable "postgres_password" {
  type        = string
  description = "Password of postgres_user (POSTGRES_PASSWORD). Only read when the data directory is first initialised."
  sensitive   = true

  validation {
    condition     = length(var.postgres_password) >= 16
    error_message = "postgres_password must be at least 16 characters long."
  }

  validation {
    condition     = !can(regex("(?i)^<.*>$|change.?me|placeholder", var.postgres_password))
    error_message = "postgres_password still holds the placeholder from terraform.tfvars.example."
  }
}

variable "storage_class_name" {
  type        = string
  description = "StorageClass of the data volume."
  default     = "local-path"
}

variable "storage_size" {
  type        = string
  description = "Size of the data volume."
  default     = "10Gi"

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi|Ti)$", var.storage_size))
    error_message = "storage_size must be a quantity such as 10Gi."
  }
}

variable "resources" {
  type = object({
    request_cpu    = string
    request_memory = string
    limit_cpu      = string
    limit_memory   = string
  })
  description = "CPU and memory requests and limits of the PostgreSQL container."
  default = {
    request_cpu    = "250m"
    request_memory = "512Mi"
    limit_cpu      = "1"
    limit_memory   = "1Gi"
  }
}

variable "client_app_names" {
  type        = list(string)
  description = "app.kubernetes.io/name labels of the pods allowed to connect to PostgreSQL."
  default     = ["user-service", "blog-service", "titanium-db-migrate"]

  validation {
    condition     = length(var.client_app_names) > 0
    error_message = "At least one client must be allowed, or nothing can use the database."
  }
}

variable "database_ha" {
  type        = bool
  description = "PostgreSQL as the three-instance CloudNativePG Cluster of k8s/components/database-ha instead of the single StatefulSet: creates no StatefulSet, Services or NetworkPolicy, and makes postgresql-credentials the Cluster's basic-auth Secret. Enable that component in the overlay at the same time; the operator must be installed (k8s/README.md)."
  default     = false
}
