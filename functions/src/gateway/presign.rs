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
        // What the call would add to the caller's datasets: refused whole when over the quota.
        if let Caller::User(who) = who {
            let adds: u64 = b
                .items
                .iter()
                .filter(|i| i.method.eq_ignore_ascii_case("PUT") && quota::counted(who, &i.key))
                .map(|i| i.size.unwrap_or(0))
                .sum();
            if adds > 0 {
                self.take(who, adds).await?;
            }
        }
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
        Ok(json!(SignResponse { urls, expires_in: self.cfg.url_ttl.as_secs() }))
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
        // A multipart upload into a dataset starts only with room left, and its object is
        // kept only when it fits (`quota`).
        if let Caller::User(owner) = who
            && b.action == "create"
            && quota::counted(owner, &b.key)
        {
            self.take(owner, 1).await?;
        }
        if self.host_transfers() {
            let r = self.host_multipart(&b.action, &b.key, b.upload_id.clone(), b.part, b.parts).await?;
            if b.action == "complete" {
                self.check_completed(who, &b.key).await?;
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
                let url = s3.signed_url_opts(Method::PUT, &path, self.cfg.url_ttl, &opts).await.map_err(store_err)?;
                Ok(json!({ "url": url.to_string() }))
            }
            "complete" => {
                let parts = b.parts.into_iter().map(|e| PartId { content_id: e }).collect();
                let r = s3
                    .complete_multipart(&path, &upload_id()?, parts)
                    .await
                    .map_err(|e| bad(format!("completing the upload: {e}")))?;
                self.check_completed(who, &b.key).await?;
                Ok(json!({ "e_tag": r.e_tag }))
            }
            "abort" => {
                s3.abort_multipart(&path, &upload_id()?).await.map_err(store_err)?;
                Ok(json!({}))
            }
            other => Err(bad(format!("unknown multipart action {other:?}: create, part, complete or abort"))),
        }
    }
}
