# What the functions host's NOMAD_TOKEN may do: register, read and stop jobs in the aic
# namespace, run a job owner's `aic exec` in its allocations (alloc-exec), read allocations
# elsewhere and nodes (for `aic pool` and the up-front placement check). Nothing else.
namespace "aic" {
  capabilities = ["submit-job", "read-job", "list-jobs", "read-logs", "alloc-exec"]

  # Each job's workers' token, in the job's own variable (nomad/jobs/aic-<id>): written as the
  # job is registered, deleted with it; the job's tasks read it through their workload
  # identity, which may read nomad/jobs/<its job> without any policy.
  variables {
    path "nomad/jobs/aic-*" {
      capabilities = ["write", "destroy"]
    }
    # The lock one functions host of several holds to be the one that watches and keeps house.
    path "aic/leader" {
      capabilities = ["write", "read"]
    }
    # Each job's uid, claimed for it alone (aic/uids/<uid>, written only if absent, read to
    # see who holds one, destroyed when the job ends).
    path "aic/uids/*" {
      capabilities = ["write", "read", "destroy"]
    }
  }
}

# Read allocations in every namespace, for `aic pool`: GPUs that other namespaces' jobs hold
# are not free for aic's. Without it those GPUs look free (and jobs wait for them instead).
namespace "*" {
  capabilities = ["read-job"]
}

node {
  policy = "read"
}
