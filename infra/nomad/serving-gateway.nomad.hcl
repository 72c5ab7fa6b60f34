# The pool's serving gateway: nginx in front of every deployment's replicas, its
# configuration rendered by Nomad from the services the replicas register
# (`aic-serve-<deployment>`, provider "nomad", health-checked). A request to
# /d/<deployment>/… goes to a healthy replica, round robin; a replica that fails is passed
# over (proxy_next_upstream). The functions host serves the same /d/ routes from the bucket's
# registrations; this is the production path where nginx fronts the pool. The stable
# /n/<owner>/<name>/ routes need the bucket's name records: nginx passes them to the
# functions host (service `aic-functions`), which resolves and forwards them.

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
        args    = ["-c", "${NOMAD_TASK_DIR}/nginx.conf", "-g", "daemon off;"]
      }

      template {
        destination   = "${NOMAD_TASK_DIR}/nginx.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          worker_processes auto;
          pid {{ env "NOMAD_TASK_DIR" }}/nginx.pid;
          events { worker_connections 4096; }
          http {
            access_log /dev/stdout;
            error_log /dev/stderr warn;
            client_max_body_size 16m;
          {{- range nomadServices }}{{ if .Name | regexMatch "^aic-serve-" }}
            upstream {{ .Name }} {
            {{- range nomadService .Name }}
              server {{ .Address }}:{{ .Port }} max_fails=1 fail_timeout=5s;
            {{- end }}
              keepalive 32;
            }
          {{- end }}{{ end }}
            upstream aic_functions {
            {{- range nomadService "aic-functions" }}
              server {{ .Address }}:{{ .Port }} max_fails=1 fail_timeout=5s;
            {{- else }}
              server 127.0.0.1:9 down;
            {{- end }}
              keepalive 8;
            }
            server {
              listen {{ env "NOMAD_PORT_http" }};
              location = /healthz { return 200 "ok\n"; }
          {{- range nomadServices }}{{ if .Name | regexMatch "^aic-serve-" }}
              location /d/{{ .Name | trimPrefix "aic-serve-" }}/ {
                proxy_pass http://{{ .Name }}/;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_next_upstream error timeout http_502 http_503;
              }
          {{- end }}{{ end }}
              location /d/ { return 503 '{"error": "no live replica of this deployment"}\n'; }
              location /n/ {
                proxy_pass http://aic_functions;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
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
