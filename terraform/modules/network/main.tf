resource "cloudstack_vpc" "this" {
  name         = var.name
  display_text = "${var.name} VPC"
  cidr         = var.vpc_cidr
  vpc_offering = var.vpc_offering
  zone         = var.zone
  project      = var.project
}

resource "cloudstack_network_acl" "nodes" {
  name        = "${var.name}-nodes"
  description = "Traffic allowed into and out of the Kubernetes node tier"
  vpc_id      = cloudstack_vpc.this.id
  project     = var.project
}

# A VPC tier denies everything its ACL does not allow, so each rule here is a
# hole on purpose: node-to-node traffic (kubelet, CNI overlay, NodePorts), the
# Kubernetes API for the operators, and outbound traffic for image pulls.
resource "cloudstack_network_acl_rule" "nodes" {
  acl_id  = cloudstack_network_acl.nodes.id
  project = var.project

  rule {
    action       = "allow"
    cidr_list    = [var.vpc_cidr]
    protocol     = "all"
    traffic_type = "ingress"
  }

  rule {
    action       = "allow"
    cidr_list    = var.api_allowed_cidrs
    protocol     = "tcp"
    ports        = ["6443"]
    traffic_type = "ingress"
  }

  rule {
    action       = "allow"
    cidr_list    = ["0.0.0.0/0"]
    protocol     = "all"
    traffic_type = "egress"
  }
}

resource "cloudstack_network" "nodes" {
  name             = "${var.name}-nodes"
  display_text     = "${var.name} Kubernetes node tier"
  cidr             = var.subnet_cidr
  network_offering = var.network_offering
  vpc_id           = cloudstack_vpc.this.id
  acl_id           = cloudstack_network_acl.nodes.id
  zone             = var.zone
  project          = var.project

  lifecycle {
    # CloudStack rejects a tier outside its VPC only after the VPC exists;
    # checking here fails at plan time instead of half-way through apply.
    precondition {
      condition = (
        tonumber(split("/", var.subnet_cidr)[1]) >= tonumber(split("/", var.vpc_cidr)[1]) &&
        cidrhost("${split("/", var.subnet_cidr)[0]}/${split("/", var.vpc_cidr)[1]}", 0) == cidrhost(var.vpc_cidr, 0)
      )
      error_message = "subnet_cidr must lie inside vpc_cidr."
    }
  }
}
