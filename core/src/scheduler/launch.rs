//! The launch contract: what a scheduler tells each allocation's `aic-worker`, in its
//! environment, and how the worker reads it back.
//!
//! Every backend sets these variables through [`Launch::to_env`] (the local scheduler, which
//! knows every value) or [`Launch::template`] (Nomad, whose runtime fills the allocation's own
//! values in when the task starts); the worker reads them with [`Launch::from_env`]. Of the
//! operator's own variables, [`passed_on`] says which reach a worker: never the pool's
//! secrets (`grant::NEVER_INHERITED`), and no store credentials where the worker has a
//! gateway token or its backend hands them over another way.

use std::path::PathBuf;

use aic_schemas::{Address, JobId};

pub const JOB_OWNER: &str = "AIC_JOB_OWNER";
pub const JOB_ID: &str = "AIC_JOB_ID";
pub const ALLOC_INDEX: &str = "AIC_ALLOC_INDEX";
pub const ALLOC_COUNT: &str = "AIC_ALLOC_COUNT";
pub const ATTEMPT: &str = "AIC_ATTEMPT";
pub const MINER: &str = "AIC_MINER";
pub const HOST: &str = "AIC_HOST";
pub const PORT: &str = "AIC_PORT";
pub const WORK_DIR: &str = "AIC_WORK_DIR";
pub const SERVE_PORT: &str = "AIC_SERVE_PORT";
pub const GPUS: &str = "CUDA_VISIBLE_DEVICES";
/// A deployment's end (unix seconds): its run's first start + its paid hours, the same for
/// every replica and every restart of one (a worker restarted does not start its hours anew).
pub const SERVE_UNTIL: &str = "AIC_SERVE_UNTIL";
/// The miner's cache of prepared Python environments (a folder the worker's environment
/// keeper writes; `aic-worker`'s `envcache`). Unset or empty: nothing is cached.
pub const ENV_CACHE: &str = "AIC_ENV_CACHE";

/// What one allocation's worker is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub owner: Address,
    pub job: JobId,
    /// This allocation's index, of `count`.
    pub index: u32,
    pub count: u32,
    /// 0, then 1.. each time the job starts again after a lost allocation.
    pub attempt: u32,
    /// The miner's name (a worker run by hand uses the host's).
    pub miner: Option<String>,
    /// Where the other allocations reach this one, and its assigned port (a worker run by
    /// hand listens on loopback, on a free port).
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The allocation's own folder.
    pub work_dir: PathBuf,
    /// The port a serve replica listens on, where the scheduler assigned one apart from `port`.
    pub serve_port: Option<u16>,
    /// The GPUs the allocation holds, as `CUDA_VISIBLE_DEVICES` lists them, where the
    /// scheduler assigns them itself (a device plugin says so otherwise).
    pub gpus: Option<String>,
    /// A deployment's end (unix seconds), where the scheduler knows it ([`SERVE_UNTIL`]).
    pub serve_until: Option<i64>,
}

impl Launch {
    /// The variables, every value known.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (JOB_OWNER, self.owner.to_string()),
            (JOB_ID, self.job.to_string()),
            (ALLOC_INDEX, self.index.to_string()),
            (ALLOC_COUNT, self.count.to_string()),
            (ATTEMPT, self.attempt.to_string()),
            (WORK_DIR, self.work_dir.to_string_lossy().into_owned()),
        ];
        v.extend(self.miner.clone().map(|m| (MINER, m)));
        v.extend(self.host.clone().map(|h| (HOST, h)));
        v.extend(self.port.map(|p| (PORT, p.to_string())));
        v.extend(self.serve_port.map(|p| (SERVE_PORT, p.to_string())));
        v.extend(self.gpus.clone().map(|g| (GPUS, g)));
        v.extend(self.serve_until.map(|t| (SERVE_UNTIL, t.to_string())));
        v
    }

    /// The variables for a runtime that fills each allocation's own values in as it starts
    /// the worker: `fill(name)` is the placeholder for `name` (Nomad: `${NOMAD_ALLOC_INDEX}`);
    /// `serve` adds the serving port and the deployment's end.
    pub fn template(
        owner: &Address,
        job: &JobId,
        count: u32,
        serve: bool,
        fill: impl Fn(&'static str) -> String,
    ) -> Vec<(&'static str, String)> {
        let mut v = vec![(JOB_OWNER, owner.to_string()), (JOB_ID, job.to_string()), (ALLOC_COUNT, count.to_string())];
        let mut per_alloc = vec![ALLOC_INDEX, ATTEMPT, MINER, HOST, PORT, WORK_DIR];
        if serve {
            per_alloc.extend([SERVE_PORT, SERVE_UNTIL]);
        }
        v.extend(per_alloc.into_iter().map(|k| (k, fill(k))));
        v
    }

    /// Reads the variables back (`get` is the environment); `Err` names the first one missing
    /// or malformed.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Launch, String> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let need =
            |k: &str| get(k).ok_or_else(|| format!("{k} is not set; aic-worker is started by the pool's scheduler"));
        fn parse<T: std::str::FromStr>(k: &str, v: String) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| format!("{k}={v:?}: {e}"))
        }
        Ok(Launch {
            owner: parse(JOB_OWNER, need(JOB_OWNER)?)?,
            job: parse(JOB_ID, need(JOB_ID)?)?,
            index: parse(ALLOC_INDEX, need(ALLOC_INDEX)?)?,
            count: parse(ALLOC_COUNT, need(ALLOC_COUNT)?)?,
            attempt: get(ATTEMPT).map(|v| parse(ATTEMPT, v)).transpose()?.unwrap_or(0),
            miner: get(MINER),
            host: get(HOST),
            port: get(PORT).map(|v| parse(PORT, v)).transpose()?,
            work_dir: PathBuf::from(need(WORK_DIR)?),
            serve_port: get(SERVE_PORT).map(|v| parse(SERVE_PORT, v)).transpose()?,
            gpus: get(GPUS),
            serve_until: get(SERVE_UNTIL).map(|v| parse(SERVE_UNTIL, v)).transpose()?,
        })
    }
}

/// How a backend's workers reach the bucket, which decides what of the operator's worker
/// environment they may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAccess {
    /// Through the pool's gateway with their job's token: no store variable at all.
    Gateway,
    /// Credentials handed over apart from the job's specification (Nomad Variables): the
    /// keys themselves are withheld.
    Apart,
    /// From the environment given (the embedded pool, a pool without a gateway).
    Environment,
}

/// The operator's `worker_env` pairs a worker is given under `access`.
pub fn passed_on(worker_env: &[(String, String)], access: StoreAccess) -> impl Iterator<Item = &(String, String)> {
    worker_env.iter().filter(move |(k, _)| match access {
        StoreAccess::Gateway => !crate::grant::is_store_variable(k),
        StoreAccess::Apart => k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY",
        StoreAccess::Environment => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            owner: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266".parse().unwrap(),
            job: "01jb0000000000000000000000".parse().unwrap(),
            index: 1,
            count: 2,
            attempt: 1,
            miner: Some("miner-2".into()),
            host: Some("127.0.1.2".into()),
            port: Some(40001),
            work_dir: "/w/miner-2/j-1".into(),
            serve_port: None,
            serve_until: None,
            gpus: Some("0,1".into()),
        }
    }

    #[test]
    fn what_a_scheduler_sets_the_worker_reads_back() {
        let l = launch();
        let env: std::collections::HashMap<&str, String> = l.to_env().into_iter().collect();
        assert_eq!(Launch::from_env(|k| env.get(k).cloned()).unwrap(), l);
    }

    #[test]
    fn a_template_names_the_same_variables_as_known_values() {
        let l = Launch { serve_port: Some(8080), serve_until: Some(1_800_000_000), ..launch() };
        let known: std::collections::BTreeSet<&str> = l.to_env().into_iter().map(|(k, _)| k).collect();
        let template: std::collections::BTreeSet<&str> =
            Launch::template(&l.owner, &l.job, 2, true, |k| format!("${{{k}}}")).into_iter().map(|(k, _)| k).collect();
        // The GPUs come from the device plugin where values are filled in by a runtime.
        assert_eq!(known.difference(&template).collect::<Vec<_>>(), [&GPUS]);
        assert!(template.is_subset(&known));
    }

    #[test]
    fn a_missing_or_malformed_variable_is_named() {
        let env = launch().to_env();
        let without = |name: &str| {
            let e: std::collections::HashMap<&str, String> = env.iter().filter(|(k, _)| *k != name).cloned().collect();
            Launch::from_env(|k| e.get(k).cloned()).unwrap_err()
        };
        assert!(without(JOB_ID).starts_with("AIC_JOB_ID is not set"));
        assert!(without(WORK_DIR).starts_with("AIC_WORK_DIR is not set"));
        let bad = Launch::from_env(|k| {
            if k == PORT { Some("x".into()) } else { env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()) }
        });
        assert!(bad.unwrap_err().starts_with("AIC_PORT=\"x\""));
    }

    #[test]
    fn the_operator_env_passes_on_without_store_credentials_where_they_come_otherwise() {
        let env: Vec<(String, String)> = [
            ("AIC_STORE", "s3://b"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("NCCL_DEBUG", "WARN"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let keys = |a| passed_on(&env, a).map(|(k, _)| k.as_str()).collect::<Vec<_>>();
        assert_eq!(
            keys(StoreAccess::Environment),
            ["AIC_STORE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NCCL_DEBUG"]
        );
        assert_eq!(keys(StoreAccess::Apart), ["AIC_STORE", "NCCL_DEBUG"]);
        assert_eq!(keys(StoreAccess::Gateway), ["NCCL_DEBUG"]);
    }
}
