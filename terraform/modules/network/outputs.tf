output "vpc_id" {
  description = "ID of the VPC."
  value       = cloudstack_vpc.this.id
}

output "network_id" {
  description = "ID of the Kubernetes node tier; attach the cluster's nodes to this network."
  value       = cloudstack_network.nodes.id
}

output "acl_id" {
  description = "ID of the network ACL guarding the node tier."
  value       = cloudstack_network_acl.nodes.id
}

output "subnet_cidr" {
  description = "CIDR of the Kubernetes node tier."
  value       = cloudstack_network.nodes.cidr
}
