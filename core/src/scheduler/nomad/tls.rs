//! TLS to Nomad, as production clusters run it: a private CA, often mutual TLS.
//!
//! The settings are Nomad's own CLI's (`api/api.go` `Config.ReadEnvironment`): `NOMAD_CACERT`
//! (the CA that signed the servers' certificates), `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`
//! (this client's certificate and key, for clusters that verify clients:
//! `verify_https_client`), `NOMAD_TLS_SERVER_NAME` (the name the servers' certificates hold,
//! `server.<region>.nomad`, when `NOMAD_ADDR` names them otherwise: the connection goes to
//! `NOMAD_ADDR`'s address and checks that name). They serve the HTTP API and the exec
//! WebSocket (`wss://`) alike.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::NomadConfig;

/// TLS settings for Nomad's API (all optional: an `https://` address with none uses the
/// system's roots for the API; the exec WebSocket over `wss://` needs `NOMAD_CACERT`).
#[derive(Clone, Debug, Default)]
pub struct NomadTls {
    /// The CA's certificates (PEM).
    pub ca: Option<Vec<u8>>,
    /// This client's certificate chain and key (PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    pub server_name: Option<String>,
}

impl NomadTls {
    /// From Nomad's variables; an unreadable or unparsable file is an error naming it.
    pub fn from_env() -> Result<NomadTls, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
            match var(k) {
                None => Ok(None),
                Some(path) => std::fs::read(&path).map(Some).map_err(|e| format!("{k}={path}: {e}")),
            }
        };
        let ca = read("NOMAD_CACERT")?;
        let client = match (read("NOMAD_CLIENT_CERT")?, read("NOMAD_CLIENT_KEY")?) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together: set both, or neither".into()),
        };
        if client.is_some() && ca.is_none() {
            return Err("NOMAD_CLIENT_CERT needs NOMAD_CACERT: the CA the cluster's servers are signed by".into());
        }
        let tls = NomadTls { ca, client, server_name: var("NOMAD_TLS_SERVER_NAME") };
        tls.roots().map_err(|e| format!("NOMAD_CACERT: {e}"))?;
        tls.identity().map_err(|e| format!("NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY: {e}"))?;
        // The whole of it, as connections will use it (a key that is not the certificate's…).
        if tls.ca.is_some() {
            tls.rustls()?;
        }
        Ok(tls)
    }

    fn roots(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let Some(pem) = &self.ca else { return Ok(vec![]) };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM certificates ({e})"))?;
        if certs.is_empty() {
            return Err("no certificate in it".into());
        }
        Ok(certs)
    }

    #[allow(clippy::type_complexity)]
    fn identity(&self) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
        let Some((cert, key)) = &self.client else { return Ok(None) };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate is not PEM ({e})"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key is not a PEM private key ({e})"))?;
        Ok(Some((chain, key)))
    }

    /// rustls' settings: the CA's roots (only them), this client's identity.
    fn rustls(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in self.roots()? {
            roots.add(c).map_err(|e| format!("NOMAD_CACERT: {e}"))?;
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        match self.identity()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string()),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The address API URLs are made with: `NOMAD_ADDR`, its host replaced by the TLS server name
/// when there is one (the connection still goes to `NOMAD_ADDR`'s address: [`client`]).
pub(super) fn base(cfg: &NomadConfig) -> String {
    let (Some(name), Ok(mut u)) = (&cfg.tls.server_name, url::Url::parse(&cfg.addr)) else { return cfg.addr.clone() };
    match u.set_host(Some(name)) {
        Ok(()) => u.as_str().trim_end_matches('/').to_string(),
        Err(_) => cfg.addr.clone(),
    }
}

/// Where `NOMAD_ADDR` is: its host (an IPv6 address without its brackets) and port.
fn target(cfg: &NomadConfig) -> Option<(String, u16)> {
    let u = url::Url::parse(&cfg.addr).ok()?;
    let host = match u.host()? {
        url::Host::Ipv6(a) => a.to_string(),
        h => h.to_string(),
    };
    Some((host, u.port_or_known_default()?))
}

/// An HTTP client for Nomad's API with `cfg`'s TLS (and `timeout` for each call).
pub(super) fn client(cfg: &NomadConfig, timeout: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    let tls = &cfg.tls;
    if tls.ca.is_some() || tls.client.is_some() {
        // The CA's roots alone: a public CA's certificate is no Nomad server's.
        match tls.rustls() {
            Ok(c) => b = b.tls_backend_preconfigured(c),
            Err(e) => tracing::error!(error = %e, "Nomad's TLS settings do not load"),
        }
    }
    if let (Some(name), Some((host, port))) = (&tls.server_name, target(cfg)) {
        use std::net::ToSocketAddrs;
        if let Some(addr) = (host.as_str(), port).to_socket_addrs().ok().and_then(|mut a| a.next()) {
            b = b.resolve(name, addr);
        }
    }
    b.build().expect("an HTTP client builds")
}

/// What a WebSocket to Nomad runs over: TCP, or TLS over it.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket to Nomad (the exec API), to `NOMAD_ADDR`'s address, with `cfg`'s TLS for
/// `wss://` (checked against the TLS server name, else `NOMAD_ADDR`'s host).
pub(super) async fn websocket(
    cfg: &NomadConfig,
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, String> {
    let (host, port) = target(cfg).ok_or_else(|| format!("{}: not an address", cfg.addr))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{host}:{port}: {e}"))?;
    let io: Box<dyn Io> = if req.uri().scheme_str() == Some("wss") {
        if cfg.tls.ca.is_none() {
            return Err("exec over wss:// needs the cluster's CA (NOMAD_CACERT)".into());
        }
        let name = cfg.tls.server_name.clone().unwrap_or(host);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg.tls.rustls()?));
        let server = ServerName::try_from(name.clone()).map_err(|_| format!("{name:?} is not a server name"))?;
        Box::new(connector.connect(server, tcp).await.map_err(|e| format!("TLS with {name}: {e}"))?)
    } else {
        Box::new(tcp)
    };
    tokio_tungstenite::client_async(req, io).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}
