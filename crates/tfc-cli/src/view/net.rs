//! Human views of VM networks: the `net ls` page and the network line of
//! `vm show`.

use tfc_api::{NetworkStatus, VmNetworkInfo};

use crate::table::{Align, Fields, Table};

/// `net ls`: the pool, then one row per lease, by block.
pub fn status(status: &NetworkStatus) -> String {
    if !status.enabled {
        return "networking: off (set network.enabled = true in the daemon's configuration)\n"
            .to_owned();
    }
    let mut fields = Fields::default();
    fields.push(
        "pool",
        format!(
            "{} ({} of {} blocks leased)",
            status.pool.as_deref().unwrap_or("-"),
            status.leases.len(),
            status.blocks
        ),
    );
    fields.push("prefix", status.prefix.as_deref().unwrap_or("-"));
    fields.push(
        "uplink",
        status
            .uplink
            .as_deref()
            .unwrap_or("none (mode nat refused)"),
    );
    fields.push(
        "ready slots",
        format!("{}/{}", status.ready_slots, status.ready_slots_target),
    );
    let mut leases: Vec<_> = status.leases.iter().collect();
    leases.sort_by_key(|lease| lease.block);
    let mut table = Table::new(&[
        ("VM", Align::Left),
        ("BLOCK", Align::Right),
        ("ADDRESS", Align::Left),
        ("HOST SIDE", Align::Left),
    ]);
    for lease in leases {
        table.push(vec![
            lease.vm_id.clone(),
            lease.block.to_string(),
            lease.address.to_string(),
            lease.host_address.to_string(),
        ]);
    }
    format!("{fields}\n{table}")
}

/// `vm show`: mode, the VM's address, where it lives on the host.
pub fn summary(network: &VmNetworkInfo) -> String {
    let mut line = format!(
        "{} {} (guest {} via {}; namespace {}, tap {}, host link {} {})",
        network.mode,
        network.address,
        network.guest_address,
        network.guest_gateway,
        network.namespace,
        network.tap,
        network.host_link,
        network.host_address
    );
    for forward in &network.port_forwards {
        line.push_str(&format!(
            "; host port {}/{} -> {}",
            forward.host_port, forward.protocol, forward.vm_port
        ));
    }
    match &network.egress_allow {
        Some(rules) if rules.is_empty() => line.push_str("; egress: host side only"),
        Some(rules) => line.push_str(&format!("; egress: {} rules", rules.len())),
        None => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tfc_api::NetworkLease;
    use tfc_core::net::{NetMode, PortForward, Protocol};

    #[test]
    fn net_ls_shows_the_pool_and_leases_by_block() {
        let status = NetworkStatus {
            enabled: true,
            pool: Some("10.200.0.0/16".to_owned()),
            blocks: 16384,
            prefix: Some("tfc".to_owned()),
            uplink: None,
            ready_slots: 1,
            ready_slots_target: 2,
            leases: vec![
                NetworkLease {
                    vm_id: "vm-bbbbbbbbbbbb".to_owned(),
                    block: 1,
                    address: "10.200.0.6".parse().unwrap(),
                    host_address: "10.200.0.5".parse().unwrap(),
                },
                NetworkLease {
                    vm_id: "vm-aaaaaaaaaaaa".to_owned(),
                    block: 0,
                    address: "10.200.0.2".parse().unwrap(),
                    host_address: "10.200.0.1".parse().unwrap(),
                },
            ],
        };
        let text = status_text(&status);
        assert!(
            text.contains("10.200.0.0/16 (2 of 16384 blocks leased)"),
            "{text}"
        );
        assert!(text.contains("none (mode nat refused)"), "{text}");
        assert!(text.contains("1/2"), "{text}");
        let a = text.find("vm-aaaaaaaaaaaa").unwrap();
        let b = text.find("vm-bbbbbbbbbbbb").unwrap();
        assert!(a < b, "block order: {text}");
        let off = status_text(&NetworkStatus {
            enabled: false,
            ..status
        });
        assert!(off.contains("networking: off"), "{off}");
    }

    fn status_text(s: &NetworkStatus) -> String {
        status(s)
    }

    #[test]
    fn vm_show_names_address_namespace_and_forwards() {
        let info = VmNetworkInfo {
            mode: NetMode::Nat,
            address: "10.200.0.6".parse().unwrap(),
            host_address: "10.200.0.5".parse().unwrap(),
            guest_address: "172.16.0.2".parse().unwrap(),
            guest_gateway: "172.16.0.1".parse().unwrap(),
            namespace: "tfc-1".to_owned(),
            tap: "tap0".to_owned(),
            host_link: "tfc-1".to_owned(),
            egress_allow: Some(Vec::new()),
            port_forwards: vec![PortForward {
                host_port: 8080,
                vm_port: 80,
                protocol: Protocol::Tcp,
            }],
        };
        assert_eq!(
            summary(&info),
            "nat 10.200.0.6 (guest 172.16.0.2 via 172.16.0.1; namespace tfc-1, tap tap0, \
             host link tfc-1 10.200.0.5); host port 8080/tcp -> 80; egress: host side only"
        );
    }
}
