//! Sign-In with Ethereum: stateless nonces (MAC'd expiries) and HMAC session tokens.

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

    /// `v1.<addr>.<expiry unix>.<mac>`.
    pub fn issue_token(&self, addr: &Address, expires: DateTime<Utc>) -> String {
        session_token(&self.cfg.secret, addr, expires)
    }

    /// The caller of a bearer token, or why not.
    pub fn check_token(&self, token: &str, now: DateTime<Utc>) -> Result<Address, ApiError> {
        let unauth = |why: &str| err(StatusCode::UNAUTHORIZED, why);
        let (body, mac) = token.rsplit_once('.').ok_or_else(|| unauth("malformed session token; run `aic login`"))?;
        let want = self.mac(&format!("session|{body}"));
        if !constant_time_eq(want.as_bytes(), mac.as_bytes()) {
            return Err(unauth("session token is not valid; run `aic login`"));
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(addr), Some(exp), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(unauth("malformed session token; run `aic login`"));
        };
        let exp: i64 = exp.parse().map_err(|_| unauth("malformed session token; run `aic login`"))?;
        if exp <= now.timestamp() {
            return Err(unauth("session expired; run `aic login` again"));
        }
        addr.parse().map_err(|_| unauth("malformed session token; run `aic login`"))
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
        let want = self.mac(&format!("nonce|{exp_n}"));
        if !constant_time_eq(&want.as_bytes()[..24], mac.as_bytes()) || exp_n < now.timestamp() {
            return Err(stale());
        }
        Ok(())
    }

    pub(super) fn session(&self, body: &[u8], now: DateTime<Utc>) -> Reply {
        let b: SessionBody =
            serde_json::from_slice(body).map_err(|e| bad(format!("body must be {{message, signature}}: {e}")))?;
        let msg = SiweMessage::parse(&b.message).map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        self.check_nonce(&msg.nonce, now)?;
        msg.verify(&b.signature, &self.cfg.domain, self.cfg.chain_id, now)
            .map_err(|e| err(StatusCode::UNAUTHORIZED, e.to_string()))?;
        let ttl = chrono::Duration::from_std(self.cfg.session_ttl).expect("ttl fits");
        let expires = (now + ttl).min(msg.expiration);
        let who = aic_chain::from_alloy(msg.address);
        Ok(json!({"token": self.issue_token(&who, expires), "address": who, "expires_at": expires}))
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A session token for `addr` under `secret` (what `issue_token` gives): the embedded pool's
/// own users get one from the secret its host keeps in `$AIC_HOME`.
pub fn session_token(secret: &[u8], addr: &Address, expires: DateTime<Utc>) -> String {
    let body = format!("v1.{addr}.{}", expires.timestamp());
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    m.update(format!("session|{body}").as_bytes());
    format!("{body}.{}", hex::encode(m.finalize().into_bytes()))
}
