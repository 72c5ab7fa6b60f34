# What the functions host's NOMAD_TOKEN may do: register, read and stop jobs in the aic
# namespace, run a job owner's `aic exec` in its allocations (alloc-exec), read allocations
# elsewhere and nodes (for `aic pool` and the up-front placement check). Nothing else.
namespace "aic" {
  capabilities = ["submit-job", "read-job", "list-jobs", "read-logs", "alloc-exec"]
}

# Read allocations in every namespace, for `aic pool`: GPUs that other namespaces' jobs hold
# are not free for aic's. Without it those GPUs look free (and jobs wait for them instead).
namespace "*" {
  capabilities = ["read-job"]
}

node {
  policy = "read"
}
