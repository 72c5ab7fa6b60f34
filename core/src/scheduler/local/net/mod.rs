//! Simulated miners as hosts of their own (as root; `AIC_POOL_NETNS=0` turns it off): each miner gets a
//! network namespace with its own address on a bridge of the pool's (a veth pair each), and
//! each worker its own UTS namespace named after its miner. Allocations of one job on two
//! miners then talk across a real network stack between hosts of different names, as on a
//! pool; the serving gateway reaches replicas over the bridge.
//!
//! Services the workers are told of on this machine's loopback (the host's gateway, a local
//! S3 server) answer on each miner's own loopback too, relayed to this machine's, so every
//! URL works unchanged (a presigned URL's signature covers its host). The miners reach the
//! internet (a package index) through an HTTP CONNECT proxy on the bridge, as pools with
//! restricted egress do.
//! Where namespaces cannot be made (not root, no `ip`), the miners keep their loopback
//! addresses, with a warning.
//!
//! Names come from the pool's work folder, so a host started after one that died finds the
//! same namespaces (and its adopted workers in them). Each pool notes its folder in
//! `/run/aic-pools/<id>`; a pool that sets up removes the namespaces of pools whose folder is
//! gone (a host killed outright, whose folder was then deleted, leaves them behind).
//!
//! Each miner's agent sends the host a heartbeat across its link ([`Net::start_heartbeats`]),
//! as a Nomad client does to its servers: a miner cut off the network falls silent, and the
//! scheduler takes it for lost (`heartbeat`). The relayed services cross each miner's link
//! too, so a miner cut off reaches nothing of the pool's.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::names::Names;

mod egress;
mod jobs;
mod relay;

use relay::in_namespace;

/// Where each pool notes its work folder: `<POOLS>/<id>`.
const POOLS: &str = "/run/aic-pools";

/// The ports relayed into a namespace, and the relays' tasks.
type Relays = (HashSet<u16>, Vec<tokio::task::AbortHandle>);

/// The pool's namespaces and bridge.
pub(super) struct Net {
    id: String,
    /// The bridge's address: the host as the miners reach it.
    pub(super) gateway: Ipv4Addr,
    miners: u32,
    /// The second octet of the jobs' networks: job slot `s` on miner `i` is
    /// `10.<jobs>.(10+i).s` (`jobs`).
    jobs: u8,
    /// The ports relayed into each namespace (by name), and the relays' tasks (stopped with
    /// the namespace).
    relayed: Mutex<HashMap<String, Relays>>,
    /// The job each job network (by namespace name) was made for.
    made: Mutex<HashMap<String, crate::layout::JobKey>>,
    /// The job the last network slot was given to, and that slot.
    last_slot: Mutex<Option<(crate::layout::JobKey, u8)>>,
    /// Where each job's names are written (`<names>/j<slot>/`).
    names_dir: std::path::PathBuf,
    /// The miners' names.
    miner_names: Vec<String>,
    /// Per loopback port relayed: where this machine's side listens on the bridge.
    bridged: Mutex<HashMap<u16, u16>>,
    egress: std::sync::OnceLock<Option<u16>>,
    /// The miners' names, bound into each worker's mount namespace.
    names: Arc<Names>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

impl Net {
    /// Whether the miners get namespaces: as root unless `AIC_POOL_NETNS=0`; `AIC_POOL_NETNS=1`
    /// asks for them (a warning when they cannot be made).
    pub(super) fn wanted() -> bool {
        match std::env::var("AIC_POOL_NETNS").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => nix::unistd::geteuid().is_root(),
        }
    }

    /// Makes (or finds) the namespaces of `miners` miners for the pool working in `root`;
    /// miner `i` is named `name(i)`.
    pub(super) fn setup(root: &std::path::Path, miners: u32, name: impl Fn(u32) -> String) -> Result<Net, String> {
        use sha2::Digest;
        let h = sha2::Sha256::digest(root.to_string_lossy().as_bytes());
        let id = hex::encode(&h[..3]);
        remove_stale_pools(&id);
        // The folder first: a pool noted with no folder is taken for stale by the next.
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        if let Err(e) = note_pool(&id, root) {
            tracing::warn!(error = %e, "cannot note the pool's namespaces in {POOLS}");
        }
        let bridge = format!("aicb{id}");
        let exists = std::path::Path::new("/sys/class/net").join(&bridge).exists();
        let gateway = if exists {
            read_address(None, &bridge).ok_or_else(|| format!("bridge {bridge} has no address"))?
        } else {
            // 10.(200–249).x.0/24, the first not on this machine already.
            let taken = Command::new("ip").args(["-o", "-4", "addr"]).output().map_err(|e| format!("ip: {e}"))?;
            let taken = String::from_utf8_lossy(&taken.stdout).to_string();
            let free = (0..64u32)
                .map(|k| Ipv4Addr::new(10, 200 + (h[3] as u32 + k) as u8 % 50, h[4].wrapping_add(k as u8), 1))
                .find(|a| !taken.contains(&format!(" {}.", a.to_string().rsplit_once('.').unwrap().0)))
                .ok_or("no free 10.x.y.0/24 for the pool's bridge")?;
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{free}/24"), "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
            free
        };
        let miner_names: Vec<String> = (0..miners).map(&name).collect();
        let names: Vec<(String, Ipv4Addr)> = (0..miners).map(|i| (name(i), address(gateway, i))).collect();
        let names = Names::write(&root.join(".names"), &names).map_err(|e| format!("the miners' names: {e}"))?;
        let jobs = jobs::octet(&id, &root.join(".names"), gateway)?;
        let net = Net {
            id,
            gateway,
            miners,
            jobs,
            made: Default::default(),
            last_slot: Default::default(),
            names_dir: root.join(".names"),
            miner_names,
            relayed: Default::default(),
            bridged: Mutex::new(HashMap::new()),
            egress: Default::default(),
            names: Arc::new(names),
        };
        for i in 0..miners {
            let ns = net.netns(i);
            let veth = format!("aicv{}{i}", net.id);
            if std::path::Path::new("/run/netns").join(&ns).exists() {
                // Kept (a later host adopts the workers in it) if it is whole: its link has
                // the miner's address. One a failed setup left half made is made again.
                if read_address(Some(&ns), "eth0") == Some(net.address(i)) {
                    continue;
                }
                tracing::warn!(namespace = %ns, "a miner's namespace was left half made: making it again");
                let _ = ip(&["netns", "del", &ns]);
            }
            // A veth of the pool's last namespace outlives it until the kernel has finished
            // removing that namespace (asynchronously); then adding it again fails with
            // "File exists" (found that way: a host after one that had just stopped ran
            // without namespaces and left one half made, whose miner never answered).
            if std::path::Path::new("/sys/class/net").join(&veth).exists() {
                let _ = ip(&["link", "del", &veth]);
            }
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.address(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for i in 0..miners {
            net.route_jobs(i)?;
        }
        Ok(net)
    }

    pub(super) fn netns(&self, miner: u32) -> String {
        format!("aic{}-{}", self.id, miner + 1)
    }

    /// Miner `miner`'s address on the bridge.
    pub(super) fn address(&self, miner: u32) -> Ipv4Addr {
        address(self.gateway, miner)
    }

    /// Starts the miners' heartbeats: each miner's agent, a socket made inside its namespace,
    /// sends the host a datagram across the miner's link every `every` (to the bridge's
    /// address, where the host listens). The host counts a datagram only from the address
    /// of the miner it names. Runs while the answer is kept.
    pub(super) fn start_heartbeats(&self, every: Duration) -> std::io::Result<Arc<Beats>> {
        let beats =
            Arc::new(Beats { start: Instant::now(), last: (0..self.miners).map(|_| AtomicU64::new(0)).collect() });
        let host = std::net::UdpSocket::bind((self.gateway, 0))?;
        host.set_nonblocking(true)?;
        let to = host.local_addr()?;
        let addresses: Vec<Ipv4Addr> = (0..self.miners).map(|i| self.address(i)).collect();
        let weak = Arc::downgrade(&beats);
        tokio::spawn(async move {
            let Ok(host) = tokio::net::UdpSocket::from_std(host) else { return };
            let mut buf = [0u8; 16];
            loop {
                let got = tokio::time::timeout(every, host.recv_from(&mut buf)).await;
                let Some(beats) = weak.upgrade() else { return };
                if let Ok(Ok((4, std::net::SocketAddr::V4(from)))) = got {
                    let i = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                    if addresses.get(i) == Some(from.ip()) {
                        beats.last[i].store(beats.start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        for i in 0..self.miners {
            let ns = std::fs::File::open(std::path::Path::new("/run/netns").join(self.netns(i)))?;
            let agent = in_namespace(&ns, || {
                let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })?;
            let weak = Arc::downgrade(&beats);
            tokio::spawn(async move {
                let Ok(agent) = tokio::net::UdpSocket::from_std(agent) else { return };
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if weak.upgrade().is_none() {
                        return;
                    }
                    // Cut off (its link down), the miner cannot send: the host hears nothing.
                    let _ = agent.send_to(&i.to_be_bytes(), to).await;
                }
            });
        }
        Ok(beats)
    }

    /// Removes the namespaces and the bridge (the pool stopped and nothing runs).
    pub(super) fn teardown(&self) {
        remove_pool(&self.id);
        let _ = std::fs::remove_file(std::path::Path::new(POOLS).join(&self.id));
    }
}

/// Miner `miner`'s address on the bridge whose address is `gateway`.
fn address(gateway: Ipv4Addr, miner: u32) -> Ipv4Addr {
    let o = gateway.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 10 + miner as u8)
}

/// When each miner was last heard from.
pub(super) struct Beats {
    start: Instant,
    /// Milliseconds since `start` of each miner's last heartbeat (0: none yet).
    last: Vec<AtomicU64>,
}

impl Beats {
    /// How long miner `miner` has been silent (since the start when it never was heard).
    pub(super) fn silent_for(&self, miner: usize) -> Duration {
        let last = self.last.get(miner).map_or(0, |l| l.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(Duration::from_millis(last))
    }
}

/// Removes pool `id`'s namespaces, veths and bridge. The veths go first, by name: one left
/// to the namespace's removal lives on until the kernel gets to it, and blocks the next
/// setup's veth of that name.
fn remove_pool(id: &str) {
    let veths = format!("aicv{id}");
    for entry in std::fs::read_dir("/sys/class/net").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.strip_prefix(&veths).is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())) {
            let _ = ip(&["link", "del", &name]);
        }
    }
    let prefix = format!("aic{id}-");
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
    let _ = ip(&["link", "del", &format!("aicb{id}")]);
    let _ = std::fs::remove_file(std::path::Path::new(POOLS).join(format!(".jobs-{id}")));
}

/// Notes pool `id`'s work folder in `<POOLS>/<id>`, whole or not at all: a pool reading it
/// half-written (empty) would take the folder for gone and remove this pool's namespaces
/// while its miners run (found that way: a miner's namespace emptied under a running pool).
fn note_pool(id: &str, root: &std::path::Path) -> std::io::Result<()> {
    let dir = std::path::Path::new(POOLS);
    std::fs::create_dir_all(dir)?;
    let root = root.to_string_lossy();
    if std::fs::read_to_string(dir.join(id)).is_ok_and(|r| r == root) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{id}.{}", std::process::id()));
    std::fs::write(&tmp, root.as_bytes())?;
    std::fs::rename(&tmp, dir.join(id))
}

/// Removes the namespaces of pools (other than `except`) whose work folder is gone. Only a
/// note naming a folder (an absolute path) that does not exist counts.
fn remove_stale_pools(except: &str) {
    for entry in std::fs::read_dir(POOLS).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().to_string();
        if id.starts_with('.') {
            continue;
        }
        let Ok(root) = std::fs::read_to_string(entry.path()) else { continue };
        if id == except || !root.starts_with('/') || std::path::Path::new(&root).exists() {
            continue;
        }
        tracing::info!(pool = %root, "removing the namespaces of a pool whose folder is gone");
        remove_pool(&id);
        let _ = std::fs::remove_file(entry.path());
    }
}

/// `dev`'s IPv4 address, in namespace `ns` or this machine's.
fn read_address(ns: Option<&str>, dev: &str) -> Option<Ipv4Addr> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(["-o", "-4", "addr", "show", "dev", dev]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let word = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    word.split('/').next()?.parse().ok()
}

/// Enters the network namespace of job slot `slot` on miner `miner` (its job's network there:
/// `jobs`), and UTS and mount namespaces of its own: named `hostname`, with the miners' names
/// resolvable at the job's own addresses (`names`): run in the worker's process between fork
/// and exec. Without a slot (the namespaces' own tests), the miner's namespace and names.
pub(super) fn enter(
    net: &Net,
    cmd: &mut std::process::Command,
    miner: u32,
    slot: Option<u8>,
    hostname: String,
) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let (ns, names) = match slot {
        Some(s) => (net.job_netns(miner, s), Arc::new(net.job_names(s)?)),
        None => (net.netns(miner), net.names.clone()),
    };
    let fd = std::fs::File::open(std::path::Path::new("/run/netns").join(ns))?;
    // SAFETY: only system calls between fork and exec (setns, unshare, sethostname, mount);
    // `fd` lives in the closure until the child execs (it is close-on-exec), and `names`
    // holds every string the mounts take, made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            use nix::sched::{CloneFlags, setns, unshare};
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            nix::unistd::sethostname(&hostname).map_err(std::io::Error::from)?;
            names.mount_in_child()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::egress::public;
    use super::*;

    #[test]
    fn a_miners_egress_reaches_public_addresses_only() {
        for ip in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "10.200.3.1",
            "172.16.0.5",
            "192.168.1.1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "fd00::1",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "64:ff9b::7f00:1",
        ] {
            assert!(!public(ip.parse().unwrap()), "{ip} is the pool's own network");
        }
        for ip in ["151.101.0.223", "2a04:4e42::223", "8.8.8.8", "203.0.113.80"] {
            assert!(public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    /// As root with `ip` (as in CI): a pool whose note is empty (being written) or names no
    /// folder keeps its namespaces; one whose noted folder is gone loses them.
    #[test]
    fn only_a_pool_whose_noted_folder_is_gone_loses_its_namespaces() {
        if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("needs root and ip: not run here");
            return;
        }
        let id = format!("f{:05x}", std::process::id() & 0xfffff);
        let ns = format!("aic{id}-1");
        let exists = || std::path::Path::new("/run/netns").join(&ns).exists();
        ip(&["netns", "add", &ns]).unwrap();
        let note = std::path::Path::new(POOLS).join(&id);
        for half_written in ["", "tmp/relative"] {
            std::fs::write(&note, half_written).unwrap();
            remove_stale_pools("none");
            assert!(exists(), "a note reading {half_written:?} removed the pool");
        }
        // The note is replaced whole: never seen empty on the way.
        let folder = tempfile::tempdir().unwrap();
        note_pool(&id, folder.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&note).unwrap(), folder.path().to_string_lossy());
        remove_stale_pools("none");
        assert!(exists(), "its folder is there");
        drop(folder);
        remove_stale_pools("none");
        assert!(!exists() && !note.exists(), "its folder is gone: so are its namespaces and note");
    }

    /// As root with `ip`: inside each miner, `getaddrinfo` (through `getent ahostsv4`) finds
    /// its own host name and the other's at their bridge addresses; this machine resolves
    /// neither and has no mount the workers made.
    #[test]
    fn each_miner_resolves_every_miners_name_and_the_host_is_untouched() {
        if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("needs root and ip: not run here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let name = |i: u32| format!("aic-test-miner-{}-{}", std::process::id(), i + 1);
        // This machine's mounts over the files the workers bind (other tests add netns mounts).
        let mounts = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(" /etc/") || l.contains("nscd"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = mounts();
        let net = Net::setup(&dir.path().join("work"), 2, name).unwrap();
        let lookup = |miner: Option<u32>, what: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", &format!("getent ahostsv4 {what} | head -n 1")]);
            if let Some(i) = miner {
                enter(&net, &mut cmd, i, None, name(i)).unwrap();
            }
            let out = cmd.output().unwrap();
            String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_string)
        };
        for i in 0..2 {
            let own = net.address(i).to_string();
            assert_eq!(lookup(Some(i), "$(hostname)"), Some(own.clone()), "miner {i}'s own name");
            assert_eq!(lookup(Some(1 - i), &name(i)), Some(own), "miner {i}'s name from the other");
            assert_eq!(lookup(None, &name(i)), None, "this machine resolves a miner's name");
        }
        assert_eq!(mounts(), before, "a worker's mounts reached this machine");
        net.teardown();
    }

    /// What a setup that failed half way leaves (a miner's namespace with nothing in it) and
    /// a veth the kernel had not removed yet: the next setup makes both miners whole, each
    /// reaching the host across its link, and teardown leaves nothing.
    #[test]
    fn a_pool_remakes_a_namespace_left_half_made_and_gets_past_a_leftover_veth() {
        use sha2::Digest;
        if !nix::unistd::geteuid().is_root() || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("needs root and ip: not run here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work");
        let id = hex::encode(&sha2::Sha256::digest(root.to_string_lossy().as_bytes())[..3]);
        ip(&["netns", "add", &format!("aic{id}-1")]).unwrap();
        ip(&["link", "add", &format!("aicv{id}1"), "type", "veth", "peer", "name", &format!("aicp{id}")]).unwrap();

        let net = Net::setup(&root, 2, |i| format!("miner-{}", i + 1)).unwrap();
        let host = std::net::TcpListener::bind((net.gateway, 0)).unwrap();
        let to = host.local_addr().unwrap();
        for i in 0..2 {
            assert_eq!(read_address(Some(&net.netns(i)), "eth0"), Some(net.address(i)), "miner {i}");
            let ns = std::fs::File::open(std::path::Path::new("/run/netns").join(net.netns(i))).unwrap();
            in_namespace(&ns, move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)))
                .unwrap_or_else(|e| panic!("miner {i} cannot reach the host: {e}"));
        }
        net.teardown();
        let left = |dir: &str, prefix: &str| {
            std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect::<Vec<_>>()
        };
        assert_eq!(left("/run/netns", &format!("aic{id}-")), Vec::<String>::new());
        assert_eq!(left("/sys/class/net", &format!("aicv{id}")), Vec::<String>::new());
        assert_eq!(left("/sys/class/net", &format!("aicb{id}")), Vec::<String>::new());
    }
}
