//! The daemon's per-VM networks ([docs/networking.md](../../../docs/networking.md)):
//! the host side, a pool of ready slots, the networks VMs hold, and start-up
//! reconciliation, on top of `tfc-net`.
//!
//! Every call here blocks (netlink requests, `nft` runs, store writes): the
//! manager runs them on blocking threads. A VM's network is set up before its
//! VMM starts (the VMM opens the tap inside the VM's namespace) and torn down
//! once the VM is over; a daemon that dies in between leaves records that the
//! next start's reconciliation finishes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tfc_api::{NetworkLease, NetworkStatus, VmNetworkInfo};
use tfc_core::net::guest::{GUEST_ADDR, TAP_ADDR, TAP_NAME};
use tfc_core::net::{Ipv4Pool, NetConfig, NetMode};
use tfc_core::VmId;
use tfc_net::{HostConfig, HostNet, ReconcileReport, SlotPool, VmNetwork};
use tfc_store::{AnyStore, Store};

use crate::config::{ConfigError, NetworkConfig};

/// Why the daemon's networking could not start, or a VM's network could not
/// be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network configuration")]
    Config(#[from] ConfigError),
    #[error(
        "per-VM networking needs root (namespaces, taps and nftables): run `tfc serve` as root, \
         or set network.enabled = false"
    )]
    NotRoot,
    #[error("cannot set up the host side of VM networking")]
    Host(#[source] tfc_net::HostError),
    #[error("cannot reconcile the VM networks left by the previous daemon")]
    Reconcile(#[source] tfc_net::ReconcileError),
    #[error("networking is off in this daemon: set network.enabled = true in its configuration, or ask for network mode none")]
    Disabled,
    #[error("cannot set up the network of VM {vm}")]
    Setup {
        vm: VmId,
        #[source]
        source: Box<tfc_net::SetupError>,
    },
    #[error("cannot tear down the network of VM {vm}")]
    Teardown {
        vm: VmId,
        #[source]
        source: Box<tfc_net::TeardownError>,
    },
    #[error("cannot read the address leases")]
    Leases(#[source] tfc_store::StoreError),
}

/// The daemon's networking: one per daemon, shared by every VM.
#[derive(Debug)]
pub struct Networking {
    slots: SlotPool,
    pool: Ipv4Pool,
    uplink: Option<String>,
    ready_target: u32,
    store: Arc<AnyStore>,
    /// Networks set up by this daemon, by VM. A VM adopted from an earlier
    /// daemon has none here: its network is torn down from its record.
    held: Mutex<HashMap<VmId, VmNetwork>>,
    /// Teardowns run one at a time: a VM's network may be asked to go by its
    /// end and by its deletion at once, and the second finds nothing to do.
    teardown: Mutex<()>,
    /// A fill of the slot pool is under way.
    filling: AtomicBool,
}

impl Networking {
    /// Opens the host side and installs its ruleset. Refused without root,
    /// with a message that says so rather than a failed system call.
    pub fn open(config: &NetworkConfig, store: Arc<AnyStore>) -> Result<Self, NetworkError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetworkError::NotRoot);
        }
        let pool = config.pool()?;
        let host = HostNet::new(HostConfig {
            prefix: config.prefix()?,
            pool,
            uplink: config.uplink.clone(),
            host_netns: config.host_netns.clone(),
            tap_owner: None,
        })
        .map_err(NetworkError::Host)?;
        host.install().map_err(NetworkError::Host)?;
        Ok(Self {
            slots: SlotPool::new(Arc::new(host), config.ready_slots as usize),
            pool,
            uplink: config.uplink.clone(),
            ready_target: config.ready_slots,
            store,
            held: Mutex::new(HashMap::new()),
            teardown: Mutex::new(()),
            filling: AtomicBool::new(false),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, VmNetwork>> {
        // Each critical section is one insert or remove.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// At start, before any slot is made: removes what VMs that are not
    /// live left behind, then takes back the claims of the live VMs that
    /// have networks (`live` lists them with what they asked for).
    pub fn reconcile(
        &self,
        live: &HashMap<VmId, Option<NetConfig>>,
    ) -> Result<ReconcileReport, NetworkError> {
        let _one = self.teardown.lock().unwrap_or_else(PoisonError::into_inner);
        let report = tfc_net::reconcile(self.slots.host(), self.store.as_ref(), &|vm| {
            live.contains_key(vm)
        })
        .map_err(NetworkError::Reconcile)?;
        for (vm, config) in live {
            if let Some(config) = config {
                if let Err(err) = self.slots.host().adopt(vm, &config.port_forwards) {
                    tracing::warn!(vm = %vm, error = %tfc_core::error_chain(&err), "cannot take back the network of a re-adopted VM");
                }
            }
        }
        Ok(report)
    }

    /// Makes ready slots up to the target; one fill at a time, the others
    /// return at once. Failures are logged: a VM then makes its slot itself.
    pub fn fill(&self) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(err) = self.slots.fill() {
            tracing::warn!(error = %tfc_core::error_chain(&err), "cannot make a ready network slot");
        }
        self.filling.store(false, Ordering::Release);
    }

    /// Gives `vm` the network `config` asks for (its mode is not `none`).
    pub fn attach(&self, vm: &VmId, config: &NetConfig) -> Result<VmNetworkInfo, NetworkError> {
        if config.mode == NetMode::Nat && self.uplink.is_none() {
            return Err(NetworkError::Setup {
                vm: vm.clone(),
                source: Box::new(tfc_net::SetupError::NoUplink),
            });
        }
        let network = self
            .slots
            .acquire(vm, config, self.store.as_ref())
            .map_err(|source| NetworkError::Setup {
                vm: vm.clone(),
                source: Box::new(source),
            })?;
        let info = info(&network);
        self.held().insert(vm.clone(), network);
        Ok(info)
    }

    /// Removes `vm`'s network, if it has one; safe to repeat.
    pub fn detach(&self, vm: &VmId) -> Result<(), NetworkError> {
        let _one = self.teardown.lock().unwrap_or_else(PoisonError::into_inner);
        let held = self.held().remove(vm);
        let host = self.slots.host();
        let result = match held {
            Some(network) => network.teardown(host, self.store.as_ref()),
            None => tfc_net::teardown_recorded(host, self.store.as_ref(), vm),
        };
        result.map_err(|source| NetworkError::Teardown {
            vm: vm.clone(),
            source: Box::new(source),
        })
    }

    /// The pool, its leases and the ready slots.
    pub fn status(&self) -> Result<NetworkStatus, NetworkError> {
        let leases = self.store.list_leases().map_err(NetworkError::Leases)?;
        Ok(NetworkStatus {
            enabled: true,
            pool: Some(self.pool.to_string()),
            blocks: self.pool.capacity(),
            prefix: Some(self.slots.host().config().prefix.as_str().to_owned()),
            uplink: self.uplink.clone(),
            ready_slots: self.slots.len() as u32,
            ready_slots_target: self.ready_target,
            leases: leases
                .into_iter()
                .map(|lease| NetworkLease {
                    vm_id: lease.vm.to_string(),
                    block: lease.block.index(),
                    address: lease.block.vm(),
                    host_address: lease.block.host(),
                })
                .collect(),
        })
    }

    /// At shutdown: removes the ready slots, and the host's ruleset unless
    /// a VM left running still has a network (a lease) that needs it.
    pub fn close(&self) {
        if let Err(err) = self.slots.drain() {
            tracing::warn!(error = %tfc_core::error_chain(&err), "cannot remove a ready network slot; the next start does");
        }
        let leased = self.store.list_leases().map_or(true, |l| !l.is_empty());
        if !leased {
            if let Err(err) = self.slots.host().uninstall() {
                tracing::warn!(error = %tfc_core::error_chain(&err), "cannot remove the host's network ruleset");
            }
        }
    }
}

/// The network namespace a VM's VMM runs in, `/run/netns/NAME`.
pub fn netns_path(info: &VmNetworkInfo) -> PathBuf {
    PathBuf::from(tfc_net::netns::NETNS_DIR).join(&info.namespace)
}

fn info(network: &VmNetwork) -> VmNetworkInfo {
    let config = network.config();
    VmNetworkInfo {
        mode: config.mode,
        address: network.vm_address(),
        host_address: network.host_address(),
        guest_address: GUEST_ADDR,
        guest_gateway: TAP_ADDR,
        namespace: network.netns().name().to_owned(),
        tap: TAP_NAME.to_owned(),
        host_link: network.slot_name().to_owned(),
        egress_allow: config.egress_allow.clone(),
        port_forwards: config.port_forwards.clone(),
    }
}

/// What `GET /v1/network` says when networking is off.
pub fn disabled_status() -> NetworkStatus {
    NetworkStatus {
        enabled: false,
        pool: None,
        blocks: 0,
        prefix: None,
        uplink: None,
        ready_slots: 0,
        ready_slots_target: 0,
        leases: Vec::new(),
    }
}
