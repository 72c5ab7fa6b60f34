# The functions host on the pool: bucket notifications (MinIO webhook → /events), the gateway
# API (/v1) users reach with AIC_GATEWAY, and the Nomad scheduler for their jobs.
#
#   nomad namespace apply -description "aic jobs" aic
#   nomad var put -namespace aic nomad/jobs/aic-functions \
#     gateway_secret=$(openssl rand -hex 32) webhook_token=$(openssl rand -hex 16) \
#     s3_access_key=… s3_secret_key=… nomad_token=… \
#     rpc_url=https://… token=0x…(the AIC contract) treasury=0x… chain_id=1 \
#     escrow=0x…(the AICEscrow contract) settler_key=…(its settler's private key)
#   nomad job run -namespace aic infra/nomad/functions.nomad.hcl
#
# nomad_token is a token for the policy in acl/aic-functions.policy.hcl (submit and stop the
# aic-* jobs, read nodes): `nomad acl policy apply aic-functions acl/aic-functions.policy.hcl`,
# `nomad acl token create -name aic-functions -policy aic-functions`.

variable "image_dir" {
  type    = string
  default = "/usr/local/bin"
}

variable "worker_image" {
  type    = string
  default = "aic-worker:0.1.0"
}

variable "bucket" {
  type    = string
  default = "aic"
}

# Where the workers reach the gateway: a stable address (the serving gateway's nginx, which
# passes /v1/ to whichever functions host is up), never one host's dynamic port, which a
# redeploy or a reschedule of this job changes under every running job.
variable "worker_gateway" {
  type    = string
  default = "http://aic-serving-gateway.service.pool:8800"
}

# Where deployments answer, each at an origin of its own (never the web app's): a wildcard
# DNS name `*.<serving domain>` pointing at the serving gateway (serving-gateway.nomad.hcl,
# whose `serving_domain` is the same), behind the TLS terminator in front of it. Best a
# registrable domain apart from the web app's (as github.io is from github.com), so that no
# deployed page shares a cookie domain with the pool.
variable "serving_origin" {
  type    = string
  default = "https://*.apps.pool.example"
}

variable "s3_endpoint" {
  type    = string
  default = "http://minio.service.pool:9000"
}

job "aic-functions" {
  namespace   = "aic"
  type        = "service"
  datacenters = ["*"]

  group "functions" {
    count = 2

    # A host being stopped leaves the service first; the nginx gateway re-renders without it
    # (its template waits up to 5 s) and reloads, and only then is the host stopped: requests
    # kept alive to it are not cut (a POST cut mid-way is not retried by nginx).
    shutdown_delay = "10s"

    network {
      port "http" {}
    }

    service {
      name     = "aic-functions"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "functions" {
      driver = "exec"

      config {
        command = "${var.image_dir}/aic-functions"
        args    = ["serve", "--listen", "0.0.0.0:${NOMAD_PORT_http}"]
      }

      env {
        AIC_STORE           = "s3://${var.bucket}"
        AIC_S3_ENDPOINT     = var.s3_endpoint
        AIC_SCHEDULER       = "nomad"
        NOMAD_ADDR          = "http://${attr.unique.network.ip-address}:4646"
        NOMAD_NAMESPACE     = "aic"
        # Jobs run in the worker image (infra/nomad/worker.Dockerfile) under the docker driver:
        # the exec driver gives a task no /dev/nvidia*.
        AIC_NOMAD_DRIVER    = "docker"
        AIC_NOMAD_IMAGE     = var.worker_image
        AIC_NOMAD_WORKER    = "/usr/local/bin/aic-worker"
        AIC_GATEWAY_DOMAIN  = "aic-pool"
        AIC_LOG             = "info"
        # Workers reach the bucket through the gateway with their job's token, never with the
        # store's credentials; at the serving gateway's stable address (var.worker_gateway).
        AIC_WORKER_GATEWAY  = var.worker_gateway
        AIC_SERVING_ORIGIN  = var.serving_origin
      }

      # Secrets from Nomad Variables, never in the job file.
      template {
        destination = "${NOMAD_SECRETS_DIR}/aic.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/aic-functions" }}
          AIC_GATEWAY_SECRET={{ .gateway_secret }}
          AIC_WEBHOOK_TOKEN={{ .webhook_token }}
          AWS_ACCESS_KEY_ID={{ .s3_access_key }}
          AWS_SECRET_ACCESS_KEY={{ .s3_secret_key }}
          NOMAD_TOKEN={{ .nomad_token }}
          AIC_RPC_URL={{ .rpc_url }}
          AIC_TOKEN={{ .token }}
          AIC_TREASURY={{ .treasury }}
          AIC_CHAIN_ID={{ .chain_id }}
          AIC_ESCROW={{ .escrow }}
          AIC_SETTLER_KEY={{ .settler_key }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
