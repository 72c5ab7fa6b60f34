//! The job's own user: the unprivileged uid a job's program (its worker, sshd, uWSGI and
//! `aic exec` commands) runs as, on the local scheduler (`local::sandbox`) and in a Nomad task
//! (the worker drops to it itself: [`become_job_user`]). Uids come from `AIC_JOB_UIDS`
//! (`first-last`, 3000000-3065535 by default), a range no user of the machine has, each
//! handed out by the scheduler to one job at a time (the local scheduler's `Sandbox::free_uid`,
//! Nomad's `uids` claims), never derived from the job's id, which its owner chooses; on Nomad's
//! clients the egress rules (`infra/nomad/egress.nft`) refuse that range the node's own services,
//! the cloud's metadata address and the pool's control plane.

use std::path::Path;

/// The job's user name in the allocation's `/etc/passwd`.
pub const USER: &str = "aic";

/// The variable a Nomad task's worker reads its job's uid from.
pub const JOB_UID: &str = "AIC_JOB_UID";

/// The uids jobs take: (first, how many), from `AIC_JOB_UIDS`.
pub fn uid_range() -> (u32, u32) {
    match std::env::var("AIC_JOB_UIDS").ok().filter(|v| !v.is_empty()) {
        None => (3_000_000, 65_536),
        Some(v) => match v
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
        {
            Some((a, b)) if a >= 1000 && b >= a && b < u32::MAX - 1 => (a, b - a + 1),
            _ => {
                tracing::warn!(value = %v, "AIC_JOB_UIDS is not first-last (uids of 1000 and above): using 3000000-3065535");
                (3_000_000, 65_536)
            }
        },
    }
}

/// In a task started as root (a Nomad task: the docker driver's container), this process
/// becomes job user `uid`: its name in the task's own `/etc/passwd` and `/etc/group` (ssh and
/// Python's `getpass` look it up), `home` handed over to it, no supplementary groups, no
/// new privileges. Everything started afterwards — the program, its sshd, uWSGI — runs as it.
/// Not root (already someone): nothing to do.
pub fn become_job_user(uid: u32, home: Option<&Path>) -> std::io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    if let Some(home) = home {
        std::fs::create_dir_all(home)?;
        hand_over(home, uid)?;
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let line = format!("{USER}:x:{uid}:{uid}:aic job:{}:/bin/sh", home.display());
        std::fs::write("/etc/passwd", with_user(&passwd, &line))?;
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        std::fs::write("/etc/group", with_user(&group, &format!("{USER}:x:{uid}:")))?;
    }
    drop_to(uid)
}

/// No supplementary groups, gid and uid `uid` (real, effective and saved), no new privileges.
pub fn drop_to(uid: u32) -> std::io::Result<()> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    let id = |e: nix::Error| std::io::Error::from(e);
    setgroups(&[]).map_err(id)?;
    setresgid(Gid::from_raw(uid), Gid::from_raw(uid), Gid::from_raw(uid)).map_err(id)?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid)).map_err(id)?;
    // A change of uid resets the process's dumpable flag to `fs.suid_dumpable` (1 on some
    // machines): the worker holds its job's token and talks to its root environment keeper,
    // so it stays closed to the job's own programs (same uid: `/proc/<pid>/environ`, `fd/`).
    nix::sys::prctl::set_dumpable(false).map_err(id)?;
    nix::sys::prctl::set_no_new_privs().map_err(id)
}

/// `text` (a passwd or group file) without any line of the job's user name or id, then `line`.
pub fn with_user(text: &str, line: &str) -> String {
    let name = line.split(':').next().unwrap_or_default();
    let id = line.split(':').nth(2).unwrap_or_default();
    let mut out: String = text
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.first() != Some(&name) && f.get(2) != Some(&id)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(line);
    out.push('\n');
    out
}

/// The work folder and everything in it to `uid` (what an earlier attempt left may have had
/// another), mode 0700. Links are changed, never followed: a job's link to a host file hands
/// over the link only.
pub fn hand_over(dir: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(uid));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    Ok(())
}
