//! The virtual IP agent: puts the cluster's service address on an interface of the Primary node, announces it so
//! that neighbours stop sending to the old owner, and takes it off again.
//!
//! - The address is added and removed with netlink (`rtnetlink`), on a small current-thread tokio runtime that each
//!   call creates and drops, so the API is plain blocking calls for a std thread of the daemon.
//! - The announcement is a gratuitous ARP (a request and a reply, broadcast, sender IP = target IP = the VIP) on a
//!   raw `AF_PACKET` socket for IPv4, and an unsolicited Neighbor Advertisement with the override flag to ff02::1 on
//!   a raw ICMPv6 socket for IPv6, in [`ANNOUNCE_ROUNDS`] rounds [`ANNOUNCE_INTERVAL`] apart. The first round is sent
//!   before `start` returns; the others from a background thread, which `stop` (or another `start`) cancels so that
//!   a node never announces an address it has given up.
//! - Everything happens in the network namespace of the calling thread.
//! - A loopback VIP (127.0.0.0/8, ::1, as in the configs `twinsan init` writes) changes nothing in the kernel: the
//!   iSCSI portal simply binds it.
use std::fmt;
use std::future::Future;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

/// How many times the address is announced after it is added.
pub const ANNOUNCE_ROUNDS: u32 = 3;
/// The pause between two announcement rounds.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(200);

/// The longest interface name the kernel accepts (IFNAMSIZ less the NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// What the agent manages: one address, its prefix length and, optionally, the interface it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    /// The virtual address.
    pub address: IpAddr,
    /// Its prefix length: the subnet used to find the interface, and the one the address is added with.
    pub prefix_len: u8,
    /// The interface to put it on; `None` means the one interface that has an address in the same subnet.
    pub interface: Option<String>,
}

/// Why the agent failed. Every message starts with the VIP (`vip 198.18.0.10/24: ...`).
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The spec cannot describe a virtual address (bad prefix length, multicast, empty interface name...).
    #[error("vip {vip}: {reason}")]
    Invalid {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured interface does not exist in this network namespace.
    #[error("vip {vip}: interface {interface} does not exist")]
    NoSuchInterface {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// The configured interface.
        interface: String,
    },
    /// No interface is configured and none has an address in the VIP's subnet.
    #[error("vip {vip}: no interface has an address in {subnet}; set vip_interface = \"<name>\" in the [[target]] of this VIP")]
    NoInterfaceInSubnet {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// The subnet searched, as `network/prefix_len`.
        subnet: String,
    },
    /// No interface is configured and several have an address in the VIP's subnet.
    #[error("vip {vip}: interfaces {interfaces} all have an address in {subnet}; set vip_interface = \"<name>\" in the [[target]] of this VIP")]
    AmbiguousInterface {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// The subnet searched, as `network/prefix_len`.
        subnet: String,
        /// The candidates, comma-separated.
        interfaces: String,
    },
    /// The address is already configured, but elsewhere or with another prefix length: not ours to touch.
    #[error(
        "vip {vip}: the address is already configured as {found}; remove it or correct the VIP"
    )]
    Conflict {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// Where it is, as `address/prefix_len on interface`.
        found: String,
    },
    /// A netlink request (or setting up the netlink socket) failed.
    #[error("vip {vip}: {action}: {detail}")]
    Netlink {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// What was being done, e.g. `add the address to eth0`.
        action: String,
        /// The kernel's (OS) error text.
        detail: String,
    },
    /// Sending the gratuitous ARP or the unsolicited Neighbor Advertisement failed. The address stays added.
    #[error(
        "vip {vip}: the address is on {interface} but announcing it failed: {action}: {source}"
    )]
    Announce {
        /// The VIP as `address/prefix_len`.
        vip: String,
        /// The interface.
        interface: String,
        /// The step that failed, e.g. `send gratuitous ARP`.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The virtual IP agent for one address. Cheap to keep; every call talks to the kernel afresh.
#[derive(Debug)]
pub struct Vip {
    spec: VipSpec,
    loopback: bool,
    /// The generation of the current announcement run: bumped by `start` and `stop`, and held while an
    /// announcement is sent, so that nothing is sent after `stop` has begun.
    announce_generation: Arc<Mutex<u64>>,
}

/// The VIP as `address/prefix_len`, for messages.
struct Cidr(IpAddr, u8);

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// One network interface, as far as the agent cares.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    /// The Ethernet MAC address, if the link is Ethernet-like and does ARP/ND.
    mac: Option<[u8; 6]>,
}

/// One configured address.
#[derive(Debug, Clone)]
struct Assigned {
    index: u32,
    address: IpAddr,
    prefix_len: u8,
    message: AddressMessage,
}

impl Vip {
    /// Validates the spec; a loopback address (127.0.0.0/8, ::1) gives an agent that changes nothing in the kernel.
    pub fn new(spec: VipSpec) -> Result<Vip, VipError> {
        let invalid = |reason: &str| VipError::Invalid {
            vip: Cidr(spec.address, spec.prefix_len).to_string(),
            reason: reason.to_string(),
        };
        let max_prefix = match spec.address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if spec.prefix_len == 0 || spec.prefix_len > max_prefix {
            return Err(invalid(&format!(
                "the prefix length must be 1 to {max_prefix}"
            )));
        }
        if spec.address.is_unspecified() || spec.address.is_multicast() {
            return Err(invalid(
                "an unspecified or multicast address cannot be a VIP",
            ));
        }
        match spec.address {
            IpAddr::V4(v4) if v4.is_broadcast() => {
                return Err(invalid("the broadcast address cannot be a VIP"));
            }
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
                return Err(invalid("a link-local address cannot be a VIP"));
            }
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                return Err(invalid(
                    "an IPv4-mapped IPv6 address cannot be a VIP; give the IPv4 address",
                ));
            }
            _ => {}
        }
        if let Some(name) = &spec.interface {
            if name.is_empty()
                || name.len() > MAX_INTERFACE_NAME
                || name == "."
                || name == ".."
                || name
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                return Err(invalid(&format!(
                    "interface {name:?} is not a valid interface name (1 to {MAX_INTERFACE_NAME} characters, \
                     no '/', ':' or whitespace)"
                )));
            }
        }
        let loopback = spec.address.is_loopback();
        Ok(Vip {
            spec,
            loopback,
            announce_generation: Arc::new(Mutex::new(0)),
        })
    }

    /// The spec this agent was built from.
    pub fn spec(&self) -> &VipSpec {
        &self.spec
    }

    /// True for a loopback VIP, which changes nothing in the kernel.
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// Adds the address (already there with the same prefix on that interface: Ok) and announces it. Returns after
    /// the first announcement round; the other rounds follow from a background thread.
    pub fn start(&self) -> Result<(), VipError> {
        if self.loopback {
            return Ok(());
        }
        let link = self.with_netlink(|handle| self.add(handle))?;
        self.announce(&link)
    }

    /// Removes the address (absent: Ok) and cancels any announcement still to come.
    pub fn stop(&self) -> Result<(), VipError> {
        if self.loopback {
            return Ok(());
        }
        // From here on no announcement is sent: one in flight holds the lock until it is out.
        *lock(&self.announce_generation) += 1;
        self.with_netlink(|handle| self.remove(handle))
    }

    /// Ok(true) if the address is on the interface (the configured one, or any if none is) with the configured
    /// prefix length. A loopback VIP is always present.
    pub fn monitor(&self) -> Result<bool, VipError> {
        if self.loopback {
            return Ok(true);
        }
        self.with_netlink(|handle| async move {
            let (links, assigned) = self.kernel_state(&handle).await?;
            let wanted_index = match &self.spec.interface {
                Some(name) => match links.iter().find(|l| &l.name == name) {
                    Some(link) => Some(link.index),
                    None => return Ok(false),
                },
                None => None,
            };
            Ok(assigned.iter().any(|a| {
                a.address == self.spec.address
                    && a.prefix_len == self.spec.prefix_len
                    && wanted_index.is_none_or(|index| a.index == index)
            }))
        })
    }

    fn label(&self) -> String {
        Cidr(self.spec.address, self.spec.prefix_len).to_string()
    }

    fn netlink_error(&self, action: impl Into<String>, error: rtnetlink::Error) -> VipError {
        let detail = match &error {
            rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
            other => other.to_string(),
        };
        VipError::Netlink {
            vip: self.label(),
            action: action.into(),
            detail,
        }
    }

    /// Runs `work` with a netlink handle on a current-thread runtime made for the call. The socket is opened in
    /// the calling thread, so in its network namespace.
    fn with_netlink<'a, T, F, Fut>(&'a self, work: F) -> Result<T, VipError>
    where
        T: Send,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, VipError>> + 'a,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.with_netlink_here(work);
        }
        // Called from inside a tokio runtime, where a nested block_on would panic: do the call on a scoped thread,
        // which inherits this thread's network namespace.
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("vip-netlink".into())
                .spawn_scoped(scope, || self.with_netlink_here(work))
                .map_err(|e| VipError::Netlink {
                    vip: self.label(),
                    action: "start a thread for the netlink call".into(),
                    detail: e.to_string(),
                })?;
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn with_netlink_here<'a, T, F, Fut>(&'a self, work: F) -> Result<T, VipError>
    where
        F: FnOnce(rtnetlink::Handle) -> Fut + 'a,
        Fut: Future<Output = Result<T, VipError>> + 'a,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| VipError::Netlink {
                vip: self.label(),
                action: "create the runtime for netlink".into(),
                detail: e.to_string(),
            })?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| VipError::Netlink {
                    vip: self.label(),
                    action: "open a netlink socket".into(),
                    detail: e.to_string(),
                })?;
            let connection = tokio::spawn(connection);
            let result = work(handle).await;
            connection.abort();
            result
        })
    }

    /// The links and the addresses of the VIP's family in the caller's namespace.
    async fn kernel_state(
        &self,
        handle: &rtnetlink::Handle,
    ) -> Result<(Vec<Link>, Vec<Assigned>), VipError> {
        let mut links = Vec::new();
        let mut stream = pin!(handle.link().get().execute());
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(|e| self.netlink_error("list the interfaces", e))?
        {
            let mut name = None;
            let mut hardware = None;
            for attribute in message.attributes {
                match attribute {
                    LinkAttribute::IfName(n) => name = Some(n),
                    LinkAttribute::Address(a) => hardware = Some(a),
                    _ => {}
                }
            }
            let ethernet = message.header.link_layer_type == LinkLayerType::Ether
                && !message.header.flags.contains(LinkFlags::Noarp);
            let mac = hardware
                .filter(|_| ethernet)
                .and_then(|a| <[u8; 6]>::try_from(a.as_slice()).ok());
            if let Some(name) = name {
                links.push(Link {
                    index: message.header.index,
                    name,
                    mac,
                });
            }
        }

        let mut assigned = Vec::new();
        let mut stream = pin!(handle.address().get().execute());
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(|e| self.netlink_error("list the addresses", e))?
        {
            // IFA_LOCAL is the local end when a peer is set; otherwise IFA_ADDRESS is the address.
            let mut local = None;
            let mut address = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                if ip.is_ipv4() == self.spec.address.is_ipv4() {
                    assigned.push(Assigned {
                        index: message.header.index,
                        address: ip,
                        prefix_len: message.header.prefix_len,
                        message,
                    });
                }
            }
        }
        Ok((links, assigned))
    }

    /// Adds the address if it is not there yet; returns the link it is on.
    async fn add(&self, handle: rtnetlink::Handle) -> Result<Link, VipError> {
        let (links, assigned) = self.kernel_state(&handle).await?;
        let link = select_interface(&self.spec, &links, &assigned)?;
        let name_of = |index: u32| {
            links
                .iter()
                .find(|l| l.index == index)
                .map_or_else(|| format!("interface #{index}"), |l| l.name.clone())
        };
        let mut present = false;
        for a in assigned.iter().filter(|a| a.address == self.spec.address) {
            if a.index == link.index && a.prefix_len == self.spec.prefix_len {
                present = true;
            } else {
                return Err(VipError::Conflict {
                    vip: self.label(),
                    found: format!("{} on {}", Cidr(a.address, a.prefix_len), name_of(a.index)),
                });
            }
        }
        if present {
            debug!(vip = %self.label(), interface = %link.name, "virtual IP already present");
            return Ok(link);
        }

        let mut request = handle
            .address()
            .add(link.index, self.spec.address, self.spec.prefix_len);
        if self.spec.address.is_ipv6() {
            // No duplicate address detection: the address must be usable (bindable by the portal) at once after a
            // failover, as keepalived does for its IPv6 VIPs.
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => {}
            // Added by someone else between the listing and the request: the same outcome.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => {}
            Err(e) => {
                return Err(self.netlink_error(format!("add the address to {}", link.name), e))
            }
        }
        info!(vip = %self.label(), interface = %link.name, "virtual IP added");
        Ok(link)
    }

    /// Removes the address from the configured interface, or from every interface if none is configured.
    async fn remove(&self, handle: rtnetlink::Handle) -> Result<(), VipError> {
        let (links, assigned) = self.kernel_state(&handle).await?;
        let wanted_index = match &self.spec.interface {
            Some(name) => match links.iter().find(|l| &l.name == name) {
                Some(link) => Some(link.index),
                // The interface is gone, and the address with it.
                None => return Ok(()),
            },
            None => None,
        };
        for a in assigned {
            if a.address != self.spec.address || wanted_index.is_some_and(|index| a.index != index)
            {
                continue;
            }
            let name = links
                .iter()
                .find(|l| l.index == a.index)
                .map_or_else(|| format!("interface #{}", a.index), |l| l.name.clone());
            match handle.address().del(a.message).execute().await {
                Ok(()) => info!(vip = %self.label(), interface = %name, "virtual IP removed"),
                // Removed by someone else meanwhile.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code().abs() == libc::EADDRNOTAVAIL => {}
                Err(e) => {
                    return Err(self.netlink_error(format!("remove the address from {name}"), e))
                }
            }
        }
        Ok(())
    }

    /// Sends the first announcement round now and the rest from a background thread.
    fn announce(&self, link: &Link) -> Result<(), VipError> {
        let Some(mac) = link.mac else {
            debug!(vip = %self.label(), interface = %link.name, "no ARP/ND on this interface: nothing to announce");
            return Ok(());
        };
        let announce_error = |action, source| VipError::Announce {
            vip: self.label(),
            interface: link.name.clone(),
            action,
            source,
        };
        let announcer =
            Announcer::open(self.spec.address, link, mac).map_err(|(a, e)| announce_error(a, e))?;
        let generation = {
            let mut current = lock(&self.announce_generation);
            *current += 1;
            announcer
                .send_round()
                .map_err(|(a, e)| announce_error(a, e))?;
            *current
        };
        let shared = Arc::clone(&self.announce_generation);
        let (vip, interface) = (self.label(), link.name.clone());
        let spawned = std::thread::Builder::new()
            .name("vip-announce".into())
            .spawn(move || {
                for _ in 1..ANNOUNCE_ROUNDS {
                    std::thread::sleep(ANNOUNCE_INTERVAL);
                    let current = lock(&shared);
                    if *current != generation {
                        return;
                    }
                    if let Err((action, error)) = announcer.send_round() {
                        warn!(vip = %vip, interface = %interface, "{action}: {error}");
                        return;
                    }
                }
            });
        if let Err(error) = spawned {
            warn!(vip = %self.label(), interface = %link.name, "only one announcement sent: cannot start the announcement thread: {error}");
        }
        Ok(())
    }
}

/// Locks the announcement generation; a panic elsewhere while it was held leaves a plain counter, still valid.
fn lock(generation: &Mutex<u64>) -> MutexGuard<'_, u64> {
    generation
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The network of `address/prefix_len`.
fn network(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// The configured interface, or the only one with an address in the VIP's subnet (as IPaddr2 finds it).
fn select_interface(
    spec: &VipSpec,
    links: &[Link],
    assigned: &[Assigned],
) -> Result<Link, VipError> {
    let vip = Cidr(spec.address, spec.prefix_len).to_string();
    if let Some(name) = &spec.interface {
        return links
            .iter()
            .find(|l| &l.name == name)
            .cloned()
            .ok_or_else(|| VipError::NoSuchInterface {
                vip,
                interface: name.clone(),
            });
    }
    let subnet = network(spec.address, spec.prefix_len);
    let mut candidates: Vec<&Link> = Vec::new();
    for a in assigned {
        if a.address.is_ipv4() != spec.address.is_ipv4()
            || network(a.address, spec.prefix_len) != subnet
        {
            continue;
        }
        if let Some(link) = links.iter().find(|l| l.index == a.index) {
            if !candidates.iter().any(|c| c.index == link.index) {
                candidates.push(link);
            }
        }
    }
    let subnet = Cidr(subnet, spec.prefix_len).to_string();
    match candidates.as_slice() {
        [only] => Ok((*only).clone()),
        [] => Err(VipError::NoInterfaceInSubnet { vip, subnet }),
        several => Err(VipError::AmbiguousInterface {
            vip,
            subnet,
            interfaces: several
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// A gratuitous ARP payload (Ethernet/IPv4): sender IP = target IP = `ip`. The reply carries the sender MAC as the
/// target MAC too, which Linux requires to take a reply as gratuitous; the request leaves it zero (RFC 5227).
fn gratuitous_arp(operation: u16, mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut packet = [0u8; 28];
    packet[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    packet[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    packet[4] = 6;
    packet[5] = 4;
    packet[6..8].copy_from_slice(&operation.to_be_bytes());
    packet[8..14].copy_from_slice(&mac);
    packet[14..18].copy_from_slice(&ip.octets());
    if operation == ARP_REPLY {
        packet[18..24].copy_from_slice(&mac);
    }
    packet[24..28].copy_from_slice(&ip.octets());
    packet
}

/// An unsolicited Neighbor Advertisement (RFC 4861 4.4) for `target`, override flag set, with the target
/// link-layer address option. The checksum is left zero: the kernel fills it in on an ICMPv6 raw socket.
fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut packet = [0u8; 32];
    packet[0] = 136; // Neighbor Advertisement
    packet[4] = 0x20; // override (not router, not solicited)
    packet[8..24].copy_from_slice(&target.octets());
    packet[24] = 2; // option: target link-layer address
    packet[25] = 1; // length in units of 8 bytes
    packet[26..32].copy_from_slice(&mac);
    packet
}

/// A socket bound to the VIP's interface and the packets to send on it.
enum Announcer {
    Arp {
        socket: Socket,
        /// Where the packets go: the interface, ARP, the broadcast address.
        to: SockAddr,
        mac: [u8; 6],
        ip: Ipv4Addr,
    },
    Na {
        socket: Socket,
        /// All nodes (ff02::1) on the interface.
        to: SockAddr,
        mac: [u8; 6],
        ip: Ipv6Addr,
    },
}

type AnnounceFailure = (&'static str, io::Error);

/// The OS error of a failed step, with the step.
fn step<T>(result: io::Result<T>, action: &'static str) -> Result<T, AnnounceFailure> {
    result.map_err(|e| (action, e))
}

/// A link-layer address (`sockaddr_ll`) on interface `ifindex`: for ARP (`protocol` ETH_P_ARP) to `destination`,
/// or, with protocol 0 and no destination, to bind a packet socket to the interface.
fn link_layer_address(ifindex: i32, protocol: u16, destination: Option<[u8; 6]>) -> SockAddr {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: the storage is zeroed and large enough for a sockaddr_ll (view_as checks the size); the family set
    // below is AF_PACKET and the length given is that of a sockaddr_ll, so the address is what it says it is.
    unsafe {
        let address = storage.view_as::<libc::sockaddr_ll>();
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = protocol.to_be();
        address.sll_ifindex = ifindex;
        if let Some(mac) = destination {
            address.sll_halen = 6;
            address.sll_addr[..6].copy_from_slice(&mac);
        }
        SockAddr::new(
            storage,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    }
}

impl Announcer {
    fn open(address: IpAddr, link: &Link, mac: [u8; 6]) -> Result<Announcer, AnnounceFailure> {
        match address {
            IpAddr::V4(ip) => {
                let ifindex = i32::try_from(link.index).map_err(|_| {
                    (
                        "bind the ARP socket",
                        io::Error::from(io::ErrorKind::InvalidInput),
                    )
                })?;
                // Protocol 0: the socket only sends, it receives nothing.
                let socket = step(
                    Socket::new(Domain::PACKET, Type::DGRAM, None),
                    "open a packet socket",
                )?;
                step(
                    socket.bind(&link_layer_address(ifindex, 0, None)),
                    "bind the packet socket to the interface",
                )?;
                Ok(Announcer::Arp {
                    socket,
                    to: link_layer_address(ifindex, libc::ETH_P_ARP as u16, Some([0xff; 6])),
                    mac,
                    ip,
                })
            }
            IpAddr::V6(ip) => {
                let socket = step(
                    Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)),
                    "open an ICMPv6 socket",
                )?;
                step(
                    socket.bind_device(Some(link.name.as_bytes())),
                    "bind the ICMPv6 socket to the interface",
                )?;
                // Neighbour discovery messages are dropped unless they arrive with hop limit 255.
                let hops = "set the ICMPv6 hop limit to 255";
                step(socket.set_multicast_hops_v6(255), hops)?;
                step(socket.set_unicast_hops_v6(255), hops)?;
                step(
                    socket.set_multicast_if_v6(link.index),
                    "select the interface",
                )?;
                step(
                    socket.set_multicast_loop_v6(false),
                    "disable multicast loop",
                )?;
                let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                Ok(Announcer::Na {
                    socket,
                    to: SocketAddrV6::new(all_nodes, 0, 0, link.index).into(),
                    mac,
                    ip,
                })
            }
        }
    }

    /// One round: an ARP request and an ARP reply, or one Neighbor Advertisement.
    fn send_round(&self) -> Result<(), AnnounceFailure> {
        match self {
            Announcer::Arp {
                socket,
                to,
                mac,
                ip,
            } => {
                for operation in [ARP_REQUEST, ARP_REPLY] {
                    let packet = gratuitous_arp(operation, *mac, *ip);
                    step(socket.send_to(&packet, to), "send gratuitous ARP")?;
                }
                Ok(())
            }
            Announcer::Na {
                socket,
                to,
                mac,
                ip,
            } => {
                let packet = unsolicited_na(*mac, *ip);
                step(
                    socket.send_to(&packet, to),
                    "send unsolicited neighbor advertisement",
                )
                .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::time::Instant;

    const FAKE_MAC: &str = "02:00:00:00:00:99";

    fn spec(address: &str, prefix_len: u8, interface: Option<&str>) -> VipSpec {
        VipSpec {
            address: address.parse().expect("test address"),
            prefix_len,
            interface: interface.map(str::to_string),
        }
    }

    /// Runs `ip args`; panics with its stderr if it fails.
    fn ip(args: &[&str]) -> String {
        let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
            panic!("cannot run `ip` (iproute2 is needed by the vip tests): {e}")
        });
        assert!(
            output.status.success(),
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Two network namespaces, a (veth-a) and b (veth-b), joined by a veth pair. Drop deletes the namespaces it
    /// created (and the links in them), also when the test panics.
    struct NetnsPair {
        a: String,
        b: String,
        created: Vec<String>,
    }

    impl NetnsPair {
        fn new(tag: &str, a_address: &str, b_address: &str) -> NetnsPair {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            assert_eq!(
                euid, 0,
                "the vip tests must run as root: they create network namespaces and veth links"
            );
            if let Err(e) = Command::new("ip").arg("-V").output() {
                panic!("the vip tests need the `ip` command (iproute2): {e}");
            }
            let base = format!("tsvip-{}-{tag}", std::process::id());
            let mut pair = NetnsPair {
                a: format!("{base}-a"),
                b: format!("{base}-b"),
                created: Vec::new(),
            };
            for ns in [pair.a.clone(), pair.b.clone()] {
                ip(&["netns", "add", &ns]);
                pair.created.push(ns);
            }
            let (a, b) = (pair.a.as_str(), pair.b.as_str());
            ip(&[
                "-n", a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b",
                "netns", b,
            ]);
            let v6 = a_address.contains(':');
            let add = |ns: &str, address: &str, dev: &str| {
                let mut args = vec!["-n", ns, "addr", "add", address, "dev", dev];
                if v6 {
                    args.push("nodad");
                }
                ip(&args);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            };
            add(a, a_address, "veth-a");
            add(b, b_address, "veth-b");
            // Until the kernel's link watcher marks both ends operationally up (up to a second later), IPv6 is not
            // set up on them and packets are dropped: an announcement sent then would be lost.
            let deadline = Instant::now() + Duration::from_secs(5);
            for (ns, dev) in [(a, "veth-a"), (b, "veth-b")] {
                loop {
                    let link = ip(&["-n", ns, "-o", "link", "show", "dev", dev]);
                    if link.contains(" state UP ") {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{dev} in {ns} not up after 5 s: {link}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            pair
        }

        /// The MAC address of veth-a.
        fn mac_a(&self) -> String {
            let out = ip(&["-n", &self.a, "-o", "link", "show", "dev", "veth-a"]);
            out.split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .unwrap_or_else(|| panic!("no MAC address in {out:?}"))
                .to_string()
        }

        /// The addresses on veth-a, one line each.
        fn addresses_a(&self) -> String {
            ip(&["-n", &self.a, "-o", "addr", "show", "dev", "veth-a"])
        }

        /// Waits (at most 2 s) until b's neighbour entry for `address` has `mac`; panics with the entry if not.
        fn wait_for_neighbour(&self, address: &str, mac: &str) {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let entry = ip(&["-n", &self.b, "neigh", "show", address, "dev", "veth-b"]);
                if entry.contains(mac) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "b's neighbour entry for {address} is still {entry:?} after 2 s, expected {mac}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn fake_neighbour_in_b(&self, address: &str) {
            ip(&[
                "-n", &self.b, "neigh", "replace", address, "lladdr", FAKE_MAC, "dev", "veth-b",
                "nud", "stale",
            ]);
        }
    }

    impl Drop for NetnsPair {
        fn drop(&mut self) {
            for ns in &self.created {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }

    /// Runs `f` on a thread that has joined the network namespace `ns`.
    fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let path = format!("/var/run/netns/{ns}");
                    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // SAFETY: setns on an open namespace file; it changes only this thread's network namespace.
                    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(result, 0, "setns {path}: {}", io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// start/monitor/stop with an address that is in the namespace's subnet, checked from both namespaces.
    fn add_announce_remove(pair: &NetnsPair, vip: &Vip, vip_address: &str, shown_as: &str) {
        pair.fake_neighbour_in_b(vip_address);
        let mac_a = pair.mac_a();
        assert_ne!(mac_a, FAKE_MAC);
        in_netns(&pair.a, || {
            vip.start().expect("start");
            vip.start().expect("second start (already present)");
            assert!(vip.monitor().expect("monitor"), "monitor after start");
            // From inside a tokio runtime too (the netlink call moves to a scoped thread).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            assert!(runtime
                .block_on(async { vip.monitor() })
                .expect("monitor inside a runtime"));
        });
        let addresses = pair.addresses_a();
        let line = addresses
            .lines()
            .find(|l| l.contains(&format!("{shown_as} ")))
            .unwrap_or_else(|| panic!("{shown_as} not on veth-a: {addresses}"));
        assert!(
            !line.contains("tentative"),
            "the VIP must be usable at once: {line}"
        );
        pair.wait_for_neighbour(vip_address, &mac_a);

        in_netns(&pair.a, || {
            vip.stop().expect("stop");
            assert!(!vip.monitor().expect("monitor"), "monitor after stop");
            vip.stop().expect("second stop (already absent)");
        });
        let addresses = pair.addresses_a();
        assert!(
            !addresses.contains(vip_address),
            "VIP still on veth-a after stop: {addresses}"
        );

        // stop cancelled the announcement rounds still to come: nothing claims the address any more.
        pair.fake_neighbour_in_b(vip_address);
        std::thread::sleep(ANNOUNCE_INTERVAL * ANNOUNCE_ROUNDS + Duration::from_millis(200));
        let entry = ip(&["-n", &pair.b, "neigh", "show", vip_address, "dev", "veth-b"]);
        assert!(
            entry.contains(FAKE_MAC),
            "announced after stop: b's entry is {entry:?}"
        );
    }

    #[test]
    fn vip_ipv4_added_by_subnet_announced_by_gratuitous_arp_and_removed() {
        let pair = NetnsPair::new("v4", "198.18.0.1/24", "198.18.0.2/24");
        let vip = Vip::new(spec("198.18.0.10", 24, None)).expect("valid spec");
        assert!(!vip.is_loopback());
        add_announce_remove(&pair, &vip, "198.18.0.10", "inet 198.18.0.10/24");
        assert!(
            pair.addresses_a().contains("inet 198.18.0.1/24"),
            "the node's own address must stay"
        );
    }

    #[test]
    fn vip_ipv6_added_on_named_interface_announced_by_neighbor_advertisement_and_removed() {
        let pair = NetnsPair::new("v6", "2001:2::1/64", "2001:2::2/64");
        let vip = Vip::new(spec("2001:2::10", 64, Some("veth-a"))).expect("valid spec");
        add_announce_remove(&pair, &vip, "2001:2::10", "inet6 2001:2::10/64");
        assert!(
            pair.addresses_a().contains("inet6 2001:2::1/64"),
            "the node's own address must stay"
        );
    }

    #[test]
    fn vip_loopback_changes_nothing() {
        let pair = NetnsPair::new("lo", "198.18.0.1/24", "198.18.0.2/24");
        for (address, prefix_len) in [("127.0.0.10", 8), ("::1", 128)] {
            let vip = Vip::new(spec(address, prefix_len, None)).expect("valid spec");
            assert!(vip.is_loopback(), "{address}");
            let before = ip(&["-n", &pair.a, "addr"]);
            in_netns(&pair.a, || {
                vip.start().expect("start");
                assert!(vip.monitor().expect("monitor"));
                vip.stop().expect("stop");
                assert!(vip.monitor().expect("monitor"));
            });
            assert_eq!(ip(&["-n", &pair.a, "addr"]), before, "{address}");
        }
    }

    #[test]
    fn vip_interface_errors_name_the_vip_and_change_nothing() {
        let pair = NetnsPair::new("err", "198.18.0.1/24", "198.18.0.2/24");
        let before = ip(&["-n", &pair.a, "addr"]);
        in_netns(&pair.a, || {
            let vip = Vip::new(spec("198.18.1.10", 24, None)).expect("valid spec");
            let error = vip.start().expect_err("no interface in 198.18.1.0/24");
            assert!(
                matches!(error, VipError::NoInterfaceInSubnet { .. }),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                "vip 198.18.1.10/24: no interface has an address in 198.18.1.0/24; \
                 set vip_interface = \"<name>\" in the [[target]] of this VIP"
            );
            assert!(!vip.monitor().expect("monitor"));
            vip.stop().expect("stop of an absent VIP");

            let vip = Vip::new(spec("198.18.0.10", 24, Some("nosuch0"))).expect("valid spec");
            let error = vip.start().expect_err("no such interface");
            assert_eq!(
                error.to_string(),
                "vip 198.18.0.10/24: interface nosuch0 does not exist"
            );
            assert!(!vip.monitor().expect("monitor"));
            vip.stop().expect("stop on a missing interface");
        });
        assert_eq!(ip(&["-n", &pair.a, "addr"]), before);

        // A second interface in the same subnet makes the choice ambiguous; an address already configured
        // elsewhere is a conflict.
        ip(&[
            "-n", &pair.a, "link", "add", "dup0", "type", "veth", "peer", "name", "dup1",
        ]);
        ip(&["-n", &pair.a, "addr", "add", "198.18.0.3/24", "dev", "dup0"]);
        ip(&[
            "-n",
            &pair.a,
            "addr",
            "add",
            "198.18.0.20/16",
            "dev",
            "dup0",
        ]);
        in_netns(&pair.a, || {
            let vip = Vip::new(spec("198.18.0.10", 24, None)).expect("valid spec");
            let error = vip.start().expect_err("ambiguous");
            assert_eq!(
                error.to_string(),
                "vip 198.18.0.10/24: interfaces veth-a, dup0 all have an address in 198.18.0.0/24; \
                 set vip_interface = \"<name>\" in the [[target]] of this VIP"
            );
            let vip = Vip::new(spec("198.18.0.20", 24, Some("veth-a"))).expect("valid spec");
            let error = vip.start().expect_err("conflict");
            assert_eq!(
                error.to_string(),
                "vip 198.18.0.20/24: the address is already configured as 198.18.0.20/16 on dup0; \
                 remove it or correct the VIP"
            );
            assert!(!vip.monitor().expect("monitor"));
        });
        assert!(!pair.addresses_a().contains("198.18.0.10"));
        assert!(!pair.addresses_a().contains("198.18.0.20"));
    }

    #[test]
    fn vip_spec_validation() {
        for (address, prefix_len, interface) in [
            ("198.18.0.10", 0, None),
            ("198.18.0.10", 33, None),
            ("2001:2::10", 129, None),
            ("0.0.0.0", 24, None),
            ("::", 64, None),
            ("224.0.0.1", 24, None),
            ("ff02::1", 64, None),
            ("255.255.255.255", 24, None),
            ("fe80::10", 64, None),
            ("::ffff:198.18.0.10", 120, None),
            ("198.18.0.10", 24, Some("")),
            ("198.18.0.10", 24, Some("a-name-too-long-for-linux")),
            ("198.18.0.10", 24, Some("eth0 ")),
            ("198.18.0.10", 24, Some("eth0:1")),
        ] {
            let spec = spec(address, prefix_len, interface);
            let error = Vip::new(spec.clone()).expect_err(&format!("{spec:?} must be refused"));
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("vip {address}/{prefix_len}: ")),
                "{error}"
            );
        }
        assert!(Vip::new(spec("127.0.0.10", 8, None))
            .expect("loopback")
            .is_loopback());
        assert!(Vip::new(spec("::1", 128, None))
            .expect("loopback")
            .is_loopback());
        assert!(!Vip::new(spec("198.18.0.10", 32, Some("eth0")))
            .expect("valid")
            .is_loopback());
    }

    #[test]
    fn vip_network_of_address() {
        let net = |a: &str, p| network(a.parse().expect("address"), p).to_string();
        assert_eq!(net("198.18.0.10", 24), "198.18.0.0");
        assert_eq!(net("198.18.7.10", 15), "198.18.0.0");
        assert_eq!(net("198.18.0.10", 32), "198.18.0.10");
        assert_eq!(net("2001:2::10", 64), "2001:2::");
        assert_eq!(net("2001:2:0:1::10", 48), "2001:2::");
        assert_eq!(net("2001:2::10", 128), "2001:2::10");
    }

    #[test]
    fn vip_gratuitous_arp_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip = Ipv4Addr::new(198, 18, 0, 10);
        let header = [0, 1, 8, 0, 6, 4];
        let request = gratuitous_arp(ARP_REQUEST, mac, ip);
        let mut expected = Vec::from(header);
        expected.extend([0, 1]);
        expected.extend(mac);
        expected.extend([198, 18, 0, 10]);
        expected.extend([0; 6]);
        expected.extend([198, 18, 0, 10]);
        assert_eq!(request.as_slice(), expected.as_slice());

        let reply = gratuitous_arp(ARP_REPLY, mac, ip);
        let mut expected = Vec::from(header);
        expected.extend([0, 2]);
        expected.extend(mac);
        expected.extend([198, 18, 0, 10]);
        expected.extend(mac);
        expected.extend([198, 18, 0, 10]);
        assert_eq!(reply.as_slice(), expected.as_slice());
    }

    #[test]
    fn vip_unsolicited_na_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let target: Ipv6Addr = "2001:2::10".parse().expect("address");
        let packet = unsolicited_na(mac, target);
        let mut expected = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        expected.extend(target.octets());
        expected.extend([2, 1]);
        expected.extend(mac);
        assert_eq!(packet.as_slice(), expected.as_slice());
    }
}
