//! Users' secrets through the gateway (`aic secret`; `aic_core::vault` keeps them sealed):
//! the owner sets, lists (names and when, never values) and removes theirs; a job's workers
//! get the values of the secrets their job's request names, the job's owner's only.

use super::*;

#[derive(serde::Deserialize)]
struct SetBody {
    value: String,
}

impl Gateway {
    fn vault(&self) -> Result<&aic_core::vault::Vault, ApiError> {
        self.vault.as_ref().map_err(|e| err(StatusCode::NOT_IMPLEMENTED, format!("this pool keeps no secrets: {e}")))
    }

    /// `GET /v1/secrets`: the caller's secrets, by name.
    pub(super) async fn secrets_list(&self, who: &Address) -> Reply {
        let listed = aic_core::vault::list(&self.ctx.store, who).await.map_err(store_err)?;
        Ok(json!({ "secrets": listed }))
    }

    /// `PUT /v1/secrets/<NAME>` `{value}`: sets the caller's secret.
    pub(super) async fn secret_set(&self, who: &Address, name: &str, body: &[u8]) -> Reply {
        let b: SetBody = serde_json::from_slice(body).map_err(|e| bad(format!("the body must be {{value}}: {e}")))?;
        aic_core::vault::put(&self.ctx.store, self.vault()?, who, name, &b.value)
            .await
            .map_err(|e| bad(format!("{e:#}")))?;
        Ok(json!({ "secret": name }))
    }

    /// `DELETE /v1/secrets/<NAME>`.
    pub(super) async fn secret_remove(&self, who: &Address, name: &str) -> Reply {
        aic_schemas::validate::secret_name(name).map_err(bad)?;
        match aic_core::vault::remove(&self.ctx.store, who, name).await.map_err(store_err)? {
            true => Ok(json!({ "removed": name })),
            false => Err(err(StatusCode::NOT_FOUND, format!("you have no secret {name}; see `aic secret ls`"))),
        }
    }

    /// `GET /v1/worker/secrets`: the values of the secrets the worker's job names, its owner's.
    pub(super) async fn worker_secrets(&self, g: &aic_core::grant::WorkerGrant) -> Reply {
        let job = g.job_key();
        // Only while the job runs: a token copied out of an allocation gets nothing once its
        // job ended (none of the grace the workers' last uploads get).
        let ended = aic_core::status::current(&self.ctx.store, &job)
            .await
            .map_err(store_err)?
            .is_none_or(|r| r.state.is_terminal());
        if ended {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("job {} is not running: its secrets are not given out", g.job),
            ));
        }
        let req: aic_schemas::JobRequest = self
            .ctx
            .store
            .get_json(&job.request(), aic_schemas::validate::MAX_DOC_BYTES)
            .await
            .map_err(store_err)?
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("job {} has no request", g.job)))?;
        let values = aic_core::vault::values(&self.ctx.store, self.vault()?, &g.owner, &req.secrets)
            .await
            .map_err(|e| err(StatusCode::CONFLICT, format!("{e:#}")))?;
        Ok(json!({ "secrets": values }))
    }
}
