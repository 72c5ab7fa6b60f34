//! Presigned URLs: PUTs bound to their content's SHA-256 (create-only where the key is
//! written once), GETs and DELETEs; big uploads part by part.

use super::*;

use aic_schemas::gateway::{MultipartRequest as MultipartBody, SignRequest as SignBody, SignResponse, SignedUrl};

impl Gateway {
    pub(super) async fn sign(&self, who: &Caller, body: &[u8]) -> Reply {
        let b: SignBody = serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{items:[…]}}: {e}")))?;
        if b.items.len() > MAX_ITEMS {
            return Err(bad(format!("at most {MAX_ITEMS} URLs per call")));
        }
        // S3 signs the URLs; a store that cannot (a local folder) is reached through this host.
        let s3 = if self.host_transfers() { None } else { Some(self.signer()?) };
        let max_put = if s3.is_some() { MAX_PUT } else { super::blob::MAX_HOST_PUT as u64 };
        let mut urls = Vec::with_capacity(b.items.len());
        for item in &b.items {
            let access = access(who, &item.key)?;
            let method: Method =
                item.method.to_uppercase().parse().map_err(|_| bad(format!("unknown method {:?}", item.method)))?;
            let mut opts = SignedUrlOptions::default();
            let mut send = std::collections::BTreeMap::new();
            match (&method, &access) {
                (&Method::GET | &Method::HEAD, _) => {}
                (&Method::PUT, Access::Read) => {
                    let who_writes = match who {
                        Caller::User(_) => "users write data/…, a job's code/… and request.json",
                        Caller::Worker(_) => "a job's workers write its logs, outputs, status and records",
                    };
                    return Err(err(StatusCode::FORBIDDEN, format!("{}: not writable by you; {who_writes}", item.key)));
                }
                (&Method::PUT, _) => {
                    let size = item.size.ok_or_else(|| bad(format!("{}: PUT needs the size in bytes", item.key)))?;
                    if size > max_put {
                        return Err(err(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "{}: {size} bytes is over the {max_put}-byte single-upload limit; use /v1/multipart",
                                item.key
                            ),
                        ));
                    }
                    // The limit validate reads a request with, so nothing is uploaded to be refused.
                    if matches!(access, Access::CreateOnly) && size > MAX_REQUEST_BYTES {
                        return Err(err(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "{}: {size} bytes; a request is at most {MAX_REQUEST_BYTES} bytes ({} KiB)",
                                item.key,
                                MAX_REQUEST_BYTES / 1024
                            ),
                        ));
                    }
                    let sum =
                        item.sha256.as_deref().and_then(|h| hex::decode(h).ok()).filter(|b| b.len() == 32).ok_or_else(
                            || bad(format!("{}: PUT needs the content's SHA-256 (64 hex digits)", item.key)),
                        )?;
                    let sum = base64::engine::general_purpose::STANDARD.encode(sum);
                    opts = opts.with_signed_header(
                        http::HeaderName::from_static("x-amz-checksum-sha256"),
                        HeaderValue::from_str(&sum).expect("base64 is a valid header"),
                    );
                    send.insert("x-amz-checksum-sha256".to_string(), sum);
                    if matches!(access, Access::CreateOnly | Access::Append) || item.create {
                        opts = opts.with_signed_header(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
                        send.insert("if-none-match".to_string(), "*".to_string());
                    }
                }
                (&Method::DELETE, Access::Write { deletable: true }) => {}
                _ => return Err(err(StatusCode::FORBIDDEN, format!("{method} is not allowed on {}", item.key))),
            }
            let path =
                object_path(&item.key).map_err(|e| bad(format!("{}: not a valid object key ({e})", item.key)))?;
            let url = match s3 {
                Some(s3) => {
                    let url =
                        s3.signed_url_opts(method.clone(), &path, self.cfg.url_ttl, &opts).await.map_err(store_err)?;
                    match (&method, item.size) {
                        // The size is bound too (S3 checks a signed Content-Length; clients
                        // send it with the body): what the quota counted is what arrives.
                        (&Method::PUT, Some(size)) => {
                            let secret = s3.credentials().get_credential().await.map_err(store_err)?.secret_key.clone();
                            let length = [("content-length".to_string(), size.to_string())].into();
                            super::sigv4::resign(&url, "PUT", &send, &length, &secret)
                                .map_err(|e| {
                                    err(StatusCode::INTERNAL_SERVER_ERROR, format!("signing the upload: {e}"))
                                })?
                                .to_string()
                        }
                        _ => url.to_string(),
                    }
                }
                None => self.blob_url(super::blob::Grant {
                    method: method.as_str().to_string(),
                    key: item.key.clone(),
                    sha: item.sha256.clone().unwrap_or_default().to_lowercase(),
                    create: send.contains_key("if-none-match"),
                    size: (method == Method::PUT).then_some(item.size.unwrap_or(0)),
                    ..Default::default()
                })?,
            };
            if access == Access::CreateOnly
                && method == Method::PUT
                && let Some(inbox) = &self.inbox
            {
                inbox
                    .expect(&item.key, Utc::now() + chrono::Duration::from_std(self.cfg.url_ttl).unwrap())
                    .await
                    .map_err(store_err)?
                    .map_err(|why| err(StatusCode::FORBIDDEN, why))?;
            }
            urls.push(SignedUrl { url, method: method.as_str().to_string(), headers: send });
        }
        // What the call adds to the caller's datasets and jobs' code: none of its URLs when
        // over the quota; code only for jobs not submitted, within its limits.
        if let Caller::User(who) = who {
            let mut code: std::collections::BTreeMap<JobId, Vec<(String, u64)>> = Default::default();
            for i in b.items.iter().filter(|i| i.method.eq_ignore_ascii_case("PUT")) {
                if let Some(job) = quota::code_job(who, &i.key) {
                    code.entry(job).or_default().push((i.key.clone(), i.size.unwrap_or(0)));
                }
            }
            for (job, items) in &code {
                self.take_code(who, job, items).await?;
            }
            let adds: Vec<(String, u64)> = b
                .items
                .iter()
                .filter(|i| i.method.eq_ignore_ascii_case("PUT") && quota::counted(who, &i.key))
                .map(|i| (i.key.clone(), i.size.unwrap_or(0)))
                .collect();
            if !adds.is_empty() {
                self.take(who, &adds, None).await?;
            }
            if b.items.iter().any(|i| i.method.eq_ignore_ascii_case("DELETE") && quota::counted(who, &i.key)) {
                self.relist(who).await;
            }
        }
        Ok(json!(SignResponse { urls, expires_in: self.cfg.url_ttl.as_secs() }))
    }

    /// A presigned PUT of `path` bound to `size` bytes besides `opts`' headers (`sent`).
    async fn sized_url(
        &self,
        s3: &object_store::aws::AmazonS3,
        path: &object_store::path::Path,
        opts: &SignedUrlOptions,
        sent: &std::collections::BTreeMap<String, String>,
        size: u64,
    ) -> Result<String, ApiError> {
        let length = [("content-length".to_string(), size.to_string())].into();
        // The secret must be the one the URL was made with: credentials that rotate (STS,
        // instance metadata) may change between the two reads, and the URL is made again.
        for _ in 0..3 {
            let cred = s3.credentials().get_credential().await.map_err(store_err)?;
            let url = s3.signed_url_opts(Method::PUT, path, self.cfg.url_ttl, opts).await.map_err(store_err)?;
            let made_with = url.query_pairs().find(|(k, _)| k == "X-Amz-Credential").map(|(_, v)| v.into_owned());
            if made_with.is_some_and(|c| c.starts_with(&format!("{}/", cred.key_id))) {
                return super::sigv4::resign(&url, "PUT", sent, &length, &cred.secret_key)
                    .map(|u| u.to_string())
                    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("signing the upload: {e}")));
            }
        }
        Err(err(StatusCode::SERVICE_UNAVAILABLE, "the store's credentials are changing; try again in a moment"))
    }

    pub(super) async fn multipart(&self, who: &Caller, body: &[u8]) -> Reply {
        let b: MultipartBody =
            serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{action, key, …}}: {e}")))?;
        match access(who, &b.key)? {
            Access::Write { .. } => {}
            _ => {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{}: multipart uploads are for keys you may write (data/…, code/…; outputs for workers)",
                        b.key
                    ),
                ));
            }
        }
        // A job's code in parts: as for single uploads (`quota::take_code`).
        if let Caller::User(owner) = who
            && let Some(job) = quota::code_job(owner, &b.key)
            && matches!(b.action.as_str(), "create" | "part")
        {
            let part = match b.part {
                Some(p) => quota::part_key(&b.key, b.upload_id.as_deref().unwrap_or(""), p),
                None => format!("{}#create", b.key),
            };
            self.take_code(owner, &job, &[(part, b.size.unwrap_or(0))]).await?;
        }
        // Into a dataset (`quota`): an upload starts only with room left; each part is taken
        // by its size, which its URL binds; the object is kept only when it fits.
        if let Caller::User(owner) = who
            && quota::counted(owner, &b.key)
            && self.cfg.storage_quota.is_some()
        {
            match (b.action.as_str(), b.part, &b.upload_id) {
                ("create", _, _) => self.take(owner, &[(format!("{}#create", b.key), 1)], None).await?,
                ("part", Some(part), Some(upload)) => {
                    let size = b.size.ok_or_else(|| bad("a part of an upload into a dataset needs its size"))?;
                    let key = quota::part_key(&b.key, upload, part);
                    self.take(owner, &[(key, size)], Some(quota::PARTS_HELD + self.cfg.url_ttl)).await?;
                }
                _ => {}
            }
        }
        if self.host_transfers() {
            let upload = b.upload_id.clone().unwrap_or_default();
            let r = self.host_multipart(&b.action, &b.key, b.upload_id.clone(), b.part, b.size, b.parts).await?;
            match b.action.as_str() {
                "complete" => self.check_completed(who, &b.key, &upload).await?,
                "abort" => self.release(who, &b.key, &upload).await?,
                _ => {}
            }
            return Ok(r);
        }
        let s3 = self.signer()?;
        let path = object_path(&b.key).map_err(|e| bad(format!("{}: not a valid object key ({e})", b.key)))?;
        let upload_id = || b.upload_id.clone().ok_or_else(|| bad("upload_id is required"));
        match b.action.as_str() {
            "create" => {
                let id = s3.create_multipart(&path).await.map_err(store_err)?;
                Ok(json!({ "upload_id": id }))
            }
            "part" => {
                let part = b.part.ok_or_else(|| bad("part (0-based index) is required"))?;
                if part >= 10_000 {
                    return Err(bad("at most 10000 parts"));
                }
                let opts = SignedUrlOptions::default().with_query([
                    ("partNumber".to_string(), (part + 1).to_string()),
                    ("uploadId".to_string(), upload_id()?),
                ]);
                let url = match b.size {
                    Some(size) => self.sized_url(s3, &path, &opts, &Default::default(), size).await?,
                    None => s3
                        .signed_url_opts(Method::PUT, &path, self.cfg.url_ttl, &opts)
                        .await
                        .map_err(store_err)?
                        .to_string(),
                };
                Ok(json!({ "url": url }))
            }
            "complete" => {
                let parts = b.parts.into_iter().map(|e| PartId { content_id: e }).collect();
                let r = s3
                    .complete_multipart(&path, &upload_id()?, parts)
                    .await
                    .map_err(|e| bad(format!("completing the upload: {e}")))?;
                self.check_completed(who, &b.key, &upload_id()?).await?;
                Ok(json!({ "e_tag": r.e_tag }))
            }
            "abort" => {
                s3.abort_multipart(&path, &upload_id()?).await.map_err(store_err)?;
                self.release(who, &b.key, &upload_id()?).await?;
                Ok(json!({}))
            }
            other => Err(bad(format!("unknown multipart action {other:?}: create, part, complete or abort"))),
        }
    }
}
