locals {
  # These names are the application's contract (the seed's ConfigMap and
  # ARCHITECTURE.md: POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB), so they are
  # fixed here rather than inputs that could drift from the Kustomize overlay.
  name          = "postgresql"
  service_name  = "postgresql-service"
  headless_name = "postgresql-headless"
  secret_name   = "postgresql-credentials"
  database      = "titanium"
  port          = 5432

  # database_ha: the CloudNativePG Cluster of k8s/components/database-ha
  # replaces the StatefulSet. Its name, its primary's Service (the operator
  # makes <name>-rw) and the app database's owner are that component's; the
  # tests check that both sides agree.
  ha_cluster_name = "titanium-db"
  ha_service_name = "${local.ha_cluster_name}-rw"
  ha_owner        = "titanium"

  # The volume is mounted one level above PGDATA: initdb wants an empty
  # directory it owns, and a fresh volume's root may hold lost+found or belong
  # to root.
  data_mount = "/var/lib/postgresql/data"
  pgdata     = "/var/lib/postgresql/data/pgdata"

  # The postgres user of the Debian-based image.
  postgres_uid = 999

  selector = {
    "app.kubernetes.io/name"     = local.name
    "app.kubernetes.io/instance" = "titanium"
  }
  labels = merge(var.labels, local.selector, {
    "app.kubernetes.io/component"  = "database"
    "app.kubernetes.io/part-of"    = "titanium"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  # pg_isready over TCP, so the probe fails while the entrypoint runs its
  # socket-only bootstrap server and passes once clients can really connect.
  pg_isready = ["/bin/sh", "-c", "exec pg_isready -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" -h 127.0.0.1 -p ${local.port}"]
}

# Read by the StatefulSet only. The services read their credentials from
# titanium-secrets, which Kustomize owns; Terraform must never manage it too.
resource "kubernetes_secret_v1" "credentials" {
  count = var.database_ha ? 0 : 1

  metadata {
    name      = local.secret_name
    namespace = var.namespace
    labels    = local.labels
  }

  type = "Opaque"
  data = {
    POSTGRES_USER     = var.postgres_user
    POSTGRES_PASSWORD = var.postgres_password
    POSTGRES_DB       = local.database
  }
}

# The address the services connect to: a stable virtual IP, so a restarted
# pod with a new IP does not break clients that cached the DNS answer.
resource "kubernetes_service_v1" "postgresql" {
  count = var.database_ha ? 0 : 1

  metadata {
    name      = local.service_name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    type     = "ClusterIP"
    selector = local.selector

    port {
      name        = "postgresql"
      port        = local.port
      target_port = "postgresql"
      protocol    = "TCP"
    }
  }
}

# Governing Service of the StatefulSet: gives postgresql-0 its stable DNS name.
resource "kubernetes_service_v1" "headless" {
  count = var.database_ha ? 0 : 1

  metadata {
    name      = local.headless_name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    cluster_ip                  = "None"
    publish_not_ready_addresses = true
    selector                    = local.selector

    port {
      name        = "postgresql"
      port        = local.port
      target_port = "postgresql"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_stateful_set_v1" "postgresql" {
  count = var.database_ha ? 0 : 1

  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    # A single primary; PostgreSQL replicas are not interchangeable, so
    # scaling this number up would start independent, empty databases.
    replicas     = 1
    service_name = kubernetes_service_v1.headless[0].metadata[0].name

    selector {
      match_labels = local.selector
    }

    update_strategy {
      type = "RollingUpdate"
    }

    # Deleting or scaling down the StatefulSet must never take the data with it.
    persistent_volume_claim_retention_policy {
      when_deleted = "Retain"
      when_scaled  = "Retain"
    }

    template {
      metadata {
        labels = local.labels
      }

      spec {
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = 60

        security_context {
          run_as_non_root = true
          run_as_user     = local.postgres_uid
          run_as_group    = local.postgres_uid
          fs_group        = local.postgres_uid
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          # checkov has no Terraform checks for StatefulSets, so
          # tests/test_terraform.py asserts this container's hardening itself.
          # Deliberate: IfNotPresent on an exact tag keeps the database
          # restartable while the registry is unreachable; credentials come in
          # as secretKeyRef variables because the official image reads them so
          # on first start; uid 999 is the image's postgres user, which owns
          # the data files.
          name              = local.name
          image             = var.image
          image_pull_policy = "IfNotPresent"

          port {
            name           = "postgresql"
            container_port = local.port
            protocol       = "TCP"
          }

          env {
            name = "POSTGRES_USER"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.credentials[0].metadata[0].name
                key  = "POSTGRES_USER"
              }
            }
          }

          env {
            name = "POSTGRES_PASSWORD"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.credentials[0].metadata[0].name
                key  = "POSTGRES_PASSWORD"
              }
            }
          }

          env {
            name = "POSTGRES_DB"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.credentials[0].metadata[0].name
                key  = "POSTGRES_DB"
              }
            }
          }

          env {
            name  = "PGDATA"
            value = local.pgdata
          }

          resources {
            requests = {
              cpu    = var.resources.request_cpu
              memory = var.resources.request_memory
            }
            limits = {
              cpu    = var.resources.limit_cpu
              memory = var.resources.limit_memory
            }
          }

          security_context {
            run_as_non_root            = true
            run_as_user                = local.postgres_uid
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          # initdb on a fresh volume takes a while; liveness only starts
          # counting once this has passed.
          startup_probe {
            exec {
              command = local.pg_isready
            }
            period_seconds    = 5
            timeout_seconds   = 5
            failure_threshold = 60
          }

          readiness_probe {
            exec {
              command = local.pg_isready
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = 3
          }

          liveness_probe {
            exec {
              command = local.pg_isready
            }
            period_seconds    = 20
            timeout_seconds   = 5
            failure_threshold = 6
          }

          volume_mount {
            name       = "data"
            mount_path = local.data_mount
          }

          # With a read-only root filesystem these are the only other places
          # PostgreSQL writes: its socket and lock file, and scratch files.
          volume_mount {
            name       = "run"
            mount_path = "/var/run/postgresql"
          }

          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }

          volume_mount {
            name       = "dshm"
            mount_path = "/dev/shm"
          }
        }

        volume {
          name = "run"
          empty_dir {}
        }

        volume {
          name = "tmp"
          empty_dir {}
        }

        # The runtime's default 64 MiB /dev/shm makes parallel queries fail
        # with "could not resize shared memory segment".
        volume {
          name = "dshm"
          empty_dir {
            medium     = "Memory"
            size_limit = "256Mi"
          }
        }
      }
    }

    volume_claim_template {
      metadata {
        name   = "data"
        labels = local.labels
      }

      spec {
        access_modes       = ["ReadWriteOnce"]
        storage_class_name = var.storage_class_name

        resources {
          requests = {
            storage = var.storage_size
          }
        }
      }
    }
  }

  timeouts {
    create = "10m"
    update = "10m"
  }
}

# Only pods in the same namespace (the services, the migration job) may open
# connections to the database.
resource "kubernetes_network_policy_v1" "postgresql" {
  count = var.database_ha ? 0 : 1

  metadata {
    name      = "${local.name}-ingress"
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    policy_types = ["Ingress"]

    pod_selector {
      match_labels = local.selector
    }

    # Only the pods that own tables and the migration Job; the gateway and
    # auth-service never talk to PostgreSQL.
    ingress {
      from {
        pod_selector {
          match_expressions {
            key      = "app.kubernetes.io/name"
            operator = "In"
            values   = var.client_app_names
          }
        }
      }

      ports {
        port     = "postgresql"
        protocol = "TCP"
      }
    }
  }
}
