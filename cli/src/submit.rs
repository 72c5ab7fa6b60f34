//! `aic run`, `aic submit`: a job priced, paid, signed and submitted (refused before any of
//! that when the pool could never run it), then watched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aic_core::JobKey;
use aic_core::plural;
use aic_core::pricing::format_aic;
use aic_schemas::jobfile::JobFile;
use aic_schemas::{JobId, JobRequest, PaymentRef};
use anyhow::{Context, anyhow, bail};
use chrono::Utc;

use crate::env::Env;
use crate::{RunArgs, pool, progress, watch};

/// The file a project's environment is prepared from, on the miner (`aic-worker`'s `pyenv`).
const REQUIREMENTS: &str = "requirements.txt";

/// How long a signed request stays valid for validate.
const REQUEST_VALID_FOR: chrono::Duration = chrono::Duration::hours(1);

/// The code to upload: a single script or a folder, and a `requirements.txt` from elsewhere
/// (`--requirements F`), uploaded beside it.
pub struct Code {
    pub path: PathBuf,
    pub entrypoint: String,
    pub requirements: Option<PathBuf>,
}

impl Code {
    /// `path` is a script (its file name is the entrypoint) or a folder (`entrypoint` must
    /// name a file in it; `train.py` or `main.py` when there is one).
    pub fn resolve(path: &Path, entrypoint: Option<String>) -> anyhow::Result<Code> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        let entrypoint = if meta.is_dir() {
            match entrypoint {
                Some(e) => e,
                None => ["train.py", "main.py", "app.py"]
                    .iter()
                    .find(|f| path.join(f).is_file())
                    .map(|f| f.to_string())
                    .ok_or_else(|| {
                        anyhow!("{} is a folder: name the program to run with --entrypoint", path.display())
                    })?,
            }
        } else {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| anyhow!("{} is not a file", path.display()))?
        };
        if meta.is_dir() && !path.join(&entrypoint).is_file() {
            bail!("entrypoint {entrypoint} is not a file in {}", path.display());
        }
        if !meta.is_dir()
            && let Some(module) = sibling_import(path)
        {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            bail!(
                "{entrypoint} imports {module}, which is beside it in {} but is not uploaded with a single script: \
                 run the folder instead, `aic run {} --entrypoint {entrypoint}` with the same flags; nothing was paid",
                dir.display(),
                dir.display()
            );
        }
        Ok(Code { path: path.to_path_buf(), entrypoint, requirements: None })
    }

    /// The environment's requirements from `file` (`--requirements F`), uploaded as the
    /// code's `requirements.txt`; refused where the folder has one of its own that differs.
    pub fn with_requirements(mut self, file: Option<&Path>) -> anyhow::Result<Code> {
        let Some(file) = file else { return Ok(self) };
        if !file.is_file() {
            bail!("--requirements {}: not a file", file.display());
        }
        let own = self.path.join(REQUIREMENTS);
        if self.path.is_dir() && own.is_file() && std::fs::read(&own).ok() != std::fs::read(file).ok() {
            bail!(
                "{} has a {REQUIREMENTS} of its own that differs from --requirements {}: keep one; nothing was paid",
                self.path.display(),
                file.display()
            );
        }
        if self.entrypoint == REQUIREMENTS {
            bail!("the program cannot be named {REQUIREMENTS}");
        }
        self.requirements = Some(file.to_path_buf());
        Ok(self)
    }

    /// The digest the request signs (see `aic_core::digest`): of the files as the miner will
    /// find them, `requirements.txt` from `--requirements` among them.
    pub fn digest(&self) -> anyhow::Result<String> {
        let extra: Vec<(String, PathBuf)> =
            self.requirements.iter().map(|f| (REQUIREMENTS.to_string(), f.clone())).collect();
        let d = if self.path.is_dir() {
            aic_core::digest::tree_with(&self.path, &extra)
        } else {
            let mut files = vec![(self.entrypoint.clone(), self.path.clone())];
            files.extend(extra);
            aic_core::digest::files(&files)
        };
        d.with_context(|| format!("reading {}", self.path.display()))
    }
}

/// A module a Python script imports that lives beside it (`train.py` for `import train`),
/// which a single-script upload would leave behind: the job would fail on the miner with
/// `No module named …` after it was paid for.
fn sibling_import(script: &Path) -> Option<String> {
    if script.extension().is_none_or(|e| e != "py") {
        return None;
    }
    let dir = script.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(script).ok()?;
    let own = script.file_stem()?.to_str()?;
    text.lines().find_map(|line| {
        let line = line.trim_start();
        let names: Vec<&str> = if let Some(rest) = line.strip_prefix("import ") {
            rest.split(',').filter_map(|n| n.split_whitespace().next()).collect()
        } else if let Some(rest) = line.strip_prefix("from ") {
            rest.split_whitespace().next().into_iter().collect()
        } else {
            return None;
        };
        names.into_iter().map(|n| n.split('.').next().unwrap_or(n)).find_map(|m| {
            let beside = dir.join(format!("{m}.py")).is_file() || dir.join(m).join("__init__.py").is_file();
            (m != own && !m.is_empty() && beside).then(|| m.to_string())
        })
    })
}

/// Uploads the code, then writes the request (create-only): the request's creation is
/// what starts the job, so it goes last.
pub async fn submit(env: &Env, code: &Code, req: &JobRequest) -> anyhow::Result<JobKey> {
    req.validate(Some(Utc::now())).map_err(|e| anyhow!("{e}"))?;
    let job = JobKey::new(req.owner, req.job_id.clone());
    let prefix = job.code_prefix();
    if code.path.is_dir() {
        let pb = progress::bytes(0, "uploading code");
        env.store.upload_dir(&code.path, &prefix, &|b| pb.set_position(b)).await.context("uploading the code")?;
        pb.finish_and_clear();
    } else {
        env.store
            .upload_file(&code.path, &format!("{prefix}{}", code.entrypoint), &|_| {})
            .await
            .context("uploading the code")?;
    }
    if let Some(file) = &code.requirements {
        env.store
            .upload_file(file, &format!("{prefix}{REQUIREMENTS}"), &|_| {})
            .await
            .context("uploading --requirements")?;
    }
    if env.store.create_json(&job.request(), req).await? == aic_core::Created::AlreadyExists {
        bail!("job {} already exists; submit again for a new id", req.job_id);
    }
    Ok(job)
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--env {p:?}: use KEY=VALUE"))
        })
        .collect()
}

pub async fn run(env: &Env, a: RunArgs) -> anyhow::Result<i32> {
    let code = Code::resolve(&a.script, a.entrypoint.clone())?.with_requirements(a.requirements.as_deref())?;
    let file = JobFile {
        kind: None,
        name: a.name.clone(),
        code: a.script.to_string_lossy().into_owned(),
        entrypoint: Some(code.entrypoint.clone()),
        data: a.data.clone(),
        miners: a.miners,
        gpus: a.gpus,
        hours: a.hours,
        launcher: a.launcher.parse().map_err(|e: String| anyhow!("--launcher: {e}"))?,
        args: a.args.clone(),
        env: parse_env(&a.env)?,
        secrets: a.secrets.clone(),
        image: a.image.clone(),
        gpu_types: a.gpu.gpu_types.iter().map(|m| m.trim().to_string()).collect(),
        min_gpu_memory: a.gpu.min_gpu_memory,
        serving: None,
    };
    let req = file.to_request(env.owner, JobId::generate(), code.entrypoint.clone(), Utc::now(), REQUEST_VALID_FOR);
    let tx = a.tx.clone();
    req.validate(None).map_err(|e| flag_names(e, "--miners"))?;
    let host = if a.detach { None } else { host(env).await? };
    start_and_watch(env, &code, req, tx, a.detach, host).await
}

pub async fn submit_file(env: &Env, path: &Path, tx: Option<String>, detach: bool) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let file = JobFile::parse(&text, json).map_err(|errs| {
        let shown = path.display();
        let lines: Vec<String> = errs
            .iter()
            .map(|e| match e.line {
                Some(l) => format!("{shown}:{l}: {}", JobFileErrorNoLine(e)),
                None => format!("{shown}: {e}"),
            })
            .collect();
        anyhow!("{}", lines.join("\n       "))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let code_path = base.join(&file.code);
    let code =
        Code::resolve(&code_path, file.entrypoint.clone()).map_err(|e| anyhow!("{}: code: {e}", path.display()))?;
    let req = file.to_request(env.owner, JobId::generate(), code.entrypoint.clone(), Utc::now(), REQUEST_VALID_FOR);
    let host = if detach { None } else { host(env).await? };
    start_and_watch(env, &code, req, tx, detach, host).await
}

/// A job file error without its line (the caller prints `file:line:`).
struct JobFileErrorNoLine<'a>(&'a aic_schemas::jobfile::JobFileError);

impl std::fmt::Display for JobFileErrorNoLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.field {
            Some(field) if !self.0.message.contains(field.as_str()) => write!(f, "{field}: {}", self.0.message),
            _ => f.write_str(&self.0.message),
        }
    }
}

/// A request's validation errors with the command line's flag names instead of the
/// request's field names (`miners` is `--miners` or, for a deployment, `--replicas`).
pub fn flag_names(e: impl std::fmt::Display, miners_flag: &str) -> anyhow::Error {
    anyhow!(
        "{}",
        e.to_string()
            .replace("gpus_per_miner:", "--gpus:")
            .replace("max_hours:", "--hours:")
            .replace("gpu_types:", "--gpu-type:")
            .replace("min_gpu_memory_gb:", "--min-gpu-memory:")
            .replace("serving.workers:", "--workers:")
            .replace("serving.threads:", "--threads:")
            .replace("serving.min_replicas:", "--min-replicas:")
            .replace("serving.target_concurrency:", "--target-concurrency:")
            .replace("serving.idle_minutes:", "--idle-minutes:")
            .replace("miners:", &format!("{miners_flag}:"))
    )
}

/// Prices the job, pays it (or takes `tx`, a payment made elsewhere), signs the request,
/// uploads and submits it, then watches it unless `detach`.
pub async fn start_and_watch(
    env: &Env,
    code: &Code,
    req: JobRequest,
    tx: Option<String>,
    detach: bool,
    host: Option<pool::Hosted>,
) -> anyhow::Result<i32> {
    let job = pay_sign_submit(env, code, req, tx, detach, host.as_ref()).await?;
    if detach {
        eprintln!("follow it with `aic logs -f {}`; see it with `aic status {}`", job.job, job.job);
        println!("{}", job.job);
        return Ok(0);
    }
    watch::watch(env, &job, true, host).await
}

/// Prices the job, pays it (or takes `tx`), signs the request, uploads and submits it.
pub async fn pay_sign_submit(
    env: &Env,
    code: &Code,
    mut req: JobRequest,
    tx: Option<String>,
    detach: bool,
    host: Option<&pool::Hosted>,
) -> anyhow::Result<JobKey> {
    req.code_digest = code.digest()?;
    let chain = match host {
        Some(h) => h.chain.clone(),
        None => env.chain()?,
    };
    if detach && env.gateway.is_none() && !aic_chain::devchain::is_up(&chain.rpc_url).await {
        bail!("nothing hosts the pool: start `aic dev up` in another terminal, or run without --detach");
    }
    // A job that names a dataset it does not have is refused before anything is paid.
    if let Some(data) = &req.data {
        let prefix = format!("{}/", aic_core::layout::data_key(&req.owner, data).trim_end_matches('/'));
        if env.store.list(&prefix).await?.is_empty() {
            bail!("no dataset {data}: upload it with `aic data put PATH {data}` (see `aic data ls`); nothing was paid");
        }
    }
    // So is one naming a secret of yours that is not set, or an image this pool does not run.
    crate::secret::require(env, &req.secrets).await?;
    if let Some(image) = &req.image {
        image_allowed(env, image).await?;
    }
    // A job the pool could never place is refused before anything is paid or uploaded.
    match crate::capacity::gateways(env, host).await {
        Ok(gws) => aic_core::scheduler::can_fit(
            &gws,
            req.miners,
            req.gpus_per_miner,
            &aic_core::scheduler::gpus::GpuWants::of(&req),
        )
        .map_err(|e| anyhow!("this job cannot run here: it {e} (see `aic pool`); nothing was paid"))?,
        Err(e) => tracing::debug!(error = %e, "the pool's size is unknown; the pool will decide"),
    }
    let quote = chain.pricing().quote(&req);
    let total: u128 = quote.total.parse()?;
    if chain.is_free() {
        eprintln!("quote: free ({} GPU-hours; this pool charges nothing)", quote.gpu_hours);
    } else {
        eprintln!(
            "quote: {} GPU-hour{} × {} per GPU-hour{} = {}",
            quote.gpu_hours,
            if quote.gpu_hours == 1.0 { "" } else { "s" },
            format_aic(quote.price_per_gpu_hour.parse()?),
            quote.model.as_deref().map(|m| format!(" ({m})")).unwrap_or_default(),
            format_aic(total)
        );
        if quote.model.is_some() {
            eprintln!("{}", priced_note(&quote));
        }
    }
    if let Some(tx) = &tx {
        req.payment = Some(PaymentRef { chain_id: chain.chain_id, tx: tx.clone() });
    }
    if env.source == crate::identity::Source::Browser {
        // The browser wallet pays and signs in the page.
        let payment = (total > 0 && tx.is_none()).then(|| {
            crate::browser::Payment::of(
                &chain,
                total,
                aic_chain::to_alloy(&req.owner),
                req.job_id.as_str(),
                0,
                req.max_hours,
            )
        });
        let task = crate::browser::Task::Sign { req: Box::new(req.clone()), chain: Box::new(chain.clone()), payment };
        match crate::browser::run(env.home.clone(), task).await? {
            crate::browser::Done::Signed(signed) => req = *signed,
            crate::browser::Done::LoggedIn(_) => bail!("the wallet page signed in instead of signing the job"),
        }
    } else {
        if total > 0 && tx.is_none() {
            let tx = pay(env, &chain, total, &req.job_id, 0, req.max_hours).await?;
            req.payment = Some(PaymentRef { chain_id: chain.chain_id, tx });
        }
        sign(env, &mut req, chain.chain_id).await?;
    }
    let req = &req;
    let job = submit(env, code, req).await?;
    eprintln!(
        "job {} submitted: {} on {} × {}",
        job.job,
        req.entrypoint,
        plural(req.miners, "miner"),
        plural(req.gpus_per_miner, "GPU")
    );
    Ok(job)
}

/// Hosts the embedded pool here unless another process does.
pub async fn host(env: &Env) -> anyhow::Result<Option<pool::Hosted>> {
    let (miners, gpus) = pool::pool_size()?;
    pool::Hosted::try_host(env, miners, gpus).await
}

/// Signs the request with the current identity's key.
pub async fn sign(env: &Env, req: &mut JobRequest, chain_id: u64) -> anyhow::Result<()> {
    match env.source.signer()? {
        Some(key) => aic_chain::request::sign(&key, req, chain_id).await,
        None => bail!(
            "this session's wallet is in the browser; signing requests there is not supported yet: `aic login --key-file F`"
        ),
    }
}

/// Pays `amount` AIC for paid run `run` of job `job` (`hours` long) from the current
/// identity: a deposit into the pool's escrow for the run (approve, then deposit) where the
/// pool has one, what the run does not use coming back when it ends; else a transfer to the
/// pool treasury. Returns the hash of the paying transaction.
pub async fn pay(
    env: &Env,
    chain: &aic_chain::ChainConfig,
    amount: u128,
    job: &JobId,
    run: u32,
    hours: f64,
) -> anyhow::Result<String> {
    use alloy::network::EthereumWallet;
    use alloy::providers::ProviderBuilder;
    let key =
        env.source.signer()?.ok_or_else(|| anyhow!("pay in your browser wallet and pass the transaction with --tx"))?;
    let me = key.address();
    // One payment at a time from this wallet on this machine: several `aic run`s at once would
    // take the same nonce, and one's allowance would be spent by another's deposit. The lock
    // is held until the payment is mined (it closes with the file).
    let _one_at_a_time = wallet_lock(env, &me.to_string()).await?;
    let provider = ProviderBuilder::new().wallet(EthereumWallet::from(key)).connect_http(chain.rpc_url.parse()?);
    let have = aic_chain::token::balance(&provider, chain.token, me).await.context("reading your AIC balance")?;
    if have < alloy::primitives::U256::from(amount) {
        bail!(
            "your wallet {} holds {} but the job costs {}; top it up or ask for less (--hours, --miners, --gpus)",
            env.owner,
            u128::try_from(have).map(format_aic).unwrap_or_default(),
            format_aic(amount)
        );
    }
    let value = alloy::primitives::U256::from(amount);
    if let Some(escrow) = chain.escrow {
        let run = aic_chain::escrow::run_id(me, job.as_str(), run);
        let milli_hours = aic_chain::escrow::milli_hours(hours);
        let tx = aic_chain::escrow::deposit(&provider, chain.token, escrow, run, value, milli_hours).await?;
        let tx = format!("{tx:#x}");
        eprintln!(
            "deposited {} into the pool's escrow {escrow} in {tx}; what the job does not use comes back when it ends",
            format_aic(amount)
        );
        return Ok(tx);
    }
    let tx = aic_chain::token::pay(&provider, chain.token, chain.treasury, value).await?;
    let tx = format!("{tx:#x}");
    eprintln!("paid {} to the pool treasury {} in {tx}", format_aic(amount), chain.treasury);
    Ok(tx)
}

/// An exclusive lock on `$AIC_HOME/wallet-<address>.lock`, waited for without blocking the
/// runtime; released when the returned file is dropped.
async fn wallet_lock(env: &Env, address: &str) -> anyhow::Result<std::fs::File> {
    let path = env.home.join(format!("wallet-{}.lock", address.to_lowercase()));
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    tokio::task::spawn_blocking(move || f.lock().map(|_| f)).await?.context("locking the wallet for a payment")
}

/// `aic resume JOB`: a training job that failed, was cancelled or ran out of its paid time
/// starts again under the same id from its synced outputs, as a new paid run (its own
/// deposit and settlement) signed by its owner; then watched unless `detach`.
pub async fn resume(env: &Env, s: &str, hours: Option<f64>, tx: Option<String>, detach: bool) -> anyhow::Result<i32> {
    use aic_core::{runs, status};
    let job = env.resolve(s).await?;
    let id = &job.job;
    let Some(cur) = status::current(&env.store, &job).await? else {
        if env.store.head(&job.request()).await?.is_none() {
            bail!("no job {id} of yours; see `aic jobs`");
        }
        bail!("job {id} has not been picked up yet; nothing to resume");
    };
    if !cur.state.is_terminal() {
        bail!("job {id} is {}; only a job that ended can be resumed (`aic cancel {id}` stops it)", cur.state);
    }
    if !status::resumable(cur.state, cur.run) {
        bail!(
            "job {id} {}; only a failed, cancelled or timed-out training job can be resumed{}",
            cur.state,
            if cur.state == aic_schemas::JobState::Succeeded {
                " (it is done: `aic results get` fetches its outputs)"
            } else {
                ""
            }
        );
    }
    let Some(first) = runs::manifest(&env.store, &job, 0).await? else {
        bail!("job {id} never ran (it has no manifest); submit it again with `aic run`");
    };
    if first.request.kind != aic_schemas::JobKind::Train {
        bail!("job {id} is a deployment; `aic deploy extend NAME --hours H` pays for more of it");
    }
    let last = runs::current_manifest(&env.store, &job).await?.unwrap_or(first.clone());
    let run = cur.run + 1;
    let now = Utc::now();
    let mut req = aic_schemas::ResumeRequest {
        version: aic_schemas::resume::RESUME_VERSION,
        owner: env.owner,
        job_id: id.clone(),
        run,
        max_hours: hours.unwrap_or(last.request.max_hours),
        payment: None,
        created_at: now,
        expires_at: now + REQUEST_VALID_FOR,
        signature: None,
    };
    req.validate(None).map_err(|e| flag_names(e, "--miners"))?;
    let host = if detach { None } else { host(env).await? };
    let chain = match &host {
        Some(h) => h.chain.clone(),
        None => env.chain()?,
    };
    if detach && env.gateway.is_none() && !aic_chain::devchain::is_up(&chain.rpc_url).await {
        bail!("nothing hosts the pool: start `aic dev up` in another terminal, or run without --detach");
    }
    let priced = JobRequest { max_hours: req.max_hours, ..first.request.clone() };
    let quote = chain.pricing().quote(&priced);
    let total: u128 = quote.total.parse()?;
    if chain.is_free() {
        eprintln!("quote: free ({} GPU-hours; this pool charges nothing)", quote.gpu_hours);
    } else {
        eprintln!(
            "quote for run {}: {} GPU-hours = {}",
            aic_schemas::shown_run(run),
            quote.gpu_hours,
            format_aic(total)
        );
    }
    if env.source == crate::identity::Source::Browser && tx.is_none() && total > 0 {
        bail!(
            "resuming from a browser wallet is not supported yet: sign in with `aic login --key-file F` (or --keystore)"
        );
    }
    req.payment = match tx {
        Some(tx) => Some(PaymentRef { chain_id: chain.chain_id, tx }),
        None if total > 0 => {
            Some(PaymentRef { chain_id: chain.chain_id, tx: pay(env, &chain, total, id, run, req.max_hours).await? })
        }
        None => None,
    };
    let key = env.source.signer()?.ok_or_else(|| anyhow!("sign in with a key to resume: `aic login --key-file F`"))?;
    aic_chain::request::sign_resume(&key, &mut req, chain.chain_id).await?;
    if env.store.create_json(&job.run_request(run), &req).await? == aic_core::Created::AlreadyExists {
        bail!("run {} of job {id} was asked for already; see `aic status {id}`", aic_schemas::shown_run(run));
    }
    eprintln!(
        "job {id} resumed as run {}: {} on {} × {}, from its last synced outputs",
        aic_schemas::shown_run(run),
        first.request.entrypoint,
        plural(first.request.miners, "miner"),
        plural(first.request.gpus_per_miner, "GPU")
    );
    if detach {
        eprintln!("follow it with `aic logs -f {id}`; see it with `aic status {id}`");
        println!("{id}");
        return Ok(0);
    }
    watch::watch_run(env, &job, true, host, Some(watch::From { seq: cur.seq, run })).await
}

/// What a quote at a model's price means, where the pool prices models apart.
pub fn priced_note(q: &aic_schemas::Quote) -> String {
    format!(
        "priced at {}, the dearest GPU your request allows; you are charged by the model each allocation runs on",
        q.model.as_deref().unwrap_or("")
    )
}

/// Before anything is paid: the pool runs images, and this one (its `/v1/info`'s `images`).
async fn image_allowed(env: &Env, image: &str) -> anyhow::Result<()> {
    let Some(gw) = env.gateway_client() else {
        bail!(
            "--image {image}: the embedded pool runs no container images (there is no container engine here); \
             drop --image to use this machine's Python, or run it on a pool (AIC_GATEWAY); nothing was paid"
        );
    };
    let info = gw.call(reqwest::Method::GET, "info", None).await?;
    let allowed: Vec<String> = serde_json::from_value(info["images"].clone()).unwrap_or_default();
    if allowed.is_empty() {
        bail!("--image {image}: this pool runs no container images; drop --image; nothing was paid");
    }
    if !aic_schemas::validate::image_allowed(image, &allowed) {
        bail!("--image {image}: this pool runs only images matching {}; nothing was paid", allowed.join(", "));
    }
    Ok(())
}
