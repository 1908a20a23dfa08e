//! One VM's network: a [`Slot`] (namespace, tap, veth pair, rules; the same
//! for every VM) and, once a VM holds it, a [`VmNetwork`] (the VM's pool
//! address on both ends of the veth, its mode's route and rules).
//!
//! Inside a slot's namespace:
//!
//! ```text
//!  guest eth0 172.16.0.2 ── tap0 172.16.0.1 │ namespace │ veth0 <pool .2> ══ <slot> <pool .1> host
//! ```
//!
//! - The guest link is identical in every namespace (`tfc_core::net::guest`).
//! - The namespace's ruleset (`crate::nft::vm_namespace`) maps the VM's pool
//!   address to the guest and back: the host reaches the VM at `<pool .2>`.
//! - Routing: the main table holds only the two links (guest `/30`, the
//!   block's `/30`); a rule sends packets arriving from the tap on to table
//!   [`GUEST_TABLE`] when the main table has no route. That table refuses the
//!   whole pool (other VMs) and, in mode `nat` only, holds the default route
//!   via the host side. So in mode `isolated` the guest reaches the host side
//!   and nothing else, in every mode it never reaches another VM, and the
//!   ruleset's check "the source of a new inbound connection is routed
//!   through the veth by the main table" admits the host side's `/30` only.
//!
//! Every object is recorded before it is made (for a VM's own slot, in the
//! store under the VM's id), and removal of a missing object succeeds, so a
//! record of a half-made network after a crash names everything that may
//! exist, and tearing it down is always safe.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use tfc_core::net::guest::{
    GUEST_ADDR, GUEST_PREFIX_LEN, NS_VETH_NAME, TAP_ADDR, TAP_MAC, TAP_NAME,
};
use tfc_core::net::{Ipv4Cidr, Lease, NetConfig, NetConfigError, NetMode, NetObject, PortForward};
use tfc_core::VmId;
use tfc_store::{Store, StoreError};

use crate::crash;
use crate::host::HostNet;
use crate::netlink::{NetlinkError, Route, RouteKind, Rtnl};
use crate::netns::{Netns, NetnsError};
use crate::nft::{self, NftError, NS_TABLE};
use crate::sysctl::{self, SysctlError};
use crate::tun::{self, TunError};

/// Routing table, inside a VM namespace, for what the guest sends beyond its
/// two links.
pub const GUEST_TABLE: u32 = 100;
/// Priority of the rule that sends the guest's packets to [`GUEST_TABLE`]:
/// after the main table's (32766), so its routes win.
pub const GUEST_RULE_PRIORITY: u32 = 32800;
/// How many taken slot numbers a new slot skips before giving up.
const NAME_ATTEMPTS: u32 = 16;

/// Why a slot, or a VM's network, could not be set up. Whatever was made is
/// removed again before this is returned (see [`SetupError::Leaked`]).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] NetConfigError),
    #[error("mode none has no network to set up")]
    NoNetwork,
    #[error("mode nat needs an uplink: set the network's uplink interface")]
    NoUplink,
    #[error("VM {vm} has a network already: tear it down first")]
    AlreadyAttached { vm: VmId },
    #[error("host port {}/{} is already forwarded to VM {holder}", .forward.host_port, .forward.protocol)]
    PortTaken { forward: PortForward, holder: VmId },
    #[error("cannot lease an address for VM {vm}")]
    Lease {
        vm: VmId,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot record the network objects of {owner}")]
    Record {
        owner: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("no free slot name after {NAME_ATTEMPTS} tries (last {last}): run reconciliation")]
    NamesTaken { last: String },
    #[error("cannot create network namespace {slot}")]
    CreateNamespace {
        slot: String,
        #[source]
        source: NetnsError,
    },
    #[error("cannot work inside network namespace {slot}")]
    EnterNamespace {
        slot: String,
        #[source]
        source: NetnsError,
    },
    #[error("cannot set up the sysctls of namespace {slot}")]
    Sysctl {
        slot: String,
        #[source]
        source: SysctlError,
    },
    #[error("cannot open a netlink socket in namespace {slot}")]
    OpenNetlink {
        slot: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot load the ruleset of namespace {slot}")]
    LoadRuleset {
        slot: String,
        #[source]
        source: NftError,
    },
    #[error("cannot create the tap of namespace {slot}")]
    CreateTap {
        slot: String,
        #[source]
        source: TunError,
    },
    #[error("cannot configure link {link} of slot {slot}")]
    ConfigureLink {
        slot: String,
        link: String,
        #[source]
        source: NetlinkError,
    },
    #[error("link {link} of slot {slot} vanished while it was being set up")]
    LinkMissing { slot: String, link: String },
    #[error("cannot create the veth pair of slot {slot}")]
    CreateVeth {
        slot: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot add the routes of slot {slot}")]
    Route {
        slot: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot load the egress allowlist of slot {slot}")]
    Egress {
        slot: String,
        #[source]
        source: NftError,
    },
    #[error("cannot load the port forwards of slot {slot}")]
    PortForwards {
        slot: String,
        #[source]
        source: NftError,
    },
    /// Setup failed, and so did removing what it had made; the record (when
    /// there is one) is kept for reconciliation to finish the job.
    #[error("{setup}; and removing what was made failed too: {teardown}")]
    Leaked {
        setup: Box<SetupError>,
        teardown: TeardownError,
    },
}

/// Why an object could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Namespace(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Nft(#[from] NftError),
}

/// Why a teardown did not finish. Its record and lease are kept, so running
/// it again, or reconciliation, finishes it.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("cannot remove {}: {}", .0.first().map(|(o, _)| o.to_string()).unwrap_or_default(), .0.first().map(|(_, e)| tfc_core::error_chain(e)).unwrap_or_default())]
    Remove(Vec<(NetObject, RemoveError)>),
    #[error("cannot read the network record of VM {vm}")]
    ReadRecord {
        vm: VmId,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot forget the network record of {owner}")]
    Forget {
        owner: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot release the address lease of VM {vm}")]
    Release {
        vm: VmId,
        #[source]
        source: Box<StoreError>,
    },
}

/// Where a slot's objects are recorded as they are made.
#[derive(Clone, Copy)]
pub(crate) enum Recorder<'a> {
    /// A slot made ahead of need: not in the store (start-up reconciliation
    /// finds leftovers by name).
    Unowned,
    /// A slot made for this VM: recorded under its id.
    Vm { vm: &'a VmId, store: &'a dyn Store },
}

impl Recorder<'_> {
    fn record(&self, objects: &[NetObject]) -> Result<(), SetupError> {
        match self {
            Recorder::Unowned => Ok(()),
            Recorder::Vm { vm, store } => {
                store
                    .put_net_objects(vm, objects)
                    .map_err(|source| SetupError::Record {
                        owner: format!("VM {vm}"),
                        source: Box::new(source),
                    })
            }
        }
    }

    fn forget(&self) -> Result<(), TeardownError> {
        match self {
            Recorder::Unowned => Ok(()),
            Recorder::Vm { vm, store } => {
                store
                    .delete_net_objects(vm)
                    .map(drop)
                    .map_err(|source| TeardownError::Forget {
                        owner: format!("VM {vm}"),
                        source: Box::new(source),
                    })
            }
        }
    }
}

/// A ready network without its VM: namespace, tap and veth pair made,
/// ruleset loaded, links up, no pool address yet.
#[derive(Debug)]
pub struct Slot {
    name: String,
    netns: Netns,
    /// Bound to the slot's namespace.
    rtnl: Rtnl,
    host_veth: u32,
    ns_veth: u32,
    objects: Vec<NetObject>,
}

impl Slot {
    /// Makes a slot ahead of need (not recorded in any store).
    pub fn create(host: &HostNet) -> Result<Slot, SetupError> {
        Self::create_recorded(host, Recorder::Unowned)
    }

    pub(crate) fn create_recorded(
        host: &HostNet,
        recorder: Recorder<'_>,
    ) -> Result<Slot, SetupError> {
        let mut objects = Vec::new();
        let made = Self::build(host, recorder, &mut objects);
        match made {
            Ok(slot) => Ok(slot),
            Err(setup) => {
                let undone = remove_objects(host, &objects)
                    .map_err(TeardownError::Remove)
                    .and_then(|()| recorder.forget());
                match undone {
                    Ok(()) => Err(setup),
                    Err(teardown) => Err(SetupError::Leaked {
                        setup: Box::new(setup),
                        teardown,
                    }),
                }
            }
        }
    }

    /// The steps, in order; `objects` grows as each is recorded, before it
    /// is made, so on failure it names everything that may exist.
    fn build(
        host: &HostNet,
        recorder: Recorder<'_>,
        objects: &mut Vec<NetObject>,
    ) -> Result<Slot, SetupError> {
        let record = |objects: &mut Vec<NetObject>, object: NetObject| {
            objects.push(object);
            recorder.record(objects)
        };

        // 1. The namespace, under a slot name nothing uses.
        let mut attempts = 0;
        let (name, netns) = loop {
            let name = host.config().prefix.slot_name(host.take_slot_number());
            record(objects, NetObject::Namespace { name: name.clone() })?;
            match Netns::create(&name) {
                Ok(netns) => {
                    crash::point("net.slot.after_namespace");
                    break (name, netns);
                }
                Err(NetnsError::Exists { .. }) if attempts + 1 < NAME_ATTEMPTS => {
                    // Someone else's (or a leftover): not ours to remove.
                    objects.pop();
                    attempts += 1;
                }
                Err(NetnsError::Exists { .. }) => {
                    objects.pop();
                    recorder.record(objects)?;
                    return Err(SetupError::NamesTaken { last: name });
                }
                Err(source) => return Err(SetupError::CreateNamespace { slot: name, source }),
            }
        };

        // 2. Inside: sysctls, a netlink socket kept for later requests, the
        // ruleset before any link exists (no packet crosses an unfiltered
        // namespace), then the tap.
        let owner = host.config().tap_owner;
        let slot = name.as_str();
        let inside = netns
            .run(|| -> Result<Rtnl, SetupError> {
                let sysctl_err = |source| SetupError::Sysctl {
                    slot: slot.to_owned(),
                    source,
                };
                for (key, value) in [
                    ("net.ipv4.ip_forward", "1"),
                    // New namespaces inherit the host's rp_filter; the
                    // ruleset does the source check instead (the guest's
                    // replies come back through a route rp_filter cannot see).
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.default.rp_filter", "0"),
                ] {
                    sysctl::set(key, value).map_err(sysctl_err)?;
                }
                // IPv4 only: no IPv6 on links made from here on. Kernels
                // without IPv6 have no such key, which is fine.
                for key in [
                    "net.ipv6.conf.all.disable_ipv6",
                    "net.ipv6.conf.default.disable_ipv6",
                ] {
                    match sysctl::set(key, "1") {
                        Err(SysctlError::Write { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound => {}
                        other => other.map_err(sysctl_err)?,
                    }
                }
                let mut rtnl = Rtnl::open().map_err(|source| SetupError::OpenNetlink {
                    slot: slot.to_owned(),
                    source,
                })?;
                link_up(&mut rtnl, slot, "lo")?;
                record(
                    objects,
                    NetObject::NftTable {
                        namespace: Some(slot.to_owned()),
                        name: NS_TABLE.to_owned(),
                    },
                )?;
                nft::load(None, &nft::vm_namespace(), "load the VM namespace ruleset").map_err(
                    |source| SetupError::LoadRuleset {
                        slot: slot.to_owned(),
                        source,
                    },
                )?;
                crash::point("net.slot.after_ruleset");
                record(
                    objects,
                    NetObject::Tap {
                        namespace: slot.to_owned(),
                        name: TAP_NAME.to_owned(),
                    },
                )?;
                tun::create_persistent_tap(TAP_NAME, owner).map_err(|source| {
                    SetupError::CreateTap {
                        slot: slot.to_owned(),
                        source,
                    }
                })?;
                crash::point("net.slot.after_tap");
                Ok(rtnl)
            })
            .map_err(|source| SetupError::EnterNamespace {
                slot: name.clone(),
                source,
            })?;
        let mut rtnl = inside?;
        let tap = link_index(&mut rtnl, slot, TAP_NAME)?;
        rtnl.set_mac(tap, TAP_NAME, TAP_MAC)
            .map_err(|source| configure(slot, TAP_NAME, source))?;
        rtnl.add_address(tap, TAP_ADDR, GUEST_PREFIX_LEN)
            .map_err(|source| configure(slot, TAP_NAME, source))?;
        rtnl.set_up(tap, TAP_NAME)
            .map_err(|source| configure(slot, TAP_NAME, source))?;

        // 3. The veth pair, last: only now is the namespace connected.
        record(objects, NetObject::Veth { name: name.clone() })?;
        host.rtnl()
            .create_veth(&name, NS_VETH_NAME, netns.as_fd())
            .map_err(|source| SetupError::CreateVeth {
                slot: name.clone(),
                source,
            })?;
        crash::point("net.slot.after_veth");
        let host_veth = {
            let mut host_rtnl = host.rtnl();
            let index = link_index(&mut host_rtnl, slot, slot)?;
            host_rtnl
                .set_up(index, slot)
                .map_err(|source| configure(slot, slot, source))?;
            index
        };
        let ns_veth = link_index(&mut rtnl, slot, NS_VETH_NAME)?;
        rtnl.set_up(ns_veth, NS_VETH_NAME)
            .map_err(|source| configure(slot, NS_VETH_NAME, source))?;

        // 4. The guest's routing beyond its links: never to another VM.
        let route_err = |source| SetupError::Route {
            slot: slot.to_owned(),
            source,
        };
        rtnl.add_route(&Route {
            table: GUEST_TABLE,
            dst: host.config().pool.cidr(),
            kind: RouteKind::Prohibit,
        })
        .map_err(route_err)?;
        rtnl.add_iif_rule(TAP_NAME, GUEST_TABLE, GUEST_RULE_PRIORITY)
            .map_err(route_err)?;

        Ok(Slot {
            name,
            netns,
            rtnl,
            host_veth,
            ns_veth,
            objects: objects.clone(),
        })
    }

    /// The slot's name: its namespace's, its host veth's and its host table's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The objects the slot is made of, in creation order.
    pub fn objects(&self) -> &[NetObject] {
        &self.objects
    }

    /// Removes the slot (one never handed to a VM). Safe on any slot.
    pub fn destroy(self, host: &HostNet) -> Result<(), TeardownError> {
        let objects = self.objects.clone();
        // Our handles would keep the namespace alive after its unmount.
        drop(self);
        remove_objects(host, &objects).map_err(TeardownError::Remove)
    }

    /// Hands the slot to `vm` with the block of `lease`, as `config` asks.
    /// On failure the slot is destroyed and the record removed; the lease is
    /// the caller's to release.
    pub(crate) fn attach(
        self,
        host: &HostNet,
        store: &dyn Store,
        lease: Lease,
        config: &NetConfig,
    ) -> Result<VmNetwork, SetupError> {
        let vm = lease.vm.clone();
        let mut objects = self.objects.clone();
        if !config.port_forwards.is_empty() {
            objects.push(NetObject::NftTable {
                namespace: None,
                name: self.name.clone(),
            });
        }
        let mut network = VmNetwork {
            slot: self,
            lease,
            config: config.clone(),
            objects,
        };
        let recorder = Recorder::Vm { vm: &vm, store };
        let done = recorder.record(&network.objects).and_then(|()| {
            crash::point("net.attach.after_record");
            network.configure(host)
        });
        match done {
            Ok(()) => Ok(network),
            Err(setup) => {
                drop(network.slot);
                let undone = remove_objects(host, &network.objects)
                    .map_err(TeardownError::Remove)
                    .and_then(|()| recorder.forget());
                host.release_forwards(&vm);
                match undone {
                    Ok(()) => Err(setup),
                    Err(teardown) => Err(SetupError::Leaked {
                        setup: Box::new(setup),
                        teardown,
                    }),
                }
            }
        }
    }
}

fn configure(slot: &str, link: &str, source: NetlinkError) -> SetupError {
    SetupError::ConfigureLink {
        slot: slot.to_owned(),
        link: link.to_owned(),
        source,
    }
}

fn link_index(rtnl: &mut Rtnl, slot: &str, link: &str) -> Result<u32, SetupError> {
    rtnl.link_index(link)
        .map_err(|source| configure(slot, link, source))?
        .ok_or_else(|| SetupError::LinkMissing {
            slot: slot.to_owned(),
            link: link.to_owned(),
        })
}

fn link_up(rtnl: &mut Rtnl, slot: &str, link: &str) -> Result<(), SetupError> {
    let index = link_index(rtnl, slot, link)?;
    rtnl.set_up(index, link)
        .map_err(|source| configure(slot, link, source))
}

/// A VM's network: its slot, its lease, what it asked for, and every object
/// it is made of (as recorded in the store under the VM's id).
#[derive(Debug)]
pub struct VmNetwork {
    slot: Slot,
    lease: Lease,
    config: NetConfig,
    objects: Vec<NetObject>,
}

impl VmNetwork {
    /// The VM-specific part of setup: addresses, mode, allowlist, forwards.
    fn configure(&mut self, host: &HostNet) -> Result<(), SetupError> {
        let slot = self.slot.name.clone();
        let block = self.lease.block;
        let vm = self.lease.vm.clone();
        if let Err((forward, holder)) = host.claim_forwards(&vm, &self.config.port_forwards) {
            return Err(SetupError::PortTaken { forward, holder });
        }
        host.rtnl()
            .add_address(self.slot.host_veth, block.host(), block.cidr().prefix_len())
            .map_err(|source| configure(&slot, &slot, source))?;
        self.slot
            .rtnl
            .add_address(self.slot.ns_veth, block.vm(), block.cidr().prefix_len())
            .map_err(|source| configure(&slot, NS_VETH_NAME, source))?;
        crash::point("net.attach.after_addresses");
        if self.config.mode == NetMode::Nat {
            self.slot
                .rtnl
                .add_route(&Route {
                    table: GUEST_TABLE,
                    dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0 is a network"),
                    kind: RouteKind::Forward {
                        oif: self.slot.ns_veth,
                        gateway: Some(block.host()),
                    },
                })
                .map_err(|source| SetupError::Route {
                    slot: slot.clone(),
                    source,
                })?;
        }
        if let Some(rules) = &self.config.egress_allow {
            nft::load(
                Some(&self.slot.netns),
                &nft::egress(block.host(), rules),
                "load the egress allowlist",
            )
            .map_err(|source| SetupError::Egress {
                slot: slot.clone(),
                source,
            })?;
        }
        if !self.config.port_forwards.is_empty() {
            nft::load(
                host.netns(),
                &nft::port_forwards(&slot, block.vm(), &self.config.port_forwards),
                "load port forwards",
            )
            .map_err(|source| SetupError::PortForwards { slot, source })?;
        }
        Ok(())
    }

    pub fn vm(&self) -> &VmId {
        &self.lease.vm
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The slot's name, which is also its namespace's.
    pub fn slot_name(&self) -> &str {
        &self.slot.name
    }

    /// The VM's namespace.
    pub fn netns(&self) -> &Netns {
        &self.slot.netns
    }

    /// Where the namespace is mounted: the jailer's `--netns` argument.
    pub fn netns_path(&self) -> PathBuf {
        self.slot.netns.path()
    }

    /// The tap Firecracker opens (`host_dev_name`), inside [`Self::netns`].
    pub fn tap_name(&self) -> &'static str {
        TAP_NAME
    }

    /// The VM's address as the host and the world see it.
    pub fn vm_address(&self) -> Ipv4Addr {
        self.lease.block.vm()
    }

    /// The host side of the VM's link.
    pub fn host_address(&self) -> Ipv4Addr {
        self.lease.block.host()
    }

    /// The guest's own address (the same in every VM).
    pub fn guest_address(&self) -> Ipv4Addr {
        GUEST_ADDR
    }

    /// Every object, in creation order.
    pub fn objects(&self) -> &[NetObject] {
        &self.objects
    }

    /// Removes everything, in reverse order, then the record and the lease,
    /// and gives back the VM's claims (its host ports, its one network). If
    /// an object cannot be removed, the record, the lease and the claims stay
    /// (the error says which object): [`teardown_recorded`] finishes from the
    /// record later, as does start-up reconciliation.
    pub fn teardown(self, host: &HostNet, store: &dyn Store) -> Result<(), TeardownError> {
        let VmNetwork {
            slot,
            lease,
            objects,
            ..
        } = self;
        // Our handles would keep the namespace alive after its unmount.
        drop(slot);
        tear_down(host, store, &lease.vm, &objects)
    }
}

/// Tears down `vm`'s network from its record in `store`: for a network whose
/// [`VmNetwork`] is gone (a teardown that failed part-way, a setup that could
/// not undo itself). Without a record, only the lease and claims go.
pub fn teardown_recorded(
    host: &HostNet,
    store: &dyn Store,
    vm: &VmId,
) -> Result<(), TeardownError> {
    let objects = store
        .list_net_objects()
        .map_err(|source| TeardownError::ReadRecord {
            vm: vm.clone(),
            source: Box::new(source),
        })?
        .into_iter()
        .find(|row| &row.vm == vm)
        .map(|row| row.objects)
        .unwrap_or_default();
    tear_down(host, store, vm, &objects)
}

fn tear_down(
    host: &HostNet,
    store: &dyn Store,
    vm: &VmId,
    objects: &[NetObject],
) -> Result<(), TeardownError> {
    remove_objects(host, objects).map_err(TeardownError::Remove)?;
    crash::point("net.teardown.after_objects");
    Recorder::Vm { vm, store }.forget()?;
    store
        .release_block(vm)
        .map_err(|source| TeardownError::Release {
            vm: vm.clone(),
            source: Box::new(source),
        })?;
    // Last: until here the VM could not set up a second network over a
    // record that still names its first.
    host.release_forwards(vm);
    host.release_vm(vm);
    Ok(())
}

/// Removes `objects` in reverse creation order; each removal of a missing
/// object succeeds, so this is safe on any record, complete or not, any
/// number of times. Objects inside a namespace that is removed too go with
/// it (the kernel deletes a namespace's taps and tables when it ends), except
/// that a veth's host end is deleted at once so that it does not linger on
/// the host until then. Returns every failure, after trying every object.
pub(crate) fn remove_objects(
    host: &HostNet,
    objects: &[NetObject],
) -> Result<(), Vec<(NetObject, RemoveError)>> {
    let going: BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| match o {
            NetObject::Namespace { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut failures = Vec::new();
    for object in objects.iter().rev() {
        let removed: Result<(), RemoveError> = match object {
            NetObject::NftTable {
                namespace: Some(ns),
                ..
            }
            | NetObject::Tap { namespace: ns, .. }
                if going.contains(ns.as_str()) =>
            {
                Ok(())
            }
            NetObject::NftTable {
                namespace: Some(ns),
                name,
            } => in_namespace(ns, |netns| {
                nft::delete_table(Some(netns), name).map_err(Into::into)
            }),
            NetObject::NftTable {
                namespace: None,
                name,
            } => nft::delete_table(host.netns(), name).map_err(Into::into),
            NetObject::Tap {
                namespace: ns,
                name,
            } => in_namespace(ns, |netns| {
                let deleted = netns.run(|| Rtnl::open().and_then(|mut r| r.delete_link(name)))?;
                deleted.map(drop).map_err(Into::into)
            }),
            NetObject::Veth { name } => host.rtnl().delete_link(name).map(drop).map_err(Into::into),
            NetObject::Namespace { name } => Netns::delete(name).map(drop).map_err(Into::into),
        };
        if let Err(err) = removed {
            failures.push((object.clone(), err));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Runs `f` on namespace `name` if it exists; a missing namespace means its
/// contents are gone already.
fn in_namespace(
    name: &str,
    f: impl FnOnce(&Netns) -> Result<(), RemoveError>,
) -> Result<(), RemoveError> {
    match Netns::open(name) {
        Ok(netns) => f(&netns),
        Err(NetnsError::NotFound { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
