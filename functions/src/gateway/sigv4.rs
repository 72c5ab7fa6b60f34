//! A presigned S3 PUT bound to its body's length.
//!
//! object_store signs the headers a caller names into a presigned URL, but never
//! `Content-Length` (its canonical headers leave it out, `aws/credential.rs`
//! `canonicalize_headers`). The quota needs it signed: S3 (and MinIO, which takes a signed
//! `content-length` from the request's own length: `cmd/signature-v4-utils.go`
//! `extractSignedHeaders`) then refuses a body of another length. So the URL object_store
//! made is signed again here with `content-length` among its signed headers: the same
//! canonical request as object_store's (SigV4 for S3: the path encoded once, the query's keys
//! and values encoded with RFC 3986's unreserved set and sorted, `UNSIGNED-PAYLOAD`;
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>), one header
//! more. A test checks that, without the extra header, this gives object_store's signature.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use url::Url;

/// RFC 3986's unreserved characters stay; everything else is encoded (object_store's
/// `STRICT_ENCODE_SET`).
const STRICT: AsciiSet = NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// The same, `/` kept: a path (for services other than S3, encoded again as AWS's
/// canonical request asks, its `%` escapes included).
const PATH: AsciiSet = STRICT.remove(b'/');

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// What a SigV4 signature covers: `method`, `path` (as the canonical request takes it), the
/// query `pairs`, every one of `headers` (lower-case names) and the payload's hash.
struct Canonical<'a> {
    method: &'a str,
    path: &'a str,
    pairs: &'a [(String, String)],
    headers: &'a BTreeMap<String, String>,
    payload_hash: &'a str,
}

impl Canonical<'_> {
    fn signed_headers(&self) -> String {
        self.headers.keys().cloned().collect::<Vec<_>>().join(";")
    }

    fn signature(&self, amz_date: &str, [date, region, service]: [&str; 3], secret_key: &str) -> String {
        let mut query: Vec<(String, String)> = self
            .pairs
            .iter()
            .map(|(k, v)| (utf8_percent_encode(k, &STRICT).to_string(), utf8_percent_encode(v, &STRICT).to_string()))
            .collect();
        query.sort_unstable();
        let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let headers: String = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect();
        let request = format!(
            "{}\n{}\n{query}\n{headers}\n{}\n{}",
            self.method,
            self.path,
            self.signed_headers(),
            self.payload_hash
        );
        let scope = format!("{date}/{region}/{service}/aws4_request");
        let to_sign =
            format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(request.as_bytes())));
        let key = [date, region, service, "aws4_request"]
            .iter()
            .fold(format!("AWS4{secret_key}").into_bytes(), |k, part| hmac(&k, part));
        hex::encode(hmac(&key, &to_sign))
    }
}

/// `url` (presigned by object_store for `method`, with `headers` signed besides `host`)
/// signed again with `extra` headers signed too (lower-case names), using `secret_key`.
pub fn resign(
    url: &Url,
    method: &str,
    headers: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
    secret_key: &str,
) -> Result<Url, String> {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let credential = get("X-Amz-Credential").ok_or("not a presigned URL (no X-Amz-Credential)")?;
    let scope = credential.split_once('/').ok_or("a bad X-Amz-Credential")?.1.to_string();
    let amz_date = get("X-Amz-Date").ok_or("not a presigned URL (no X-Amz-Date)")?;
    let parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = parts.as_slice() else {
        return Err(format!("a bad scope {scope:?}"));
    };
    let mut all: BTreeMap<String, String> = headers.clone();
    all.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.insert("host".into(), url[url::Position::BeforeHost..url::Position::AfterPort].to_string());
    let signed = all.keys().cloned().collect::<Vec<_>>().join(";");
    for (k, v) in pairs.iter_mut() {
        if k == "X-Amz-SignedHeaders" {
            *v = signed.clone();
        }
    }
    // S3's canonical path is the path encoded once (as the URL has it).
    let c = Canonical { method, path: url.path(), pairs: &pairs, headers: &all, payload_hash: "UNSIGNED-PAYLOAD" };
    let signature = c.signature(&amz_date, [date, region, service], secret_key);
    let mut out = url.clone();
    out.set_query(None);
    {
        let mut q = out.query_pairs_mut();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        q.append_pair("X-Amz-Signature", &signature);
    }
    Ok(out)
}

/// The `Authorization` header of a request signed with SigV4 in its headers (AWS's JSON APIs:
/// Secrets Manager): `headers` (lower-case names, `host` and `x-amz-date` among them) are all
/// signed, and so is the body's SHA-256.
pub fn authorization(
    method: &str,
    url: &Url,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    (region, service): (&str, &str),
    (key_id, secret_key): (&str, &str),
) -> Result<String, String> {
    let amz_date = headers.get("x-amz-date").ok_or("x-amz-date is not among the headers")?;
    let date = amz_date.get(..8).ok_or("a bad x-amz-date")?;
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let path = utf8_percent_encode(url.path(), &PATH).to_string();
    let payload_hash = hex::encode(Sha256::digest(body));
    let c = Canonical { method, path: &path, pairs: &pairs, headers, payload_hash: &payload_hash };
    Ok(format!(
        "AWS4-HMAC-SHA256 Credential={key_id}/{date}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={}",
        c.signed_headers(),
        c.signature(amz_date, [date, region, service], secret_key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::signer::{SignedUrlOptions, Signer};

    /// AWS's SigV4 test suite, `post-vanilla`.
    #[test]
    fn a_request_signed_in_its_headers_is_signed_as_aws_s_test_suite_says() {
        let url = Url::parse("https://example.amazonaws.com/").unwrap();
        let headers: BTreeMap<String, String> = [
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
        ]
        .into();
        let a = authorization(
            "POST",
            &url,
            &headers,
            b"",
            ("us-east-1", "service"),
            ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        )
        .unwrap();
        assert_eq!(
            a,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[tokio::test]
    async fn signed_again_without_more_headers_it_is_object_stores_url_and_with_the_length_another() {
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("aic")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:9000")
            .with_allow_http(true)
            .with_access_key_id("AKIDEXAMPLE")
            .with_secret_access_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
            .build()
            .unwrap();
        let mut headers = BTreeMap::new();
        headers.insert("x-amz-checksum-sha256".to_string(), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string());
        headers.insert("if-none-match".to_string(), "*".to_string());
        let mut opts = SignedUrlOptions::default();
        for (k, v) in &headers {
            opts = opts.with_signed_header(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        let path = object_store::path::Path::parse("users/0xab/data/학습 #1 (a+b).csv").unwrap();
        let url =
            s3.signed_url_opts(http::Method::PUT, &path, std::time::Duration::from_secs(900), &opts).await.unwrap();
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let same = resign(&url, "PUT", &headers, &BTreeMap::new(), secret).unwrap();
        assert_eq!(same.as_str(), url.as_str(), "the canonical request differs from object_store's");
        let mut extra = BTreeMap::new();
        extra.insert("content-length".to_string(), "5".to_string());
        let bound = resign(&url, "PUT", &headers, &extra, secret).unwrap();
        let q: BTreeMap<String, String> = bound.query_pairs().into_owned().collect();
        assert_eq!(q["X-Amz-SignedHeaders"], "content-length;host;if-none-match;x-amz-checksum-sha256");
        assert_ne!(bound.as_str(), url.as_str());
        assert!(resign(&Url::parse("http://x/y?a=b").unwrap(), "PUT", &headers, &extra, secret).is_err());
    }
}
