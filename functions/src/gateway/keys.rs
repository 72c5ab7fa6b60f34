//! Keys to the caller's private deployments (`aic deploy key`; `aic_core::deploykeys` keeps
//! their digests): made (the key shown in this answer alone), listed (never the key), revoked.
//! A caller reaches only the keys under their own address: another wallet's deployment of the
//! same name is another scope.

use aic_core::deploykeys;

use super::*;

#[derive(serde::Deserialize, Default)]
struct CreateBody {
    #[serde(default)]
    label: String,
}

fn scope(s: &str) -> Result<&str, ApiError> {
    if deploykeys::is_scope(s) {
        Ok(s)
    } else {
        Err(bad(format!("{s:?} is not a deployment's name or id; see `aic deploy list`")))
    }
}

impl Gateway {
    /// `GET /v1/deployments/<name or id>/keys`.
    pub(super) async fn keys_list(&self, who: &Address, s: &str) -> Reply {
        let keys = deploykeys::list(&self.ctx.store, who, scope(s)?).await.map_err(store_err)?;
        Ok(json!({ "keys": keys }))
    }

    /// `POST /v1/deployments/<name or id>/keys` `{label?}`: a new key, shown once.
    pub(super) async fn keys_create(&self, who: &Address, s: &str, body: &[u8]) -> Reply {
        let b: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
            CreateBody::default()
        } else {
            serde_json::from_slice(body).map_err(|e| bad(format!("the body must be {{label}}: {e}")))?
        };
        // Keys only for a deployment of the caller's: its name dispatch recorded, or its id.
        let store = &self.ctx.store;
        let named =
            !store.list(&aic_core::layout::serving_names_prefix(who, scope(s)?)).await.map_err(store_err)?.is_empty();
        let by_id = match s.parse::<aic_schemas::JobId>() {
            Ok(id) => store.head(&aic_core::JobKey::new(*who, id).request()).await.map_err(store_err)?.is_some(),
            Err(_) => false,
        };
        if !named && !by_id {
            return Err(err(StatusCode::NOT_FOUND, format!("you have no deployment {s}; see `aic deploy list`")));
        }
        let (record, key) =
            deploykeys::create(store, who, scope(s)?, &b.label).await.map_err(|e| bad(format!("{e:#}")))?;
        Ok(json!({ "key": key, "record": record }))
    }

    /// `DELETE /v1/deployments/<name or id>/keys/<id>`.
    pub(super) async fn keys_revoke(&self, who: &Address, s: &str, id: &str) -> Reply {
        match deploykeys::revoke(&self.ctx.store, who, scope(s)?, id).await.map_err(store_err)? {
            true => Ok(json!({ "revoked": id })),
            false => {
                Err(err(StatusCode::NOT_FOUND, format!("deployment {s} has no key {id}; see `aic deploy key ls {s}`")))
            }
        }
    }
}
