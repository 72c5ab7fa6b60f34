//! The pool's secrets from AWS Secrets Manager, read once as a functions process starts.
//!
//! On AWS a Lambda function's environment variables are plain to anyone who may read the
//! function's configuration (`lambda:GetFunctionConfiguration`; a parameter's `NoEcho` only
//! hides it from CloudFormation's output). So the settler's key, the gateway's secret, the
//! webhook token and the Nomad token are kept in Secrets Manager instead: `AIC_SECRETS_ID`
//! names one or more secrets (comma-separated ids or ARNs), each a JSON object of some of
//! [`KEYS`], and each function's role may read only the ones it needs. They are fetched with
//! `GetSecretValue` (a SigV4-signed `POST` of `{"SecretId": …}` with
//! `X-Amz-Target: secretsmanager.GetSecretValue`, answered `{"SecretString": …}`:
//! <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>)
//! with the function's own credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, which Lambda sets), and take the place of the same environment
//! variables ([`get`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};

/// What a secret may hold.
pub const KEYS: [&str; 5] =
    ["AIC_SETTLER_KEY", "AIC_GATEWAY_SECRET", "AIC_WEBHOOK_TOKEN", "NOMAD_TOKEN", "AIC_SECRETS_KEY"];

static LOADED: OnceLock<HashMap<String, String>> = OnceLock::new();

/// A secret read at start, if there is one of that name.
pub fn get(name: &str) -> Option<String> {
    LOADED.get()?.get(name).cloned()
}

/// Reads the secrets `AIC_SECRETS_ID` names (nothing when it is not set).
pub async fn load() -> anyhow::Result<()> {
    let Some(ids) = std::env::var("AIC_SECRETS_ID").ok().filter(|v| !v.is_empty()) else { return Ok(()) };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| anyhow!("AIC_SECRETS_ID is set but not AWS_REGION: the region its secrets are in"))?;
    let endpoint =
        env("AIC_SECRETS_ENDPOINT").unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
    let creds = Credentials {
        key_id: env("AWS_ACCESS_KEY_ID").ok_or_else(|| anyhow!("AIC_SECRETS_ID is set but not AWS_ACCESS_KEY_ID"))?,
        secret: env("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| anyhow!("AIC_SECRETS_ID is set but not AWS_SECRET_ACCESS_KEY"))?,
        token: env("AWS_SESSION_TOKEN"),
    };
    let mut all = HashMap::new();
    for id in ids.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        all.extend(fetch(&endpoint, &region, &creds, id).await?);
    }
    let _ = LOADED.set(all);
    Ok(())
}

/// Credentials to sign with.
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

/// The values secret `id` holds (a JSON object of some of [`KEYS`]).
pub async fn fetch(
    endpoint: &str,
    region: &str,
    creds: &Credentials,
    id: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let url = url::Url::parse(endpoint).with_context(|| format!("AIC_SECRETS_ENDPOINT {endpoint:?}"))?;
    let body = serde_json::json!({ "SecretId": id }).to_string();
    let host = url[url::Position::BeforeHost..url::Position::AfterPort].to_string();
    let mut headers: BTreeMap<String, String> = [
        ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
        ("host".to_string(), host),
        ("x-amz-date".to_string(), chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()),
        ("x-amz-target".to_string(), "secretsmanager.GetSecretValue".to_string()),
    ]
    .into();
    if let Some(t) = &creds.token {
        headers.insert("x-amz-security-token".to_string(), t.clone());
    }
    let auth = crate::gateway::sigv4::authorization(
        "POST",
        &url,
        &headers,
        body.as_bytes(),
        (region, "secretsmanager"),
        (&creds.key_id, &creds.secret),
    )
    .map_err(|e| anyhow!(e))?;
    let mut rb = reqwest::Client::new().post(url.clone()).body(body).header("authorization", auth);
    for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
        rb = rb.header(k, v);
    }
    let r = rb.send().await.with_context(|| format!("reading secret {id} from {endpoint}"))?;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        let why = v["message"].as_str().or(v["Message"].as_str()).unwrap_or("no reason given");
        bail!("secret {id}: Secrets Manager answered {status} ({}: {why})", v["__type"].as_str().unwrap_or("error"));
    }
    let text = v["SecretString"].as_str().ok_or_else(|| {
        anyhow!("secret {id} holds no text (SecretString): store a JSON object of {}", KEYS.join(", "))
    })?;
    let values: HashMap<String, String> = serde_json::from_str(text)
        .map_err(|_| anyhow!("secret {id} is not a JSON object of strings: store one of {}", KEYS.join(", ")))?;
    if let Some(k) = values.keys().find(|k| !KEYS.contains(&k.as_str())) {
        bail!("secret {id} holds {k}, which aic does not take from a secret (only {})", KEYS.join(", "));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    /// What a pool keeps in Secrets Manager never reaches a worker (nor so a job's program)
    /// from the host's environment, where an operator may have exported it instead.
    #[test]
    fn no_secret_of_the_pools_is_inherited_by_workers() {
        for k in super::KEYS {
            assert!(aic_core::grant::NEVER_INHERITED.contains(&k), "{k} would reach every job's program");
        }
        assert!(aic_core::grant::NEVER_INHERITED.contains(&"AIC_SECRETS_ID"));
    }
}
