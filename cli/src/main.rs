//! `aic`: run training jobs and deploy models on the AI Crypto mining pool.

mod account;
mod browser;
mod capacity;
mod data;
mod demo;
mod deploy;
mod deploykey;
mod env;
mod exec;
mod gputable;
mod gpuuse;
mod identity;
mod jobs;
mod logs;
mod pool;
mod progress;
mod reclaim;
mod remote;
mod secret;
mod submit;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aic", version, about = "Run training jobs and deploy models on the AI Crypto mining pool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The embedded pool on this machine.
    #[command(subcommand)]
    Dev(DevCmd),
    /// Datasets in your data/ folder of the pool's storage.
    #[command(subcommand)]
    Data(DataCmd),
    /// Your secrets (tokens, keys) for your jobs' programs: `--secret NAME` on run and deploy.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Upload a script, submit it, and watch it to the end.
    Run(RunArgs),
    /// Submit a job file (YAML or JSON) and watch it.
    Submit {
        /// The job file.
        file: PathBuf,
        /// A payment made elsewhere (e.g. in Metamask): its transaction hash.
        #[arg(long)]
        tx: Option<String>,
        /// Submit and return without watching.
        #[arg(long, short)]
        detach: bool,
    },
    /// Serve a project (app.py exposing a WSGI or ASGI `app`) as an HTTP API; list, logs, rm.
    Deploy(DeployCmd),
    /// Open the pool's web app in the browser (a page: jobs, JOB_ID, new, data, deployments, pool).
    Open {
        /// What to open: a job id, or a page.
        page: Option<String>,
    },
    /// The pool's gateways, their miners and free GPUs.
    Pool {
        #[arg(long)]
        json: bool,
    },
    /// Your jobs, newest first (the newest 50 unless --limit or --all).
    Jobs {
        #[arg(long)]
        json: bool,
        /// How many of the newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every job.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
        /// Only jobs created since: `30m`, `2h`, `3d`, or a date (`2026-12-01`, RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// What your jobs and deployments cost: paid, charged for the GPU-seconds used, refunded,
    /// and still held in the escrow, with totals.
    Spend {
        #[arg(long)]
        json: bool,
        /// Only jobs created since: `30m`, `2h`, `3d`, or a date (`2026-12-01`, RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Takes back your deposits whose deadline has passed (paid hours + 7 days) that the pool
    /// did not settle: a job paid but never submitted, or a run never settled.
    Reclaim {
        /// The job whose deposits to reclaim.
        #[arg(required_unless_present = "all")]
        job: Option<String>,
        /// Every deposit of yours that is due.
        #[arg(long, conflicts_with = "job")]
        all: bool,
    },
    /// A job's state and history.
    Status {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// A job's output.
    Logs {
        job: String,
        /// Keep following until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// Its GPU samples (utilization and memory, every 5 s per GPU) rather than its output.
        #[arg(long)]
        metrics: bool,
    },
    /// How busy a job's GPUs are, followed live until it ends: utilization and memory per
    /// allocation and GPU, averaged and last.
    Top { job: String },
    /// A job's outputs (checkpoints, results).
    #[command(subcommand)]
    Results(ResultsCmd),
    /// Stop a job.
    Cancel { job: String },
    /// Start a failed, cancelled or timed-out training job again under the same id, from its
    /// synced outputs (the checkpoint), as a new paid run; then watch it.
    Resume {
        job: String,
        /// Hours to pay for this run (default: the last run's).
        #[arg(long)]
        hours: Option<f64>,
        /// A payment made elsewhere: its transaction hash.
        #[arg(long)]
        tx: Option<String>,
        /// Resume and return without watching.
        #[arg(long, short)]
        detach: bool,
    },
    /// Run a command inside a running job's allocation (its folders, environment and GPUs):
    /// `aic exec JOB -- nvidia-smi`. Exits with the command's exit code.
    Exec {
        job: String,
        /// The allocation (0 to miners - 1).
        #[arg(long, default_value_t = 0, conflicts_with = "all")]
        alloc: u32,
        /// In every allocation, each line tagged `[alloc i]`.
        #[arg(long)]
        all: bool,
        /// Stream stdin to the command as it comes (else it is read whole first).
        #[arg(long, short)]
        interactive: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print an OpenSSH `Host` entry that reaches a running job's allocation through `aic`
    /// (`ssh`, `scp`, editors' remote modes), with your own key.
    SshConfig {
        job: String,
        #[arg(long, default_value_t = 0)]
        alloc: u32,
        /// Your private key (its `.pub` beside it); default the first of ~/.ssh/id_*.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// (for ssh's ProxyCommand) sshd in the allocation for your key, over stdin and stdout.
    #[command(hide = true)]
    SshProxy {
        job: String,
        #[arg(long, default_value_t = 0)]
        alloc: u32,
        #[arg(long)]
        key: PathBuf,
    },
    /// An interactive shell inside a running job's allocation, on a terminal of its own.
    Shell {
        job: String,
        #[arg(long, default_value_t = 0)]
        alloc: u32,
    },
    /// The tutorial, end to end on the embedded pool: dataset, training, checkpoint.
    Demo,
    /// Sign in with your wallet (Sign-In with Ethereum).
    Login(LoginArgs),
    /// Forget the session.
    Logout,
    /// Who you are signed in as, and your AIC balance.
    Whoami,
    /// What a job would cost, before anything is paid.
    Quote {
        #[arg(long, default_value_t = 1)]
        miners: u32,
        #[arg(long, default_value_t = 1)]
        gpus: u32,
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        #[command(flatten)]
        gpu: GpuArgs,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Host the embedded pool in the foreground (functions + simulated miners) until Ctrl-C.
    Up {
        /// Simulated miners (default: AIC_POOL_MINERS or 2).
        #[arg(long)]
        miners: Option<u32>,
        /// GPU slots per miner (default: AIC_POOL_GPUS or 1).
        #[arg(long)]
        gpus: Option<u32>,
        /// One miner's GPUs, MODEL:MEM_GB[:COUNT] (e.g. A10:24:2); repeat it for each miner
        /// of a mixed farm (default: AIC_POOL_GPU_TYPES, else miners alike).
        #[arg(long = "gpu-type", value_name = "MODEL:MEM_GB[:COUNT]")]
        gpu_type: Vec<aic_core::scheduler::gpus::GpuType>,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Upload a file or a folder as dataset NAME (default: its file name).
    Put { local: PathBuf, name: Option<String> },
    /// Download dataset NAME into DIR (default: ./NAME).
    Get { name: String, dir: Option<PathBuf> },
    /// List datasets, or the files of one.
    Ls {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete dataset NAME (every file in it).
    Rm { name: String },
}

#[derive(Subcommand)]
enum SecretCmd {
    /// Set secret NAME (A-Z, 0-9, _) from standard input, or from --file F.
    Set {
        name: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Your secrets' names and when each was set (never their values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove secret NAME.
    Rm { name: String },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployCmd {
    #[command(subcommand)]
    sub: Option<DeploySub>,
    /// The project folder: app.py (a WSGI `app`, e.g. Flask, or an ASGI one, e.g. FastAPI),
    /// requirements.txt, model files.
    path: Option<PathBuf>,
    /// A name to find it by.
    #[arg(long)]
    name: Option<String>,
    /// Replicas, one per miner.
    #[arg(long, default_value_t = 1, conflicts_with = "max_replicas")]
    replicas: u32,
    /// Autoscaled: the fewest replicas (0: none while nobody calls it; the next request starts one).
    #[arg(long)]
    min_replicas: Option<u32>,
    /// Autoscaled: the most replicas (what the deposit covers).
    #[arg(long)]
    max_replicas: Option<u32>,
    /// Autoscaled: requests under way per replica to aim at (default 4).
    #[arg(long)]
    target_concurrency: Option<u32>,
    /// Autoscaled to zero: minutes without a request before the last replica stops (default 5).
    #[arg(long)]
    idle_minutes: Option<u32>,
    /// GPUs per replica.
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// How long it serves; the quote is computed from it.
    #[arg(long, default_value_t = 1.0)]
    hours: f64,
    /// The app's file inside the project (default app.py), exposing `app`.
    #[arg(long)]
    entrypoint: Option<String>,
    /// wsgi (uWSGI: Flask, Django) or asgi (uvicorn: FastAPI, Starlette); default: told
    /// from the app.
    #[arg(long, value_name = "wsgi|asgi")]
    server: Option<aic_schemas::AppServer>,
    /// Processes per replica (default 2).
    #[arg(long)]
    workers: Option<u32>,
    /// Threads per process, WSGI apps (default 2).
    #[arg(long)]
    threads: Option<u32>,
    /// Callers need a key of the deployment's (`aic deploy key create NAME`), sent as
    /// `Authorization: Bearer KEY`.
    #[arg(long)]
    private: bool,
    /// A secret of yours (`aic secret set NAME`) for the app's environment (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    #[command(flatten)]
    gpu: GpuArgs,
    /// A payment made elsewhere: its transaction hash.
    #[arg(long)]
    tx: Option<String>,
    /// Submit and print the API address without waiting (needs a running `aic dev up`).
    #[arg(long, short)]
    detach: bool,
}

#[derive(Subcommand)]
enum DeploySub {
    /// Your deployments: state, live replicas, API address.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A deployment's log (its app server's).
    Logs {
        name: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a deployment (its replicas leave the gateway first).
    Rm { name: String },
    /// Change the number of replicas (a new deployment of the same project replaces it).
    Scale { name: String, replicas: u32 },
    /// Pay for more hours: a new deployment of the same project, paid for HOURS, replaces it
    /// without downtime; what the old one does not use comes back.
    Extend {
        name: String,
        #[arg(long)]
        hours: f64,
    },
    /// A deployment's state, replicas and requests: counts, errors, latency, in flight, minute by minute.
    Status {
        name: String,
        /// The window, in minutes (up to 48 hours).
        #[arg(long, default_value_t = 60)]
        minutes: i64,
        #[arg(long)]
        json: bool,
    },
    /// Keys to a private deployment (`aic deploy --private`).
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// A new key to deployment NAME, printed once (the pool keeps only its digest).
    Create {
        name: String,
        /// Your words for it (who or what uses it).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// The keys to deployment NAME (ids, last characters, labels; never the keys).
    Ls {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key to deployment NAME, by its id (`ls`) or the key itself.
    Revoke { name: String, key: String },
}

#[derive(Subcommand)]
enum ResultsCmd {
    /// Download a job's outputs into DIR (default: ./<job>-output).
    Get { job: String, dir: Option<PathBuf> },
}

#[derive(Args)]
pub struct LoginArgs {
    /// A file holding a hex private key.
    #[arg(long, group = "how")]
    pub key_file: Option<PathBuf>,
    /// An encrypted keystore (password in AIC_KEYSTORE_PASSWORD).
    #[arg(long, group = "how")]
    pub keystore: Option<PathBuf>,
    /// Use the key in AIC_PRIVATE_KEY.
    #[arg(long, group = "how")]
    pub env_key: bool,
    /// Anvil's dev account N (dev chains only).
    #[arg(long, group = "how", value_name = "N")]
    pub dev: Option<u32>,
    /// A browser wallet (Metamask): aic serves a page on localhost that asks it to sign.
    #[arg(long, group = "how")]
    pub browser: bool,
}

/// What the job asks of its GPUs (`aic pool` shows what the pool has).
#[derive(Args, Clone, Default)]
pub struct GpuArgs {
    /// A GPU model to run on (`A100`, `RTX 4090`); repeat, or separate with commas, for
    /// several in order of preference. Default: any.
    #[arg(long = "gpu-type", value_name = "MODEL", value_delimiter = ',')]
    pub gpu_types: Vec<String>,
    /// The least memory each GPU must have, in GB (as sold: an A10 is 24 GB).
    #[arg(long, value_name = "GB")]
    pub min_gpu_memory: Option<u32>,
}

#[derive(Args)]
pub struct RunArgs {
    /// A script (`train.py`), or a folder with --entrypoint.
    pub script: PathBuf,
    /// Dataset to mount at AIC_DATA_DIR (a name from `aic data ls`).
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub miners: u32,
    /// GPUs per miner.
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// Upper bound on run time; the quote is computed from it.
    #[arg(long, default_value_t = 1.0)]
    pub hours: f64,
    /// command, mpi, horovod or torchrun.
    #[arg(long, default_value = "command")]
    pub launcher: String,
    /// The program inside a folder SCRIPT.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// A name for listings.
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE for the program's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Packages to install before the program starts (pip's requirements format); a folder's
    /// own requirements.txt is used without it.
    #[arg(long, value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// A secret of yours (`aic secret set NAME`) for the program's environment (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// A container image to run in (a pool that runs images, and allows this one).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Submit and return without watching (needs a running `aic dev up`).
    #[arg(long, short)]
    pub detach: bool,
    /// A payment made elsewhere (e.g. in Metamask): its transaction hash.
    #[arg(long)]
    pub tx: Option<String>,
    /// Arguments for the script, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[tokio::main]
async fn main() {
    // As other Unix tools: when the reader of the output goes away (`aic logs JOB | head`),
    // aic ends quietly rather than panicking on the broken pipe. Sockets are unaffected (the
    // standard library sends with MSG_NOSIGNAL).
    // SAFETY: set before any other thread could be handling signals.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match dispatch(cli.cmd).await {
        Ok(code) => code,
        Err(e) => {
            // One line: what went wrong, with its causes.
            eprintln!("error: {}", one_line(e.chain().map(|c| c.to_string())));
            1
        }
    };
    std::process::exit(code);
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<i32> {
    let env = env::Env::load()?;
    if let Some(gw) = &env.gateway
        && env.gateway_session.is_none()
        && !matches!(cmd, Cmd::Login(_) | Cmd::Logout | Cmd::Quote { .. } | Cmd::Dev(_) | Cmd::Open { .. })
    {
        anyhow::bail!("not signed in to the pool at {gw}: run `aic login --keystore F` (or --key-file F, --env-key)");
    }
    match cmd {
        Cmd::Dev(DevCmd::Up { .. }) if env.gateway.is_some() => {
            anyhow::bail!(
                "AIC_GATEWAY is set: the pool runs behind that gateway; unset it to host the embedded pool here"
            )
        }
        Cmd::Dev(DevCmd::Up { miners, gpus, gpu_type }) => {
            let (dm, dg) = pool::pool_size()?;
            let (m, g) = (miners.unwrap_or(dm), gpus.unwrap_or(dg));
            let farm = if gpu_type.is_empty() {
                aic_core::scheduler::gpus::from_env().map_err(|e| anyhow::anyhow!("AIC_POOL_GPU_TYPES: {e}"))?
            } else {
                gpu_type
            };
            let shape = if farm.is_empty() {
                format!("{m} miners × {g} GPUs")
            } else {
                farm.iter()
                    .map(|t| {
                        format!(
                            "{} × {} {}",
                            t.count.unwrap_or(g),
                            t.model,
                            aic_core::scheduler::gpus::memory_text(t.memory_mb)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let hosted = pool::Hosted::try_host_farm(&env, m, g, farm).await?.ok_or_else(|| {
                anyhow::anyhow!("another aic process hosts the embedded pool at {}; stop it first", env.home.display())
            })?;
            eprintln!("embedded pool up: {shape}, store {}, Ctrl-C to stop", env.store_config.url());
            eprintln!(
                "web app and API: {}/ (`aic open`; AIC_GATEWAY={} for `aic` in pool mode)",
                hosted.serve_addr, hosted.serve_addr
            );
            hosted.serve().await?;
            Ok(0)
        }
        Cmd::Data(c) => {
            match c {
                DataCmd::Put { local, name } => {
                    data::put(&env, &local, name).await?;
                }
                DataCmd::Get { name, dir } => data::get(&env, &name, dir).await?,
                DataCmd::Ls { name, json } => data::ls(&env, name, json).await?,
                DataCmd::Rm { name } => data::rm(&env, &name).await?,
            }
            Ok(0)
        }
        Cmd::Secret(c) => {
            match c {
                SecretCmd::Set { name, file } => secret::set(&env, &name, file.as_deref()).await?,
                SecretCmd::Ls { json } => secret::ls(&env, json).await?,
                SecretCmd::Rm { name } => secret::rm(&env, &name).await?,
            }
            Ok(0)
        }
        Cmd::Run(args) => submit::run(&env, args).await,
        Cmd::Submit { file, tx, detach } => submit::submit_file(&env, &file, tx, detach).await,
        Cmd::Jobs { json, limit, all, since } => {
            let since = since.as_deref().map(jobs::parse_since).transpose()?;
            jobs::list(&env, json, (!all).then_some(limit), since).await.map(|_| 0)
        }
        Cmd::Reclaim { job, all: _ } => reclaim::reclaim(&env, job.as_deref()).await.map(|_| 0),
        Cmd::Spend { json, since } => {
            let since = since.as_deref().map(jobs::parse_since).transpose()?;
            jobs::spend(&env, json, since).await.map(|_| 0)
        }
        Cmd::Status { job, json } => jobs::status(&env, &job, json).await.map(|_| 0),
        Cmd::Logs { job, follow, metrics: true } => gpuuse::print(&env, &job, follow).await,
        Cmd::Logs { job, follow, metrics: false } => jobs::logs(&env, &job, follow).await,
        Cmd::Top { job } => gpuuse::top(&env, &job).await,
        Cmd::Results(ResultsCmd::Get { job, dir }) => jobs::results_get(&env, &job, dir).await.map(|_| 0),
        Cmd::Cancel { job } => jobs::cancel(&env, &job).await.map(|_| 0),
        Cmd::Resume { job, hours, tx, detach } => submit::resume(&env, &job, hours, tx, detach).await,
        Cmd::Exec { job, alloc, all, interactive, command } => {
            exec::exec(&env, &job, alloc, all, interactive, command).await
        }
        Cmd::SshConfig { job, alloc, key } => exec::ssh_config(&env, &job, alloc, key).await.map(|_| 0),
        Cmd::SshProxy { job, alloc, key } => exec::ssh_proxy(&env, &job, alloc, &key).await,
        Cmd::Shell { job, alloc } => exec::shell(&env, &job, alloc).await,
        Cmd::Demo => demo::run(&env).await,
        Cmd::Login(a) => account::login(&env, a).await.map(|_| 0),
        Cmd::Logout => account::logout(&env).await.map(|_| 0),
        Cmd::Whoami => account::whoami(&env).await.map(|_| 0),
        Cmd::Pool { json } => capacity::show(&env, json).await.map(|_| 0),
        Cmd::Open { page } => account::open(&env, page.as_deref()).map(|_| 0),
        Cmd::Deploy(d) => match d.sub {
            Some(DeploySub::List { json }) => deploy::list(&env, json).await.map(|_| 0),
            Some(DeploySub::Logs { name, follow }) => {
                let job = deploy::resolve(&env, &name).await?;
                jobs::logs(&env, job.job.as_str(), follow).await
            }
            Some(DeploySub::Rm { name }) => {
                let job = deploy::resolve(&env, &name).await?;
                jobs::cancel(&env, job.job.as_str()).await.map(|_| 0)
            }
            Some(DeploySub::Scale { name, replicas }) => deploy::replace(&env, &name, Some(replicas), None).await,
            Some(DeploySub::Extend { name, hours }) => deploy::replace(&env, &name, None, Some(hours)).await,
            Some(DeploySub::Status { name, minutes, json }) => {
                if !(1..=aic_core::servingstats::MAX_HOURS * 60).contains(&minutes) {
                    anyhow::bail!("--minutes must be 1 to {}", aic_core::servingstats::MAX_HOURS * 60);
                }
                deploy::status(&env, &name, minutes, json).await.map(|_| 0)
            }
            Some(DeploySub::Key(k)) => match k {
                KeyCmd::Create { name, label } => deploykey::create(&env, &name, &label).await.map(|_| 0),
                KeyCmd::Ls { name, json } => deploykey::ls(&env, &name, json).await.map(|_| 0),
                KeyCmd::Revoke { name, key } => deploykey::revoke(&env, &name, &key).await.map(|_| 0),
            },
            None => {
                let path = d
                    .path
                    .ok_or_else(|| anyhow::anyhow!("name the project folder: `aic deploy ./project --replicas 2`"))?;
                let o = deploy::DeployOpts {
                    path,
                    name: d.name,
                    replicas: d.max_replicas.unwrap_or(d.replicas),
                    gpus: d.gpus,
                    hours: d.hours,
                    entrypoint: d.entrypoint,
                    tx: d.tx,
                    detach: d.detach,
                    secrets: d.secrets,
                    gpu: d.gpu,
                    serving: aic_schemas::ServeOptions {
                        server: d.server,
                        workers: d.workers,
                        threads: d.threads,
                        private: d.private,
                        // `--max-replicas` alone autoscales from one replica.
                        min_replicas: d.min_replicas.or(d.max_replicas.map(|_| 1)),
                        target_concurrency: d.target_concurrency,
                        idle_minutes: d.idle_minutes,
                    },
                };
                deploy::create(&env, o).await
            }
        },
        Cmd::Quote { miners, gpus, hours, gpu } => account::quote(&env, miners, gpus, hours, &gpu).map(|_| 0),
    }
}

/// An error and its causes as one line, each said once: a cause whose text its error already
/// holds is left out (object_store's errors repeat their source), as is a run of parts said
/// twice in a row, and object_store's "Generic … error: " prefix.
fn one_line(chain: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for c in chain {
        let c = match c.strip_prefix("Generic ").and_then(|r| r.split_once(" error: ")) {
            Some((store, rest)) if !store.contains(' ') => rest.to_string(),
            _ => c,
        };
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    let mut parts: Vec<&str> = out.split(": ").collect();
    let mut len = 1;
    while len <= parts.len() / 2 {
        match (0..=parts.len() - 2 * len).find(|&i| parts[i..i + len] == parts[i + len..i + 2 * len]) {
            Some(i) => {
                parts.drain(i + len..i + 2 * len);
                len = 1;
            }
            None => len += 1,
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_is_one_line_with_each_cause_said_once() {
        let r = "storage quota: your datasets take 20.0 MiB; delete some";
        let said = format!("the gateway refused (507): the gateway refused (507): {r}");
        let chain = [format!("Generic gateway error: {said}: {said}"), said.clone(), r.to_string()];
        assert_eq!(super::one_line(chain.into_iter()), format!("the gateway refused (507): {r}"));
        let plain = ["cannot read x".to_string(), "No such file or directory (os error 2)".to_string()];
        assert_eq!(super::one_line(plain.into_iter()), "cannot read x: No such file or directory (os error 2)");
    }
}
