//! Private deployments (`aic deploy --private`): a request reaches a replica only with
//! `Authorization: Bearer <key>`, a key of the deployment's (`aic_core::deploykeys`); any
//! other is answered 401 here, the replica never sees it, and the key does not go on to the
//! app. Whether a deployment is private is read from its manifest (written by the pool, from
//! the signed request) once; its keys' digests are read again after [`REFRESH`], so a revoked
//! key stops working within a second. A deployment whose manifest cannot be read is refused
//! (503), never served as public; one the pool has no record of (no id claim) has nobody who
//! made it private.

use aic_core::deploykeys;

use super::*;

/// What the proxy knows of a deployment: private or not, and where its keys are.
pub(super) struct Guard {
    private: bool,
    owner: aic_schemas::Address,
    scope: String,
    /// The deployment, and how it is autoscaled if it is.
    pub(super) job: aic_core::JobKey,
    pub(super) autoscale: Option<aic_schemas::ServeOptions>,
}

/// A guard as kept: read from a manifest (which never changes), or not (read again after
/// [`REFRESH`]).
pub(super) type Kept = (Instant, Option<Arc<Guard>>);
/// A private deployment's keys' digests as read, and when.
pub(super) type KeysRead = (Instant, Arc<[String]>);

/// Most deployments whose guard is kept.
const GUARDS: usize = 10_000;

#[derive(serde::Deserialize)]
struct IdClaim {
    owner: aic_schemas::Address,
}

fn unavailable() -> Answer {
    error(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; retry".into())
}

fn unauthorized(why: String) -> Answer {
    let mut a = error(StatusCode::UNAUTHORIZED, why);
    a.headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"aic deployment\""));
    a
}

impl Proxy {
    /// Whether a request with `headers` may reach `deployment`: `Ok(true)` when it is private
    /// (and the key is its), `Ok(false)` when it is public, else the answer to give.
    pub(super) async fn admit(&self, deployment: &str, headers: &HeaderMap) -> Result<bool, Answer> {
        let Some(g) = self.guard(deployment).await? else { return Ok(false) };
        if !g.private {
            return Ok(false);
        }
        let sent = deploykeys::bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        let Some(key) = sent else {
            return Err(unauthorized(format!(
                "deployment {} is private: send `Authorization: Bearer <key>`, a key its owner made with `aic deploy key create {}`",
                g.scope, g.scope
            )));
        };
        let digest = deploykeys::digest(key);
        if self.keys(&g).await?.contains(&digest) {
            return Ok(true);
        }
        Err(unauthorized(format!(
            "that key does not open deployment {} (revoked, mistyped, or another deployment's); ask its owner for one",
            g.scope
        )))
    }

    /// The deployment's guard, from its id claim and manifest (kept once read); `None` for a
    /// deployment the pool has no claim of.
    pub(super) async fn guard(&self, deployment: &str) -> Result<Option<Arc<Guard>>, Answer> {
        if let Some((at, g)) = self.guards.lock().unwrap().get(deployment)
            && (g.is_some() || at.elapsed() < REFRESH)
        {
            return Ok(g.clone());
        }
        let g = match deployment.parse::<aic_schemas::JobId>() {
            Err(_) => None,
            Ok(id) => {
                let max = aic_schemas::validate::MAX_DOC_BYTES;
                let claim = self.store.get_json::<IdClaim>(&aic_core::layout::job_id_claim(&id), max).await;
                match claim {
                    Err(_) => return Err(unavailable()),
                    Ok(None) => None,
                    Ok(Some(c)) => {
                        let job = aic_core::JobKey::new(c.owner, id);
                        match self.store.get_json::<aic_schemas::JobManifest>(&job.manifest(), 1 << 20).await {
                            Ok(Some(m)) => Some(Arc::new(Guard {
                                private: m.request.serving.as_ref().is_some_and(|s| s.private),
                                owner: c.owner,
                                scope: deploykeys::scope_of(&m.request),
                                autoscale: m
                                    .request
                                    .serving
                                    .clone()
                                    .filter(|_| aic_core::scheduler::autoscaled(&m.request)),
                                job,
                            })),
                            // Claimed but not validated: nothing of it is served.
                            Ok(None) | Err(_) => return Err(unavailable()),
                        }
                    }
                }
            }
        };
        let mut guards = self.guards.lock().unwrap();
        if guards.len() >= GUARDS {
            guards.clear();
        }
        guards.insert(deployment.to_string(), (Instant::now(), g.clone()));
        Ok(g)
    }

    /// The digests of the keys to `g`'s deployment (read again after [`REFRESH`]).
    async fn keys(&self, g: &Guard) -> Result<Arc<[String]>, Answer> {
        let at = aic_core::layout::deploy_keys_prefix(&g.owner, &g.scope);
        if let Some((t, k)) = self.keys.lock().unwrap().get(&at)
            && t.elapsed() < REFRESH
        {
            return Ok(k.clone());
        }
        let keys: Arc<[String]> = match deploykeys::list(&self.store, &g.owner, &g.scope).await {
            Ok(ks) => ks.into_iter().map(|k| k.sha256).collect(),
            Err(_) => return Err(unavailable()),
        };
        let mut cache = self.keys.lock().unwrap();
        if cache.len() >= GUARDS {
            cache.clear();
        }
        cache.insert(at, (Instant::now(), keys.clone()));
        Ok(keys)
    }
}
