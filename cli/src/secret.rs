//! `aic secret set|ls|rm`: your secrets, kept by the pool sealed under its key
//! (`aic_core::vault`), given to the programs of your jobs that name them (`--secret NAME`).
//! In pool mode through the gateway (values go in, never out); on the embedded pool in its
//! bucket, sealed under `$AIC_HOME/secrets.key`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use reqwest::Method;

use crate::env::Env;

fn vault(env: &Env) -> anyhow::Result<aic_core::vault::Vault> {
    aic_core::vault::Vault::new(&crate::pool::secrets_key(&env.home)?)
}

/// The value: `file`'s contents, or standard input's (typed without echo at a terminal); a
/// single trailing newline is not part of it.
fn value_from(file: Option<&Path>) -> anyhow::Result<String> {
    let mut v = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        None if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) => {
            use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
            eprint!("value (not shown): ");
            let saved = tcgetattr(std::io::stdin())?;
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, &quiet)?;
            let mut line = String::new();
            let read = std::io::stdin().read_line(&mut line);
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &saved);
            eprintln!();
            read?;
            line
        }
        None => {
            let mut s = String::new();
            std::io::stdin().take(aic_core::vault::MAX_VALUE_BYTES as u64 + 2).read_to_string(&mut s)?;
            s
        }
    };
    if v.ends_with('\n') {
        v.pop();
        if v.ends_with('\r') {
            v.pop();
        }
    }
    if v.is_empty() {
        bail!("the secret's value is empty: pipe it in (`… | aic secret set NAME`) or give --file F");
    }
    Ok(v)
}

pub async fn set(env: &Env, name: &str, file: Option<&Path>) -> anyhow::Result<()> {
    aic_schemas::validate::secret_name(name).map_err(|e| anyhow!(e))?;
    let value = value_from(file)?;
    match env.gateway_client() {
        Some(gw) => {
            gw.call(Method::PUT, &format!("secrets/{name}"), Some(serde_json::json!({ "value": value }))).await?;
        }
        None => aic_core::vault::put(&env.store, &vault(env)?, &env.owner, name, &value).await?,
    }
    eprintln!("secret {name} set ({}); jobs get it with --secret {name}", aic_core::plural(value.len() as u64, "byte"));
    Ok(())
}

/// Your secrets' names and when each was set.
pub async fn names(env: &Env) -> anyhow::Result<Vec<aic_core::vault::Listed>> {
    Ok(match env.gateway_client() {
        Some(gw) => serde_json::from_value(gw.call(Method::GET, "secrets", None).await?["secrets"].clone())?,
        None => aic_core::vault::list(&env.store, &env.owner).await?,
    })
}

pub async fn ls(env: &Env, json: bool) -> anyhow::Result<()> {
    let listed = names(env).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else if listed.is_empty() {
        eprintln!("no secrets; set one with `aic secret set NAME` (the value from standard input)");
    } else {
        for l in &listed {
            println!("{:<32} set {}", l.name, l.updated_at.format("%Y-%m-%d %H:%M UTC"));
        }
    }
    Ok(())
}

pub async fn rm(env: &Env, name: &str) -> anyhow::Result<()> {
    aic_schemas::validate::secret_name(name).map_err(|e| anyhow!(e))?;
    let removed = match env.gateway_client() {
        Some(gw) => gw.call(Method::DELETE, &format!("secrets/{name}"), None).await.map(|_| true)?,
        None => aic_core::vault::remove(&env.store, &env.owner, name).await?,
    };
    if !removed {
        bail!("you have no secret {name}; see `aic secret ls`");
    }
    eprintln!("secret {name} removed");
    Ok(())
}

/// Before anything is paid: every secret a job names is set.
pub async fn require(env: &Env, wanted: &[String]) -> anyhow::Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let have = names(env).await?;
    if let Some(n) = wanted.iter().find(|n| !have.iter().any(|l| &l.name == *n)) {
        bail!("secret {n} is not set: `aic secret set {n}` first; nothing was paid");
    }
    Ok(())
}
