# The pool's serving gateway: nginx on a static port in front of the functions hosts (service
# `aic-functions`), which forward each deployment's origin — `<deployment>.<serving domain>`,
# `<name>--<owner>.<serving domain>` (wildcard DNS to this gateway) — to a live replica,
# round robin; the old paths /d/… and /n/… get a redirect there. It passes /v1/ on too: the workers' stable address for the gateway API
# (`worker_gateway` in functions.nomad.hcl), whichever functions host is up. The functions host forwards only to replicas that are both ready (their worker
# registered them after its own check of the app) and healthy in Nomad (the checks of their
# allocation, `GET /v1/client/allocation/:id/checks`). nginx cannot route to the replicas
# directly: the `nomadService` template function lists every registration whatever its
# checks say (hashicorp/nomad#23317), so traffic would reach replicas still starting or
# failing.

# Deployments' domain: `*.<serving_domain>` resolves to this gateway (the functions job's
# `serving_origin` names the same).
variable "serving_domain" {
  type    = string
  default = "apps.pool.example"
}

job "aic-serving-gateway" {
  namespace   = "aic"
  type        = "service"
  datacenters = ["*"]

  group "gateway" {
    count = 2

    network {
      port "http" { static = 8800 }
    }

    service {
      name     = "aic-serving-gateway"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "nginx" {
      driver = "exec"

      config {
        command = "/usr/sbin/nginx"
        # `-e`: nginx opens its error log before reading its configuration, and the exec
        # driver's chroot has no /var (so neither /var/log/nginx nor /var/lib/nginx).
        args    = ["-e", "/dev/stderr", "-c", "${NOMAD_TASK_DIR}/nginx.conf", "-g", "daemon off;"]
      }

      env {
        AIC_SERVING_DOMAIN = var.serving_domain
      }

      template {
        destination   = "${NOMAD_TASK_DIR}/nginx.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          worker_processes auto;
          # After a reload (SIGHUP, as the functions hosts come and go), old workers close what
          # they still hold within 10 s: a live-log wait or a refused body being drained would
          # otherwise keep them (and the old upstream list) up to two minutes.
          worker_shutdown_timeout 10s;
          pid {{ env "NOMAD_TASK_DIR" }}/nginx.pid;
          events { worker_connections 4096; }
          http {
            access_log /dev/stdout;
            error_log /dev/stderr warn;
            client_max_body_size 16m;
            # Temporary files in the task's own directory (nginx makes these at start).
            client_body_temp_path {{ env "NOMAD_TASK_DIR" }}/client_body;
            proxy_temp_path {{ env "NOMAD_TASK_DIR" }}/proxy;
            fastcgi_temp_path {{ env "NOMAD_TASK_DIR" }}/fastcgi;
            uwsgi_temp_path {{ env "NOMAD_TASK_DIR" }}/uwsgi;
            scgi_temp_path {{ env "NOMAD_TASK_DIR" }}/scgi;
            upstream aic_functions {
            {{- range nomadService "aic-functions" }}
              server {{ .Address }}:{{ .Port }} max_fails=1 fail_timeout=5s;
            {{- else }}
              server 127.0.0.1:9 down;
            {{- end }}
              keepalive 8;
            }
            # Deployments, each at an origin of its own: every path is the deployment's, passed
            # with the Host it came with (the functions host routes by it). Answers pass on as
            # they come (a token stream, server-sent events, a large download at the visitor's
            # pace); a stream may pause up to 5 minutes between two chunks. Request bodies pass
            # on as they come too (an upload to a model), up to the functions host's 1 GiB.
            server {
              listen {{ env "NOMAD_PORT_http" }};
              server_name *.{{ env "AIC_SERVING_DOMAIN" }};
              client_max_body_size 1g;
              location / {
                proxy_request_buffering off;
                proxy_pass http://aic_functions;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_buffering off;
                proxy_read_timeout 300s;
                proxy_next_upstream error timeout;
              }
            }
            server {
              listen {{ env "NOMAD_PORT_http" }} default_server;
              location = /healthz { return 200 "ok\n"; }
              # Old paths of deployments: the functions host redirects to their origins.
              location /d/ {
                proxy_pass http://aic_functions;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_next_upstream error timeout;
              }
              location /n/ {
                proxy_pass http://aic_functions;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_next_upstream error timeout;
              }
              # The gateway API, for the workers (AIC_WORKER_GATEWAY in functions.nomad.hcl):
              # an address that outlives any one functions host. Live logs and exec frames
              # wait up to a minute for news; answers are passed on as they come.
              location /v1/ {
                proxy_pass http://aic_functions;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_buffering off;
                proxy_read_timeout 120s;
                proxy_next_upstream error timeout;
              }
            }
          }
        EOT
      }

      resources {
        cpu    = 500
        memory = 128
      }
    }
  }
}
