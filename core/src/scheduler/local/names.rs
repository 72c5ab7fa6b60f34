//! The simulated miners' host names, resolvable as real miners' are.
//!
//! Each worker runs under its miner's name (a UTS namespace, `net::enter`), and users'
//! frameworks look names up: Gloo (Horovod's controller) resolves every host it is given,
//! torch's c10d rendezvous resolves the machine's own name, NCCL's bootstrap, DeepSpeed and Ray
//! do the same. On a pool DNS or each node's `/etc/hosts` answers; here nothing would (found
//! that way: every horovodrun rank aborted with "Unable to find address for: miner-1", and
//! torchrun with "Temporary failure in name resolution").
//!
//! So each worker also gets a mount namespace of its own, made private first (nothing it
//! mounts propagates back to this machine), in which the pool's own `hosts` file (every
//! miner's name with its address on the bridge, the address the others reach it at) is
//! bound over `/etc/hosts`, and an `nsswitch.conf` that looks host names up in files first
//! over `/etc/nsswitch.conf` (the host's own may ask systemd-resolved, LDAP or DNS first:
//! those know the machine, not the miners). A name-service cache daemon's socket is hidden
//! (nscd would answer from the host's tables). The worker's children (the program, sshd,
//! mpirun, `aic exec` sessions) inherit it all; this machine's own resolution is untouched.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The files bound into each miner's mount namespace, ready for use between fork and exec.
pub(super) struct Names {
    hosts: CString,
    nsswitch: CString,
    /// `/etc/nsswitch.conf` when this machine has one (a bind mount needs its target).
    nsswitch_at: Option<CString>,
    /// nscd's socket folder, when there is one to hide.
    nscd_at: Option<CString>,
}

/// The text of the miners' `hosts` file: loopback, then each `(name, address)`.
pub(super) fn hosts_file(miners: &[(String, Ipv4Addr)]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, address) in miners {
        text.push_str(&format!("{address}\t{name}\n"));
    }
    text
}

/// This machine's `nsswitch.conf` (`host`: its text, if any) with host names looked up in
/// files first, then DNS; every other database as it was.
pub(super) fn nsswitch_file(host: Option<&str>) -> String {
    let mut out = String::new();
    for line in host.unwrap_or_default().lines() {
        if !line.trim_start().starts_with("hosts:") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("hosts: files dns\n");
    out
}

impl Names {
    /// Writes the pool's files into `dir` (each whole: a worker starting meanwhile binds the
    /// old or the new, never half of one) for `miners` (name, address).
    pub(super) fn write(dir: &Path, miners: &[(String, Ipv4Addr)]) -> std::io::Result<Names> {
        if !Path::new("/etc/hosts").exists() {
            return Err(std::io::Error::other("this machine has no /etc/hosts to bind the miners' names over"));
        }
        std::fs::create_dir_all(dir)?;
        let hosts = write_whole(&dir.join("hosts"), &hosts_file(miners))?;
        let host_nss = std::fs::read_to_string("/etc/nsswitch.conf").ok();
        let nsswitch = write_whole(&dir.join("nsswitch.conf"), &nsswitch_file(host_nss.as_deref()))?;
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other);
        let nscd = ["/run/nscd", "/var/run/nscd"].into_iter().map(Path::new).find(|p| p.is_dir());
        Ok(Names {
            hosts: c(&hosts)?,
            nsswitch: c(&nsswitch)?,
            nsswitch_at: host_nss.is_some().then(|| c(Path::new("/etc/nsswitch.conf"))).transpose()?,
            nscd_at: nscd.map(c).transpose()?,
        })
    }

    /// In a child between fork and exec, after `unshare(CLONE_NEWNS)`: makes every mount
    /// private, then binds the pool's files (read-only) and hides nscd. Only system calls.
    pub(super) fn mount_in_child(&self) -> std::io::Result<()> {
        use nix::libc::{MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT};
        private(c"/", MS_REC | MS_PRIVATE)?;
        bind_read_only(&self.hosts, c"/etc/hosts")?;
        if let Some(at) = &self.nsswitch_at {
            bind_read_only(&self.nsswitch, at)?;
        }
        if let Some(at) = &self.nscd_at {
            // SAFETY: NUL-terminated strings that outlive the call.
            let r = unsafe { nix::libc::mount(c"tmpfs".as_ptr(), at.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        return Ok(());

        fn private(at: &std::ffi::CStr, flags: nix::libc::c_ulong) -> std::io::Result<()> {
            // SAFETY: NUL-terminated strings that outlive the call.
            let r =
                unsafe { nix::libc::mount(c"none".as_ptr(), at.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
            if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        }
        fn bind_read_only(from: &std::ffi::CStr, to: &std::ffi::CStr) -> std::io::Result<()> {
            for flags in [MS_BIND, MS_BIND | MS_REMOUNT | MS_RDONLY] {
                // SAFETY: NUL-terminated strings that outlive the call.
                let r =
                    unsafe { nix::libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}

fn write_whole(path: &Path, text: &str) -> std::io::Result<PathBuf> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_file_names_every_miner_at_its_bridge_address() {
        let text = hosts_file(&[
            ("miner-1".into(), Ipv4Addr::new(10, 9, 8, 10)),
            ("miner-2".into(), Ipv4Addr::new(10, 9, 8, 11)),
        ]);
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.ends_with("10.9.8.10\tminer-1\n10.9.8.11\tminer-2\n"), "{text}");
    }

    #[test]
    fn host_names_are_looked_up_in_files_first_and_the_rest_is_kept() {
        let host =
            "passwd: files systemd\nhosts:          resolve [!UNAVAIL=return] files myhostname dns\nnetworks: files\n";
        assert_eq!(nsswitch_file(Some(host)), "passwd: files systemd\nnetworks: files\nhosts: files dns\n");
        assert_eq!(nsswitch_file(None), "hosts: files dns\n");
    }
}
