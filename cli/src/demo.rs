//! `aic demo`: the tutorial on the embedded pool — dataset, training on two miners, the
//! checkpoint, then the checkpoint deployed as an HTTP API and asked for a prediction.

use std::path::PathBuf;
use std::time::Instant;

use aic_schemas::JobId;
use anyhow::{Context, bail};
use chrono::Utc;

use crate::env::Env;
use crate::jobs;
use crate::submit::{self, Code};
use crate::{data, pool};

const TRAIN_PY: &str = include_str!("../../examples/digits/train.py");
const TRAIN_MPI_PY: &str = include_str!("../../examples/digits/train_mpi.py");
const MAKE_DATASET_PY: &str = include_str!("../../examples/digits/make_dataset.py");
const APP_PY: &str = include_str!("../../examples/digits/serve/app.py");
const REQUIREMENTS: &str = include_str!("../../examples/digits/serve/requirements.txt");

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
    let host = submit::host(env).await?;
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
        secrets: vec![],
        image: None,
        gpu_types: vec![],
        min_gpu_memory: None,
        serving: None,
    };
    let req =
        file.to_request(env.owner, JobId::generate(), "train_mpi.py".into(), Utc::now(), chrono::Duration::hours(1));
    let job_id = req.job_id.clone();
    let job = submit::pay_sign_submit(env, &code, req, None, false, host.as_ref()).await?;
    debug_assert_eq!(job.job, job_id);
    let code = crate::watch::watch_keep(env, &job, true, host.as_ref()).await?;
    if code != 0 {
        return Ok(code);
    }

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
    println!("execution time: {exec:.2} s");

    step(6, "deploying the checkpoint as an HTTP API on 2 replicas (Flask under uWSGI, behind the pool's gateway)");
    let project = work.join("digits-api");
    std::fs::create_dir_all(&project)?;
    std::fs::write(project.join("app.py"), APP_PY)?;
    std::fs::write(project.join("requirements.txt"), REQUIREMENTS)?;
    std::fs::copy(&ckpt, project.join("model.npz"))?;
    let opts = crate::deploy::DeployOpts {
        path: project,
        name: Some("digits-api".into()),
        replicas: 2,
        gpus: 1,
        hours: 0.25,
        entrypoint: None,
        tx: None,
        detach: false,
        secrets: vec![],
        gpu: Default::default(),
        serving: Default::default(),
    };
    let base = crate::deploy::origins(env, host.as_ref()).await?;
    let (deployment, _) = crate::deploy::submit(env, &opts, host.as_ref()).await?;
    crate::deploy::wait_up(env, &deployment, 2, host.as_ref()).await?;
    let api = crate::deploy::named_address(&base, &deployment, "digits-api").expect("a short name");
    println!("API address : {api}");

    step(7, &format!("asking the API for a prediction: POST a digit image from the dataset to {api}predict"));
    let csv = std::fs::read_to_string(data_dir.join("digits.csv"))?;
    let http = crate::deploy::client_for(&api);
    let mut right = 0;
    let rows: Vec<&str> = csv.lines().step_by(180).take(10).collect();
    for row in &rows {
        let vals: Vec<f64> = row.split(',').filter_map(|v| v.trim().parse().ok()).collect();
        let (pixels, label) = (&vals[..64], vals[64] as i64);
        let r: serde_json::Value = http
            .post(format!("{api}predict"))
            .json(&serde_json::json!({ "pixels": pixels }))
            .send()
            .await
            .context("calling the deployed API")?
            .json()
            .await?;
        let digit = r["digit"].as_i64().unwrap_or(-1);
        right += (digit == label) as usize;
        if row == &rows[0] {
            println!("{}", ascii_digit(pixels));
            println!(
                "predicted digit: {digit} (label {label}, confidence {}, answered by replica {})",
                r["confidence"], r["replica"]
            );
        }
    }
    println!("{right} of {} sample images predicted right through the gateway", rows.len());
    jobs::cancel(env, deployment.job.as_str()).await?;
    if let Some(h) = &host {
        h.drain(std::time::Duration::from_secs(30)).await;
    }
    println!("whole demo {:.1} s", t0.elapsed().as_secs_f64());
    Ok(0)
}

/// The 8×8 image as text.
fn ascii_digit(pixels: &[f64]) -> String {
    let shades = [' ', '.', ':', '+', '#'];
    pixels
        .chunks(8)
        .map(|row| {
            row.iter()
                .map(|p| shades[((p / 16.0) * 4.0).round().clamp(0.0, 4.0) as usize])
                .flat_map(|c| [c, c])
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn step(n: u32, what: &str) {
    eprintln!("\n[{n}] {what}");
}
