//! `aic pool`: the pool's gateways, their miners and free GPUs, from wherever they are known
//! (the pool's gateway, the embedded pool this process hosts, the process hosting it, or the
//! configured size).

use std::fs::File;

use aic_core::scheduler::{GatewayInfo, MinerInfo};

use crate::env::Env;
use crate::pool::{Hosted, pool_size};

/// The pool's gateways, miners and free GPUs: from the gateway in pool mode, from `host`
/// when this process hosts the embedded pool, else from the process hosting it (or the
/// configured size when none does).
pub async fn gateways(env: &Env, host: Option<&Hosted>) -> anyhow::Result<Vec<GatewayInfo>> {
    Ok(if let Some(gw) = env.gateway_client() {
        let v = gw.call(reqwest::Method::GET, "pool", None).await?;
        serde_json::from_value(v["gateways"].clone())?
    } else if let Some(h) = host {
        aic_core::scheduler::Scheduler::pool(&h.scheduler).await?
    } else {
        let hosted = File::options().create(true).truncate(false).write(true).open(env.home.join("pool.lock"))?;
        let running = matches!(hosted.try_lock(), Err(std::fs::TryLockError::WouldBlock));
        drop(hosted);
        match std::fs::read(env.home.join("pool.json")).ok().filter(|_| running) {
            Some(b) => serde_json::from_slice(&b)?,
            None => {
                let (miners, gpus) = pool_size()?;
                vec![GatewayInfo {
                    name: "local".into(),
                    miners: (1..=miners)
                        .map(|i| MinerInfo { name: format!("miner-{i}"), gpus, free_gpus: gpus, ..Default::default() })
                        .collect(),
                }]
            }
        }
    })
}

/// `aic pool`: gateways, miners, free GPUs.
pub async fn show(env: &Env, json: bool) -> anyhow::Result<()> {
    let mut gws = gateways(env, None).await?;
    // What each costs, at the pool's prices (a gateway says; else this pool's chain).
    if gws.iter().flat_map(|g| &g.miners).all(|m| m.price_per_gpu_hour.is_none())
        && let Ok(chain) = env.chain()
    {
        chain.pricing().price_miners(&mut gws);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&gws)?);
        return Ok(());
    }
    for (i, g) in gws.iter().enumerate() {
        let total: u32 = g.miners.iter().map(|m| m.gpus).sum();
        let free: u32 = g.miners.iter().map(|m| m.free_gpus).sum();
        let available = g.miners.iter().filter(|m| m.free_gpus > 0).count();
        println!(
            "{}. name: {}, available miners: {available} of {}, free GPUs: {free} of {total}",
            i + 1,
            g.name,
            g.miners.len()
        );
        // Free and total GPUs of each model (and memory), where the pool knows them.
        let mut models: std::collections::BTreeMap<(String, u64), (u32, u32, Option<String>)> = Default::default();
        for m in g.miners.iter().filter(|m| m.down.is_none()) {
            if let Some(model) = &m.gpu_model {
                let e = models.entry((model.clone(), m.gpu_memory_mb.unwrap_or(0))).or_default();
                e.0 += m.free_gpus;
                e.1 += m.gpus;
                e.2.clone_from(&m.price_per_gpu_hour);
            }
        }
        for ((model, mem), (free, total, price)) in &models {
            let mem =
                if *mem > 0 { format!(" {}", aic_core::scheduler::gpus::memory_text(*mem)) } else { String::new() };
            let price = price
                .as_deref()
                .and_then(|p| p.parse().ok())
                .map(|p| format!(", {} per GPU-hour", aic_core::pricing::format_aic(p)))
                .unwrap_or_default();
            println!("   {model}{mem}: {free} of {total} free{price}");
        }
        for m in &g.miners {
            let gpus = match (&m.gpu_model, m.gpu_memory_mb) {
                (Some(model), Some(mem)) => {
                    format!(
                        "{} ({model}, {})",
                        aic_core::plural(m.gpus, "GPU"),
                        aic_core::scheduler::gpus::memory_text(mem)
                    )
                }
                (Some(model), None) => format!("{} ({model})", aic_core::plural(m.gpus, "GPU")),
                _ => aic_core::plural(m.gpus, "GPU"),
            };
            match &m.down {
                Some(why) => println!("   {:<20} {gpus}, down: {why}", m.name),
                None => println!("   {:<20} {gpus}, {} free", m.name, m.free_gpus),
            }
        }
    }
    Ok(())
}
