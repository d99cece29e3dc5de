variable "cloudstack_api_url" {
  type        = string
  description = "URL of the Solid Cloud (CloudStack) API, ending in /client/api."

  validation {
    condition     = can(regex("^https://[^/<>]+/.*client/api$", var.cloudstack_api_url))
    error_message = "cloudstack_api_url must be an https URL ending in /client/api."
  }
}

variable "cloudstack_api_key" {
  type        = string
  description = "CloudStack API key of the deploying account."
  sensitive   = true

  validation {
    condition     = length(trimspace(var.cloudstack_api_key)) > 0 && !can(regex("^<.*>$", var.cloudstack_api_key))
    error_message = "cloudstack_api_key must be set to a real key, not the example placeholder."
  }
}

variable "cloudstack_secret_key" {
  type        = string
  description = "CloudStack secret key belonging to cloudstack_api_key."
  sensitive   = true

  validation {
    condition     = length(trimspace(var.cloudstack_secret_key)) > 0 && !can(regex("^<.*>$", var.cloudstack_secret_key))
    error_message = "cloudstack_secret_key must be set to a real key, not the example placeholder."
  }
}

variable "cloudstack_project" {
  type        = string
  description = "CloudStack project to create the network in; null for the account itself."
  default     = null
}

variable "kubeconfig_path" {
  type        = string
  description = "Path of the kubeconfig file for the Solid Cloud cluster."

  validation {
    condition     = length(trimspace(var.kubeconfig_path)) > 0
    error_message = "kubeconfig_path must not be empty: name the Solid Cloud kubeconfig explicitly."
  }
}

variable "kubeconfig_context" {
  type        = string
  description = "Context inside kubeconfig_path that points at the Solid Cloud cluster."

  validation {
    condition     = length(trimspace(var.kubeconfig_context)) > 0
    error_message = "kubeconfig_context must not be empty: name the Solid Cloud context explicitly."
  }
}

variable "zone" {
  type        = string
  description = "CloudStack zone of the VPC."
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC."
  default     = "10.20.0.0/16"
}

variable "subnet_cidr" {
  type        = string
  description = "IPv4 CIDR of the Kubernetes node tier inside the VPC."
  default     = "10.20.1.0/24"
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the Kubernetes API on the node tier."
}

variable "install_local_path_provisioner" {
  type        = bool
  description = "Install the Local Path Provisioner and the local-path StorageClass; set false only if the cluster already has a local-path class."
  default     = true
}

variable "postgres_user" {
  type        = string
  description = "PostgreSQL superuser created on first start; titanium-secrets must carry a role that exists in the database."
  default     = "postgres"
}

variable "postgres_password" {
  type        = string
  description = "Password of postgres_user; at least 16 characters."
  sensitive   = true
}

variable "database_ha" {
  type        = bool
  description = "PostgreSQL as the three-instance CloudNativePG Cluster (k8s/components/database-ha, enabled in the overlay at the same time) instead of the single StatefulSet. Needs the CloudNativePG operator; the services then log in as titanium with postgres_password."
  default     = false
}
