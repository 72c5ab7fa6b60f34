# The shape of the Nomad job the functions register for one train job (written by
# aic_core::scheduler::nomad::job_spec as JSON; this HCL form is for reading and for running
# one by hand). One allocation per miner, G GPUs each, the worker's rendezvous port, no
# restart or reschedule by Nomad: aic restarts the whole job from its last checkpoint by
# registering a new version with the next attempt in its meta.
#
# Store access: this by-hand form reads the store's credentials from a Nomad Variable. The
# functions, with AIC_WORKER_GATEWAY set (as functions.nomad.hcl does), register instead
# AIC_WORKER_GATEWAY and AIC_WORKER_TOKEN: a token for this job's objects only, checked by the
# gateway, and no credentials at all.
#
#   nomad job run -namespace aic -var job_id=01k… -var owner=0x… -var miners=2 -var gpus=3 \
#     -var image=registry.pool.example/aic-worker:0.1.0 infra/nomad/worker.nomad.hcl

variable "job_id" { type = string }
variable "owner" { type = string }
variable "miners" {
  type    = number
  default = 1
}
variable "gpus" {
  type    = number
  default = 1
}
variable "gateway" {
  type    = string
  default = "dc1"
}
variable "image" {
  type    = string
  default = "aic-worker:0.1.0"
}
variable "attempt" {
  type    = string
  default = "0"
}

job "aic-job" {
  namespace   = "aic"
  type        = "batch"
  datacenters = [var.gateway]
  # The node pool the functions count as room (AIC_NOMAD_NODE_POOL).
  node_pool   = "default"

  meta {
    aic_job     = var.job_id
    aic_owner   = var.owner
    aic_attempt = var.attempt
    aic_kind    = "train"
  }

  group "train" {
    count = var.miners

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    spread {
      attribute = "${node.unique.id}"
      weight    = 100
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    # A rank on a node that stops answering stays `unknown`, never replaced alone: aic
    # restarts the whole job (Nomad 1.8+).
    disconnect {
      replace   = false
      reconcile = "keep_original"
    }

    network {
      port "rdzv" {}
    }

    # The worker image (infra/nomad/worker.Dockerfile): the docker driver gives the container
    # the allocation's GPUs through NVIDIA's runtime; exec would give it no /dev/nvidia*.
    task "worker" {
      driver       = "docker"
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      config {
        image        = var.image
        command      = "/usr/local/bin/aic-worker"
        network_mode = "host"
        # Half the task's memory (at most 8 GiB): it counts against the memory limit.
        shm_size           = 4294967296
        image_pull_timeout = "30m"
      }

      env {
        AIC_JOB_OWNER   = var.owner
        AIC_JOB_ID      = var.job_id
        AIC_ALLOC_INDEX = "${NOMAD_ALLOC_INDEX}"
        AIC_ALLOC_COUNT = var.miners
        AIC_ATTEMPT     = "${NOMAD_META_aic_attempt}"
        AIC_MINER       = "${node.unique.name}"
        AIC_HOST        = "${NOMAD_IP_rdzv}"
        AIC_PORT        = "${NOMAD_PORT_rdzv}"
        AIC_WORK_DIR    = "${NOMAD_TASK_DIR}"
        # The uid the worker drops to before the program runs (what infra/nomad/egress.nft
        # names); the functions pick one per job from AIC_JOB_UIDS.
        AIC_JOB_UID     = "3000000"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/store.env"
        env         = true
        # Root's alone: the worker (root until it becomes the job's uid) reads and deletes it;
        # the program cannot read a copy Nomad renders again.
        perms       = "0600"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs" }}
          AIC_STORE={{ .store }}
          AIC_S3_ENDPOINT={{ .s3_endpoint }}
          AWS_ACCESS_KEY_ID={{ .s3_access_key }}
          AWS_SECRET_ACCESS_KEY={{ .s3_secret_key }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 2000
        # 8 GiB per GPU (a rank per GPU), as the scheduler registers it: for var.gpus = 1.
        memory = 8192

        device "nvidia/gpu" {
          count = var.gpus
        }
      }
    }
  }
}
