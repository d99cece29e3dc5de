variable "name" {
  type        = string
  description = "Name prefix for the VPC, its tier and its ACL."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,40}$", var.name))
    error_message = "name must be lower-case letters, digits and dashes, starting with a letter, at most 41 characters."
  }
}

variable "zone" {
  type        = string
  description = "CloudStack zone (name or ID) that hosts the VPC."

  validation {
    condition     = length(trimspace(var.zone)) > 0
    error_message = "zone must not be empty."
  }
}

variable "project" {
  type        = string
  description = "CloudStack project (name or ID) to create the network in; null for the account itself."
  default     = null
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the VPC, e.g. 10.20.0.0/16."

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR such as 10.20.0.0/16."
  }
}

variable "subnet_cidr" {
  type        = string
  description = "IPv4 CIDR of the tier (subnet) for the Kubernetes nodes; must lie inside vpc_cidr."

  validation {
    condition     = can(cidrnetmask(var.subnet_cidr))
    error_message = "subnet_cidr must be an IPv4 CIDR such as 10.20.1.0/24."
  }
}

variable "vpc_offering" {
  type        = string
  description = "Name or ID of the CloudStack VPC offering."
  default     = "Default VPC offering"
}

variable "network_offering" {
  type        = string
  description = "Name or ID of the network offering for the tier; it must be a VPC-enabled isolated offering."
  default     = "DefaultIsolatedNetworkOfferingForVpcNetworks"
}

variable "api_allowed_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the Kubernetes API (TCP 6443) on the tier, i.e. where kubectl and terraform run."

  validation {
    condition     = length(var.api_allowed_cidrs) > 0 && alltrue([for c in var.api_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "api_allowed_cidrs must hold at least one IPv4 CIDR."
  }

  validation {
    condition     = !contains(var.api_allowed_cidrs, "0.0.0.0/0")
    error_message = "api_allowed_cidrs must not open the Kubernetes API to the whole internet (0.0.0.0/0)."
  }
}
