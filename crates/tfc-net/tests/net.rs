//! Real per-VM networking on this host, as root: namespaces, taps, veth
//! pairs, routing and nftables, with traffic between namespaces the tests
//! create (a stand-in host, a stand-in world, stand-in guest kernels; see
//! `common`). `#[ignore]`d: they run in the tier-1 pass
//! (`cargo test -p tfc-net -- --ignored`); without root, `/dev/net/tun`,
//! `nft` or `ip` they say loudly that they did not run (and fail under
//! `TFC_REQUIRE_TIER1=1`).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    connect, ip, ip_json, nft_in, ping, Server, TestNet, NO_REPLY, REPLY, UPLINK_ADDR, WAN_ADDR,
};
use tfc_core::net::guest::GUEST_ADDR;
use tfc_core::net::{EgressRule, NetConfig, NetMode, NetObject, PortForward, Protocol};
use tfc_core::VmId;
use tfc_net::{Netns, NetnsError, SetupError, Slot, SlotPool};
use tfc_store::{MemoryStore, SqliteStore, Store, STATE_DB_FILE};

fn vm(id: &str) -> VmId {
    VmId::new(id).unwrap()
}

fn mode(mode: NetMode) -> NetConfig {
    NetConfig {
        mode,
        ..NetConfig::default()
    }
}

fn ok(result: Result<Duration, String>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, String>, what: &str) {
    assert!(result.is_err(), "{what}: got through ({result:?})");
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn namespaces_are_created_entered_and_deleted() {
    if !common::lane("namespaces_are_created_entered_and_deleted") {
        return;
    }
    let name = format!("{}-ns", common::unique_prefix());
    let ns = Netns::create(&name).unwrap();
    assert!(ip(&["netns", "list"]).lines().any(|l| l.starts_with(&name)));
    assert!(matches!(
        Netns::create(&name),
        Err(NetnsError::Exists { .. })
    ));

    // Inside, the thread is in the namespace the mount point holds; outside
    // it never was.
    let inode = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    };
    let mounted = inode(&format!("/run/netns/{name}"));
    let inside = ns.run(|| inode("/proc/thread-self/ns/net")).unwrap();
    assert_eq!(inside, mounted);
    assert_ne!(inode("/proc/thread-self/ns/net"), mounted);
    // `ip netns exec` sees it too, with only a loopback link.
    let links = ip_json(&name, &["link", "show"]);
    assert_eq!(links.as_array().unwrap().len(), 1, "{links}");

    drop(ns);
    assert!(Netns::delete(&name).unwrap());
    assert!(!ip(&["netns", "list"]).lines().any(|l| l.starts_with(&name)));
    assert!(
        !Netns::delete(&name).unwrap(),
        "a second delete finds nothing"
    );
    assert!(matches!(
        Netns::open(&name),
        Err(NetnsError::NotFound { .. })
    ));
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn a_slot_has_a_firecracker_tap_and_a_connected_veth() {
    if !common::lane("a_slot_has_a_firecracker_tap_and_a_connected_veth") {
        return;
    }
    let t = TestNet::new();
    let before = t.inventory();
    let slot = Slot::create(&t.host).unwrap();
    let name = slot.name().to_owned();
    assert!(t.prefix.slot_of(&name).is_some(), "{name} is a slot name");

    // The tap, as `ip -d` reports it: Firecracker's flags, persistent, up,
    // with the guest's gateway address.
    let tap = &ip_json(&name, &["-d", "link", "show", "tap0"])[0];
    let info = &tap["linkinfo"];
    assert_eq!(info["info_kind"], "tun", "{tap}");
    assert_eq!(info["info_data"]["type"], "tap", "{tap}");
    assert_eq!(info["info_data"]["pi"], false, "{tap}");
    assert_eq!(info["info_data"]["vnet_hdr"], true, "{tap}");
    assert_eq!(info["info_data"]["multi_queue"], false, "{tap}");
    assert_eq!(info["info_data"]["persist"], true, "{tap}");
    // The same hardware address in every slot: clones keep their gateway.
    assert_eq!(tap["address"], "06:00:ac:10:00:01", "{tap}");
    assert!(
        tap["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{tap}"
    );
    let addrs = &ip_json(&name, &["addr", "show", "dev", "tap0"])[0]["addr_info"];
    assert_eq!(addrs[0]["local"], "172.16.0.1");
    assert_eq!(addrs[0]["prefixlen"], 30);

    // The veth: one end in the slot's namespace, one in the host's, both up.
    let inner = &ip_json(&name, &["-d", "link", "show", "veth0"])[0];
    assert_eq!(inner["linkinfo"]["info_kind"], "veth", "{inner}");
    let outer = &ip_json(&t.host_ns_name(), &["-d", "link", "show", &name])[0];
    assert_eq!(outer["linkinfo"]["info_kind"], "veth", "{outer}");
    for link in [inner, outer] {
        assert!(
            link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{link}"
        );
    }
    // Nothing of ours on the real host.
    assert_eq!(t.inventory().real_host_links, BTreeSet::new());

    // The ruleset, the guest's routing table and its rule.
    let rules = nft_in(&name, &["list", "table", "ip", "tfc"]).unwrap();
    assert!(rules.contains("dnat to 172.16.0.2"), "{rules}");
    let table = ip(&["-n", &name, "route", "show", "table", "100"]);
    assert!(table.contains("prohibit 10.200.0.0/16"), "{table}");
    let rule = ip(&["-n", &name, "rule", "show"]);
    assert!(rule.contains("iif tap0 lookup 100"), "{rule}");
    // No pool address yet: that is the VM's part.
    assert!(ip(&["-n", &name, "-4", "addr", "show", "dev", "veth0"])
        .trim()
        .is_empty());

    slot.destroy(&t.host).unwrap();
    assert_eq!(t.inventory(), before);
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn host_and_vm_reach_each_other_through_the_veth() {
    if !common::lane("host_and_vm_reach_each_other_through_the_veth") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 0);
    let net = pool
        .acquire(&vm("vm-a"), &mode(NetMode::Isolated), &store)
        .unwrap();
    assert_eq!(net.vm_address().to_string(), "10.200.0.2");
    assert_eq!(net.host_address().to_string(), "10.200.0.1");
    let guest = t.guest(net.netns());

    // Host side and namespace side of the veth.
    ok(
        ping(net.netns(), net.host_address(), REPLY),
        "namespace -> host side",
    );
    // The VM's pool address is the guest's: the namespace translates.
    ok(
        ping(&t.host_ns, net.vm_address(), REPLY),
        "host -> VM address",
    );
    ok(
        ping(&guest.ns, net.host_address(), REPLY),
        "guest -> host side",
    );
    let _guest_server = Server::start(&guest.ns, GUEST_ADDR, 80);
    let seen = connect(&t.host_ns, net.vm_address(), 80, REPLY).unwrap();
    assert_eq!(seen, net.host_address(), "the guest sees the host side");
    let _host_server = Server::start(&t.host_ns, net.host_address(), 9000);
    let seen = connect(&guest.ns, net.host_address(), 9000, REPLY).unwrap();
    assert_eq!(
        seen,
        net.vm_address(),
        "the host sees the VM's pool address"
    );

    // Isolated: nothing beyond the host side, and the world cannot get in.
    let _world = Server::start(&t.wan_ns, WAN_ADDR, 80);
    refused(
        ping(&guest.ns, WAN_ADDR, NO_REPLY),
        "isolated guest -> world",
    );
    refused(
        connect(&guest.ns, WAN_ADDR, 80, NO_REPLY),
        "isolated guest -> world (tcp)",
    );
    refused(
        connect(&t.wan_ns, net.vm_address(), 80, NO_REPLY),
        "world -> VM address",
    );
    refused(
        ping(&t.wan_ns, net.vm_address(), NO_REPLY),
        "world -> VM address (icmp)",
    );

    drop(guest);
    net.teardown(&t.host, &store).unwrap();
    assert_eq!(store.list_leases().unwrap(), vec![]);
    assert_eq!(store.list_net_objects().unwrap(), vec![]);
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn nat_mode_reaches_the_world_and_its_ruleset_is_removed() {
    if !common::lane("nat_mode_reaches_the_world_and_its_ruleset_is_removed") {
        return;
    }
    let t = TestNet::new();
    let host_ns = t.host_ns_name();
    // Someone else's table in the host namespace: ours must leave it alone.
    nft_in(&host_ns, &["add", "table", "ip", "other"]).unwrap();
    nft_in(&host_ns, &["add", "chain", "ip", "other", "c"]).unwrap();
    let before = nft_in(&host_ns, &["list", "tables"]).unwrap();

    t.host.install().unwrap();
    let ours = nft_in(&host_ns, &["list", "table", "ip", t.prefix.as_str()]).unwrap();
    assert!(
        ours.contains("oifname \"up0\" ip saddr 10.200.0.0/16 masquerade"),
        "{ours}"
    );
    t.host.install().unwrap(); // replacing is harmless

    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 1);
    pool.fill().unwrap();
    let net = pool
        .acquire(&vm("vm-nat"), &mode(NetMode::Nat), &store)
        .unwrap();
    let guest = t.guest(net.netns());
    let _world = Server::start(&t.wan_ns, WAN_ADDR, 80);
    let seen = connect(&guest.ns, WAN_ADDR, 80, REPLY).unwrap();
    assert_eq!(seen, UPLINK_ADDR, "egress is masqueraded on the uplink");
    ok(ping(&guest.ns, WAN_ADDR, REPLY), "nat guest -> world");
    // Unsolicited traffic from the world still does not get in.
    refused(
        connect(&t.wan_ns, net.vm_address(), 80, NO_REPLY),
        "world -> VM address",
    );

    drop(guest);
    net.teardown(&t.host, &store).unwrap();
    t.host.uninstall().unwrap();
    t.host.uninstall().unwrap(); // and so is removing twice
    assert_eq!(nft_in(&host_ns, &["list", "tables"]).unwrap(), before);
    nft_in(&host_ns, &["list", "chain", "ip", "other", "c"]).unwrap();
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn two_vms_cannot_reach_each_other() {
    if !common::lane("two_vms_cannot_reach_each_other") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 1);
    pool.fill().unwrap();
    // One from the pool, one made on demand; both nat, the most open mode.
    let a = pool
        .acquire(&vm("vm-a"), &mode(NetMode::Nat), &store)
        .unwrap();
    let b = pool
        .acquire(&vm("vm-b"), &mode(NetMode::Nat), &store)
        .unwrap();
    assert_ne!(a.vm_address(), b.vm_address());
    let (ga, gb) = (t.guest(a.netns()), t.guest(b.netns()));
    let _sa = Server::start(&ga.ns, GUEST_ADDR, 80);
    let _sb = Server::start(&gb.ns, GUEST_ADDR, 80);

    // Each reaches the host, and the host reaches each.
    ok(ping(&ga.ns, a.host_address(), REPLY), "a -> host");
    ok(ping(&gb.ns, b.host_address(), REPLY), "b -> host");
    assert_eq!(
        connect(&t.host_ns, a.vm_address(), 80, REPLY),
        Ok(a.host_address())
    );
    assert_eq!(
        connect(&t.host_ns, b.vm_address(), 80, REPLY),
        Ok(b.host_address())
    );
    // Neither reaches the other: not its VM address, not its host side.
    for (from, to) in [(&ga, &b), (&gb, &a)] {
        refused(
            ping(&from.ns, to.vm_address(), NO_REPLY),
            "guest -> other VM",
        );
        refused(
            connect(&from.ns, to.vm_address(), 80, NO_REPLY),
            "guest -> other VM (tcp)",
        );
        refused(
            ping(&from.ns, to.host_address(), NO_REPLY),
            "guest -> other VM's host side",
        );
    }
    // Nor does a VM namespace itself.
    refused(
        ping(a.netns(), b.vm_address(), NO_REPLY),
        "namespace a -> b",
    );

    drop((ga, gb));
    a.teardown(&t.host, &store).unwrap();
    b.teardown(&t.host, &store).unwrap();
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn the_egress_allowlist_admits_only_what_it_lists() {
    if !common::lane("the_egress_allowlist_admits_only_what_it_lists") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 0);
    let config = NetConfig {
        mode: NetMode::Nat,
        egress_allow: Some(vec![EgressRule {
            to: WAN_ADDR.to_string().parse().unwrap(),
            protocol: Some(Protocol::Tcp),
            ports: vec!["80".parse().unwrap()],
        }]),
        port_forwards: vec![],
    };
    let net = pool.acquire(&vm("vm-allow"), &config, &store).unwrap();
    let guest = t.guest(net.netns());
    let _s80 = Server::start(&t.wan_ns, WAN_ADDR, 80);
    let _s81 = Server::start(&t.wan_ns, WAN_ADDR, 81);
    assert_eq!(connect(&guest.ns, WAN_ADDR, 80, REPLY), Ok(UPLINK_ADDR));
    refused(
        connect(&guest.ns, WAN_ADDR, 81, NO_REPLY),
        "a port not listed",
    );
    refused(ping(&guest.ns, WAN_ADDR, NO_REPLY), "a protocol not listed");
    ok(
        ping(&guest.ns, net.host_address(), REPLY),
        "the host side, always",
    );
    drop(guest);
    net.teardown(&t.host, &store).unwrap();
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn port_forwards_reach_the_vm_and_hold_their_host_port() {
    if !common::lane("port_forwards_reach_the_vm_and_hold_their_host_port") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let empty = t.inventory();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 0);
    let config = NetConfig {
        mode: NetMode::Isolated,
        egress_allow: None,
        port_forwards: vec![PortForward {
            host_port: 8080,
            vm_port: 80,
            protocol: Protocol::Tcp,
        }],
    };
    let net = pool.acquire(&vm("vm-fwd"), &config, &store).unwrap();
    assert!(net.objects().contains(&NetObject::NftTable {
        namespace: None,
        name: net.slot_name().to_owned()
    }));
    let guest = t.guest(net.netns());
    let _server = Server::start(&guest.ns, GUEST_ADDR, 80);
    // From the world through the uplink, and from the host itself; the VM
    // (isolated) answers through its host side, whom it sees connecting.
    assert_eq!(
        connect(&t.wan_ns, UPLINK_ADDR, 8080, REPLY),
        Ok(net.host_address())
    );
    assert_eq!(
        connect(&t.host_ns, UPLINK_ADDR, 8080, REPLY),
        Ok(net.host_address())
    );
    refused(
        connect(&t.wan_ns, UPLINK_ADDR, 8081, NO_REPLY),
        "a port not forwarded",
    );

    // A second VM may not take the same host port; it leaves nothing.
    let before = t.inventory();
    let err = pool.acquire(&vm("vm-twin"), &config, &store).unwrap_err();
    assert!(matches!(err, SetupError::PortTaken { .. }), "{err:?}");
    assert_eq!(t.inventory(), before);
    assert_eq!(store.list_leases().unwrap().len(), 1);

    drop(guest);
    net.teardown(&t.host, &store).unwrap();
    refused(
        connect(&t.wan_ns, UPLINK_ADDR, 8080, NO_REPLY),
        "a forward torn down",
    );
    let twin = pool.acquire(&vm("vm-twin"), &config, &store).unwrap();

    // A network whose handle is lost (a daemon task that failed half-way)
    // is torn down from its record, and gives back its host port and its
    // VM's claim.
    drop(twin);
    assert!(matches!(
        pool.acquire(&vm("vm-twin"), &mode(NetMode::Isolated), &store),
        Err(SetupError::AlreadyAttached { .. })
    ));
    tfc_net::teardown_recorded(&t.host, &store, &vm("vm-twin")).unwrap();
    assert_eq!(t.inventory(), empty);
    assert_eq!(store.list_leases().unwrap(), vec![]);
    let third = pool.acquire(&vm("vm-third"), &config, &store).unwrap();
    third.teardown(&t.host, &store).unwrap();
    // Harmless again: there is nothing left to tear down.
    tfc_net::teardown_recorded(&t.host, &store, &vm("vm-twin")).unwrap();
    assert_eq!(t.inventory(), empty);
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn teardown_leaves_nothing_behind() {
    if !common::lane("teardown_leaves_nothing_behind") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let before = t.inventory();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(STATE_DB_FILE)).unwrap();
    let pool = SlotPool::new(t.host.clone(), 2);
    assert_eq!(pool.fill().unwrap(), 2);
    let full = NetConfig {
        mode: NetMode::Nat,
        egress_allow: Some(vec![]),
        port_forwards: vec![PortForward {
            host_port: 2222,
            vm_port: 22,
            protocol: Protocol::Tcp,
        }],
    };
    let nets = vec![
        pool.acquire(&vm("vm-1"), &full, &store).unwrap(),
        pool.acquire(&vm("vm-2"), &mode(NetMode::Isolated), &store)
            .unwrap(),
        pool.acquire(&vm("vm-3"), &mode(NetMode::Nat), &store)
            .unwrap(), // on demand
    ];
    assert_eq!(store.list_leases().unwrap().len(), 3);
    assert_eq!(store.list_net_objects().unwrap().len(), 3);
    assert_ne!(t.inventory(), before);
    for net in nets {
        net.teardown(&t.host, &store).unwrap();
    }
    assert_eq!(pool.len(), 0);
    assert_eq!(t.inventory(), before);
    assert_eq!(store.list_leases().unwrap(), vec![]);
    assert_eq!(store.list_net_objects().unwrap(), vec![]);

    // Tearing down what is already gone, or was never made, is harmless:
    // a record of a finished teardown and one of objects that never existed.
    let ghost = t.prefix.slot_name(0xfff0);
    for (id, objects) in [
        (
            "vm-old",
            vec![
                NetObject::Namespace {
                    name: ghost.clone(),
                },
                NetObject::Veth {
                    name: ghost.clone(),
                },
            ],
        ),
        (
            "vm-never",
            vec![
                NetObject::Namespace {
                    name: ghost.clone(),
                },
                NetObject::NftTable {
                    namespace: Some(ghost.clone()),
                    name: "tfc".into(),
                },
                NetObject::Tap {
                    namespace: ghost.clone(),
                    name: "tap0".into(),
                },
                NetObject::NftTable {
                    namespace: None,
                    name: ghost.clone(),
                },
            ],
        ),
    ] {
        store.put_net_objects(&vm(id), &objects).unwrap();
    }
    let report = tfc_net::reconcile(&t.host, &store, &|_| false).unwrap();
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(report.torn_down.len(), 2);
    assert_eq!(t.inventory(), before);
    pool.drain().unwrap();
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn the_pool_hands_out_ready_slots_first() {
    if !common::lane("the_pool_hands_out_ready_slots_first") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let before = t.inventory();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 2);
    assert_eq!(pool.fill().unwrap(), 2);
    assert_eq!(pool.fill().unwrap(), 0, "already full");
    let ready: BTreeSet<String> = Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| t.prefix.slot_of(n).is_some())
        .collect();
    assert_eq!(ready.len(), 2);
    let first = pool
        .acquire(&vm("vm-1"), &mode(NetMode::Isolated), &store)
        .unwrap();
    let second = pool
        .acquire(&vm("vm-2"), &mode(NetMode::Isolated), &store)
        .unwrap();
    assert!(ready.contains(first.slot_name()) && ready.contains(second.slot_name()));
    assert!(pool.is_empty());
    let third = pool
        .acquire(&vm("vm-3"), &mode(NetMode::Isolated), &store)
        .unwrap();
    assert!(!ready.contains(third.slot_name()), "made on demand");
    // A VM has one network at a time, and mode none has none; both are
    // refused before anything is made.
    let inventory = t.inventory();
    assert!(matches!(
        pool.acquire(&vm("vm-1"), &mode(NetMode::Nat), &store),
        Err(SetupError::AlreadyAttached { .. })
    ));
    assert!(matches!(
        pool.acquire(&vm("vm-4"), &mode(NetMode::None), &store),
        Err(SetupError::NoNetwork)
    ));
    assert_eq!(t.inventory(), inventory);
    assert_eq!(store.list_leases().unwrap().len(), 3);
    for net in [first, second, third] {
        net.teardown(&t.host, &store).unwrap();
    }
    pool.drain().unwrap();
    assert_eq!(t.inventory(), before);
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn reconciliation_spares_live_vms_and_removes_the_rest() {
    if !common::lane("reconciliation_spares_live_vms_and_removes_the_rest") {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let before = t.inventory();
    let store = MemoryStore::new();
    let pool = SlotPool::new(t.host.clone(), 1);
    let live = pool
        .acquire(&vm("vm-live"), &mode(NetMode::Isolated), &store)
        .unwrap();
    let dead = pool
        .acquire(&vm("vm-dead"), &mode(NetMode::Isolated), &store)
        .unwrap();
    pool.fill().unwrap(); // a ready slot no record owns
    let guest = t.guest(live.netns());

    // A restarted daemon: a fresh host side, only vm-live still running.
    let host = common::TestNet::reopen_host(&t.prefix);
    let report = tfc_net::reconcile(&host, &store, &|id| id.as_str() == "vm-live").unwrap();
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(report.torn_down, vec![vm("vm-dead")]);
    assert_eq!(report.released.len(), 1);
    assert_eq!(
        report.unowned.len(),
        2,
        "the ready slot's namespace and veth: {:?}",
        report.unowned
    );
    ok(
        ping(&t.host_ns, live.vm_address(), REPLY),
        "the live VM still answers",
    );
    assert_eq!(store.list_leases().unwrap().len(), 1);

    // The restarted daemon takes back the live VM's claims: no second
    // network for it; later it tears the network down from its record.
    host.adopt(&vm("vm-live"), &[]).unwrap();
    let restarted = SlotPool::new(std::sync::Arc::new(host), 0);
    assert!(matches!(
        restarted.acquire(&vm("vm-live"), &mode(NetMode::Isolated), &store),
        Err(SetupError::AlreadyAttached { .. })
    ));
    drop(guest);
    tfc_net::teardown_recorded(restarted.host(), &store, &vm("vm-live")).unwrap();
    assert_eq!(store.list_leases().unwrap(), vec![]);
    assert_eq!(store.list_net_objects().unwrap(), vec![]);
    // The old daemon's handles name only removed objects now.
    drop((live, dead));
    assert_eq!(pool.len(), 1);
    assert_eq!(t.inventory(), before);
}

/// The child side of the crash tests: sets up networks with a SQLite store
/// until `TFC_CRASH_AT` kills it, or forever (printing `cycle N`) until the
/// parent does.
fn crash_child(store: &Path) -> ! {
    let prefix = tfc_core::net::NamePrefix::new(std::env::var(CHILD_PREFIX).unwrap()).unwrap();
    let host = std::sync::Arc::new(TestNet::reopen_host(&prefix));
    let store = SqliteStore::open(store).unwrap();
    let config = NetConfig {
        mode: NetMode::Nat,
        egress_allow: Some(vec![]),
        port_forwards: vec![PortForward {
            host_port: 2222,
            vm_port: 22,
            protocol: Protocol::Tcp,
        }],
    };
    let ready = SlotPool::new(host.clone(), 1);
    let on_demand = SlotPool::new(host.clone(), 0);
    if std::env::var(CHILD_FILL_FIRST).is_ok() {
        ready.fill().unwrap();
    }
    for cycle in 0.. {
        let net = on_demand
            .acquire(&vm(&format!("vm-{cycle}")), &config, &store)
            .unwrap();
        net.teardown(&host, &store).unwrap();
        println!("cycle {cycle}");
        ready.fill().unwrap();
    }
    unreachable!()
}

const CHILD_STORE: &str = "TFC_NET_TEST_CHILD_STORE";
const CHILD_PREFIX: &str = "TFC_NET_TEST_CHILD_PREFIX";
const CHILD_FILL_FIRST: &str = "TFC_NET_TEST_CHILD_FILL_FIRST";

fn spawn_child(
    test: &str,
    t: &TestNet,
    store: &Path,
    crash_at: Option<&str>,
    fill_first: bool,
) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, store)
        .env(CHILD_PREFIX, t.prefix.as_str())
        .env_remove("TFC_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(point) = crash_at {
        command.env("TFC_CRASH_AT", point);
    }
    if fill_first {
        command.env(CHILD_FILL_FIRST, "1");
    }
    command.spawn().unwrap()
}

/// After the crash: a restarted daemon reconciles, and nothing is left.
fn assert_reconciled(t: &TestNet, store_path: &Path, before: &common::Inventory, what: &str) {
    let store = SqliteStore::open(store_path).unwrap();
    let host = TestNet::reopen_host(&t.prefix);
    let report = tfc_net::reconcile(&host, &store, &|_| false).unwrap();
    assert_eq!(report.failures, Vec::<String>::new(), "{what}");
    assert_eq!(&t.inventory(), before, "{what}: {report:?}");
    assert_eq!(store.list_leases().unwrap(), vec![], "{what}");
    assert_eq!(store.list_net_objects().unwrap(), vec![], "{what}");
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn a_crash_at_any_step_is_cleaned_up_by_reconciliation() {
    const TEST: &str = "a_crash_at_any_step_is_cleaned_up_by_reconciliation";
    if let Some(store) = std::env::var_os(CHILD_STORE) {
        crash_child(Path::new(&store));
    }
    if !common::lane(TEST) {
        return;
    }
    if !cfg!(debug_assertions) {
        common::not_run(TEST, "crash points exist in debug builds only");
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let before = t.inventory();
    // (point, whether a ready slot is made first): the net.slot points are
    // reached by the pool's unrecorded slot or by a VM's recorded one.
    let cases = [
        ("net.slot.after_namespace", false),
        ("net.slot.after_ruleset", false),
        ("net.slot.after_tap", false),
        ("net.slot.after_veth", false),
        ("net.attach.after_record", false),
        ("net.attach.after_addresses", false),
        ("net.teardown.after_objects", false),
        ("net.slot.after_namespace", true),
        ("net.slot.after_ruleset", true),
        ("net.slot.after_tap", true),
        ("net.slot.after_veth", true),
    ];
    for (point, fill_first) in cases {
        let what = format!("{point} (ready slot first: {fill_first})");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join(STATE_DB_FILE);
        let child = spawn_child(TEST, &t, &store, Some(point), fill_first);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{what}: the child did not die at its crash point: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recorded = SqliteStore::open(&store).unwrap().list_leases().unwrap();
        assert!(
            t.inventory() != before || !recorded.is_empty(),
            "{what}: the crash left nothing to clean"
        );
        assert_reconciled(&t, &store, &before, &what);
    }
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn a_kill_at_a_random_moment_is_cleaned_up_by_reconciliation() {
    const TEST: &str = "a_kill_at_a_random_moment_is_cleaned_up_by_reconciliation";
    if let Some(store) = std::env::var_os(CHILD_STORE) {
        crash_child(Path::new(&store));
    }
    if !common::lane(TEST) {
        return;
    }
    let t = TestNet::new();
    t.host.install().unwrap();
    let before = t.inventory();
    for (round, delay_ms) in [0u64, 3, 7, 11, 17].into_iter().enumerate() {
        let what = format!("round {round}, killed {delay_ms} ms after cycle 2");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join(STATE_DB_FILE);
        let mut child = spawn_child(TEST, &t, &store, None, false);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            if line.unwrap() == "cycle 2" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL, somewhere in a setup, teardown or fill
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}");
        assert_reconciled(&t, &store, &before, &what);
    }
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn the_benchmark_runs_and_leaves_nothing() {
    if !common::lane("the_benchmark_runs_and_leaves_nothing") {
        return;
    }
    let prefix = common::unique_prefix();
    let listed = || -> BTreeSet<String> {
        Netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .collect()
    };
    let options = tfc_net::bench::BenchOptions {
        count: 2,
        warmup: 1,
        config: NetConfig {
            mode: NetMode::Nat,
            egress_allow: Some(vec![]),
            port_forwards: vec![PortForward {
                host_port: 8080,
                vm_port: 80,
                protocol: Protocol::Tcp,
            }],
        },
        prefix: prefix.clone(),
    };
    let store = MemoryStore::new();
    let report = tfc_net::bench::run(&options, &store).unwrap();
    for summary in [
        report.slot_create,
        report.pooled_setup,
        report.pooled_teardown,
        report.on_demand_setup,
        report.on_demand_teardown,
    ] {
        assert_eq!(summary.count, 2);
        assert!(summary.min <= summary.median && summary.median <= summary.max);
    }
    assert_eq!(listed(), BTreeSet::new());
    assert_eq!(store.list_leases().unwrap(), vec![]);
}

#[test]
#[ignore = "tier 1: needs root; run with --ignored"]
fn netlink_refusals_name_the_request_and_the_reason() {
    if !common::lane("netlink_refusals_name_the_request_and_the_reason") {
        return;
    }
    let name = format!("{}-nl", common::unique_prefix());
    let ns = Netns::create(&name).unwrap();
    let messages = ns
        .run(|| {
            let mut rtnl = tfc_net::netlink::Rtnl::open().unwrap();
            let own = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            rtnl.create_veth("a0", "b0", std::os::fd::AsFd::as_fd(&own))
                .unwrap();
            let again = rtnl
                .create_veth("a0", "b0", std::os::fd::AsFd::as_fd(&own))
                .unwrap_err();
            assert_eq!(again.errno(), Some(libc::EEXIST));
            let index = rtnl.link_index("a0").unwrap().unwrap();
            let bad_route = rtnl
                .add_route(&tfc_net::netlink::Route {
                    table: 254,
                    dst: "198.51.100.0/24".parse().unwrap(),
                    kind: tfc_net::netlink::RouteKind::Forward {
                        oif: index + 1000,
                        gateway: None,
                    },
                })
                .unwrap_err();
            // Deleting what is not there is not an error: it is already gone.
            assert!(!rtnl.delete_link("nothing0").unwrap());
            assert!(rtnl.delete_link("a0").unwrap());
            assert_eq!(
                rtnl.link_index("b0").unwrap(),
                None,
                "a veth goes as a pair"
            );
            (
                tfc_core::error_chain(&again),
                tfc_core::error_chain(&bad_route),
            )
        })
        .unwrap();
    assert!(
        messages
            .0
            .starts_with("the kernel refused to create veth pair a0 / b0"),
        "{}",
        messages.0
    );
    assert!(
        messages
            .1
            .contains("add route 198.51.100.0/24 to table 254"),
        "{}",
        messages.1
    );
    drop(ns);
    assert!(Netns::delete(&name).unwrap());
}
