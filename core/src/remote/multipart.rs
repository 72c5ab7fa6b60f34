//! A multipart upload through presigned part URLs the gateway signs.

use super::*;

/// One multipart upload through presigned part URLs.
#[derive(Debug)]
pub(super) struct Upload {
    pub(super) gw: Gateway,
    pub(super) key: String,
    pub(super) upload_id: String,
    pub(super) next: usize,
    pub(super) etags: Arc<Mutex<Vec<Option<String>>>>,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.next;
        self.next += 1;
        self.etags.lock().unwrap().resize(self.next, None);
        let (gw, key, upload_id, etags) =
            (self.gw.clone(), self.key.clone(), self.upload_id.clone(), self.etags.clone());
        let size = Some(data.content_length() as u64);
        Box::pin(async move {
            let v = gw
                .call(
                    reqwest::Method::POST,
                    "multipart",
                    Some(json!(MultipartRequest { part: Some(part), size, ..step("part", &key, Some(&upload_id)) })),
                )
                .await
                .map_err(|e| to_store_err(&key, e))?;
            let url = v["url"].as_str().ok_or_else(|| err("no part URL"))?.to_string();
            let body: Bytes = data.into();
            let r = gw.http.put(url).body(body).send().await.map_err(err)?;
            if !r.status().is_success() {
                return Err(err(format!("storage answered {} to part {part} of {key}", r.status())));
            }
            let etag =
                r.headers().get("etag").and_then(|v| v.to_str().ok()).ok_or_else(|| err("no ETag for a part"))?;
            etags.lock().unwrap()[part] = Some(etag.to_string());
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Vec<String> = self
            .etags
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, e)| e.clone().ok_or_else(|| err(format!("part {i} was not uploaded"))))
            .collect::<object_store::Result<_>>()?;
        let parts = if parts.is_empty() {
            // S3 needs at least one part: an empty one.
            self.put_part(PutPayload::default()).await?;
            self.etags.lock().unwrap().iter().flatten().cloned().collect()
        } else {
            parts
        };
        let v = self
            .gw
            .call(
                reqwest::Method::POST,
                "multipart",
                Some(json!(MultipartRequest { parts, ..step("complete", &self.key, Some(&self.upload_id)) })),
            )
            .await
            .map_err(|e| to_store_err(&self.key, e))?;
        Ok(PutResult { e_tag: v["e_tag"].as_str().map(String::from), version: None, extensions: Default::default() })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.gw
            .call(reqwest::Method::POST, "multipart", Some(json!(step("abort", &self.key, Some(&self.upload_id)))))
            .await
            .map(|_| ())
            .map_err(|e| to_store_err(&self.key, e))
    }
}
