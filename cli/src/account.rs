//! `aic login`, `logout`, `whoami`, `quote`, `open`.

use aic_chain::wallet::KeySource;
use aic_core::pricing::format_aic;
use anyhow::{anyhow, bail};

use crate::LoginArgs;
use crate::env::Env;
use crate::identity::{self, Source};

pub async fn login(env: &Env, a: LoginArgs) -> anyhow::Result<()> {
    let chain_id = env.chain().map(|c| c.chain_id).unwrap_or(31337);
    if a.browser && env.gateway.is_some() {
        bail!(
            "signing in to a gateway with a browser wallet is not supported yet: use --keystore, --key-file or --env-key"
        );
    }
    if a.browser {
        return match crate::browser::run(env.home.clone(), crate::browser::Task::Login { chain_id }).await? {
            crate::browser::Done::LoggedIn(s) => {
                eprintln!("signed in as {} (browser wallet, chain {chain_id})", s.address);
                Ok(())
            }
            crate::browser::Done::Signed(_) => bail!("the wallet page signed a job instead of signing in"),
        };
    }
    let source = if let Some(path) = a.key_file {
        Source::Key { key: KeySource::KeyFile { path: path.canonicalize()? } }
    } else if let Some(path) = a.keystore {
        Source::Key { key: KeySource::Keystore { path: path.canonicalize()? } }
    } else if a.env_key {
        Source::Key { key: KeySource::Env }
    } else if let Some(i) = a.dev {
        if i > 9 {
            bail!("anvil has dev accounts 0 to 9");
        }
        Source::Dev { index: i }
    } else {
        bail!(
            "say how to sign: --browser (Metamask), --key-file F, --keystore F, --env-key (AIC_PRIVATE_KEY) or --dev N"
        );
    };
    if let Some(gw) = &env.gateway {
        return login_gateway(env, gw, source).await;
    }
    let s = identity::login_with_key(&env.home, source, chain_id).await?;
    eprintln!(
        "signed in as {} (Sign-In with Ethereum, chain {chain_id}) until {}",
        s.address,
        s.expires.format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}

pub async fn logout(env: &Env) -> anyhow::Result<()> {
    // A gateway's session ends on the pool too: every session of this wallet there issued
    // until now (a copied token included) is refused from now on.
    if let Ok(b) = std::fs::read(crate::remote::session_path(&env.home))
        && let Ok(s) = serde_json::from_slice::<crate::remote::GatewaySession>(&b)
        && s.expires_at > chrono::Utc::now()
    {
        let gw = crate::remote::Gateway::new(&s.gateway, Some(s.token.clone()));
        match gw.call(reqwest::Method::POST, "logout", None).await {
            Ok(_) => eprintln!("signed out of {}", s.gateway),
            Err(e) => eprintln!(
                "warning: {} did not take the sign-out ({e}); its session ends at {}",
                s.gateway, s.expires_at
            ),
        }
    }
    let _ = std::fs::remove_file(crate::remote::session_path(&env.home));
    if identity::logout(&env.home)? {
        eprintln!("signed out");
    } else {
        eprintln!("no session; acting as {}", env.owner);
    }
    Ok(())
}

pub async fn whoami(env: &Env) -> anyhow::Result<()> {
    let how = match &env.source {
        Source::Key { key: KeySource::Env } => "AIC_PRIVATE_KEY".to_string(),
        Source::Key { key: KeySource::KeyFile { path } } => format!("key file {}", path.display()),
        Source::Key { key: KeySource::Keystore { path } } => format!("keystore {}", path.display()),
        Source::Dev { index } => format!("anvil dev account {index}"),
        Source::Browser => "browser wallet".into(),
    };
    println!("{} ({how})", env.owner);
    let chain = env.chain().ok();
    if chain.as_ref().is_some_and(|c| c.is_free()) {
        println!("balance: not needed (this pool charges nothing)");
        return Ok(());
    }
    let up = match &chain {
        Some(c) => aic_chain::devchain::is_up(&c.rpc_url).await,
        None => false,
    };
    if !up {
        println!("balance: unknown (the pool's chain is not running: `aic dev up`)");
    }
    if let Some(chain) = chain.filter(|_| up) {
        let p = alloy::providers::ProviderBuilder::new().connect_http(chain.rpc_url.parse()?);
        let b = aic_chain::token::balance(&p, chain.token, aic_chain::to_alloy(&env.owner)).await?;
        println!("balance: {}", u128::try_from(b).map(format_aic).map_err(|_| anyhow!("balance overflows"))?);
    }
    Ok(())
}

pub fn quote(env: &Env, miners: u32, gpus: u32, hours: f64, gpu: &crate::GpuArgs) -> anyhow::Result<()> {
    aic_schemas::validate::check_size(miners, gpus, hours).map_err(|e| anyhow!(e))?;
    let chain = env.chain().ok();
    let pricing = match &chain {
        Some(c) => c.pricing(),
        None => aic_core::pricing::Pricing { price_per_gpu_hour: crate::pool::DEV_PRICE, ..Default::default() },
    };
    // The dev chain (made on the first run) has an escrow; a pool says whether it has one.
    let deposit = chain.as_ref().map(|c| c.escrow.is_some()).unwrap_or(env.gateway.is_none());
    let wants = aic_core::scheduler::gpus::GpuWants {
        models: gpu.gpu_types.iter().map(|m| m.trim().to_string()).collect(),
        min_memory_gb: gpu.min_gpu_memory,
    };
    let q = pricing.quote_asking(miners, gpus, hours, &wants);
    let (price, total): (u128, u128) = (q.price_per_gpu_hour.parse()?, q.total.parse()?);
    println!(
        "{} × {} × {hours} h × {} per GPU-hour{} = {}",
        aic_core::plural(miners, "miner"),
        aic_core::plural(gpus, "GPU"),
        format_aic(price),
        q.model.as_deref().map(|m| format!(" ({m})")).unwrap_or_default(),
        format_aic(total)
    );
    if q.model.is_some() {
        eprintln!("{}", crate::submit::priced_note(&q));
    }
    if deposit && total > 0 {
        eprintln!("that is a deposit: the job pays for the GPU-seconds it uses, and the rest comes back when it ends");
    }
    Ok(())
}

/// Refuses to sign in for a domain other than the gateway's own (`url`'s host and port): a
/// hostile gateway could otherwise relay another pool's nonce and domain, and get a session
/// there as you with the message you signed.
fn check_domain(url: &str, domain: &str) -> anyhow::Result<()> {
    let at = |u: &str| -> Option<(String, u16)> {
        let u = url::Url::parse(u).ok()?;
        Some((u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
    };
    let own = at(url).ok_or_else(|| anyhow!("{url} is not a gateway address (https://HOST[:PORT])"))?;
    let scheme = url.split("://").next().unwrap_or("https");
    if at(&format!("{scheme}://{domain}")) != Some(own.clone()) {
        bail!(
            "the gateway at {url} asks you to sign in for {domain:?}, not for its own address {}:{}; refused (a gateway may \
             only ask for itself: check AIC_GATEWAY)",
            own.0,
            own.1
        );
    }
    Ok(())
}

/// Pool mode: SIWE with the gateway (its domain, chain and nonce), keeping its token, the
/// pool's chain, and the identity for signing requests and payments.
async fn login_gateway(env: &Env, url: &str, source: Source) -> anyhow::Result<()> {
    use alloy::signers::Signer as _;
    let signer = source.signer()?.ok_or_else(|| anyhow!("a browser wallet cannot sign in to a gateway yet"))?;
    let gw = crate::remote::Gateway::new(url, None);
    let info = gw.call(reqwest::Method::GET, "info", None).await?;
    let nonce = gw.call(reqwest::Method::GET, "nonce", None).await?;
    let domain =
        info["domain"].as_str().ok_or_else(|| anyhow!("{url} is not an aic gateway (no domain in /v1/info)"))?;
    check_domain(url, domain)?;
    let chain_id = info["chain_id"].as_u64().ok_or_else(|| anyhow!("{url} named no chain id"))?;
    let mut msg =
        aic_chain::siwe::SiweMessage::new(domain, url, signer.address(), chain_id, chrono::Duration::hours(12));
    msg.nonce = nonce["nonce"].as_str().ok_or_else(|| anyhow!("{url} gave no nonce"))?.to_string();
    let sig = signer.sign_message(msg.to_string().as_bytes()).await?;
    let sig = format!("0x{}", alloy::hex::encode(sig.as_bytes()));
    let v = gw
        .call(reqwest::Method::POST, "session", Some(serde_json::json!({"message": msg.to_string(), "signature": sig})))
        .await?;
    let session = crate::remote::GatewaySession {
        gateway: url.to_string(),
        address: aic_chain::from_alloy(signer.address()),
        token: v["token"].as_str().ok_or_else(|| anyhow!("{url} gave no session token"))?.to_string(),
        expires_at: serde_json::from_value(v["expires_at"].clone())?,
        bucket: info["bucket"].as_str().unwrap_or("aic").to_string(),
        chain: info["chain"].clone(),
    };
    crate::remote::save_session(&env.home, &session)?;
    let chain_file = env.home.join("gateway-chain.json");
    if !session.chain.is_null() {
        std::fs::write(&chain_file, serde_json::to_vec_pretty(&session.chain)?)?;
    } else if info["free"].as_bool() == Some(true) {
        // A free pool has no chain to pay on; requests are still signed for its chain id.
        aic_chain::ChainConfig::free(chain_id).save(&chain_file)?;
    } else {
        let _ = std::fs::remove_file(&chain_file);
    }
    identity::save_session(
        &env.home,
        &identity::Session {
            address: session.address,
            source,
            siwe_message: msg.to_string(),
            siwe_signature: sig,
            expires: session.expires_at,
        },
    )?;
    eprintln!(
        "signed in to {url} as {} (chain {chain_id}) until {}",
        session.address,
        session.expires_at.format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}

/// `aic open [PAGE]`: the pool's web app in the browser — the gateway's in pool mode, else
/// the embedded pool's (which `aic dev up` hosts). Prints the address too.
pub fn open(env: &Env, page: Option<&str>) -> anyhow::Result<()> {
    let base = match &env.gateway {
        Some(gw) => gw.trim_end_matches('/').to_string(),
        None => std::fs::read_to_string(env.home.join("serve.addr"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                anyhow!("nothing hosts the pool here: start `aic dev up` in another terminal, then `aic open`")
            })?,
    };
    let path = match page {
        None | Some("") | Some("jobs") => "/jobs".to_string(),
        Some(p @ ("new" | "data" | "deployments" | "pool")) => format!("/{p}"),
        Some(id) if id.parse::<aic_schemas::JobId>().is_ok() => format!("/jobs/{id}"),
        Some(other) => {
            bail!("no page {other:?}: open jobs, new, data, deployments, pool, or a job id")
        }
    };
    let url = format!("{base}{path}");
    println!("{url}");
    crate::browser::open_in_browser(&url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_domain;

    /// A hostile gateway names another pool's domain (to relay that pool's nonce and keep the
    /// session it gets with your signature): refused. Its own address, with or without the
    /// scheme's port, is taken.
    #[test]
    fn a_gateway_gets_a_sign_in_only_for_its_own_address() {
        assert!(check_domain("https://pool.example.org", "pool.example.org").is_ok());
        assert!(check_domain("https://Pool.Example.org/", "pool.example.org:443").is_ok());
        assert!(check_domain("http://127.0.0.1:8800", "127.0.0.1:8800").is_ok());
        for (url, domain) in [
            ("https://evil.example", "pool.example.org"),
            ("https://pool.example.org", "pool.example.org:8443"),
            ("http://127.0.0.1:8801", "127.0.0.1:8800"),
            ("https://pool.example.org.evil.example", "pool.example.org"),
        ] {
            let e = check_domain(url, domain).unwrap_err().to_string();
            assert!(e.contains("refused"), "{url} {domain}: {e}");
        }
    }
}
