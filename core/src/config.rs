//! Where the object store is.
//!
//! `AIC_STORE` names it: `file:///abs/dir` (a local directory, the embedded default) or
//! `s3://bucket` (any S3-compatible server). For S3, `AIC_S3_ENDPOINT` (e.g.
//! `http://127.0.0.1:4566` for LocalStack, a MinIO URL on the pool; unset for AWS),
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`. A custom endpoint uses
//! path-style requests.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;

use crate::store::Store;

#[derive(Clone, Debug, PartialEq)]
pub enum StoreConfig {
    Local {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: String,
        access_key: Option<String>,
        secret_key: Option<String>,
        /// With temporary credentials (a Lambda's or an ECS task's role): `AWS_SESSION_TOKEN`,
        /// which every request and presigned URL must carry (`X-Amz-Security-Token`).
        session_token: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AIC_STORE={0:?} is not a store URL: use file:///abs/dir or s3://bucket")]
    BadUrl(String),
    #[error("cannot open the store: {0}")]
    Open(String),
}

impl StoreConfig {
    /// Parses a store URL (`file:///dir`, a plain absolute path, or `s3://bucket`), taking S3
    /// settings from the environment.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let bucket = rest.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(ConfigError::BadUrl(url.into()));
            }
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            return Ok(StoreConfig::S3 {
                bucket: bucket.into(),
                endpoint: env("AIC_S3_ENDPOINT"),
                region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()),
                access_key: env("AWS_ACCESS_KEY_ID"),
                secret_key: env("AWS_SECRET_ACCESS_KEY"),
                session_token: env("AWS_SESSION_TOKEN"),
            });
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.starts_with('/') {
            Ok(StoreConfig::Local { root: PathBuf::from(path) })
        } else {
            Err(ConfigError::BadUrl(url.into()))
        }
    }

    /// The URL form, for `AIC_STORE`.
    pub fn url(&self) -> String {
        match self {
            StoreConfig::Local { root } => format!("file://{}", root.display()),
            StoreConfig::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// Environment a child process (a worker) needs to open the same store.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut out = vec![("AIC_STORE".to_string(), self.url())];
        if let StoreConfig::S3 { endpoint, region, access_key, secret_key, session_token, .. } = self {
            if let Some(e) = endpoint {
                out.push(("AIC_S3_ENDPOINT".into(), e.clone()));
            }
            out.push(("AWS_REGION".into(), region.clone()));
            if let Some(k) = access_key {
                out.push(("AWS_ACCESS_KEY_ID".into(), k.clone()));
            }
            if let Some(s) = secret_key {
                out.push(("AWS_SECRET_ACCESS_KEY".into(), s.clone()));
            }
            if let Some(t) = session_token {
                out.push(("AWS_SESSION_TOKEN".into(), t.clone()));
            }
        }
        out
    }

    pub fn open(&self) -> Result<Store, ConfigError> {
        match self {
            StoreConfig::Local { root } => {
                std::fs::create_dir_all(root).map_err(|e| ConfigError::Open(format!("{}: {e}", root.display())))?;
                let fs = LocalFileSystem::new_with_prefix(root)
                    .map_err(|e| ConfigError::Open(e.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(Store::local(Arc::new(fs), root.clone()))
            }
            StoreConfig::S3 { bucket, endpoint, region, access_key, secret_key, session_token } => {
                // From the environment first: a role's credentials (web identity on EKS, the
                // container endpoint on ECS, instance metadata) where no keys are given.
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    // Create-only writes are `If-None-Match: *`; ETag matching is what AWS,
                    // MinIO and LocalStack implement.
                    .with_conditional_put(S3ConditionalPut::ETagMatch);
                if let (Some(k), Some(s)) = (access_key, secret_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                if let Some(t) = session_token {
                    b = b.with_token(t);
                }
                if let Some(e) = endpoint {
                    b = b
                        .with_endpoint(e)
                        .with_virtual_hosted_style_request(false)
                        .with_allow_http(e.starts_with("http://"));
                }
                let s3 = b.build().map_err(|e| ConfigError::Open(e.to_string()))?;
                Ok(Store::s3(s3, bucket))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(StoreConfig::parse("file:///tmp/x").unwrap(), StoreConfig::Local { root: "/tmp/x".into() });
        assert_eq!(StoreConfig::parse("/tmp/x").unwrap().url(), "file:///tmp/x");
        assert!(matches!(StoreConfig::parse("s3://aic").unwrap(), StoreConfig::S3 { bucket, .. } if bucket == "aic"));
        assert!(StoreConfig::parse("relative/dir").is_err());
        assert!(StoreConfig::parse("s3://").is_err());
    }

    /// Lambda's role credentials are temporary: without the session token every request and
    /// presigned URL is refused (object_store's `aws/credential.rs` signs it in).
    #[tokio::test]
    async fn a_session_token_reaches_presigned_urls_and_the_workers() {
        use object_store::signer::Signer;
        let cfg = StoreConfig::S3 {
            bucket: "aic".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: "us-east-1".into(),
            access_key: Some("ASIATEMP".into()),
            secret_key: Some("secret".into()),
            session_token: Some("the-session-token".into()),
        };
        let store = cfg.open().unwrap();
        let url = store
            .s3_client()
            .unwrap()
            .signed_url(http::Method::GET, &object_store::path::Path::from("k"), std::time::Duration::from_secs(60))
            .await
            .unwrap();
        assert!(url.query().unwrap().contains("X-Amz-Security-Token=the-session-token"), "{url}");
        assert!(cfg.env().contains(&("AWS_SESSION_TOKEN".into(), "the-session-token".into())));
    }
}
