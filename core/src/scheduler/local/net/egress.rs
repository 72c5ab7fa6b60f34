//! The miners' way out: an HTTP CONNECT proxy on the bridge that reaches public unicast
//! addresses only (never this machine's loopback, its private networks, or the metadata
//! address).

use super::*;

impl Net {
    /// Where a job reaches the internet (a package index, a model hub), as real miners do:
    /// an HTTP CONNECT proxy on the bridge's address, started on first use, relayed onto the
    /// loopback of the job's network `ns` on miner `miner` (a job reaches nothing of the
    /// host's directly). It refuses this machine's loopback and the pool's networks (a job
    /// reaches the pool only through what it is told of). The variables a worker gets for it.
    pub(in crate::scheduler::local) fn egress_env(
        &self,
        ns: &str,
        miner: u32,
        slot: u8,
    ) -> std::io::Result<Vec<(String, String)>> {
        let Some(port) = *self.egress.get_or_init(|| self.start_egress()) else { return Ok(Vec::new()) };
        self.relay(ns, miner, port, std::net::SocketAddr::from((self.gateway, port)))?;
        let proxy = format!("http://127.0.0.1:{port}");
        let mut no = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        no.extend((0..self.miners).map(|i| self.job_address(i, slot).to_string()));
        no.extend(self.miner_names.iter().cloned());
        let no = no.join(",");
        Ok(["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"]
            .into_iter()
            .map(|k| (k.to_string(), proxy.clone()))
            .chain(["NO_PROXY", "no_proxy"].into_iter().map(|k| (k.to_string(), no.clone())))
            .collect())
    }

    pub(in crate::scheduler::local) fn start_egress(&self) -> Option<u16> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let listener = std::net::TcpListener::bind((self.gateway, 0)).ok()?;
        let port = listener.local_addr().ok()?.port();
        listener.set_nonblocking(true).ok()?;
        let bridge = self.gateway.octets();
        rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(connect_proxy(inbound, bridge));
            }
        });
        Some(port)
    }
}

/// Whether a miner's egress may reach `ip`: a public unicast address only. Not this machine's
/// loopback (in any spelling: `::ffff:127.0.0.1` too), not a private, shared (CGNAT),
/// link-local (a cloud's metadata service at 169.254.169.254), multicast or reserved one:
/// those are the pool's own network. (Documentation ranges pass: a package index may be
/// served at one where registries are mirrored, as on the machine the tests run on.)
pub(in crate::scheduler::local) fn public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| v6.to_ipv4()) {
            Some(v4) if !v6.is_loopback() => public(v4.into()),
            _ => {
                let seg = v6.segments();
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (seg[0] & 0xfe00) == 0xfc00
                    || (seg[0] & 0xffc0) == 0xfe80
                    || (seg[0] == 0x64 && seg[1] == 0xff9b))
            }
        },
    }
}

/// One client of the egress proxy: `CONNECT host:port` → a tunnel; anything else, or a
/// target on this machine's loopback or the pool's bridge, is refused.
async fn connect_proxy(mut inbound: tokio::net::TcpStream, bridge: [u8; 4]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match inbound.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default().to_string());
    let refusal = |why: &str| format!("HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\n\r\n{why}", why.len());
    if method != "CONNECT" {
        let _ = inbound.write_all(refusal("only CONNECT").as_bytes()).await;
        return;
    }
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(&target).await {
        Ok(a) => a.collect(),
        Err(_) => Vec::new(),
    };
    let inside = |a: &std::net::SocketAddr| !public(a.ip()) || a.ip() == std::net::IpAddr::from(bridge);
    if addrs.is_empty() || addrs.iter().any(inside) {
        let _ = inbound.write_all(refusal("not reachable from a miner").as_bytes()).await;
        return;
    }
    let Ok(mut out) = tokio::net::TcpStream::connect(&addrs[..]).await else {
        let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    if inbound.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
}
