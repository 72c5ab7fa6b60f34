//! A network per job: each allocation's worker runs in a network namespace of its job's own
//! on its miner, never in the miner's. As a pool's container networks do (a CNI bridge per
//! node, routed between nodes): job slot `s` on miner `i` has the address `10.<jobs>.(10+i).s`,
//! on a veth pair whose other end is in the miner's namespace, which routes it (to its own
//! jobs by a `/32` each, to another miner's `10.<jobs>.(10+j).0/24` by that miner's bridge
//! address). The miner's firewall (`miner_rules`, nftables in the miner's namespace) forwards
//! a job's packets only to the same job's addresses on the other miners (the same last
//! octet), and a job's own only from them, from the host (the serving gateway reaching a
//! replica) or as replies; a job reaches nothing of its miner's own, no other job on any
//! miner, and nothing of the host's but what is relayed onto its own loopback (`relay`): the
//! services it is told of and the egress proxy. So torch's store, Gloo's and NCCL's ports,
//! sshd and uWSGI of one job are unreachable from every other (torch's TCPStore answers
//! anyone who connects and lists its keys: only a network of its own closes it).
//!
//! A job's names resolve to its own addresses: its `hosts` file names every miner at the
//! job's address there, so MPI, Gloo and torch reach the job's peers by the miners' names.

use super::*;
use crate::layout::JobKey;

/// The slots jobs' networks take (the last octet of their addresses).
pub(in crate::scheduler::local) const SLOTS: std::ops::RangeInclusive<u8> = 2..=201;

/// The jobs' networks' second octet for pool `id`: noted in `dir` (a host after a crash
/// finds the same), else the first of 10.150–199 that no other pool noted (in
/// `/run/aic-pools/.jobs-<id>`, under a lock: pools set up at once never take the same) and
/// this machine has no address or route in.
pub(super) fn octet(id: &str, dir: &std::path::Path, gateway: Ipv4Addr) -> Result<u8, String> {
    let note = dir.join("jobs-net");
    let pools = std::path::Path::new(POOLS);
    let _ = std::fs::create_dir_all(pools);
    let lock = std::fs::File::create(pools.join(".lock")).map_err(|e| format!("{POOLS}/.lock: {e}"))?;
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    if unsafe { nix::libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), nix::libc::LOCK_EX) } != 0 {
        return Err(format!("{POOLS}/.lock: {}", std::io::Error::last_os_error()));
    }
    let mine = pools.join(format!(".jobs-{id}"));
    // Other pools' (a pool that stopped gave its own up; another may have taken it since).
    let noted: HashSet<String> = std::fs::read_dir(pools)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".jobs-") && e.path() != mine)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.trim().to_string())
        .collect();
    if let Some(o) = std::fs::read_to_string(&note).ok().and_then(|t| t.trim().parse::<u8>().ok()) {
        if !noted.contains(&o.to_string()) {
            let _ = std::fs::write(&mine, o.to_string());
            return Ok(o);
        }
        tracing::warn!(octet = o, "another pool took this pool's jobs' network while it was stopped: taking another");
    }
    let taken = Command::new("ip").args(["-o", "-4", "addr"]).output().map_err(|e| format!("ip: {e}"))?;
    let taken = String::from_utf8_lossy(&taken.stdout).to_string();
    let routes = Command::new("ip").args(["-4", "route"]).output().map_err(|e| format!("ip: {e}"))?;
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    let o = (150..200u8)
        .find(|o| {
            *o != gateway.octets()[1]
                && !noted.contains(&o.to_string())
                && !taken.contains(&format!(" 10.{o}."))
                && !routes.contains(&format!("10.{o}."))
        })
        .ok_or("no free 10.x.0.0/16 for the jobs' networks")?;
    std::fs::write(&mine, o.to_string()).map_err(|e| format!("{}: {e}", mine.display()))?;
    std::fs::write(&note, o.to_string()).map_err(|e| format!("{}: {e}", note.display()))?;
    Ok(o)
}

/// Miner `miner`'s firewall (an nftables rule set for its namespace): the bridge's address
/// (`gateway`, the host) and the jobs' networks `10.<jobs>.0.0/16`.
pub(super) fn miner_rules(gateway: Ipv4Addr, jobs: u8, miner: u32) -> String {
    let own = |s: u8| format!("10.{jobs}.{}.{s}", 10 + miner);
    let mut t = format!(
        "table inet aic\ndelete table inet aic\ntable inet aic {{\n\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\t# A job reaches nothing of its miner's own.\n\t\tiifname \"aj*\" drop\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\t# The host (the serving gateway, a replica's probe) reaches every job.\n\
         \t\tiifname \"eth0\" ip saddr {gateway} oifname \"aj*\" accept\n\
         \t\tiifname vmap {{ {} }}\n\t\toifname vmap {{ {} }}\n\t}}\n",
        SLOTS.map(|s| format!("\"aj{s}\" : jump from{s}")).collect::<Vec<_>>().join(", "),
        SLOTS.map(|s| format!("\"aj{s}\" : jump to{s}")).collect::<Vec<_>>().join(", "),
    );
    for s in SLOTS {
        // Out of job `s` here: from its own address, to the same job's on the other miners.
        // (Anything else of it is dropped here, never tried against another job's chain.)
        t.push_str(&format!(
            "\tchain from{s} {{\n\t\tip saddr {} ip daddr 10.{jobs}.0.0/16 ip daddr & 0.0.0.255 == 0.0.0.{s} accept\n\t\tdrop\n\t}}\n",
            own(s)
        ));
        // Into job `s` here: from the same job's addresses on the other miners.
        t.push_str(&format!(
            "\tchain to{s} {{\n\t\tip saddr 10.{jobs}.0.0/16 ip saddr & 0.0.0.255 == 0.0.0.{s} accept\n\t}}\n"
        ));
    }
    t.push_str("}\n");
    t
}

impl Net {
    /// Job slot `slot`'s address on miner `miner`.
    pub(in crate::scheduler::local) fn job_address(&self, miner: u32, slot: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.jobs, 10 + miner as u8, slot)
    }

    /// The name of job slot `slot`'s namespace on miner `miner`.
    pub(in crate::scheduler::local) fn job_netns(&self, miner: u32, slot: u8) -> String {
        format!("aic{}-{}j{slot}", self.id, miner + 1)
    }

    /// Miner `miner`'s namespace routes and guards the jobs' networks, and this machine
    /// reaches its jobs (a replica, from the serving gateway) through it.
    pub(super) fn route_jobs(&self, miner: u32) -> Result<(), String> {
        let ns = self.netns(miner);
        let sh = |script: &str| -> Result<(), String> {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", script])
                .output()
                .map_err(|e| format!("ip netns exec {ns}: {e}"))?;
            if !out.status.success() {
                return Err(format!("in {ns}: {script}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(())
        };
        sh("echo 1 > /proc/sys/net/ipv4/ip_forward")?;
        for j in (0..self.miners).filter(|j| *j != miner) {
            ip(&[
                "-n",
                &ns,
                "route",
                "replace",
                &format!("10.{}.{}.0/24", self.jobs, 10 + j),
                "via",
                &self.address(j).to_string(),
            ])?;
        }
        let rules = miner_rules(self.gateway, self.jobs, miner);
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft in {ns}: {e} (install nftables)"))?;
        std::io::Write::write_all(&mut nft.stdin.take().expect("piped"), rules.as_bytes())
            .map_err(|e| format!("nft in {ns}: {e}"))?;
        let out = nft.wait_with_output().map_err(|e| format!("nft in {ns}: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        ip(&[
            "route",
            "replace",
            &format!("10.{}.{}.0/24", self.jobs, 10 + miner),
            "via",
            &self.address(miner).to_string(),
        ])
    }

    /// The slot of `job`'s network: `own` (the one its running allocations have), the one
    /// its allocations started just before got (they start one after another, before the job
    /// is recorded), else the lowest none of `taken` holds.
    pub(in crate::scheduler::local) fn slot_for(
        &self,
        job: &JobKey,
        own: Option<u8>,
        taken: &HashSet<u8>,
    ) -> Option<u8> {
        let mut last = self.last_slot.lock().unwrap();
        if own.is_some_and(|s| taken.contains(&s)) {
            return None; // another job's now: never two jobs in one network
        }
        let slot = own
            .or_else(|| last.as_ref().filter(|(j, s)| j == job && !taken.contains(s)).map(|(_, s)| *s))
            .or_else(|| SLOTS.into_iter().find(|s| !taken.contains(s)))?;
        *last = Some((job.clone(), slot));
        Some(slot)
    }

    /// Makes `job`'s network on miner `miner` in slot `slot`, unless it has it already: a
    /// namespace another job left in that slot (or one half made) is removed first, its link
    /// cut (a process of that job still in it keeps it, and reaches nothing).
    pub(in crate::scheduler::local) fn job_network(&self, job: &JobKey, miner: u32, slot: u8) -> std::io::Result<()> {
        let ns = self.job_netns(miner, slot);
        // Held throughout: a job's end removing its network never meets another's making.
        let mut made = self.made.lock().unwrap();
        if made.get(&ns) == Some(job) {
            return Ok(());
        }
        self.remove_network(&mut made, miner, slot);
        let miner_ns = self.netns(miner);
        let veth = format!("aj{slot}");
        let address = self.job_address(miner, slot);
        let router = Ipv4Addr::new(10, self.jobs, 10 + miner as u8, 1).to_string();
        let steps: [&[&str]; 10] = [
            &["netns", "add", &ns],
            &["-n", &miner_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns],
            &["-n", &miner_ns, "addr", "add", &format!("{router}/32"), "dev", &veth],
            &["-n", &miner_ns, "link", "set", &veth, "up"],
            &["-n", &miner_ns, "route", "replace", &format!("{address}/32"), "dev", &veth],
            &["-n", &ns, "addr", "add", &format!("{address}/32"), "dev", "eth0"],
            &["-n", &ns, "link", "set", "eth0", "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
            &["-n", &ns, "route", "add", &router, "dev", "eth0", "scope", "link"],
            &["-n", &ns, "route", "add", "default", "via", &router],
        ];
        for step in steps {
            ip(step).map_err(std::io::Error::other)?;
        }
        made.insert(ns, job.clone());
        Ok(())
    }

    /// A host after a crash: `job`'s network on miner `miner` in slot `slot` is the one its
    /// adopted workers run in.
    pub(in crate::scheduler::local) fn adopt_job_network(&self, job: &JobKey, miner: u32, slot: u8) {
        self.made.lock().unwrap().insert(self.job_netns(miner, slot), job.clone());
    }

    /// A host after a crash, once it adopted what runs: removes the job networks no adopted
    /// worker runs in (an earlier host's, whose jobs ended while none watched).
    pub(in crate::scheduler::local) fn sweep_job_networks(&self) {
        let mut made = self.made.lock().unwrap();
        let prefix = format!("aic{}-", self.id);
        for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((miner, slot)) = name.strip_prefix(&prefix).and_then(|r| r.split_once('j')) else { continue };
            let (Ok(miner), Ok(slot)) = (miner.parse::<u32>(), slot.parse::<u8>()) else { continue };
            if miner >= 1 && !made.contains_key(&name) {
                self.remove_network(&mut made, miner - 1, slot);
            }
        }
    }

    /// Removes `job`'s network on miner `miner` in slot `slot`, unless the slot was made for
    /// another job since (the slot is free once the job's workers have ended, before this
    /// runs).
    pub(in crate::scheduler::local) fn drop_network_of(&self, job: &JobKey, miner: u32, slot: u8) {
        let mut made = self.made.lock().unwrap();
        if made.get(&self.job_netns(miner, slot)).is_some_and(|j| j != job) {
            return;
        }
        self.remove_network(&mut made, miner, slot);
    }

    /// Removes job slot `slot`'s network on miner `miner`, whoever's it is.
    #[cfg(test)]
    fn drop_job_network(&self, miner: u32, slot: u8) {
        let mut made = self.made.lock().unwrap();
        self.remove_network(&mut made, miner, slot);
    }

    /// Removes job slot `slot`'s network on miner `miner`: its relays, its link (cut in the
    /// miner's namespace: a process left in it reaches nothing), its namespace.
    fn remove_network(&self, made: &mut HashMap<String, JobKey>, miner: u32, slot: u8) {
        let ns = self.job_netns(miner, slot);
        self.stop_relays(&ns);
        made.remove(&ns);
        let _ = ip(&["-n", &self.netns(miner), "link", "del", &format!("aj{slot}")]);
        if std::path::Path::new("/run/netns").join(&ns).exists() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }

    /// The names a job in slot `slot` resolves: every miner at the job's address there.
    pub(super) fn job_names(&self, slot: u8) -> std::io::Result<Names> {
        let names: Vec<(String, Ipv4Addr)> =
            self.miner_names.iter().enumerate().map(|(i, n)| (n.clone(), self.job_address(i as u32, slot))).collect();
        Names::write(&self.names_dir.join(format!("j{slot}")), &names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root with `ip` and `nft` (as in CI): a job reaches its own peers on the other miner
    /// and is reached by the host; another job, on the same miner or the other, reaches
    /// none of its ports, nor does any job reach its miner's own address or the host's.
    #[test]
    fn a_job_reaches_its_own_peers_and_nothing_of_another_jobs() {
        if !nix::unistd::geteuid().is_root() || Command::new("nft").arg("--version").output().is_err() {
            eprintln!("needs root, ip and nft: not run here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let net = Net::setup(&dir.path().join("work"), 2, |i| format!("jm-{}-{}", std::process::id(), i + 1)).unwrap();
        let key = |n: u32| {
            JobKey::new(
                aic_schemas::Address::from_bytes([7; 20]),
                format!("01jb00000000000000000000{n:02}").parse().unwrap(),
            )
        };
        let (a, b) = (key(1), key(2));
        let slot_a = net.slot_for(&a, None, &HashSet::new()).unwrap();
        let slot_b = net.slot_for(&b, None, &[slot_a].into()).unwrap();
        assert_ne!(slot_a, slot_b);
        // A slot another job holds now is never a job's own again (two jobs, one network).
        assert_eq!(net.slot_for(&b, Some(slot_a), &[slot_a].into()), None);
        for m in 0..2 {
            net.job_network(&a, m, slot_a).unwrap();
        }
        net.job_network(&b, 0, slot_b).unwrap();
        let ns = |name: String| std::fs::File::open(std::path::Path::new("/run/netns").join(name)).unwrap();
        // A listener of job A on miner 1, one of the host's, one in miner 0's own namespace.
        let a1 =
            in_namespace(&ns(net.job_netns(1, slot_a)), || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .unwrap();
        let a1_at = std::net::SocketAddr::from((net.job_address(1, slot_a), a1.local_addr().unwrap().port()));
        let a0 =
            in_namespace(&ns(net.job_netns(0, slot_a)), || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .unwrap();
        let a0_at = std::net::SocketAddr::from((net.job_address(0, slot_a), a0.local_addr().unwrap().port()));
        let host = std::net::TcpListener::bind((net.gateway, 0)).unwrap();
        let host_at = host.local_addr().unwrap();
        let miner0 =
            in_namespace(&ns(net.netns(0)), || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap();
        let miner0_at = std::net::SocketAddr::from((net.address(0), miner0.local_addr().unwrap().port()));
        let reach = |from: String, to: std::net::SocketAddr| {
            in_namespace(&ns(from), move || std::net::TcpStream::connect_timeout(&to, Duration::from_millis(700)))
                .is_ok()
        };
        assert!(reach(net.job_netns(0, slot_a), a1_at), "job A does not reach its peer on the other miner");
        assert!(
            std::net::TcpStream::connect_timeout(&a1_at, Duration::from_secs(2)).is_ok(),
            "the host reaches no job"
        );
        assert!(!reach(net.job_netns(0, slot_b), a1_at), "job B reached job A on the other miner");
        assert!(!reach(net.job_netns(0, slot_b), a0_at), "job B reached job A on its own miner");
        assert!(!reach(net.job_netns(0, slot_a), miner0_at), "a job reached its miner's own address");
        assert!(!reach(net.job_netns(0, slot_a), host_at), "a job reached the host");
        // Removed, the slot's link is gone from the miner; made again for another job, the
        // new one does not inherit the old one's peers.
        net.drop_job_network(1, slot_a);
        assert!(!std::path::Path::new("/run/netns").join(net.job_netns(1, slot_a)).exists());
        net.teardown();
    }

    #[test]
    fn a_miners_rules_name_each_slot_once_each_way() {
        let t = miner_rules(Ipv4Addr::new(10, 201, 7, 1), 160, 1);
        assert!(t.starts_with("table inet aic\ndelete table inet aic\n"), "replaced whole");
        assert!(t.contains("policy drop;"), "{t}");
        assert!(t.contains("iifname \"eth0\" ip saddr 10.201.7.1 oifname \"aj*\" accept"));
        assert!(t.contains("ip saddr 10.160.11.5 ip daddr 10.160.0.0/16 ip daddr & 0.0.0.255 == 0.0.0.5 accept"));
        assert_eq!(t.matches("chain from").count(), SLOTS.count());
        assert_eq!(t.matches("chain to").count(), SLOTS.count());
    }
}
