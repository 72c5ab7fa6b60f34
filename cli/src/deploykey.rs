//! `aic deploy key create|ls|revoke NAME`: keys to a private deployment (`aic deploy --private`).
//! A key opens the deployment by its name (so it outlives `scale` and `extend`), or by its id
//! when it has none. The pool keeps the key's digest alone; `create` prints the key once. On
//! the embedded pool the keys are written here; in pool mode, through the gateway.

use aic_core::deploykeys;
use aic_schemas::{DeployKey, JobRequest};
use anyhow::{anyhow, bail};

use crate::env::Env;

/// The scope of deployment `name` (a name or id), and whether it is private.
async fn scope(env: &Env, name: &str) -> anyhow::Result<(String, bool)> {
    let job = crate::deploy::resolve(env, name).await?;
    let req: JobRequest = env
        .store
        .get_json(&job.request(), aic_schemas::validate::MAX_DOC_BYTES)
        .await?
        .ok_or_else(|| anyhow!("deployment {} has no request", job.job))?;
    if req.kind != aic_schemas::JobKind::Serve {
        bail!("job {} is a training job, not a deployment", job.job);
    }
    Ok((deploykeys::scope_of(&req), req.serving.is_some_and(|s| s.private)))
}

/// `aic deploy key create NAME [--label L]`.
pub async fn create(env: &Env, name: &str, label: &str) -> anyhow::Result<()> {
    let (scope, private) = scope(env, name).await?;
    let (record, key): (DeployKey, String) = match env.gateway_client() {
        Some(gw) => {
            let v = gw
                .call(
                    reqwest::Method::POST,
                    &format!("deployments/{scope}/keys"),
                    Some(serde_json::json!({ "label": label })),
                )
                .await?;
            (serde_json::from_value(v["record"].clone())?, v["key"].as_str().unwrap_or_default().to_string())
        }
        None => deploykeys::create(&env.store, &env.owner, &scope, label).await?,
    };
    eprintln!("key {} to deployment {scope}: shown this once; the pool keeps only its digest", record.id);
    if !private {
        eprintln!(
            "note: deployment {scope} is public, so it does not ask for keys; deploy it with --private to require one"
        );
    }
    eprintln!("call it with: curl -H \"Authorization: Bearer $KEY\" <its address>");
    println!("{key}");
    Ok(())
}

/// `aic deploy key ls NAME [--json]`.
pub async fn ls(env: &Env, name: &str, json: bool) -> anyhow::Result<()> {
    let (scope, _) = scope(env, name).await?;
    let keys: Vec<DeployKey> = match env.gateway_client() {
        Some(gw) => serde_json::from_value(
            gw.call(reqwest::Method::GET, &format!("deployments/{scope}/keys"), None).await?["keys"].clone(),
        )?,
        None => deploykeys::list(&env.store, &env.owner, &scope).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&keys)?);
        return Ok(());
    }
    if keys.is_empty() {
        eprintln!("deployment {scope} has no keys; make one with `aic deploy key create {name}`");
    }
    for k in keys {
        println!(
            "{:<10}  …{}  {}  {}",
            k.id,
            k.ends_with,
            k.created_at.format("%Y-%m-%d %H:%M UTC"),
            if k.label.is_empty() { "-" } else { &k.label }
        );
    }
    Ok(())
}

/// `aic deploy key revoke NAME ID|KEY`.
pub async fn revoke(env: &Env, name: &str, which: &str) -> anyhow::Result<()> {
    let (scope, _) = scope(env, name).await?;
    // A key pasted whole is found by its digest (its id is in `ls`).
    let id = if which.trim().starts_with(deploykeys::KEY_PREFIX) {
        let d = deploykeys::digest(which.trim());
        let keys: Vec<DeployKey> = match env.gateway_client() {
            Some(gw) => serde_json::from_value(
                gw.call(reqwest::Method::GET, &format!("deployments/{scope}/keys"), None).await?["keys"].clone(),
            )?,
            None => deploykeys::list(&env.store, &env.owner, &scope).await?,
        };
        keys.into_iter().find(|k| k.sha256 == d).map(|k| k.id).ok_or_else(|| {
            anyhow!("that key is not one of deployment {scope}'s (already revoked?); see `aic deploy key ls {name}`")
        })?
    } else {
        which.trim().to_string()
    };
    let gone = match env.gateway_client() {
        Some(gw) => {
            gw.call(reqwest::Method::DELETE, &format!("deployments/{scope}/keys/{id}"), None).await.map(|_| true)?
        }
        None => deploykeys::revoke(&env.store, &env.owner, &scope, &id).await?,
    };
    if !gone {
        bail!("deployment {scope} has no key {id}; see `aic deploy key ls {name}`");
    }
    eprintln!("key {id} to deployment {scope} revoked: refused from now on");
    Ok(())
}
