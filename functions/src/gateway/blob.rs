//! Transfers through the gateway's own host, for stores that cannot presign URLs (the
//! embedded pool's local folder): `/v1/sign` and `/v1/multipart` then answer with URLs of
//! this host (`/v1/blob?…`), signed with the gateway's secret over the method, the key, the
//! expiry, the content's SHA-256, create-only and the upload part: the same grants as a
//! presigned S3 URL, checked here instead of by S3. The access rules are `sign`'s, applied
//! before a URL is made.
//!
//! Parts of a multipart upload are kept under `pool/uploads/<upload>/` until it is completed
//! (streamed into the object in order, each part checked against the digest its ETag names)
//! or aborted. An upload id carries a MAC of its key, so it completes no other key.

use super::*;
use aic_core::store::StoreError;
use futures::StreamExt;
use object_store::{GetOptions, GetRange};

/// Largest body one `/v1/blob` PUT takes (a file or a part: clients send 8 MiB parts).
pub const MAX_HOST_PUT: usize = 32 * 1024 * 1024;

/// What `/v1/blob` answers.
pub struct Blob {
    pub status: StatusCode,
    pub headers: Vec<(http::HeaderName, String)>,
    pub body: BlobBody,
}

pub enum BlobBody {
    Bytes(Bytes),
    Stream(futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>),
}

/// What one URL allows.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Grant {
    pub method: String,
    pub key: String,
    pub expires: i64,
    /// The content's SHA-256 (hex) a PUT must have; empty: not bound.
    pub sha: String,
    pub create: bool,
    pub upload: String,
    pub part: Option<u32>,
    /// The body's length a PUT must have (what the quota counted); `None`: not bound.
    pub size: Option<u64>,
}

impl Grant {
    /// What the MAC covers: every field, as a JSON array (each string quoted and escaped), so
    /// no choice of one field's text can stand for another's. (The fields joined by `|` were
    /// ambiguous: a key `users/B/data/a||K` signed for B replayed as key `K` with upload
    /// `||users/B/data/a` — the same text — reading any object of the bucket.)
    fn signed_text(&self) -> String {
        json!(["blob", self.method, self.expires, self.sha, self.create, self.upload, self.part, self.size, self.key])
            .to_string()
    }

    /// Refuses what no URL this host makes carries: a SHA-256 that is not 64 lower-case hex
    /// digits, an upload without its part (or a part without its upload), an upload id with
    /// anything but letters and digits.
    fn check_fields(&self) -> Result<(), &'static str> {
        if !self.sha.is_empty()
            && (self.sha.len() != 64 || !self.sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err("a bad content SHA-256 in the URL; ask /v1/sign for a new one");
        }
        if self.upload.is_empty() != self.part.is_none() {
            return Err("an upload's URL names both its upload and its part; ask /v1/multipart for a new one");
        }
        if !self.upload.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("a bad upload id in the URL; ask /v1/multipart for a new one");
        }
        Ok(())
    }
}

fn blob_answer(status: StatusCode, why: impl Into<String>) -> Blob {
    Blob {
        status,
        headers: vec![(header::CONTENT_TYPE, "application/json".into())],
        body: BlobBody::Bytes(Bytes::from(json!({ "error": why.into() }).to_string())),
    }
}

impl Gateway {
    /// Whether this gateway's host carries the transfers itself (the store cannot presign).
    pub fn host_transfers(&self) -> bool {
        self.ctx.store.s3_client().is_none() && self.cfg.public_url.is_some()
    }

    /// The URL for `grant` on this host.
    pub(super) fn blob_url(&self, mut grant: Grant) -> Result<String, ApiError> {
        let base = self.cfg.public_url.as_deref().ok_or_else(|| {
            err(
                StatusCode::NOT_IMPLEMENTED,
                "this pool's store cannot presign URLs (it is not S3); use the embedded pool",
            )
        })?;
        grant.expires = Utc::now().timestamp() + self.cfg.url_ttl.as_secs() as i64;
        let sig = self.mac(&grant.signed_text());
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("key", &grant.key)
            .append_pair("m", &grant.method)
            .append_pair("e", &grant.expires.to_string())
            .append_pair("sig", &sig);
        if !grant.sha.is_empty() {
            q.append_pair("sha", &grant.sha);
        }
        if grant.create {
            q.append_pair("c", "1");
        }
        if let Some(n) = grant.size {
            q.append_pair("n", &n.to_string());
        }
        if let Some(p) = grant.part {
            q.append_pair("u", &grant.upload).append_pair("p", &p.to_string());
        }
        Ok(format!("{}/v1/blob?{}", base.trim_end_matches('/'), q.finish()))
    }

    fn grant_of(&self, query: Option<&str>, now: DateTime<Utc>) -> Result<Grant, String> {
        let q: HashMap<String, String> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect();
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        let g = Grant {
            method: get("m"),
            key: get("key"),
            expires: get("e").parse().map_err(|_| "not a signed transfer URL; ask /v1/sign for one")?,
            sha: get("sha"),
            create: get("c") == "1",
            upload: get("u"),
            part: q.get("p").map(|p| p.parse()).transpose().map_err(|_| "a bad part number")?,
            size: q.get("n").map(|n| n.parse()).transpose().map_err(|_| "a bad size")?,
        };
        g.check_fields()?;
        if !aic_core::grant::mac_matches(&self.cfg.secret, &[g.signed_text().as_bytes()], &get("sig"), 64) {
            return Err("the URL's signature does not match; ask /v1/sign for a new one".into());
        }
        if g.expires < now.timestamp() {
            return Err("the URL has expired; ask /v1/sign for a new one".into());
        }
        Ok(g)
    }

    /// The refusal of a `/v1/blob` request whose URL grants nothing (a bad or expired
    /// signature, another method), told before its body is read: a stranger's 32 MiB is never
    /// taken in for a URL that allows nothing. `None`: read the body and call [`Self::blob`].
    pub fn blob_refusal(&self, method: &Method, query: Option<&str>) -> Option<Blob> {
        match self.grant_of(query, Utc::now()) {
            Err(why) => Some(blob_answer(StatusCode::FORBIDDEN, why)),
            Ok(g) if !(g.method == method.as_str() || (g.method == "GET" && method == Method::HEAD)) => {
                Some(blob_answer(StatusCode::FORBIDDEN, format!("this URL is for {}, not {method}", g.method)))
            }
            Ok(_) => None,
        }
    }

    /// Answers a `/v1/blob` request: what its signed URL allows, nothing else.
    pub async fn blob(&self, method: &Method, query: Option<&str>, headers: &HeaderMap, body: Bytes) -> Blob {
        let g = match self.grant_of(query, Utc::now()) {
            Ok(g) => g,
            Err(why) => return blob_answer(StatusCode::FORBIDDEN, why),
        };
        let allowed = g.method == method.as_str() || (g.method == "GET" && method == Method::HEAD);
        if !allowed {
            return blob_answer(StatusCode::FORBIDDEN, format!("this URL is for {}, not {method}", g.method));
        }
        match self.blob_do(method, &g, headers, body).await {
            Ok(b) => b,
            Err(ApiError(code, why, _)) => blob_answer(code, why),
        }
    }

    async fn blob_do(&self, method: &Method, g: &Grant, headers: &HeaderMap, body: Bytes) -> Result<Blob, ApiError> {
        let store = &self.ctx.store;
        let path = object_path(&g.key).map_err(|e| bad(format!("{}: not a valid object key ({e})", g.key)))?;
        match *method {
            Method::GET | Method::HEAD => {
                let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(parse_range).transpose()?;
                let opts = GetOptions { range: range.clone(), head: *method == Method::HEAD, ..Default::default() };
                let r = match store.object_store().get_opts(&path, opts).await {
                    Ok(r) => r,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(err(StatusCode::NOT_FOUND, format!("{}: no such object", g.key)));
                    }
                    Err(e) => return Err(store_err(e)),
                };
                let meta = r.meta.clone();
                let served = r.range.clone();
                let mut hs = vec![
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::LAST_MODIFIED, meta.last_modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
                    (header::ACCEPT_RANGES, "bytes".into()),
                    // What a user's job wrote is never a page of this origin.
                    (header::CONTENT_DISPOSITION, "attachment".into()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                    (header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'".into()),
                ];
                if let Some(e) = &meta.e_tag {
                    hs.push((header::ETAG, e.clone()));
                }
                let status = if range.is_some() && *method == Method::GET {
                    hs.push((
                        header::CONTENT_RANGE,
                        format!("bytes {}-{}/{}", served.start, served.end.saturating_sub(1), meta.size),
                    ));
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                };
                hs.push((header::CONTENT_LENGTH, (served.end - served.start).to_string()));
                if *method == Method::HEAD {
                    hs.retain(|(k, _)| k != header::CONTENT_LENGTH);
                    hs.push((header::CONTENT_LENGTH, meta.size.to_string()));
                    return Ok(Blob { status, headers: hs, body: BlobBody::Bytes(Bytes::new()) });
                }
                let stream = r.into_stream().map(|c| c.map_err(std::io::Error::other)).boxed();
                Ok(Blob { status, headers: hs, body: BlobBody::Stream(stream) })
            }
            Method::PUT => {
                if let Some(n) = g.size
                    && body.len() as u64 != n
                {
                    return Err(bad(format!(
                        "{}: {} bytes sent; the URL is for {n} (the size given to /v1/sign)",
                        g.key,
                        body.len()
                    )));
                }
                let sum = hex::encode(<Sha256 as sha2::Digest>::digest(&body));
                if !g.sha.is_empty() && g.sha != sum {
                    return Err(bad(format!("{}: the content's SHA-256 is not the one signed (BadDigest)", g.key)));
                }
                let etag = format!("\"{sum}\"");
                let ok = |status| Blob {
                    status,
                    headers: vec![(header::ETAG, etag.clone())],
                    body: BlobBody::Bytes(Bytes::new()),
                };
                if let Some(part) = g.part {
                    store.put_bytes(&aic_core::layout::upload_part(&g.upload, part), body).await.map_err(store_err)?;
                    return Ok(ok(StatusCode::OK));
                }
                if g.create {
                    return match store.create_bytes(&g.key, body).await.map_err(store_err)? {
                        aic_core::store::Created::Created => Ok(ok(StatusCode::OK)),
                        aic_core::store::Created::AlreadyExists => {
                            Err(err(StatusCode::PRECONDITION_FAILED, format!("{}: already exists", g.key)))
                        }
                    };
                }
                store.put_bytes(&g.key, body).await.map_err(store_err)?;
                Ok(ok(StatusCode::OK))
            }
            Method::DELETE => {
                store.delete(&g.key).await.map_err(store_err)?;
                Ok(Blob { status: StatusCode::NO_CONTENT, headers: vec![], body: BlobBody::Bytes(Bytes::new()) })
            }
            _ => Err(err(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not a transfer"))),
        }
    }

    /// An upload id for `key`: a ULID and a MAC binding it to the key.
    fn upload_id(&self, key: &str) -> String {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let mac = self.mac(&format!("upload|{id}|{key}"));
        format!("{id}{}", &mac[..16])
    }

    fn check_upload(&self, key: &str, upload: &str) -> Result<(), ApiError> {
        let unknown = || bad(format!("{upload:?} is not an upload of {key}"));
        if upload.len() != 42 || !upload.is_char_boundary(26) {
            return Err(unknown());
        }
        let (id, mac) = upload.split_at(26);
        let signed = format!("upload|{id}|{key}");
        if !aic_core::grant::mac_matches(&self.cfg.secret, &[signed.as_bytes()], mac, 16) {
            return Err(unknown());
        }
        Ok(())
    }

    /// `/v1/multipart` on this host (access already checked).
    pub(super) async fn host_multipart(
        &self,
        action: &str,
        key: &str,
        upload: Option<String>,
        part: Option<usize>,
        size: Option<u64>,
        parts: Vec<String>,
    ) -> Reply {
        let upload = || {
            let u = upload.clone().ok_or_else(|| bad("upload_id is required"))?;
            self.check_upload(key, &u)?;
            Ok::<_, ApiError>(u)
        };
        match action {
            "create" => Ok(json!({ "upload_id": self.upload_id(key) })),
            "part" => {
                let part = part.ok_or_else(|| bad("part (0-based index) is required"))?;
                if part >= 10_000 {
                    return Err(bad("at most 10000 parts"));
                }
                let url = self.blob_url(Grant {
                    method: "PUT".into(),
                    key: key.into(),
                    upload: upload()?,
                    part: Some(part as u32),
                    size,
                    ..Default::default()
                })?;
                Ok(json!({ "url": url }))
            }
            "complete" => {
                let upload = upload()?;
                let store = self.ctx.store.clone();
                let u = upload.clone();
                let chunks = futures::stream::iter(parts.into_iter().enumerate())
                    .then(move |(i, etag)| {
                        let (store, u) = (store.clone(), u.clone());
                        async move {
                            let b = store
                                .get_limited(&aic_core::layout::upload_part(&u, i as u32), MAX_HOST_PUT as u64)
                                .await?
                                .ok_or_else(|| StoreError::Refused(format!("part {i} was not uploaded")))?;
                            let sum = hex::encode(<Sha256 as sha2::Digest>::digest(&b));
                            if etag.trim_matches('"') != sum {
                                return Err(StoreError::Refused(format!("part {i} is not the one uploaded")));
                            }
                            Ok(b)
                        }
                    })
                    .boxed();
                let size = match self.ctx.store.write_stream(key, chunks).await {
                    Ok(n) => n,
                    Err(StoreError::Refused(why)) => return Err(bad(format!("completing the upload: {why}"))),
                    Err(e) => return Err(store_err(e)),
                };
                self.ctx.store.delete_prefix(&aic_core::layout::upload_parts(&upload)).await.map_err(store_err)?;
                Ok(json!({ "e_tag": null, "size": size }))
            }
            "abort" => {
                self.ctx.store.delete_prefix(&aic_core::layout::upload_parts(&upload()?)).await.map_err(store_err)?;
                Ok(json!({}))
            }
            other => Err(bad(format!("unknown multipart action {other:?}: create, part, complete or abort"))),
        }
    }
}

/// One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`), as S3 takes it.
fn parse_range(v: &str) -> Result<GetRange, ApiError> {
    let bad_range = || err(StatusCode::RANGE_NOT_SATISFIABLE, format!("range {v:?}: one range of bytes=a-b"));
    let r = v.strip_prefix("bytes=").ok_or_else(bad_range)?;
    let (a, b) = r.split_once('-').ok_or_else(bad_range)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad_range());
    Ok(match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad_range());
            }
            GetRange::Bounded(a..b + 1)
        }
        (false, true) => GetRange::Offset(num(a)?),
        (true, false) => GetRange::Suffix(num(b)?),
        _ => return Err(bad_range()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's forgery and every swap of text between fields: no two grants sign the same.
    #[test]
    fn no_field_can_stand_for_another_in_the_signed_text() {
        let signed = Grant {
            method: "GET".into(),
            key: "users/b/data/a||users/a/data/x".into(),
            expires: 9,
            ..Default::default()
        };
        let forged = Grant {
            method: "GET".into(),
            key: "users/a/data/x".into(),
            expires: 9,
            upload: "||users/b/data/a".into(),
            ..Default::default()
        };
        assert_ne!(signed.signed_text(), forged.signed_text());
        assert!(forged.check_fields().is_err(), "an upload without its part");
        let base = Grant {
            method: "PUT".into(),
            key: "k".into(),
            expires: 9,
            sha: "ab".repeat(32),
            create: true,
            upload: "u1".into(),
            part: Some(1),
            size: Some(5),
        };
        let variants = [
            Grant { size: Some(6), ..base.clone() },
            Grant { size: None, ..base.clone() },
            Grant { key: "u1".into(), upload: "k".into(), ..base.clone() },
            Grant { method: "k".into(), key: "PUT".into(), ..base.clone() },
            Grant { create: false, ..base.clone() },
            Grant { part: Some(11), upload: "u".into(), ..base.clone() },
            Grant { sha: String::new(), key: format!("{}k", "ab".repeat(32)), ..base.clone() },
            Grant { expires: 91, part: None, upload: String::new(), ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.signed_text(), base.signed_text(), "{v:?}");
        }
        assert!(base.check_fields().is_ok());
        for bad in [
            Grant { sha: "AB".repeat(32), ..base.clone() },
            Grant { sha: "ab".into(), ..base.clone() },
            Grant { upload: "a|b".into(), ..base.clone() },
            Grant { upload: "a\nb".into(), ..base.clone() },
            Grant { part: None, ..base.clone() },
        ] {
            assert!(bad.check_fields().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_as_s3_takes_them() {
        assert_eq!(parse_range("bytes=0-9").unwrap(), GetRange::Bounded(0..10));
        assert_eq!(parse_range("bytes=5-").unwrap(), GetRange::Offset(5));
        assert_eq!(parse_range("bytes=-4").unwrap(), GetRange::Suffix(4));
        assert!(parse_range("bytes=9-1").is_err());
        assert!(parse_range("items=0-1").is_err());
    }
}
