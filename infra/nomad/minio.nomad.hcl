# MinIO, the pool's bucket, with its notifications going to the functions host's /events
# (MinIO keeps undelivered events in the queue dir and retries). Then, once:
#   mc alias set pool http://<minio>:9000 …; infra/minio/setup.sh pool aic http://<functions> <webhook token>
# (setup.sh adds the event rule; the webhook target below is the same one it configures).

job "minio" {
  namespace   = "aic"
  type        = "service"
  datacenters = ["*"]

  group "minio" {
    count = 1

    volume "data" {
      type   = "host"
      source = "minio-data"
    }

    network {
      port "api" { static = 9000 }
      port "console" { static = 9001 }
    }

    service {
      name     = "minio"
      port     = "api"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/minio/health/live"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "minio" {
      driver = "exec"

      config {
        command = "/usr/local/bin/minio"
        args    = ["server", "/data", "--address", ":${NOMAD_PORT_api}", "--console-address", ":${NOMAD_PORT_console}"]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      env {
        MINIO_NOTIFY_WEBHOOK_ENABLE_AIC    = "on"
        MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_AIC = "/data/.aic-events"
        MINIO_NOTIFY_WEBHOOK_QUEUE_LIMIT_AIC = "100000"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/minio.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/minio" }}
          MINIO_ROOT_USER={{ .root_user }}
          MINIO_ROOT_PASSWORD={{ .root_password }}
          MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_AIC={{ .webhook_token }}
          {{ end }}
          {{ range nomadService "aic-functions" }}
          MINIO_NOTIFY_WEBHOOK_ENDPOINT_AIC=http://{{ .Address }}:{{ .Port }}/events{{ break }}{{ end }}
        EOT
      }

      resources {
        cpu    = 1000
        memory = 2048
      }
    }
  }
}
