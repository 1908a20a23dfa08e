//! The host side of every VM network: which namespace plays the host, the
//! names tfc may use there, the address pool and uplink, one netlink socket
//! for the host's links, the host's own nftables table, and the host ports
//! that port forwards hold.
//!
//! In production the host is the daemon's own network namespace. Tests and
//! the benchmark name a namespace they created instead ([`HostConfig::host_netns`]),
//! so that they never touch the real host's links, routes or rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tfc_core::net::{Ipv4Pool, NamePrefix, PortForward, Protocol};
use tfc_core::VmId;

use crate::netlink::{Link, NetlinkError, Rtnl};
use crate::netns::{Netns, NetnsError};
use crate::nft::{self, NftError};
use crate::slot::SetupError;
use crate::sysctl::{self, SysctlError};

/// How the host side is set up.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Prefix of every name tfc gives a host-side object.
    pub prefix: NamePrefix,
    /// Where VM addresses come from.
    pub pool: Ipv4Pool,
    /// The interface mode `nat` sends egress out of, masqueraded; without
    /// one, mode `nat` is refused.
    pub uplink: Option<String>,
    /// The namespace that plays the host: `None` is the calling process's
    /// own (the real host). Tests and the benchmark name one they made.
    pub host_netns: Option<String>,
    /// Owner (uid, gid) of every tap, for a Firecracker that runs jailed
    /// under that uid; `None` leaves them root's.
    pub tap_owner: Option<(u32, u32)>,
}

impl HostConfig {
    /// The daemon's defaults: prefix `tfc`, pool `10.200.0.0/16`, no uplink.
    pub fn new(pool: Ipv4Pool) -> Self {
        Self {
            prefix: NamePrefix::standard(),
            pool,
            uplink: None,
            host_netns: None,
            tap_owner: None,
        }
    }
}

/// Why the host side could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "uplink {name:?} is not an interface name: use 1 to 15 characters a-z, A-Z, 0-9, '.', '_' or '-'"
    )]
    BadUplink { name: String },
    #[error("cannot open the namespace that plays the host")]
    HostNamespace(#[source] NetnsError),
    #[error("cannot open a netlink socket in the host namespace")]
    Netlink(#[source] NetlinkError),
    #[error("cannot list the host's links")]
    ListLinks(#[source] NetlinkError),
    #[error("cannot read the host's IPv4 forwarding setting")]
    ReadForwarding(#[source] SysctlError),
    #[error(
        "IPv4 forwarding is off on the host, so VMs in mode nat and port forwards from outside \
         cannot work: enable it (sysctl -w net.ipv4.ip_forward=1, and in /etc/sysctl.d to keep it)"
    )]
    ForwardingDisabled,
    #[error("cannot install the host's nftables table {table}")]
    Install {
        table: String,
        #[source]
        source: NftError,
    },
    #[error("cannot remove the host's nftables table {table}")]
    Uninstall {
        table: String,
        #[source]
        source: NftError,
    },
    #[error("cannot list the host's nftables tables")]
    ListTables(#[source] NftError),
    #[error("cannot work in the host namespace")]
    Enter(#[source] NetnsError),
}

fn check_uplink(name: &str) -> Result<(), HostError> {
    // Goes into a quoted nft string: no quotes, spaces or wildcards.
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HostError::BadUplink {
            name: name.to_owned(),
        })
    }
}

/// The host side, shared by all of a daemon's VM networks.
///
/// Invariants: a VM is in `attached` from the start of its network's setup
/// until its teardown (so it never has two networks); a (protocol, host port)
/// in `forwards` is held by at most one VM, from its network's setup until
/// its teardown.
#[derive(Debug)]
pub struct HostNet {
    config: HostConfig,
    netns: Option<Netns>,
    rtnl: Mutex<Rtnl>,
    /// The next slot number to try; slots are never renumbered.
    next_slot: AtomicU32,
    forwards: Mutex<BTreeMap<(Protocol, u16), VmId>>,
    attached: Mutex<BTreeSet<VmId>>,
}

impl HostNet {
    /// Opens the host side. New slots are numbered after every slot name of
    /// this prefix already present (leftovers that reconciliation has yet to
    /// remove), so a new slot never collides with one.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        if let Some(uplink) = &config.uplink {
            check_uplink(uplink)?;
        }
        let netns = config
            .host_netns
            .as_deref()
            .map(Netns::open)
            .transpose()
            .map_err(HostError::HostNamespace)?;
        let rtnl = match &netns {
            None => Rtnl::open(),
            Some(netns) => netns.run(Rtnl::open).map_err(HostError::Enter)?,
        }
        .map_err(HostError::Netlink)?;
        let host = Self {
            config,
            netns,
            rtnl: Mutex::new(rtnl),
            next_slot: AtomicU32::new(0),
            forwards: Mutex::new(BTreeMap::new()),
            attached: Mutex::new(BTreeSet::new()),
        };
        let mut highest = None;
        let namespaces = Netns::list().map_err(HostError::HostNamespace)?;
        let links = host.links()?;
        for name in namespaces.iter().chain(links.iter().map(|l| &l.name)) {
            if let Some(n) = host.config.prefix.slot_of(name) {
                highest = highest.max(Some(n));
            }
        }
        if let Some(n) = highest {
            host.next_slot.store(n.wrapping_add(1), Ordering::Relaxed);
        }
        Ok(host)
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The namespace playing the host, when it is not the process's own.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The host's netlink socket. Held only for single requests.
    pub(crate) fn rtnl(&self) -> MutexGuard<'_, Rtnl> {
        // A request either completes or fails as a whole; a panic elsewhere
        // leaves the socket usable.
        self.rtnl.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot number no object of ours uses yet.
    pub(crate) fn take_slot_number(&self) -> u32 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` in the host namespace (on this thread when the host is the
    /// process's own namespace).
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        match &self.netns {
            None => Ok(f()),
            Some(netns) => netns.run(f),
        }
    }

    /// Every link of the host.
    pub fn links(&self) -> Result<Vec<Link>, HostError> {
        self.rtnl().links().map_err(HostError::ListLinks)
    }

    /// The names of the host's `ip` nftables tables.
    pub fn nft_tables(&self) -> Result<Vec<String>, HostError> {
        nft::ip_tables(self.netns()).map_err(HostError::ListTables)
    }

    /// Installs (or replaces) the host's table, named by the prefix: VM-to-VM
    /// traffic dropped, unsolicited connections into VMs dropped, and with an
    /// uplink, the pool masqueraded on it. With an uplink, IPv4 forwarding
    /// must be on ([`HostError::ForwardingDisabled`] otherwise): tfc reports
    /// it but does not change the host's setting.
    pub fn install(&self) -> Result<(), HostError> {
        let table = self.config.prefix.as_str().to_owned();
        if self.config.uplink.is_some() {
            let forwarding = self
                .run(|| sysctl::get("net.ipv4.ip_forward"))
                .map_err(HostError::Enter)?
                .map_err(HostError::ReadForwarding)?;
            if forwarding != "1" {
                return Err(HostError::ForwardingDisabled);
            }
        }
        let rules = nft::host(
            &self.config.prefix,
            &self.config.pool,
            self.config.uplink.as_deref(),
        );
        nft::load(self.netns(), &rules, &format!("install table ip {table}"))
            .map_err(|source| HostError::Install { table, source })
    }

    /// Removes the host's table, and only it. Safe to repeat.
    pub fn uninstall(&self) -> Result<(), HostError> {
        let table = self.config.prefix.as_str().to_owned();
        nft::delete_table(self.netns(), &table)
            .map_err(|source| HostError::Uninstall { table, source })
    }

    /// Takes back, after a restart, the claims of a live VM's network: the VM
    /// has a network (no second one may be set up for it) and holds its host
    /// ports. Its network is later torn down from its record
    /// ([`crate::teardown_recorded`]), which gives them back.
    pub fn adopt(&self, vm: &VmId, forwards: &[PortForward]) -> Result<(), SetupError> {
        if !self.claim_vm(vm) {
            return Err(SetupError::AlreadyAttached { vm: vm.clone() });
        }
        if let Err((forward, holder)) = self.claim_forwards(vm, forwards) {
            self.release_vm(vm);
            return Err(SetupError::PortTaken { forward, holder });
        }
        Ok(())
    }

    /// Marks `vm` as having a network; `false` if it has one already.
    pub(crate) fn claim_vm(&self, vm: &VmId) -> bool {
        self.attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vm.clone())
    }

    /// `vm` no longer has a network.
    pub(crate) fn release_vm(&self, vm: &VmId) {
        self.attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(vm);
    }

    /// Claims `forwards` for `vm`: all of them, or none when one is held by
    /// another VM (whose id is returned).
    pub(crate) fn claim_forwards(
        &self,
        vm: &VmId,
        forwards: &[PortForward],
    ) -> Result<(), (PortForward, VmId)> {
        let mut held = self.forwards.lock().unwrap_or_else(PoisonError::into_inner);
        for forward in forwards {
            if let Some(holder) = held.get(&(forward.protocol, forward.host_port)) {
                if holder != vm {
                    return Err((*forward, holder.clone()));
                }
            }
        }
        for forward in forwards {
            held.insert((forward.protocol, forward.host_port), vm.clone());
        }
        Ok(())
    }

    /// Gives back the host ports `vm` holds.
    pub(crate) fn release_forwards(&self, vm: &VmId) {
        self.forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, holder| holder != vm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_names_are_safe_in_a_ruleset() {
        for ok in ["eth0", "enp0s31f6", "br-lan.10", "wlan_0"] {
            check_uplink(ok).unwrap();
        }
        for bad in ["", "eth0\"", "a b", "eth*", "sixteen-chars-xx", "x;y"] {
            assert!(check_uplink(bad).is_err(), "{bad:?}");
        }
    }
}
