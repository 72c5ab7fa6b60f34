//! The bucket as an `object_store::ObjectStore` whose every call goes through the gateway.

use super::multipart::Upload;
use super::*;

/// The bucket, reached through the gateway.
#[derive(Debug)]
pub struct GatewayStore {
    gw: Gateway,
    /// Presigned GET/HEAD URLs, reused until shortly before they expire.
    urls: Mutex<HashMap<(String, String), (String, Instant)>>,
    /// URLs to sign: while one sign call is out, the items asked for meanwhile wait and go
    /// together in the next (a folder's files, 8 at a time, take a few calls, not one each).
    signing: Arc<Mutex<Signing>>,
}

/// Where a queued item's URL goes, with how long it lives (seconds).
type Signed = tokio::sync::oneshot::Sender<object_store::Result<(SignedUrl, u64)>>;

#[derive(Default)]
struct Signing {
    queue: Vec<(SignItem, Signed)>,
    busy: bool,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signing({} queued, busy: {})", self.queue.len(), self.busy)
    }
}

/// Most items in one sign call (the gateway's `MAX_ITEMS`).
const SIGN_BATCH: usize = 256;

/// Signs what is queued, a call at a time, until the queue is empty.
async fn sign_queued(gw: Gateway, signing: Arc<Mutex<Signing>>) {
    loop {
        let batch: Vec<(SignItem, Signed)> = {
            let mut s = signing.lock().unwrap();
            if s.queue.is_empty() {
                s.busy = false;
                return;
            }
            let n = s.queue.len().min(SIGN_BATCH);
            s.queue.drain(..n).collect()
        };
        let items: Vec<SignItem> = batch.iter().map(|(i, _)| i.clone()).collect();
        let answer = gw.call(reqwest::Method::POST, "sign", Some(json!(SignRequest { items }))).await;
        let urls = answer.and_then(|v| Ok(serde_json::from_value::<SignResponse>(v)?));
        match urls {
            Ok(r) if r.urls.len() == batch.len() => {
                for ((_, tx), u) in batch.into_iter().zip(r.urls) {
                    let _ = tx.send(Ok((u, r.expires_in)));
                }
            }
            Ok(_) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(err("the gateway signed another number of URLs than asked")));
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                let refusal = e.downcast_ref::<GatewayError>().map(|g| (g.status, g.retry_after));
                for (item, tx) in batch {
                    let e = match refusal {
                        Some((status, retry_after)) => {
                            anyhow::Error::from(GatewayError { status, reason: why.clone(), retry_after })
                        }
                        None => anyhow::anyhow!(why.clone()),
                    };
                    let _ = tx.send(Err(to_store_err(&item.key, e)));
                }
            }
        }
    }
}

impl std::fmt::Display for GatewayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayStore({})", self.gw.base)
    }
}

/// A listed object as the store knows it, under its key as the bucket holds it (`Path::from`
/// would escape it once more).
fn meta_of(o: ListedObject) -> object_store::Result<ObjectMeta> {
    Ok(ObjectMeta {
        location: prefix_path(&o.key)?,
        last_modified: o.last_modified,
        size: o.size,
        e_tag: o.e_tag,
        version: None,
    })
}

impl GatewayStore {
    pub fn new(gw: Gateway) -> Self {
        GatewayStore { gw, urls: Mutex::new(HashMap::new()), signing: Default::default() }
    }

    async fn sign(&self, item: SignItem) -> object_store::Result<SignedUrl> {
        let (key, method) = (item.key.clone(), item.method.clone());
        let cacheable = method == "GET" || method == "HEAD";
        if cacheable
            && let Some((u, until)) = self.urls.lock().unwrap().get(&(method.clone(), key.clone()))
            && *until > Instant::now()
        {
            return Ok(SignedUrl { url: u.clone(), method, headers: Default::default() });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = self.signing.lock().unwrap();
            q.queue.push((item, tx));
            !std::mem::replace(&mut q.busy, true)
        };
        if start {
            tokio::spawn(sign_queued(self.gw.clone(), self.signing.clone()));
        }
        let (s, expires) = rx.await.map_err(|_| err(format!("signing {key} was dropped")))??;
        if cacheable {
            let keep = Duration::from_secs(expires.saturating_sub(60).max(1));
            self.urls.lock().unwrap().insert((method, key), (s.url.clone(), Instant::now() + keep));
        }
        Ok(s)
    }

    async fn list_call(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
        delimiter: bool,
    ) -> object_store::Result<Listing> {
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(p) = prefix {
                q.append_pair("prefix", &format!("{p}/"));
            }
            if let Some(o) = offset {
                q.append_pair("offset", o.as_ref());
            }
            if delimiter {
                q.append_pair("delimiter", "true");
            }
            q.finish()
        };
        let v = self
            .gw
            .call(reqwest::Method::GET, &format!("objects?{query}"), None)
            .await
            .map_err(|e| to_store_err(prefix.map(|p| p.as_ref()).unwrap_or(""), e))?;
        serde_json::from_value(v).map_err(err)
    }
}

fn meta_from(path: &Path, h: &reqwest::header::HeaderMap) -> ObjectMeta {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    // A range answer names the whole size after the slash of Content-Range.
    let size = get("content-range")
        .and_then(|r| r.rsplit('/').next())
        .and_then(|s| s.parse().ok())
        .or_else(|| get("content-length").and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let last_modified = get("last-modified")
        .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    ObjectMeta { location: path.clone(), last_modified, size, e_tag: get("etag").map(String::from), version: None }
}

#[async_trait]
impl ObjectStore for GatewayStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mut sha = sha2::Sha256::new();
        for chunk in payload.iter() {
            sha.update(chunk);
        }
        let size = payload.content_length() as u64;
        let item = SignItem {
            size: Some(size),
            sha256: Some(hex::encode(sha.finalize())),
            create: matches!(opts.mode, PutMode::Create),
            ..SignItem::of("PUT", location.as_ref())
        };
        let s = self.sign(item).await?;
        let mut rb = self.gw.http.put(&s.url);
        for (k, v) in &s.headers {
            rb = rb.header(k, v);
        }
        let body: Bytes = payload.into();
        let resp = rb.body(body).send().await.map_err(err)?;
        match resp.status().as_u16() {
            200..=299 => Ok(PutResult {
                e_tag: resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from),
                version: None,
                extensions: Default::default(),
            }),
            412 if matches!(opts.mode, PutMode::Create) || s.headers.contains_key("if-none-match") => {
                Err(object_store::Error::AlreadyExists { path: location.to_string(), source: "exists".into() })
            }
            code => Err(err(format!("storage answered {code} to the upload of {location}"))),
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let v = self
            .gw
            .call(reqwest::Method::POST, "multipart", Some(json!(step("create", location.as_ref(), None))))
            .await
            .map_err(|e| to_store_err(location.as_ref(), e))?;
        let upload_id = v["upload_id"].as_str().ok_or_else(|| err("the gateway gave no upload id"))?.to_string();
        Ok(Box::new(Upload {
            gw: self.gw.clone(),
            key: location.to_string(),
            upload_id,
            next: 0,
            etags: Arc::new(Mutex::new(Vec::new())),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let method = if options.head { "HEAD" } else { "GET" };
        let s = self.sign(SignItem::of(method, location.as_ref())).await?;
        let mut rb = self.gw.http.request(method.parse().expect("a method"), &s.url);
        if let Some(r) = &options.range {
            rb = rb.header("range", r.to_string());
        }
        let resp = rb.send().await.map_err(err)?;
        match resp.status().as_u16() {
            200..=299 => {}
            404 => {
                return Err(object_store::Error::NotFound {
                    path: location.to_string(),
                    source: "no such object".into(),
                });
            }
            code => return Err(err(format!("storage answered {code} to reading {location}"))),
        }
        let meta = meta_from(location, resp.headers());
        let len =
            resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|s| s.parse::<u64>().ok());
        let start = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let range = if options.head { 0..meta.size } else { start..start + len.unwrap_or(meta.size) };
        let stream = resp.bytes_stream().map_err(err).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let gw = self.gw.clone();
        locations
            .and_then(move |p| {
                let gw = gw.clone();
                async move {
                    let v = gw
                        .call(
                            reqwest::Method::POST,
                            "sign",
                            Some(json!(SignRequest { items: vec![SignItem::of("DELETE", p.as_ref())] })),
                        )
                        .await
                        .map_err(|e| to_store_err(p.as_ref(), e))?;
                    let url = v["urls"][0]["url"].as_str().ok_or_else(|| err("no URL"))?.to_string();
                    let r = gw.http.delete(url).send().await.map_err(err)?;
                    if r.status().is_success() || r.status() == 404 {
                        Ok(p)
                    } else {
                        Err(err(format!("storage answered {} to deleting {p}", r.status())))
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.list_with_offset_impl(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.list_with_offset_impl(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let l = self.list_call(prefix, None, true).await?;
        Ok(ListResult {
            common_prefixes: l.prefixes.iter().map(|p| prefix_path(p)).collect::<object_store::Result<_>>()?,
            objects: l.objects.into_iter().map(meta_of).collect::<object_store::Result<_>>()?,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> object_store::Result<()> {
        Err(object_store::Error::NotSupported { source: "copying through the gateway".into() })
    }
}

/// A page of the gateway's listing (`GET /v1/objects?prefix=&delimiter=true&offset=&max=`):
/// it pages where the objects are, so `Store::list_names` costs one call.
#[async_trait]
impl object_store::list::PaginatedListStore for GatewayStore {
    async fn list_paginated(
        &self,
        prefix: Option<&str>,
        opts: object_store::list::PaginatedListOptions,
    ) -> object_store::Result<object_store::list::PaginatedListResult> {
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("prefix", prefix.unwrap_or_default());
            q.append_pair("delimiter", "true");
            q.append_pair("max", &opts.max_keys.unwrap_or(1000).to_string());
            if let Some(o) = &opts.offset {
                q.append_pair("offset", o);
            }
            q.finish()
        };
        let v = self
            .gw
            .call(reqwest::Method::GET, &format!("objects?{query}"), None)
            .await
            .map_err(|e| to_store_err(prefix.unwrap_or_default(), e))?;
        let l: Listing = serde_json::from_value(v).map_err(err)?;
        Ok(object_store::list::PaginatedListResult {
            result: ListResult {
                common_prefixes: l.prefixes.iter().map(|p| prefix_path(p)).collect::<object_store::Result<_>>()?,
                objects: l.objects.into_iter().map(meta_of).collect::<object_store::Result<_>>()?,
                extensions: Default::default(),
            },
            page_token: l.more.then(|| "more".to_string()),
        })
    }
}

impl GatewayStore {
    fn list_with_offset_impl(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = GatewayStore::new(self.gw.clone());
        let (prefix, offset) = (prefix.cloned(), offset.cloned());
        futures::stream::once(async move { this.list_call(prefix.as_ref(), offset.as_ref(), false).await })
            .map_ok(|l| futures::stream::iter(l.objects.into_iter().map(meta_of)))
            .try_flatten()
            .boxed()
    }
}
