//! What the real network tests share: whether this host can run them, a
//! topology made of namespaces the test creates (a stand-in for the host, a
//! stand-in for the world behind its uplink), a stand-in for a guest's kernel
//! behind a slot's tap, traffic probes (ICMP echo, TCP), and inventories of
//! what exists, for "nothing left behind" checks.
//!
//! Nothing here touches the real host's network: every link, address, route
//! and rule is made inside a namespace the test created, and traffic goes
//! only to addresses inside them. The real host is only read (its link list,
//! to check that nothing of ours appeared there).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tfc_core::net::guest::{GUEST_ADDR, TAP_ADDR, TAP_NAME};
use tfc_core::net::{Ipv4Cidr, NamePrefix};
use tfc_net::netlink::{Route, RouteKind, Rtnl};
use tfc_net::{HostConfig, HostNet, Netns};

/// The world's address (TEST-NET-1), in the world namespace.
pub const WAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The host's uplink address, in the host namespace.
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const UPLINK: &str = "up0";
/// How long a probe that is expected to fail waits.
pub const NO_REPLY: Duration = Duration::from_millis(600);
/// How long a probe that is expected to succeed may take.
pub const REPLY: Duration = Duration::from_secs(3);

/// Whether this host can run the network lane. When it cannot, says so
/// loudly on stderr (this is not a pass) and returns `false`; with
/// `TFC_REQUIRE_TIER1=1` it fails the test instead.
pub fn lane(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not root (namespaces, taps and nftables need root)".to_owned());
    } else {
        if let Err(e) = File::options().read(true).write(true).open("/dev/net/tun") {
            missing.push(format!("cannot open /dev/net/tun ({e}): modprobe tun"));
        }
        for (tool, package) in [("nft", "nftables"), ("ip", "iproute2")] {
            let found = Command::new(tool).arg("-V").output().is_ok()
                || Command::new(tool).arg("--version").output().is_ok();
            if !found {
                missing.push(format!("`{tool}` is missing: install {package}"));
            }
        }
    }
    if missing.is_empty() {
        return true;
    }
    not_run(test, &missing.join("; "))
}

/// Says loudly that `test` did not run and why (this is not a pass), and
/// returns `false`; with `TFC_REQUIRE_TIER1=1` fails the test instead.
pub fn not_run(test: &str, why: &str) -> bool {
    if std::env::var("TFC_REQUIRE_TIER1").as_deref() == Ok("1") {
        panic!("the network lane is required (TFC_REQUIRE_TIER1=1) but {test} cannot run: {why}");
    }
    // Straight to the process's stderr: the harness captures `eprintln!` of
    // passing tests, and this must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! {test}: network lane NOT RUN (this is not a pass): {why}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// A prefix no other test (in this or another process) uses: `t` and five
/// base-36 characters from the pid, a counter and the clock.
pub fn unique_prefix() -> NamePrefix {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = (std::process::id() as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(n.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(nanos);
    let mut s = String::from("t");
    for _ in 0..5 {
        let d = (x % 36) as u32;
        x /= 36;
        s.push(std::char::from_digit(d, 36).unwrap());
    }
    NamePrefix::new(s).unwrap()
}

/// Runs `ip` with `args` and returns its stdout; panics if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `nft` with `args` in namespace `ns` (through `ip netns exec`).
pub fn nft_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .expect("run ip netns exec nft");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `ip -j` output of `args` in namespace `ns`, parsed.
pub fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-n", ns, "-j"];
    all.extend_from_slice(args);
    serde_json::from_str(&ip(&all)).unwrap()
}

/// The test's world: a namespace playing the host (with IPv4 forwarding on),
/// one playing the world behind its uplink, and the host side of tfc on them.
pub struct TestNet {
    pub prefix: NamePrefix,
    pub host_ns: Netns,
    pub wan_ns: Netns,
    pub host: Arc<HostNet>,
    guests: AtomicU32,
}

impl TestNet {
    pub fn new() -> Self {
        Self::with_prefix(unique_prefix())
    }

    /// The namespaces for `prefix`; a second `TestNet` of the same prefix
    /// (a restarted "daemon") uses [`TestNet::reopen_host`] instead.
    pub fn with_prefix(prefix: NamePrefix) -> Self {
        let host_ns = Netns::create(&format!("{prefix}-host")).expect("create the host namespace");
        let wan_ns = Netns::create(&format!("{prefix}-wan")).expect("create the world namespace");
        host_ns
            .run(|| {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
                let mut rtnl = Rtnl::open().unwrap();
                up(&mut rtnl, "lo");
                rtnl.create_veth(UPLINK, "wan0", wan_ns.as_fd()).unwrap();
                let index = rtnl.link_index(UPLINK).unwrap().unwrap();
                rtnl.add_address(index, UPLINK_ADDR, 24).unwrap();
                rtnl.set_up(index, UPLINK).unwrap();
            })
            .unwrap();
        wan_ns
            .run(|| {
                let mut rtnl = Rtnl::open().unwrap();
                up(&mut rtnl, "lo");
                let index = rtnl.link_index("wan0").unwrap().unwrap();
                rtnl.add_address(index, WAN_ADDR, 24).unwrap();
                rtnl.set_up(index, "wan0").unwrap();
                // The world knows the way to the pool (as a LAN router
                // might): unsolicited traffic to VMs must still be refused.
                rtnl.add_route(&Route {
                    table: 254,
                    dst: "10.200.0.0/16".parse().unwrap(),
                    kind: RouteKind::Forward {
                        oif: index,
                        gateway: Some(UPLINK_ADDR),
                    },
                })
                .unwrap();
            })
            .unwrap();
        let host = Arc::new(Self::reopen_host(&prefix));
        Self {
            prefix,
            host_ns,
            wan_ns,
            host,
            guests: AtomicU32::new(0),
        }
    }

    /// A fresh host side on the namespaces of `prefix` (as a restarted
    /// daemon would open it).
    pub fn reopen_host(prefix: &NamePrefix) -> HostNet {
        let mut config = HostConfig::new("10.200.0.0/16".parse().unwrap());
        config.prefix = prefix.clone();
        config.uplink = Some(UPLINK.to_owned());
        config.host_netns = Some(format!("{prefix}-host"));
        HostNet::new(config).expect("open the host side")
    }

    pub fn host_ns_name(&self) -> String {
        format!("{}-host", self.prefix)
    }

    /// A guest stand-in on the tap of namespace `vm_ns`.
    pub fn guest(&self, vm_ns: &Netns) -> Guest {
        let n = self.guests.fetch_add(1, Ordering::Relaxed);
        Guest::attach(&format!("{}-g{n}", self.prefix), vm_ns)
    }

    /// What exists of ours: namespaces of the prefix, the host stand-in's
    /// links and nftables tables, and links on the real host whose names
    /// could be ours.
    pub fn inventory(&self) -> Inventory {
        let namespaces: BTreeSet<String> = ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_owned)
            .collect();
        let host = self.host_ns_name();
        let host_links: BTreeSet<String> = ip_json(&host, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect();
        let host_tables: BTreeSet<String> = nft_in(&host, &["list", "tables"])
            .unwrap()
            .lines()
            .map(|l| l.trim().to_owned())
            .collect();
        let prefix = self.prefix.as_str().to_owned();
        let real_host_links: BTreeSet<String> =
            serde_json::from_str::<serde_json::Value>(&ip(&["-j", "link", "show"]))
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["ifname"].as_str().unwrap().to_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
        Inventory {
            namespaces,
            host_links,
            host_tables,
            real_host_links,
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Whatever a failed test left: remove everything of the prefix
        // (this is what a restarted daemon's reconciliation does), then the
        // test's own namespaces.
        let store = tfc_store::MemoryStore::new();
        if let Err(e) = tfc_net::reconcile(&self.host, &store, &|_| false) {
            eprintln!("cleanup: {}", tfc_core::error_chain(&e));
        }
        let _ = self.host.uninstall();
        for name in Netns::list().unwrap_or_default() {
            if name.starts_with(&format!("{}-", self.prefix)) {
                let _ = Netns::delete(&name);
            }
        }
    }
}

fn up(rtnl: &mut Rtnl, name: &str) {
    let index = rtnl.link_index(name).unwrap().unwrap();
    rtnl.set_up(index, name).unwrap();
}

/// What [`TestNet::inventory`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub namespaces: BTreeSet<String>,
    pub host_links: BTreeSet<String>,
    pub host_tables: BTreeSet<String>,
    pub real_host_links: BTreeSet<String>,
}

// Packet sockets and the virtio-net header (linux/if_packet.h).
const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_OUTGOING: u8 = 4;

/// A stand-in for a guest's kernel behind a slot's tap: a namespace whose
/// `eth0` has the guest address (172.16.0.2/30, gateway 172.16.0.1), like a
/// booted guest's. Its frames reach the tap through a small pump: the tap is
/// opened as Firecracker opens it (with virtio-net headers), and the other
/// end is a packet socket on `eth0`'s veth peer, also with virtio-net
/// headers, so frames and their checksum-offload state pass unchanged.
/// It stands in for the guest's network stack only; no VMM is involved.
pub struct Guest {
    pub ns: Netns,
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
}

impl Guest {
    fn attach(name: &str, vm_ns: &Netns) -> Guest {
        let ns = Netns::create(name).expect("create the guest namespace");
        let packet = ns
            .run(|| {
                for key in ["all", "default"] {
                    let _ =
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6"), "1");
                }
                let mut rtnl = Rtnl::open().unwrap();
                up(&mut rtnl, "lo");
                let own = File::open("/proc/thread-self/ns/net").unwrap();
                rtnl.create_veth("eth0", "pump0", own.as_fd()).unwrap();
                let eth0 = rtnl.link_index("eth0").unwrap().unwrap();
                rtnl.add_address(eth0, GUEST_ADDR, 30).unwrap();
                rtnl.set_up(eth0, "eth0").unwrap();
                let pump0 = rtnl.link_index("pump0").unwrap().unwrap();
                rtnl.set_up(pump0, "pump0").unwrap();
                rtnl.add_route(&Route {
                    table: 254,
                    dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
                    kind: RouteKind::Forward {
                        oif: eth0,
                        gateway: Some(TAP_ADDR),
                    },
                })
                .unwrap();
                packet_socket(pump0)
            })
            .unwrap();
        let tap = vm_ns
            .run(|| tfc_net::tun::open_tap(TAP_NAME, tfc_net::tun::TAP_FLAGS))
            .unwrap()
            .expect("attach to the slot's tap");
        let stop = Arc::new(AtomicBool::new(false));
        let pump = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || pump(tap, packet, &stop))
        };
        Guest {
            ns,
            stop,
            pump: Some(pump),
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(pump) = self.pump.take() {
            let _ = pump.join();
        }
        let _ = Netns::delete(self.ns.name());
    }
}

fn packet_socket(ifindex: u32) -> OwnedFd {
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol as libc::c_int) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call; its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_VNET_HDR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_VNET_HDR: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: all-zero is a valid sockaddr_ll; fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll; its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Moves frames (each with its virtio-net header) between the tap and the
/// packet socket until `stop`.
fn pump(tap: File, packet: OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; 70_000];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: packet.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: `buf` is valid for writes of its length.
            let len = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len > 0 {
                // SAFETY: the first `len` bytes of `buf` were just written.
                unsafe { libc::send(packet.as_raw_fd(), buf.as_ptr().cast(), len as usize, 0) };
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // SAFETY: all-zero is a valid sockaddr_ll to receive into.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid for writes of the sizes passed.
            let len = unsafe {
                libc::recvfrom(
                    packet.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            // Frames pump0 itself sends (to the guest) come back as outgoing.
            if len > 0 && from.sll_pkttype != PACKET_OUTGOING {
                // SAFETY: the first `len` bytes of `buf` were just written.
                unsafe { libc::write(tap.as_raw_fd(), buf.as_ptr().cast(), len as usize) };
            }
        }
    }
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP echo requests from namespace `ns` to `dst` until one is
/// answered by `dst` or `wait` passes. `Err` says what came back instead.
pub fn ping(ns: &Netns, dst: Ipv4Addr, wait: Duration) -> Result<Duration, String> {
    static ID: AtomicU32 = AtomicU32::new(1);
    let id = (ID.fetch_add(1, Ordering::Relaxed) as u16) ^ (std::process::id() as u16);
    ns.run(|| {
        // SAFETY: plain socket(2); checked.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: `timeout` outlives the call; its size is passed with it.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from(dst).to_be();
        let start = Instant::now();
        let mut seq: u16 = 0;
        let mut last_error = "no reply".to_owned();
        let mut buf = [0u8; 1500];
        while start.elapsed() < wait {
            seq += 1;
            let mut echo = vec![8u8, 0, 0, 0];
            echo.extend_from_slice(&id.to_be_bytes());
            echo.extend_from_slice(&seq.to_be_bytes());
            echo.extend_from_slice(b"tfc-net test probe");
            let sum = checksum(&echo);
            echo[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: `echo` and `to` are valid for the sizes passed.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    echo.as_ptr().cast(),
                    echo.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            let sent = Instant::now();
            while sent.elapsed() < Duration::from_millis(200) {
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                let packet = &buf[..n as usize];
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
                let icmp = &packet[ihl..];
                match icmp[0] {
                    0 if from == dst && icmp[4..6] == id.to_be_bytes() => {
                        return Ok(start.elapsed());
                    }
                    // Errors quoting one of our requests.
                    3 | 11 if icmp.len() >= 8 + 20 + 8 => {
                        let quoted = &icmp[8 + usize::from(icmp[8] & 0x0f) * 4..];
                        if quoted.len() >= 6 && quoted[4..6] == id.to_be_bytes() {
                            last_error =
                                format!("ICMP type {} code {} from {from}", icmp[0], icmp[1]);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(last_error)
    })
    .unwrap()
}

/// A TCP server in a namespace that answers each connection with one line,
/// `peer <address>`, naming where the connection came from.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> Server {
        let listener = ns
            .run(|| TcpListener::bind(SocketAddr::from((addr, port))))
            .unwrap()
            .unwrap_or_else(|e| panic!("listen on {addr}:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let _ = writeln!(stream, "peer {}", peer.ip());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from namespace `ns` to `addr:port` and returns the address the
/// server saw the connection come from.
pub fn connect(ns: &Netns, addr: Ipv4Addr, port: u16, wait: Duration) -> Result<Ipv4Addr, String> {
    ns.run(|| {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::from((addr, port)), wait)
            .map_err(|e| format!("connect {addr}:{port}: {e}"))?;
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut line = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut line)
            .map_err(|e| format!("read from {addr}:{port}: {e}"))?;
        line.trim()
            .strip_prefix("peer ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("unexpected answer {line:?}"))
    })
    .unwrap()
}

/// Reads `reader` to its end, for a child's output.
pub fn read_all(mut reader: impl Read) -> String {
    let mut s = String::new();
    let _ = reader.read_to_string(&mut s);
    s
}

/// Moves the calling thread, and the threads and processes it starts from
/// then on, into a network namespace of its own with only loopback, up: a
/// test's TCP to 127.0.0.1 then stays inside a namespace it made, which goes
/// when the last of them ends. Root only: otherwise says NOT RUN (this is
/// not a pass) and returns `false`, as [`not_run`] does.
pub fn private_netns(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return not_run(test, "not root (a network namespace of its own needs root)");
    }
    // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's
    // network namespace; it touches no memory of ours.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    // A child started from this thread is in its namespace.
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip runs");
    assert!(up.success(), "ip link set lo up");
    true
}
