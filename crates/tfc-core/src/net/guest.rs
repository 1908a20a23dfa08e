//! The guest link: the same in every VM's network namespace.
//!
//! Every VM sees the same network from inside: its `eth0` is [`GUEST_ADDR`]
//! with gateway [`TAP_ADDR`] (the tap, [`TAP_NAME`], in the VM's namespace).
//! VMs restored from one snapshot therefore need no re-addressing: the guest
//! kernel's configuration and Firecracker's `host_dev_name` recorded in the
//! snapshot are right in every clone's namespace. Each namespace translates
//! between the fixed guest address and the VM's own pool address (see the
//! `tfc-net` crate and docs/networking.md), so the host and the world see
//! every VM under a distinct address.
//!
//! The link is a `/30` out of `172.16.0.0/12`, which exists only inside VM
//! namespaces; a configured pool may not overlap it.

use std::net::Ipv4Addr;

use crate::net::addr::Ipv4Cidr;

/// The guest's address on its `eth0`, in every VM.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
/// The tap's address in the VM's namespace: the guest's gateway.
pub const TAP_ADDR: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Prefix length of the guest link.
pub const GUEST_PREFIX_LEN: u8 = 30;
/// The tap device in every VM namespace (Firecracker's `host_dev_name`).
pub const TAP_NAME: &str = "tap0";
/// The guest's interface name, as its kernel names the first virtio-net device.
pub const GUEST_IFACE: &str = "eth0";
/// The namespace's end of the VM's veth pair.
pub const NS_VETH_NAME: &str = "veth0";
/// The tap's hardware address, the same in every namespace: a restored
/// guest's neighbour cache still names its template's gateway, and a tap
/// with another address would drop the guest's frames as meant for another
/// host until that entry expired. Locally administered, unicast.
pub const TAP_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x01];
/// The guest NIC's hardware address, the same in every VM for the same
/// reason (given to the VMM; a snapshot records it).
pub const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];

/// `aa:bb:cc:dd:ee:ff`, as the VMM's API and `ip link` write it.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The guest link's network, `172.16.0.0/30`.
pub fn guest_link() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(172, 16, 0, 0), GUEST_PREFIX_LEN)
        .expect("172.16.0.0 has no host bits in a /30")
}

/// The kernel boot argument that configures the guest's `eth0` without any
/// guest userspace (`CONFIG_IP_PNP`):
/// `ip=<client>::<gateway>:<netmask>::<device>:off`.
pub fn kernel_ip_arg() -> String {
    format!(
        "ip={GUEST_ADDR}::{TAP_ADDR}:{}::{GUEST_IFACE}:off",
        guest_link().netmask()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_written_as_colon_separated_hex() {
        assert_eq!(mac_string(TAP_MAC), "06:00:ac:10:00:01");
        assert_eq!(mac_string(GUEST_MAC), "06:00:ac:10:00:02");
        // Locally administered (bit 1) and unicast (bit 0 clear).
        for mac in [TAP_MAC, GUEST_MAC] {
            assert_eq!(mac[0] & 0b11, 0b10);
        }
    }

    #[test]
    fn the_link_holds_both_ends() {
        let link = guest_link();
        assert!(link.contains(GUEST_ADDR) && link.contains(TAP_ADDR));
        assert_ne!(GUEST_ADDR, TAP_ADDR);
    }

    #[test]
    fn kernel_arg_names_address_gateway_and_mask() {
        assert_eq!(
            kernel_ip_arg(),
            "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"
        );
    }
}
