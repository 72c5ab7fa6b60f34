//! Sign-In with Ethereum: stateless nonces (MAC'd expiries) and HMAC session tokens, which
//! carry when they were issued: signing out (`POST /v1/logout`) records the time in the pool's
//! prefix (`pool/sessions/<owner>.json`), and every session of that wallet issued before it —
//! on any device, and any sign-in message signed before it, replayed — is refused from then on.

use super::*;

#[derive(Deserialize)]
pub(super) struct SessionBody {
    message: String,
    signature: String,
}

impl Gateway {
    pub(super) fn mac(&self, what: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.cfg.secret).expect("HMAC takes any key");
        m.update(what.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// `v2.<addr>.<issued, unix ms>.<expiry, unix s>.<mac>`.
    pub fn issue_token(&self, addr: &Address, expires: DateTime<Utc>) -> String {
        session_token(&self.cfg.secret, addr, expires)
    }

    /// The caller of a bearer token and when it was issued (unix ms), or why not. (A `v1` token, from
    /// before tokens carried it, counts as issued a session's length before it expires.)
    pub fn check_token(&self, token: &str, now: DateTime<Utc>) -> Result<(Address, i64), ApiError> {
        let unauth = |why: &str| err(StatusCode::UNAUTHORIZED, why);
        let malformed = || unauth("malformed session token; run `aic login`");
        let (body, mac) = token.rsplit_once('.').ok_or_else(malformed)?;
        if !aic_core::grant::mac_matches(&self.cfg.secret, &[b"session|", body.as_bytes()], mac, 64) {
            return Err(unauth("session token is not valid; run `aic login`"));
        }
        let parts: Vec<&str> = body.split('.').collect();
        let (addr, issued, exp) = match parts.as_slice() {
            ["v1", addr, exp] => {
                let exp: i64 = exp.parse().map_err(|_| malformed())?;
                (*addr, (exp - self.cfg.session_ttl_chrono().num_seconds()) * 1000, exp)
            }
            ["v2", addr, issued, exp] => {
                (*addr, issued.parse().map_err(|_| malformed())?, exp.parse().map_err(|_| malformed())?)
            }
            _ => return Err(malformed()),
        };
        if exp <= now.timestamp() {
            return Err(unauth("session expired; run `aic login` again"));
        }
        Ok((addr.parse().map_err(|_| malformed())?, issued))
    }

    /// When `who` last signed out (unix ms), read through a cache of a few seconds unless
    /// `fresh` (another replica of the gateway sees a sign-out within [`SIGNED_OUT_CACHE`]).
    pub(super) async fn signed_out_at(&self, who: &Address, fresh: bool) -> Result<Option<i64>, ApiError> {
        if !fresh
            && let Some((at, v)) = self.signed_out.lock().unwrap().get(who)
            && at.elapsed() < SIGNED_OUT_CACHE
        {
            return Ok(*v);
        }
        let v: Option<Value> =
            self.ctx.store.get_json(&aic_core::layout::signed_out(who), 4096).await.map_err(store_err)?;
        let v = v.and_then(|v| v["not_before"].as_i64());
        let mut cache = self.signed_out.lock().unwrap();
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.insert(*who, (Instant::now(), v));
        Ok(v)
    }

    /// A session token's caller, unless they signed out after it was issued.
    pub(super) async fn user(&self, token: &str, now: DateTime<Utc>) -> Result<Address, ApiError> {
        let (who, issued) = self.check_token(token, now)?;
        if self.signed_out_at(&who, false).await?.is_some_and(|out| issued <= out) {
            return Err(err(StatusCode::UNAUTHORIZED, "this session was signed out; run `aic login` again"));
        }
        Ok(who)
    }

    /// `POST /v1/logout`: every session of the caller issued until now is refused from now on.
    pub(super) async fn logout(&self, who: &Address, now: DateTime<Utc>) -> Reply {
        let at = now.timestamp_millis();
        self.ctx
            .store
            .put_json(&aic_core::layout::signed_out(who), &json!({ "not_before": at }))
            .await
            .map_err(store_err)?;
        self.signed_out.lock().unwrap().insert(*who, (Instant::now(), Some(at)));
        Ok(json!({ "signed_out": who, "at": now }))
    }

    pub(super) fn nonce(&self, now: DateTime<Utc>) -> String {
        let exp = now.timestamp() + 600;
        let mac = self.mac(&format!("nonce|{exp}"));
        format!("{exp:x}n{}", &mac[..24])
    }

    pub(super) fn check_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<(), ApiError> {
        let stale =
            || err(StatusCode::UNAUTHORIZED, "the login's nonce is unknown or stale; get a new one from /v1/nonce");
        let (exp, mac) = nonce.split_once('n').ok_or_else(stale)?;
        let exp_n = i64::from_str_radix(exp, 16).map_err(|_| stale())?;
        let signed = format!("nonce|{exp_n}");
        if !aic_core::grant::mac_matches(&self.cfg.secret, &[signed.as_bytes()], mac, 24) || exp_n < now.timestamp() {
            return Err(stale());
        }
        Ok(())
    }

    pub(super) async fn session(&self, peer: std::net::IpAddr, body: &[u8], now: DateTime<Utc>) -> Reply {
        let b: SessionBody =
            serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{message, signature}}: {e}")))?;
        let msg = SiweMessage::parse(&b.message).map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        self.check_nonce(&msg.nonce, now)?;
        msg.verify(&b.signature, &self.cfg.domain, self.cfg.chain_id, now)
            .map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        let ttl = chrono::Duration::from_std(self.cfg.session_ttl).expect("ttl fits");
        let expires = (now + ttl).min(msg.expiration);
        let who = aic_chain::from_alloy(msg.address);
        if !peer.is_loopback() && self.cfg.local_signers.contains(&who) {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!(
                    "{who} is a dev account whose key is public: it signs in from this machine only; use your own wallet"
                ),
            ));
        }
        // A sign-in signed before its wallet signed out (replayed) opens nothing: read fresh,
        // not from the cache. (Messages carry whole seconds: one signed within the second of
        // the sign-out is refused too; signing in again a second later works.) Its session
        // counts from when it was signed, so a replay a replica let through ends with it.
        if msg.issued_at > now + chrono::Duration::seconds(60) {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "the sign-in is dated in the future; check this computer's clock",
            ));
        }
        if self.signed_out_at(&who, true).await?.is_some_and(|out| msg.issued_at.timestamp() <= out.div_euclid(1000)) {
            return Err(err(StatusCode::UNAUTHORIZED, "this sign-in was signed before you signed out; sign in again"));
        }
        let issued = msg.issued_at.min(now);
        Ok(
            json!({"token": session_token_at(&self.cfg.secret, &who, issued, expires), "address": who, "expires_at": expires}),
        )
    }
}

/// A session token for `addr` under `secret` (what `issue_token` gives): the embedded pool's
/// own users get one from the secret its host keeps in `$AIC_HOME`.
pub fn session_token(secret: &[u8], addr: &Address, expires: DateTime<Utc>) -> String {
    session_token_at(secret, addr, Utc::now(), expires)
}

/// A session token for `addr` issued at `issued`.
pub fn session_token_at(secret: &[u8], addr: &Address, issued: DateTime<Utc>, expires: DateTime<Utc>) -> String {
    let body = format!("v2.{addr}.{}.{}", issued.timestamp_millis(), expires.timestamp());
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    m.update(format!("session|{body}").as_bytes());
    format!("{body}.{}", hex::encode(m.finalize().into_bytes()))
}
