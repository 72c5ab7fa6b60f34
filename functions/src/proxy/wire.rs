//! What passes between a visitor and a replica: the headers kept and dropped (hop-by-hop,
//! cookies beyond the deployment, service workers), and the connections to replicas.

use super::*;

pub(super) const HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host"];

/// How an exchange failed: before the request left (it comes back, to go out on another
/// connection), or after.
pub(super) enum Failed {
    Unsent(Box<Request<Outgoing>>, String),
    Sent(String),
}

/// A deployment's answers come from a stranger's app, at an origin of its own: its cookies
/// stay its own (a `Set-Cookie` with a `Domain`, which would reach sibling deployments or
/// the pool's domain, is dropped; host-only ones pass), and it may not widen a service
/// worker's scope (`Service-Worker-Allowed` is dropped).
pub(super) fn confine(headers: &mut HeaderMap) {
    let kept: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().filter(|v| host_only(v)).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
    headers.remove("service-worker-allowed");
}

/// Whether a `Set-Cookie` value is for the host that set it alone (no `Domain` attribute,
/// RFC 6265 §5.3: a cookie without one is sent back to that host only).
pub(super) fn host_only(v: &HeaderValue) -> bool {
    let Ok(v) = v.to_str() else { return false };
    !v.split(';').skip(1).any(|a| a.trim_start().get(..6).is_some_and(|k| k.eq_ignore_ascii_case("domain")))
}

/// The header names a message's `Connection` header lists (its own hop-by-hop headers).
pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `name` is a header of this hop only: a fixed one, or one the message's
/// `Connection` header lists (RFC 9110 §7.6.1: a proxy removes those before forwarding).
pub(super) fn hop_by_hop(headers: &HeaderMap, name: &http::HeaderName) -> bool {
    HOP.contains(&name.as_str()) || connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name.as_str()))
}

/// A new HTTP/1.1 connection to `host:port`, driven by a task of its own (an answer's body
/// is read from it after the exchange has returned); the task ends with the connection.
pub(super) async fn connect(host: &str, port: u16) -> Result<SendRequest<Outgoing>, String> {
    let stream = match tokio::time::timeout(CONNECT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("cannot connect to {host}:{port} ({e})")),
        Err(_) => return Err(format!("{host}:{port} did not answer in {} s", CONNECT.as_secs())),
    };
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(UNACKED));
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot speak HTTP to {host}:{port} ({e})"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
