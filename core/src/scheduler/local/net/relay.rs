//! Relays into the jobs' networks: a service on this machine's loopback answering on a job's
//! own loopback, across its miner's link, and the bridge's ports.

use super::*;

impl Net {
    /// Makes the loopback services named in `value` (`http://127.0.0.1:P`,
    /// `http://localhost:P`) answer on the loopback of namespace `ns` (a job's network on
    /// miner `miner`) too, relayed to this machine's: a URL the worker is told of (or gets
    /// from the gateway, such as a presigned S3 URL, whose signature covers its host) works
    /// unchanged there.
    pub(in crate::scheduler::local) fn relay_loopback(&self, ns: &str, miner: u32, value: &str) -> std::io::Result<()> {
        for lo in ["http://127.0.0.1:", "http://localhost:"] {
            for (at, _) in value.match_indices(lo) {
                let digits: String = value[at + lo.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(port) = digits.parse::<u16>() {
                    let to = std::net::SocketAddr::from((self.gateway, self.bridged(port)?));
                    self.relay(ns, miner, port, to)?;
                }
            }
        }
        Ok(())
    }

    /// Listens on `127.0.0.1:port` inside namespace `ns` (a thread enters it to bind, the
    /// socket stays there) and relays each connection across miner `miner`'s link (the
    /// outbound socket is made in the miner's namespace) to `to` on this machine's side of
    /// the bridge (once per namespace and port; stopped with the namespace).
    pub(in crate::scheduler::local) fn relay(
        &self,
        ns: &str,
        miner: u32,
        port: u16,
        to: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        if self.relayed.lock().unwrap().get(ns).is_some_and(|(ports, _)| ports.contains(&port)) {
            return Ok(());
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return Ok(()) };
        let inside = std::fs::File::open(std::path::Path::new("/run/netns").join(ns))?;
        let link = Arc::new(std::fs::File::open(std::path::Path::new("/run/netns").join(self.netns(miner)))?);
        let listener = in_namespace(&inside, move || {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let task = rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((inbound, _)) = listener.accept().await {
                // The outbound socket is made inside the miner: it leaves by the miner's link.
                let Ok(socket) = in_namespace(&link, tokio::net::TcpSocket::new_v4) else { continue };
                tokio::spawn(async move {
                    if let Ok(out) = socket.connect(to).await {
                        pipe(inbound, out).await;
                    }
                });
            }
        });
        let mut relayed = self.relayed.lock().unwrap();
        let (ports, tasks) = relayed.entry(ns.to_string()).or_default();
        ports.insert(port);
        tasks.push(task.abort_handle());
        Ok(())
    }

    /// Stops the relays into namespace `ns` (it is being removed).
    pub(in crate::scheduler::local) fn stop_relays(&self, ns: &str) {
        if let Some((_, tasks)) = self.relayed.lock().unwrap().remove(ns) {
            tasks.iter().for_each(tokio::task::AbortHandle::abort);
        }
    }

    /// This machine's side of a relayed port: a listener on the bridge's address that passes
    /// each connection to `127.0.0.1:port` (started once per port). Only the miners reach it.
    pub(in crate::scheduler::local) fn bridged(&self, port: u16) -> std::io::Result<u16> {
        let mut bridged = self.bridged.lock().unwrap();
        if let Some(p) = bridged.get(&port) {
            return Ok(*p);
        }
        let listener = std::net::TcpListener::bind((self.gateway, 0))?;
        listener.set_nonblocking(true)?;
        let at = listener.local_addr()?.port();
        let from = self.gateway;
        tokio::spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // From the bridge's address, not the loopback's: the service sees a miner,
                    // not this machine (the embedded pool lets only this machine sign in as a
                    // dev account, whose keys are public).
                    let out = async {
                        let s = tokio::net::TcpSocket::new_v4()?;
                        s.bind((from, 0).into())?;
                        s.connect((Ipv4Addr::LOCALHOST, port).into()).await
                    };
                    if let Ok(out) = out.await {
                        pipe(inbound, out).await;
                    }
                });
            }
        });
        bridged.insert(port, at);
        Ok(at)
    }
}

/// Runs `f` on a thread of its own that entered the namespace `ns`: what it makes (a
/// socket) belongs to that namespace. (Never on a pooled thread: it would stay there.)
pub(in crate::scheduler::local) fn in_namespace<T: Send + 'static>(
    ns: &std::fs::File,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let ns = ns.try_clone()?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("a thread in a miner's namespace panicked"))?
}

pub(in crate::scheduler::local) async fn pipe(mut a: tokio::net::TcpStream, mut b: tokio::net::TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
