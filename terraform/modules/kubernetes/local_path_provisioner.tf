# Rancher Local Path Provisioner: gives a cluster without a storage backend a
# StorageClass that provisions PersistentVolumes as directories on the node
# that runs the pod. Without any StorageClass the PostgreSQL claim stays
# Pending forever (the seed's first risk). Mirrors the upstream manifest of
# the pinned release, with names fixed and the controller locked down.

locals {
  local_path_enabled = var.install_local_path_provisioner ? 1 : 0
  local_path_name    = "local-path-provisioner"
  local_path_labels = merge(local.labels, {
    "app.kubernetes.io/name" = local.local_path_name
  })
  local_path_configmap   = "local-path-config"
  local_path_provisioner = "rancher.io/local-path"
}

resource "kubernetes_namespace_v1" "local_path_storage" {
  count = local.local_path_enabled

  metadata {
    name = "local-path-storage"
    labels = merge(local.local_path_labels, {
      # The helper pods that create volume directories mount a hostPath,
      # which every Pod Security level but privileged forbids.
      "pod-security.kubernetes.io/enforce" = "privileged"
    })
  }
}

resource "kubernetes_service_account_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name      = "local-path-provisioner-service-account"
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
    labels    = local.local_path_labels
  }
}

resource "kubernetes_cluster_role_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name   = "local-path-provisioner-role"
    labels = local.local_path_labels
  }

  rule {
    api_groups = [""]
    resources  = ["nodes", "persistentvolumeclaims", "configmaps", "pods"]
    verbs      = ["get", "list", "watch"]
  }

  rule {
    api_groups = [""]
    resources  = ["persistentvolumes"]
    verbs      = ["get", "list", "watch", "create", "patch", "update", "delete"]
  }

  rule {
    api_groups = [""]
    resources  = ["events"]
    verbs      = ["create", "patch"]
  }

  rule {
    api_groups = ["storage.k8s.io"]
    resources  = ["storageclasses"]
    verbs      = ["get", "list", "watch"]
  }
}

resource "kubernetes_cluster_role_binding_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name   = "local-path-provisioner-bind"
    labels = local.local_path_labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "ClusterRole"
    name      = kubernetes_cluster_role_v1.local_path_provisioner[0].metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.local_path_provisioner[0].metadata[0].name
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
  }
}

# Creating and deleting helper pods is confined to the provisioner's own namespace.
resource "kubernetes_role_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name      = "local-path-provisioner-role"
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
    labels    = local.local_path_labels
  }

  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["get", "list", "watch", "create", "patch", "update", "delete"]
  }
}

resource "kubernetes_role_binding_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name      = "local-path-provisioner-bind"
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
    labels    = local.local_path_labels
  }

  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.local_path_provisioner[0].metadata[0].name
  }

  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.local_path_provisioner[0].metadata[0].name
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
  }
}

resource "kubernetes_config_map_v1" "local_path_config" {
  count = local.local_path_enabled

  metadata {
    name      = local.local_path_configmap
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
    labels    = local.local_path_labels
  }

  data = {
    "config.json" = jsonencode({
      nodePathMap = [{
        node  = "DEFAULT_PATH_FOR_NON_LISTED_NODES"
        paths = [var.local_path_node_path]
      }]
    })

    # hostPath volumes ignore fsGroup, so the directory is made world-writable
    # for non-root pods (PostgreSQL runs as uid 999), as upstream does.
    setup = <<-EOT
      #!/bin/sh
      set -eu
      mkdir -m 0777 -p "$VOL_DIR"
    EOT

    teardown = <<-EOT
      #!/bin/sh
      set -eu
      rm -rf "$VOL_DIR"
    EOT

    "helperPod.yaml" = yamlencode({
      apiVersion = "v1"
      kind       = "Pod"
      metadata   = { name = "helper-pod" }
      spec = {
        priorityClassName = "system-node-critical"
        tolerations = [{
          key      = "node.kubernetes.io/disk-pressure"
          operator = "Exists"
          effect   = "NoSchedule"
        }]
        containers = [{
          name            = "helper-pod"
          image           = var.local_path_helper_image
          imagePullPolicy = "IfNotPresent"
        }]
      }
    })
  }
}

resource "kubernetes_deployment_v1" "local_path_provisioner" {
  count = local.local_path_enabled

  metadata {
    name      = local.local_path_name
    namespace = kubernetes_namespace_v1.local_path_storage[0].metadata[0].name
    labels    = local.local_path_labels
  }

  spec {
    replicas = 1

    selector {
      match_labels = { "app.kubernetes.io/name" = local.local_path_name }
    }

    template {
      metadata {
        labels = local.local_path_labels
        annotations = {
          # Restart the controller when its configuration changes.
          "checksum/config" = sha256(jsonencode(kubernetes_config_map_v1.local_path_config[0].data))
        }
      }

      spec {
        service_account_name = kubernetes_service_account_v1.local_path_provisioner[0].metadata[0].name

        security_context {
          run_as_non_root = true
          run_as_user     = 65534
          run_as_group    = 65534
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          #checkov:skip=CKV_K8S_8:The provisioner serves no health endpoint to probe; the kubelet restarts it when the process exits.
          #checkov:skip=CKV_K8S_9:The provisioner serves no traffic, so there is no readiness to report.
          #checkov:skip=CKV_K8S_15:The tag is pinned to a release; IfNotPresent keeps restarts working while the registry is unreachable.
          #checkov:skip=CKV_K8S_43:Pinned by exact release tag; a digest pin needs the registry mirror the cluster pulls from.
          name              = local.local_path_name
          image             = var.local_path_provisioner_image
          image_pull_policy = "IfNotPresent"
          command = [
            "local-path-provisioner", "--debug", "start",
            "--config", "/etc/config/config.json",
            "--provisioner-name", local.local_path_provisioner,
            "--configmap-name", local.local_path_configmap,
            "--service-account-name", kubernetes_service_account_v1.local_path_provisioner[0].metadata[0].name,
          ]

          env {
            name = "POD_NAMESPACE"
            value_from {
              field_ref {
                field_path = "metadata.namespace"
              }
            }
          }

          resources {
            requests = { cpu = "10m", memory = "32Mi" }
            limits   = { cpu = "200m", memory = "128Mi" }
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "config-volume"
            mount_path = "/etc/config/"
          }
        }

        volume {
          name = "config-volume"
          config_map {
            name = kubernetes_config_map_v1.local_path_config[0].metadata[0].name
          }
        }
      }
    }
  }
}

resource "kubernetes_storage_class_v1" "local_path" {
  count = local.local_path_enabled

  metadata {
    name   = var.storage_class_name
    labels = local.local_path_labels
  }

  storage_provisioner = local.local_path_provisioner
  reclaim_policy      = var.storage_reclaim_policy
  # A local volume lives on one node, so it must be created on the node the
  # scheduler picks for the pod, not before the pod is scheduled.
  volume_binding_mode = "WaitForFirstConsumer"

  # Whoever reads this class's name (the database) waits for a running provisioner.
  depends_on = [kubernetes_deployment_v1.local_path_provisioner]
}
