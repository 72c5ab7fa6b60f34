//! Where deployments answer: each on an origin of its own, never the web app's.
//!
//! A pool serves deployments under a domain of their own, written as a pattern:
//! `https://*.apps.example.net` on a pool (wildcard DNS and certificate), `http://*.localhost:8800`
//! on the embedded one (browsers and curl take every `*.localhost` name for loopback, RFC 6761
//! §6.3). The `*` is one DNS label:
//! - a deployment's own: its id (`01m89k34jwwd6pedrf9ayk9csz`);
//! - a named deployment's, which follows `scale` and redeploys: `<name>--<owner>`, the owner's
//!   20 bytes in lower-case base 32 (RFC 4648's alphabet, 32 characters), so that one label
//!   (at most 63 characters) names both; a name is then at most [`MAX_NAMED`] characters.
//!
//! A page a user deployed thus has its own storage, cookies, service workers and wallet
//! permissions, and reaches nothing of the web app's.

use crate::Address;

/// The longest deployment name a named address can hold (63 − 2 − 32).
pub const MAX_NAMED: usize = 29;

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A pool's deployment origins: `<scheme>://*.<domain>[:<port>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origins {
    scheme: String,
    domain: String,
    port: Option<u16>,
}

/// What a deployment origin's label names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    /// One deployment (one version), by id.
    Deployment(String),
    /// The newest live deployment of an owner's name.
    Named { owner: Address, name: String },
}

impl std::str::FromStr for Origins {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not a deployment origin pattern ({why}): write e.g. https://*.apps.example.net or http://*.localhost:8800"
            )
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme is http or https"));
        }
        let rest = rest.trim_end_matches('/');
        let host = rest.strip_prefix("*.").ok_or_else(|| bad("the host starts with *."))?;
        let (domain, port) = match host.rsplit_once(':') {
            Some((d, p)) => (d, Some(p.parse::<u16>().map_err(|_| bad("the port is not a number"))?)),
            None => (host, None),
        };
        let domain = domain.to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if domain.is_empty() || !domain.split('.').all(label_ok) {
            return Err(bad("the domain is not a DNS name"));
        }
        Ok(Origins { scheme: scheme.to_string(), domain, port })
    }
}

impl std::fmt::Display for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://*.{}", self.scheme, self.domain)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl Origins {
    /// The embedded pool's: `http://*.localhost:<port>`.
    pub fn localhost(port: u16) -> Origins {
        Origins { scheme: "http".into(), domain: "localhost".into(), port: Some(port) }
    }

    /// The origin (with a trailing `/`) whose label is `label`.
    pub fn url(&self, label: &str) -> String {
        match self.port {
            Some(p) => format!("{}://{label}.{}:{p}/", self.scheme, self.domain),
            None => format!("{}://{label}.{}/", self.scheme, self.domain),
        }
    }

    /// A deployment's own address (this version alone).
    pub fn deployment(&self, id: &str) -> String {
        self.url(&id.to_ascii_lowercase())
    }

    /// The address of the owner's deployments named `name`; `None` when the name is longer
    /// than [`MAX_NAMED`].
    pub fn named(&self, owner: &Address, name: &str) -> Option<String> {
        named_label(owner, name).map(|l| self.url(&l))
    }

    /// The label of a `Host` header's value when it names one of these origins (the port is
    /// not compared: a proxy in front may pass the host without it).
    pub fn label<'a>(&self, host: &'a str) -> Option<&'a str> {
        self.under(host).filter(|l| !l.is_empty() && !l.contains('.'))
    }

    /// Whether a `Host` header's value is a name under these origins' domain (at any depth;
    /// not the domain itself, which may be the pool's own, as `localhost`): only a single
    /// label there names a deployment; nothing of the pool answers under it.
    pub fn within(&self, host: &str) -> bool {
        self.under(host).is_some()
    }

    /// What a `Host` header's value has before `.<domain>` (its port and a final dot aside).
    fn under<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((n, p)) if !n.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let (sub, domain) = name.split_at_checked(name.len().checked_sub(self.domain.len())?)?;
        domain.eq_ignore_ascii_case(&self.domain).then_some(())?;
        sub.strip_suffix('.')
    }
}

/// A named deployment's label: `<name>--<owner in base 32>`; `None` when it would not fit.
pub fn named_label(owner: &Address, name: &str) -> Option<String> {
    if name.len() > MAX_NAMED || !crate::validate::is_name(name) {
        return None;
    }
    Some(format!("{name}--{}", base32(owner.as_bytes())))
}

/// What `label` names: a deployment id, or a name and its owner; `None` for anything else.
pub fn site(label: &str) -> Option<Site> {
    let label = label.to_ascii_lowercase();
    if let Some((name, owner)) = label.rsplit_once("--") {
        let owner = unbase32(owner)?;
        if name.len() > MAX_NAMED || !crate::validate::is_name(name) {
            return None;
        }
        return Some(Site::Named { owner: Address::from_bytes(owner), name: name.to_string() });
    }
    label.parse::<crate::JobId>().ok().map(|id| Site::Deployment(id.as_str().to_string()))
}

/// 20 bytes as 32 characters of RFC 4648's base 32, lower case (160 bits: no padding).
fn base32(bytes: &[u8; 20]) -> String {
    let mut out = String::with_capacity(32);
    for chunk in bytes.chunks(5) {
        let n = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(B32[((n >> (i * 5)) & 31) as usize] as char);
        }
    }
    out
}

fn unbase32(s: &str) -> Option<[u8; 20]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, chunk) in s.as_bytes().chunks(8).enumerate() {
        let mut n = 0u64;
        for c in chunk {
            n = (n << 5) | B32.iter().position(|b| b == c)? as u64;
        }
        for j in 0..5 {
            out[i * 5 + j] = (n >> (8 * (4 - j))) as u8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

    #[test]
    fn a_named_label_holds_the_name_and_its_owner_and_reads_back() {
        let owner: Address = OWNER.parse().unwrap();
        let label = named_label(&owner, "digits").unwrap();
        assert_eq!(label.len(), "digits".len() + 2 + 32);
        assert_eq!(site(&label), Some(Site::Named { owner, name: "digits".into() }));
        assert_eq!(site(&label.to_ascii_uppercase()), Some(Site::Named { owner, name: "digits".into() }));
        // A name with dashes of its own: the owner is after the last "--".
        let label = named_label(&owner, "my--app").unwrap();
        assert_eq!(site(&label), Some(Site::Named { owner, name: "my--app".into() }));
        let longest = "a".repeat(MAX_NAMED);
        assert_eq!(named_label(&owner, &longest).unwrap().len(), 63);
        assert_eq!(named_label(&owner, &"a".repeat(MAX_NAMED + 1)), None);
        // Every owner reads back as itself.
        for b in [0u8, 1, 0x7f, 0xff] {
            let a = Address::from_bytes([b; 20]);
            assert_eq!(site(&named_label(&a, "x").unwrap()), Some(Site::Named { owner: a, name: "x".into() }));
        }
    }

    #[test]
    fn labels_that_name_nothing_are_refused() {
        let id = crate::JobId::generate();
        assert_eq!(site(id.as_str()), Some(Site::Deployment(id.as_str().to_string())));
        for bad in [
            "",
            "www",
            "digits--",
            "digits--abc",
            "Bad_Name--aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "x--00000000000000000000000000000000",
        ] {
            assert_eq!(site(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins_parse_print_and_recognise_their_hosts() {
        let o: Origins = "http://*.localhost:8800".parse().unwrap();
        assert_eq!(o.to_string(), "http://*.localhost:8800");
        assert_eq!(o.deployment("01ABC"), "http://01abc.localhost:8800/");
        assert_eq!(o.label("x.localhost:8800"), Some("x"));
        assert_eq!(o.label("x.localhost"), Some("x"));
        assert_eq!(o.label("X.LOCALHOST."), Some("X"));
        for not in
            ["localhost:8800", "127.0.0.1:8800", "a.b.localhost:8800", "xlocalhost:8800", ".localhost", "evil.com"]
        {
            assert_eq!(o.label(not), None, "{not}");
        }
        let o: Origins = "https://*.apps.example.net/".parse().unwrap();
        assert_eq!(o.url("x"), "https://x.apps.example.net/");
        assert_eq!(o.label("x.apps.example.net"), Some("x"));
        assert_eq!(o.label("x.example.net"), None);
        for bad in
            ["apps.example.net", "ftp://*.a.b", "https://a.*.b", "https://*.", "https://*.a b", "http://*.localhost:x"]
        {
            assert!(bad.parse::<Origins>().is_err(), "{bad}");
        }
    }
}
