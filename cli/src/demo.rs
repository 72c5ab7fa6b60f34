//! `aic demo`: the tutorial on the embedded pool — dataset, training, checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use aic_schemas::JobId;
use anyhow::{Context, bail};
use chrono::Utc;

use crate::env::Env;
use crate::jobs::{self, Code};
use crate::{data, pool};

const TRAIN_PY: &str = include_str!("../../examples/digits/train.py");
const TRAIN_MPI_PY: &str = include_str!("../../examples/digits/train_mpi.py");
const MAKE_DATASET_PY: &str = include_str!("../../examples/digits/make_dataset.py");

pub async fn run(env: &Env) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    let work = env.home.join("demo");
    let code_dir = work.join("digits");
    let data_dir = work.join("data");
    std::fs::create_dir_all(&code_dir)?;
    std::fs::write(code_dir.join("train.py"), TRAIN_PY)?;
    std::fs::write(code_dir.join("train_mpi.py"), TRAIN_MPI_PY)?;
    std::fs::write(work.join("make_dataset.py"), MAKE_DATASET_PY)?;

    step(1, "starting the embedded pool: storage, functions, 2 simulated miners, the dev chain (anvil + AIC token)");
    if pool::pool_size()?.0 < 2 {
        bail!("the demo trains on 2 miners; set AIC_POOL_MINERS to 2 or more");
    }
    let host = jobs::host(env).await?;
    let chain = match &host {
        Some(h) => h.chain.clone(),
        None => env.chain()?,
    };
    eprintln!("chain {} at {}, AIC token {}, treasury {}", chain.chain_id, chain.rpc_url, chain.token, chain.treasury);
    let session =
        crate::identity::login_with_key(&env.home, crate::identity::Source::Dev { index: 0 }, chain.chain_id).await?;
    eprintln!("signed in as {} with Sign-In with Ethereum (anvil's dev account 0)", session.address);
    let env = &Env::load()?;

    step(2, "exporting scikit-learn's digits set (1797 8×8 images)");
    let python = std::env::var("AIC_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .arg(work.join("make_dataset.py"))
        .arg(&data_dir)
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !out.status.success() {
        bail!(
            "{python} could not export the dataset ({}); it needs numpy and scikit-learn: `cargo xtask demo` installs them",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no output")
        );
    }
    step(3, "uploading it as dataset `digits`");
    data::put(env, &data_dir, Some("digits".into())).await?;

    step(4, "quote, pay in AIC, sign the request (EIP-712), train train_mpi.py on 2 miners × 1 GPU (MPI over SSH)");
    let code = Code::resolve(&code_dir, Some("train_mpi.py".into()))?;
    let file = aic_schemas::jobfile::JobFile {
        kind: None,
        name: Some("digits-demo".into()),
        code: code_dir.to_string_lossy().into_owned(),
        entrypoint: Some("train_mpi.py".into()),
        data: Some("digits".into()),
        miners: 2,
        gpus: 1,
        hours: 1.0,
        launcher: aic_schemas::Launcher::Mpi,
        args: vec!["--epochs".into(), "20".into()],
        env: Default::default(),
    };
    let req =
        file.to_request(env.owner, JobId::generate(), "train_mpi.py".into(), Utc::now(), chrono::Duration::hours(1));
    let job_id = req.job_id.clone();
    let code = jobs::start_and_watch(env, &code, req, None, false, host).await?;
    if code != 0 {
        return Ok(code);
    }
    let job = aic_core::JobKey::new(env.owner, job_id);

    step(5, "fetching the checkpoint");
    let dest = PathBuf::from("aic-demo-output");
    jobs::results_get(env, job.job.as_str(), Some(dest.clone())).await?;
    let ckpt = dest.join("model.npz");
    if !ckpt.is_file() {
        bail!("the job succeeded but wrote no model.npz");
    }
    let hist = aic_core::status::history(&env.store, &job).await?;
    let exec = hist.last().and_then(|r| r.detail.wall_seconds).unwrap_or_default();
    println!("checkpoint: {}", ckpt.display());
    if let Ok(m) = std::fs::read_to_string(dest.join("metrics.json")) {
        println!("metrics: {}", m.trim());
    }
    println!("execution time: {exec:.2} s (whole demo {:.1} s)", t0.elapsed().as_secs_f64());
    Ok(0)
}

fn step(n: u32, what: &str) {
    eprintln!("\n[{n}] {what}");
}
