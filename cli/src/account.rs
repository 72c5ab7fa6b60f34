//! `aic login`, `logout`, `whoami`, `quote`.

use aic_chain::wallet::KeySource;
use aic_core::pricing::format_aic;
use anyhow::{anyhow, bail};

use crate::LoginArgs;
use crate::env::Env;
use crate::identity::{self, Source};

pub async fn login(env: &Env, a: LoginArgs) -> anyhow::Result<()> {
    let chain_id = env.chain().map(|c| c.chain_id).unwrap_or(31337);
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
    let s = identity::login_with_key(&env.home, source, chain_id).await?;
    eprintln!(
        "signed in as {} (Sign-In with Ethereum, chain {chain_id}) until {}",
        s.address,
        s.expires.format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}

pub fn logout(env: &Env) -> anyhow::Result<()> {
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

pub fn quote(env: &Env, miners: u32, gpus: u32, hours: f64) -> anyhow::Result<()> {
    let price = match env.chain() {
        Ok(c) => c.price(),
        Err(_) => crate::pool::DEV_PRICE,
    };
    let pricing = aic_core::pricing::Pricing { price_per_gpu_hour: price, token: None };
    let total: u128 = pricing.quote_for(miners, gpus, hours).total.parse()?;
    println!(
        "{miners} miner{} × {gpus} GPU{} × {hours} h × {} per GPU-hour = {}",
        if miners == 1 { "" } else { "s" },
        if gpus == 1 { "" } else { "s" },
        format_aic(price),
        format_aic(total)
    );
    Ok(())
}
