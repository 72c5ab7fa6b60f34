//! The allocation's cgroup: v2 where its controllers are, else v1's `memory` and `pids`.

use super::*;

/// Where allocations' cgroups are made: a folder of this pool's in each hierarchy.
#[derive(Default)]
pub(super) struct Cgroups {
    /// cgroup v2, and whether it limits memory and pids.
    pub(super) v2: Option<(PathBuf, bool)>,
    /// cgroup v1's `memory` and `pids` hierarchies, where v2 does not limit them.
    pub(super) v1: Vec<(PathBuf, &'static str)>,
}

impl Cgroups {
    /// Finds this process's cgroups and makes the pool's folder `name` in each.
    pub(super) fn setup(name: &str) -> Cgroups {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut out = Cgroups::default();
        for line in mounts.lines() {
            // `… <mount point> <options> … - <fs type> <source> <super options>`
            let (left, right) = line.split_once(" - ").unwrap_or_default();
            let at = left.split_whitespace().nth(4).unwrap_or_default();
            let mut r = right.split_whitespace();
            let (fs, _, sup) = (r.next().unwrap_or_default(), r.next(), r.next().unwrap_or_default());
            let own_path = |key: &dyn Fn(&str) -> bool| {
                own.lines().find_map(|l| {
                    let mut f = l.splitn(3, ':');
                    let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                    key(ctl).then(|| path.trim_start_matches('/').to_string())
                })
            };
            if fs == "cgroup2" && out.v2.is_none() {
                let Some(p) = own_path(&|c| c.is_empty()) else { continue };
                let dir = Path::new(at).join(p).join(name);
                if std::fs::create_dir_all(&dir).is_ok() {
                    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                    let limits = ["memory", "pids"].iter().all(|c| available.split_whitespace().any(|a| a == *c))
                        && std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids").is_ok();
                    out.v2 = Some((dir, limits));
                }
            } else if fs == "cgroup" {
                for ctl in ["memory", "pids"] {
                    if sup.split(',').any(|o| o == ctl) {
                        let Some(p) = own_path(&|c| c.split(',').any(|x| x == ctl)) else { continue };
                        let dir = Path::new(at).join(p).join(name);
                        if std::fs::create_dir_all(&dir).is_ok() {
                            out.v1.push((dir, ctl));
                        }
                    }
                }
            }
        }
        if out.v2.as_ref().is_some_and(|(_, l)| *l) {
            out.v1.clear();
        }
        if out.v2.is_none() && out.v1.is_empty() {
            tracing::warn!(
                "no cgroup to put jobs in here: no memory or process limits (their PID namespace still ends them whole)"
            );
        } else if !out.v2.as_ref().is_some_and(|(_, l)| *l) && out.v1.len() < 2 {
            tracing::warn!(
                "this machine's cgroups cannot limit jobs' memory and processes here: jobs run without those limits"
            );
        }
        out
    }

    /// Makes allocation `name`'s cgroups with their limits; their `cgroup.procs`, to join.
    pub(super) fn make(&self, name: &str, memory: u64, pids: u64) -> std::io::Result<Vec<std::fs::File>> {
        let mut procs = vec![];
        let open = |d: &Path| std::fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"));
        if let Some((root, limits)) = &self.v2 {
            let d = root.join(name);
            std::fs::create_dir_all(&d)?;
            if *limits {
                std::fs::write(d.join("memory.max"), memory.to_string())?;
                std::fs::write(d.join("pids.max"), pids.to_string())?;
            }
            procs.push(open(&d)?);
        }
        for (root, ctl) in &self.v1 {
            let d = root.join(name);
            std::fs::create_dir_all(&d)?;
            match *ctl {
                "memory" => std::fs::write(d.join("memory.limit_in_bytes"), memory.to_string())?,
                _ => std::fs::write(d.join("pids.max"), pids.to_string())?,
            }
            procs.push(open(&d)?);
        }
        Ok(procs)
    }

    /// Kills every process in allocation `name`'s cgroups and removes them.
    pub(super) async fn kill_and_remove(&self, name: &str) {
        let dirs: Vec<PathBuf> =
            self.v2.iter().map(|(r, _)| r.join(name)).chain(self.v1.iter().map(|(r, _)| r.join(name))).collect();
        for d in &dirs {
            if !d.is_dir() {
                continue;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let _ = std::fs::write(d.join("cgroup.kill"), "1");
                let left: Vec<i32> = std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                for pid in &left {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
                }
                if (left.is_empty() && std::fs::remove_dir(d).is_ok()) || std::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            if d.is_dir() {
                tracing::warn!(cgroup = %d.display(), "a job's cgroup could not be emptied and removed");
            }
        }
    }
}
