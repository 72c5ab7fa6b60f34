# What the functions host's NOMAD_TOKEN may do: register, read and stop jobs in the aic
# namespace, and read nodes (for `aic pool` and the up-front placement check). Nothing else.
namespace "aic" {
  capabilities = ["submit-job", "read-job", "list-jobs", "read-logs"]
}

node {
  policy = "read"
}
