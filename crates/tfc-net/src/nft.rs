//! nftables: our rulesets, rendered as text and loaded with `nft -f -`, each
//! in a table of our own (family `ip`) so that removing ours never touches
//! anyone else's rules. Loading a ruleset replaces it whole, in one nftables
//! transaction; removal is safe to repeat.
//!
//! Three rulesets:
//! - [`vm_namespace`]: in every VM namespace (table [`NS_TABLE`]): translates
//!   between the fixed guest address and the VM's pool address, lets new
//!   connections in only from the host side, and passes the guest's egress
//!   through the chain [`egress`] fills (an allowlist) or leaves open.
//! - [`host`]: once per host (table named by the prefix): drops forwarding
//!   between two VMs' veths and unsolicited connections into a VM, and
//!   masquerades the pool's egress on the uplink.
//! - [`port_forwards`]: per VM with port forwards, in the host (table named
//!   after the VM's slot).
//!
//! Rules match interfaces by name (`iifname`), never by index, so a ruleset
//! can be loaded before the interfaces it names exist.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use tfc_core::net::guest::{GUEST_ADDR, NS_VETH_NAME, TAP_NAME};
use tfc_core::net::{EgressRule, Ipv4Pool, NamePrefix, PortForward, Protocol};

use crate::netns::{Netns, NetnsError};

/// The nftables command.
pub const NFT: &str = "nft";
/// Our table inside each VM namespace.
pub const NS_TABLE: &str = "tfc";

/// Why an nftables operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("`{NFT}` is not installed: install nftables (Debian: apt-get install nftables)")]
    Missing,
    #[error("cannot run `{NFT}` to {what}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`{NFT}` failed to {what}: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("cannot run `{NFT}` inside the namespace")]
    Namespace(#[source] NetnsError),
}

/// Runs `nft` with `args`, `script` on its stdin, in `netns` (the calling
/// thread's namespace when `None`); returns its stdout.
fn nft(netns: Option<&Netns>, args: &[&str], script: &str, what: &str) -> Result<String, NftError> {
    let run = || -> Result<String, NftError> {
        let spawn = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                NftError::Missing
            } else {
                NftError::Spawn {
                    what: what.to_owned(),
                    source,
                }
            }
        };
        let mut command = Command::new(NFT);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If we die (a crashed daemon), `nft` dies with us rather than
        // committing a ruleset after start-up reconciliation has looked.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of
        // the parent; it runs in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(spawn)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let written = stdin.write_all(script.as_bytes());
        drop(stdin);
        let output = child.wait_with_output().map_err(spawn)?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(NftError::Failed {
                what: what.to_owned(),
                stderr: format!("{} ({})", stderr.trim(), output.status),
            });
        }
        written.map_err(spawn)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    match netns {
        None => run(),
        Some(netns) => netns.run(run).map_err(NftError::Namespace)?,
    }
}

/// Loads `script` (`nft -f -`) in `netns`.
pub fn load(netns: Option<&Netns>, script: &str, what: &str) -> Result<(), NftError> {
    nft(netns, &["-f", "-"], script, what).map(drop)
}

/// Deletes table `ip <name>` in `netns` if it exists.
pub fn delete_table(netns: Option<&Netns>, name: &str) -> Result<(), NftError> {
    // Adding the (empty) table first makes the delete succeed whether or not
    // it existed, in one transaction.
    let script = format!("table ip {name} {{}}\ndelete table ip {name}\n");
    load(netns, &script, &format!("delete table ip {name}"))
}

/// The names of the `ip` tables in `netns`.
pub fn ip_tables(netns: Option<&Netns>) -> Result<Vec<String>, NftError> {
    let out = nft(netns, &["list", "tables", "ip"], "", "list tables")?;
    Ok(out
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table ip "))
        .map(|name| name.trim().to_owned())
        .collect())
}

/// A ruleset that replaces table `ip <name>` with `body` atomically.
fn replace_table(name: &str, body: &str) -> String {
    format!("table ip {name} {{}}\ndelete table ip {name}\ntable ip {name} {{\n{body}}}\n")
}

/// The ruleset of every VM namespace (table [`NS_TABLE`]), the same in all of
/// them: it names no address but the fixed guest one, so a slot can load it
/// before it knows which VM, and which pool address, it will serve.
///
/// - `prerouting`: whatever comes in on the veth for the namespace's own
///   address (the VM's pool address, whatever it is) goes to the guest.
/// - `postrouting`: whatever leaves by the veth takes the veth's address
///   (the VM's pool address) as its source.
/// - `forward` (policy drop): replies pass; a new connection towards the guest
///   must come from an address the main routing table reaches through the
///   veth, which is only the host side's `/30` (the default route for the
///   guest's egress lives in another table, see `crate::slot`); the guest's
///   packets (with its own source address only) go through `egress`.
pub fn vm_namespace() -> String {
    let body = format!(
        "  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{veth}\" fib daddr type local dnat to {guest}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{veth}\" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname \"{veth}\" oifname \"{tap}\" fib saddr oifname \"{veth}\" accept
    iifname \"{tap}\" oifname \"{veth}\" ip saddr {guest} jump egress
  }}
  chain egress {{
    accept
  }}
",
        veth = NS_VETH_NAME,
        tap = TAP_NAME,
        guest = GUEST_ADDR,
    );
    replace_table(NS_TABLE, &body)
}

/// Replaces the VM namespace's `egress` chain with an allowlist: the host side
/// always, then each rule, and a refusal (ICMP administratively prohibited,
/// so the guest fails fast) for everything else.
pub fn egress(host_side: Ipv4Addr, rules: &[EgressRule]) -> String {
    let mut script = format!(
        "flush chain ip {NS_TABLE} egress\nadd rule ip {NS_TABLE} egress ip daddr {host_side} accept\n"
    );
    for rule in rules {
        let mut matches = format!("ip daddr {}", rule.to);
        let protocols = match rule.protocol {
            Some(p) => p.as_str().to_owned(),
            None => "{ tcp, udp }".to_owned(),
        };
        if !rule.ports.is_empty() {
            let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
            matches.push_str(&format!(
                " meta l4proto {protocols} th dport {{ {} }}",
                ports.join(", ")
            ));
        } else if let Some(p) = rule.protocol {
            matches.push_str(&format!(" meta l4proto {p}"));
        }
        script.push_str(&format!("add rule ip {NS_TABLE} egress {matches} accept\n"));
    }
    script.push_str(&format!(
        "add rule ip {NS_TABLE} egress reject with icmp type admin-prohibited\n"
    ));
    script
}

/// The host's table (named by the prefix): VM-to-VM forwarding dropped, new
/// connections into a VM dropped unless a port forward translated them, and
/// with an uplink, the pool's egress masqueraded on it. Our chains only ever
/// drop (or translate): what another table drops stays dropped.
pub fn host(prefix: &NamePrefix, pool: &Ipv4Pool, uplink: Option<&str>) -> String {
    let vms = format!("{prefix}-*");
    let mut body = format!(
        "  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{vms}\" oifname \"{vms}\" drop
    oifname \"{vms}\" ct state new ct status & dnat == 0 drop
  }}
"
    );
    if let Some(uplink) = uplink {
        body.push_str(&format!(
            "  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{uplink}\" ip saddr {pool} masquerade
  }}
"
        ));
    }
    replace_table(prefix.as_str(), &body)
}

/// A VM's port forwards (table named after its slot, in the host): traffic to
/// a host address's port goes to the VM's port, and leaves for the VM with
/// the host side as its source (so the VM answers through the host even in
/// mode `isolated`).
pub fn port_forwards(slot: &str, vm_addr: Ipv4Addr, forwards: &[PortForward]) -> String {
    let dnat: String = forwards
        .iter()
        .map(|f| {
            let proto = match f.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            format!(
                "    fib daddr type local {proto} dport {} dnat to {vm_addr}:{}\n",
                f.host_port, f.vm_port
            )
        })
        .collect();
    let body = format!(
        "  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
{dnat}  }}
  chain output {{
    type nat hook output priority -100; policy accept;
{dnat}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"{slot}\" ct status dnat masquerade
  }}
"
    );
    replace_table(slot, &body)
}

#[cfg(test)]
mod tests {
    use tfc_core::net::PortRange;

    use super::*;

    #[test]
    fn namespace_ruleset_names_only_fixed_things() {
        let rules = vm_namespace();
        assert!(rules.starts_with("table ip tfc {}\ndelete table ip tfc\ntable ip tfc {"));
        assert!(rules.contains("iifname \"veth0\" fib daddr type local dnat to 172.16.0.2"));
        assert!(rules.contains("oifname \"veth0\" masquerade"));
        assert!(rules.contains("fib saddr oifname \"veth0\" accept"));
        assert!(
            rules.contains("iifname \"tap0\" oifname \"veth0\" ip saddr 172.16.0.2 jump egress")
        );
        assert!(
            !rules.contains("10."),
            "no pool address in the shared ruleset"
        );
    }

    #[test]
    fn egress_allowlist_renders_each_rule_shape() {
        let rules: Vec<EgressRule> = serde_json::from_str(
            r#"[{"to":"192.0.2.0/24","protocol":"tcp","ports":[443,"8000-8100"]},
                {"to":"198.51.100.53","ports":[53]},
                {"to":"203.0.113.0/24","protocol":"udp"},
                {"to":"203.0.113.9"}]"#,
        )
        .unwrap();
        let script = egress(Ipv4Addr::new(10, 200, 0, 1), &rules);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "flush chain ip tfc egress",
                "add rule ip tfc egress ip daddr 10.200.0.1 accept",
                "add rule ip tfc egress ip daddr 192.0.2.0/24 meta l4proto tcp th dport { 443, 8000-8100 } accept",
                "add rule ip tfc egress ip daddr 198.51.100.53/32 meta l4proto { tcp, udp } th dport { 53 } accept",
                "add rule ip tfc egress ip daddr 203.0.113.0/24 meta l4proto udp accept",
                "add rule ip tfc egress ip daddr 203.0.113.9/32 accept",
                "add rule ip tfc egress reject with icmp type admin-prohibited",
            ]
        );
        assert_eq!(PortRange::new(1, 1).unwrap().to_string(), "1");
    }

    #[test]
    fn host_ruleset_masquerades_only_with_an_uplink() {
        let prefix = NamePrefix::new("tfc").unwrap();
        let pool = Ipv4Pool::default();
        let without = host(&prefix, &pool, None);
        assert!(without.contains("iifname \"tfc-*\" oifname \"tfc-*\" drop"));
        assert!(!without.contains("masquerade"));
        let with = host(&prefix, &pool, Some("eth0"));
        assert!(with.contains("oifname \"eth0\" ip saddr 10.200.0.0/16 masquerade"));
    }

    #[test]
    fn port_forwards_translate_in_and_masquerade_out() {
        let forwards = [
            PortForward {
                host_port: 8080,
                vm_port: 80,
                protocol: Protocol::Tcp,
            },
            PortForward {
                host_port: 5353,
                vm_port: 53,
                protocol: Protocol::Udp,
            },
        ];
        let script = port_forwards("tfc-1a", Ipv4Addr::new(10, 200, 0, 6), &forwards);
        assert_eq!(
            script
                .matches("fib daddr type local tcp dport 8080 dnat to 10.200.0.6:80")
                .count(),
            2,
            "prerouting and output"
        );
        assert!(script.contains("udp dport 5353 dnat to 10.200.0.6:53"));
        assert!(script.contains("oifname \"tfc-1a\" ct status dnat masquerade"));
    }
}
