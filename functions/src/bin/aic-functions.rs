//! `aic-functions`: the functions host of a pool (webhook + gateway API + optional poller).
//!
//! ```text
//! aic-functions serve --listen 0.0.0.0:8080 [--poll-ms 1000] [--redrive-ms 5000]
//! ```
//! Configuration is read from the environment (see `aic_functions::config`). It prints
//! `listening on http://ADDR` once it accepts connections, and stops its simulated miners'
//! workers on SIGINT/SIGTERM. With `AIC_SCHEDULER=nomad` it also follows Nomad's
//! allocation events (lost allocations restart their job). With the gateway (AIC_GATEWAY_SECRET),
//! workers get a token for their job's objects instead of the store's credentials: the local
//! scheduler's reach this host (or `AIC_WORKER_GATEWAY`), Nomad's reach `AIC_WORKER_GATEWAY`.

use std::sync::Arc;
use std::time::Duration;

use aic_functions::gateway::Gateway;
use aic_functions::host::{Host, serve};
use aic_functions::poll::{Inbox, Poller};
use aic_functions::sns::SnsVerifier;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aic-functions", version, about = "The aic functions host: bucket notifications, gateway API, poller")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the webhook (/events), the gateway API (/v1, with AIC_GATEWAY_SECRET) and /healthz.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also poll the gateway's inbox every this many milliseconds (for stores that cannot
        /// push notifications).
        #[arg(long)]
        poll_ms: Option<u64>,
        /// How often deferred work (a payment awaiting confirmations, the chain or the
        /// scheduler down) is looked at again; each entry is tried when due (10 s to 5 min).
        #[arg(long, default_value_t = 5000)]
        redrive_ms: u64,
    },
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("aic-functions: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cmd::Serve { listen, poll_ms, redrive_ms } = cli.cmd;
    aic_functions::secrets::load().await?;
    let built = aic_functions::config::build()?;
    let inbox = poll_ms.map(|_| Inbox::new(built.ctx.store.clone()));
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let origins = aic_functions::config::serving_origins(addr.port())?;
    let mut gateway_cfg = aic_functions::config::gateway(&built)?;
    if let Some(cfg) = &mut gateway_cfg {
        cfg.serving = Some(origins.to_string());
    }
    let secret = gateway_cfg.as_ref().map(|c| c.secret.clone());
    let gateway = gateway_cfg.map(|cfg| Arc::new(Gateway::new(cfg, built.ctx.clone(), inbox.clone())));
    if poll_ms.is_some() && gateway.is_none() {
        anyhow::bail!("--poll-ms needs the gateway (set AIC_GATEWAY_SECRET): the poller reads the gateway's inbox");
    }
    let minio = aic_functions::config::minio_posts()?;
    let proxy = Some(Arc::new(
        aic_functions::proxy::Proxy::new(built.ctx.store.clone())
            .with_scheduler(built.ctx.scheduler.clone())
            .at(origins),
    ));
    let gateway_for_logs = gateway.clone();
    let host = Host {
        ctx: built.ctx.clone(),
        sns: SnsVerifier::from_env().map(Arc::new),
        gateway,
        minio,
        proxy,
        own_addresses: vec![],
        // The operator's Prometheus scrapes `/metrics` with this token.
        metrics_token: std::env::var("AIC_METRICS_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    // With the gateway here, the simulated miners' workers reach the bucket through it with
    // their job's token, and get no store credentials (the local scheduler takes the host's
    // address; Nomad is told its gateway in its configuration).
    if let Some(secret) = secret {
        let url = std::env::var("AIC_WORKER_GATEWAY").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
            let ip = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
            format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
        });
        built.ctx.scheduler.use_worker_gateway(aic_core::grant::WorkerGateway { url, secret });
    }
    // A job whose allocations have all ended is settled (through the re-driver: no bucket
    // event says so).
    built.ctx.scheduler.on_job_end(aic_functions::redrive::settle_when_ended(built.ctx.store.clone()));
    // What a worker killed outright printed since its last stored chunk is stored from what
    // this host's gateway holds of it.
    if let Some(g) = gateway_for_logs {
        built.ctx.scheduler.on_worker_lost(Arc::new(move |job: &aic_core::JobKey, alloc: u32| {
            let (g, job) = (g.clone(), job.clone());
            tokio::spawn(async move { g.keep_lost_log(&job, alloc).await });
        }));
    }
    // What an earlier host left (one killed outright): taken over before any event is.
    built.ctx.scheduler.recover().await;
    println!("listening on http://{addr}");
    let server = tokio::spawn(serve(host, listener));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let poller = match poll_ms {
        Some(ms) => {
            let p = Poller::load(built.ctx.clone()).await?;
            Some(tokio::spawn(p.run(Duration::from_millis(ms.max(50)), stopped(stop_rx.clone()))))
        }
        None => None,
    };
    // Deferred work (payments awaiting confirmations, outages): this host drives it again.
    let redriver = {
        let r = aic_functions::redrive::Redriver::new(built.ctx.clone());
        Some(tokio::spawn(r.run(Duration::from_millis(redrive_ms.max(50)), stopped(stop_rx.clone()))))
    };
    // What the scheduler runs beside the host (Nomad: its allocation event watcher).
    let watcher = {
        let (scheduler, store, stop) = (built.ctx.scheduler.clone(), built.ctx.store.clone(), stopped(stop_rx.clone()));
        Some(tokio::spawn(async move { scheduler.run(store, Box::pin(stop)).await }))
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("aic-functions: stopping");
    let _ = stop_tx.send(true);
    for t in [poller, redriver, watcher].into_iter().flatten() {
        let _ = t.await;
    }
    server.abort();
    built.ctx.scheduler.shutdown().await;
    Ok(())
}
