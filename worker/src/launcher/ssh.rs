//! SSH between the allocations of one job, the way Horovod documents it for containers: an
//! sshd started inside each allocation on its assigned port, accepting only the job's key
//! (made by the leader, published in its rendezvous record), and handing every session the
//! allocation's own folders (`SetEnv`), so ranks find their code, data and outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

use super::Peer;

pub fn sshd_bin() -> PathBuf {
    std::env::var_os("AIC_SSHD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// Checks that OpenSSH is here (its server, `ssh-keygen` and `ssh`): every allocation of
/// an `mpi` or `horovod` job needs all three. The error is the job's failure reason, naming
/// what is missing (and, in a user's own image, that the image lacks it).
pub fn require_openssh(miner: &str) -> Result<(), String> {
    const INSTALL: &str = "install OpenSSH on the miners (apt-get install openssh-server openssh-client)";
    let sshd = sshd_bin();
    if !sshd.is_file() {
        let what = format!("sshd ({})", sshd.display());
        return Err(super::missing(&what, miner, INSTALL, super::image().as_deref()));
    }
    super::require("ssh-keygen", miner, INSTALL)?;
    super::require("ssh", miner, INSTALL)
}

/// Makes the job's key pair in `dir`; returns (private key path, public key line).
pub async fn keygen(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    tokio::fs::create_dir_all(dir).await?;
    let key = dir.join("id_ed25519");
    let _ = tokio::fs::remove_file(&key).await;
    let _ = tokio::fs::remove_file(key.with_extension("pub")).await;
    let st = tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "aic-job", "-f"])
        .arg(&key)
        .status()
        .await
        .context("ssh-keygen (OpenSSH client) is needed for multi-miner jobs")?;
    anyhow::ensure!(st.success(), "ssh-keygen failed");
    let pubkey = tokio::fs::read_to_string(key.with_extension("pub")).await?.trim().to_string();
    Ok((key, pubkey))
}

/// A running sshd; stopped when dropped.
pub struct Sshd {
    child: tokio::process::Child,
    /// Its host key, public (`ssh-ed25519 AAAA…`), published in the rendezvous record.
    pub hostkey: String,
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Starts sshd on `host:port` accepting `authorized` and giving sessions `env`.
pub async fn start(
    dir: &Path,
    host: &str,
    port: u16,
    authorized: &str,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Sshd> {
    let bin = sshd_bin();
    if !bin.is_file() {
        return Err(anyhow!(
            "sshd is not installed here ({}); install OpenSSH server (apt-get install openssh-server)",
            bin.display()
        ));
    }
    tokio::fs::create_dir_all(dir).await?;
    let hostkey = dir.join("ssh_host_ed25519_key");
    if !hostkey.exists() {
        let st = tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&hostkey)
            .status()
            .await?;
        anyhow::ensure!(st.success(), "ssh-keygen could not make a host key");
    }
    tokio::fs::write(dir.join("authorized_keys"), format!("{authorized}\n")).await?;
    // sshd checks that its privilege-separation folder exists.
    let _ = std::fs::create_dir_all("/run/sshd");
    let set_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    let config = format!(
        "Port {port}\nListenAddress {host}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         StrictModes no\nUsePAM no\nPrintMotd no\nSetEnv {}\n",
        hostkey.display(),
        dir.join("authorized_keys").display(),
        dir.join("sshd.pid").display(),
        set_env.join(" "),
    );
    let cfg = dir.join("sshd_config");
    tokio::fs::write(&cfg, config).await?;
    let log = std::fs::File::create(dir.join("sshd.log"))?;
    let child = tokio::process::Command::new(&bin)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let hostkey = std::fs::read_to_string(hostkey.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", hostkey.display()))?
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let mut sshd = Sshd { child, hostkey };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect((host, port)).await.is_err() {
        if let Some(st) = sshd.child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            return Err(anyhow!("sshd exited ({st}): {}", log.lines().last().unwrap_or("")));
        }
        if Instant::now() > deadline {
            return Err(anyhow!("sshd did not listen on {host}:{port} within 10 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(sshd)
}

impl Sshd {
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Writes the client side: an ssh_config with every peer's port and the job's key, and an
/// `ssh` wrapper that uses it (for launchers that call plain `ssh`). Returns (config, the
/// wrapper's folder).
///
/// Each peer's sshd is known by the host key it published in its rendezvous record
/// (`known_hosts`, checked strictly): whatever else answers at a peer's address and port — a
/// program of another job on the same miner that bound the port first — is refused before
/// any rank's command is sent. The wrapper puts the check first on the command line, where
/// ssh takes the first value of an option: a launcher's own `-o StrictHostKeyChecking=no`
/// (horovodrun passes one) comes after it and changes nothing.
pub fn client(dir: &Path, key: &Path, peers: &[Peer]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut cfg = String::new();
    let mut known = String::new();
    for p in peers {
        cfg.push_str(&format!("Host {}\n  Port {}\n", p.host, p.port));
        let hostkey = p.hostkey.as_deref().filter(|k| k.starts_with("ssh-") && !k.contains('\n')).ok_or_else(|| {
            anyhow!(
                "allocation {} published no SSH host key (an older aic-worker?): its sshd cannot be told from another",
                p.alloc
            )
        })?;
        let at = if p.port == 22 { p.host.clone() } else { format!("[{}]:{}", p.host, p.port) };
        known.push_str(&format!("{at} {hostkey}\n"));
    }
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, known)?;
    cfg.push_str(&format!(
        "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  CheckHostIP no\n  LogLevel ERROR\n  BatchMode yes\n",
        key.display(),
        known_hosts.display()
    ));
    let path = dir.join("ssh_config");
    std::fs::write(&path, cfg)?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let wrapper = bin.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -F {} -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} \"$@\"\n",
            path.display(),
            known_hosts.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok((path, bin))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leader's ssh reaches a peer's own sshd, and refuses another one answering at the
    /// peer's address and port (a program of another job on the same miner that bound the
    /// port first, with a host key of its own and the job's key accepted), even when the
    /// launcher asks for no host key checking as horovodrun does.
    #[tokio::test]
    async fn ssh_reaches_a_peers_own_sshd_and_refuses_another_at_its_address() {
        if !sshd_bin().is_file() {
            assert!(std::env::var("CI").is_err(), "CI installs OpenSSH's server");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (key, pubkey) = keygen(&dir.path().join("leader")).await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = BTreeMap::from([("AIC_ALLOC_INDEX".to_string(), "1".to_string())]);
        let own = start(&dir.path().join("peer"), "127.0.0.1", port, &pubkey, &env).await.unwrap();
        let peer = Peer {
            alloc: 1,
            miner: "miner-2".into(),
            host: "127.0.0.1".into(),
            port,
            slots: 1,
            pubkey: None,
            hostkey: Some(own.hostkey.clone()),
            rdzv_id: None,
        };
        let (_, bin) = client(&dir.path().join("leader"), &key, std::slice::from_ref(&peer)).unwrap();
        let ssh = || {
            std::process::Command::new(bin.join("ssh"))
                .args(["-o", "StrictHostKeyChecking=no", "127.0.0.1", "echo reached"])
                .output()
                .unwrap()
        };
        let out = ssh();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "reached\n", "{out:?}");
        own.stop().await;
        let squatter = start(&dir.path().join("squatter"), "127.0.0.1", port, &pubkey, &env).await.unwrap();
        assert_ne!(Some(&squatter.hostkey), peer.hostkey.as_ref());
        let out = ssh();
        assert!(!out.status.success(), "the squatter's sshd was reached: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"), "{out:?}");
        squatter.stop().await;
    }

    #[test]
    fn a_peer_without_a_host_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Peer {
            alloc: 3,
            miner: "miner-4".into(),
            host: "10.0.0.8".into(),
            port: 2222,
            slots: 1,
            pubkey: None,
            hostkey: None,
            rdzv_id: None,
        };
        let e = client(dir.path(), &dir.path().join("k"), &[peer]).unwrap_err().to_string();
        assert!(e.contains("allocation 3 published no SSH host key"), "{e}");
    }
}
