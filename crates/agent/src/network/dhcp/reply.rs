//! DHCP answers (pure): the lease the controller decided for a MAC, offered and acknowledged
//! as it is, and the Ethernet/IPv4/UDP frames around them.

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::Ipv4Addr;

/// How long a lease is good for; the address never changes, so renewals only confirm it.
pub const LEASE_SECS: u32 = 86_400;
const ETHERTYPE_IPV4: u16 = 0x0800;
const UDP: u8 = 17;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// A VM NIC's lease: what the controller decided, the same on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl Lease {
    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    /// The address the answers come from (and renewals go to): the network's gateway.
    pub fn server(&self) -> Ipv4Addr {
        self.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// The answer to `req` for `lease`: OFFER to a DISCOVER, ACK to a REQUEST of the lease's
/// address (or a renewal), NAK to a REQUEST of anything else; nothing to other messages.
/// The gateway is also the DNS server (the network's, in its router); `domain` is the
/// network's DNS domain, when known.
pub fn answer(req: &Message, lease: &Lease, domain: Option<&str>) -> Option<Message> {
    if req.opcode() != Opcode::BootRequest || req.chaddr().get(..6) != Some(&lease.mac[..]) {
        return None;
    }
    let kind = match req.opts().msg_type()? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            let asked = match req.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => req.ciaddr(),
            };
            if asked == lease.ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        _ => return None,
    };
    let yiaddr = if kind == MessageType::Nak {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.ip
    };
    let mut msg = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        lease.server(),
        req.giaddr(),
        &lease.mac,
    );
    msg.set_opcode(Opcode::BootReply)
        .set_flags(Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.server()));
    if kind != MessageType::Nak {
        opts.insert(DhcpOption::AddressLeaseTime(LEASE_SECS));
        opts.insert(DhcpOption::SubnetMask(lease.mask()));
        if let Some(gw) = lease.gateway {
            opts.insert(DhcpOption::Router(vec![gw]));
            opts.insert(DhcpOption::DomainNameServer(vec![gw]));
        }
        if let Some(domain) = domain {
            opts.insert(DhcpOption::DomainName(domain.to_string()));
        }
    }
    Some(msg)
}

/// The DHCP message of a frame sent to the server port, with the sender's MAC.
pub fn parse_request(frame: &[u8]) -> Option<([u8; 6], Message)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != UDP || ihl < 20 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    if dport != SERVER_PORT {
        return None;
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(frame.get(6..12)?);
    let msg = Message::decode(&mut Decoder::new(udp.get(8..)?)).ok()?;
    Some((src, msg))
}

/// A broadcast Ethernet frame carrying `msg` from `server` (IP) and `src` (MAC).
pub fn frame(msg: &Message, src: [u8; 6], server: Ipv4Addr) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    msg.encode(&mut Encoder::new(&mut payload)).ok()?;
    let udp_len = u16::try_from(8 + payload.len()).ok()?;
    let ip_len = udp_len.checked_add(20)?;
    let mut f = Vec::with_capacity(14 + usize::from(ip_len));
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, UDP, 0, 0]);
    ip.extend_from_slice(&server.octets());
    ip.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(&payload);
    Some(f)
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 10, 40, 0, 10];

    fn lease() -> Lease {
        Lease {
            mac: MAC,
            ip: Ipv4Addr::new(10, 40, 0, 10),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 40, 0, 1)),
        }
    }

    fn request(kind: MessageType, mac: [u8; 6], asked: Option<Ipv4Addr>) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(7, z, z, z, z, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = asked {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        m
    }

    #[test]
    fn offers_and_acks_the_decided_lease_only() {
        let discover = request(MessageType::Discover, MAC, None);
        let offer = answer(&discover, &lease(), Some("backend.internal")).expect("offer");
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 40, 0, 10));
        assert_eq!(offer.xid(), 7);
        assert_eq!(
            offer.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            offer.opts().get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 40, 0, 1
            )]))
        );
        assert_eq!(
            offer.opts().get(OptionCode::DomainName),
            Some(&DhcpOption::DomainName("backend.internal".into()))
        );
        let ack = answer(
            &request(MessageType::Request, MAC, Some(lease().ip)),
            &lease(),
            None,
        );
        assert_eq!(ack.expect("ack").opts().msg_type(), Some(MessageType::Ack));
        let other = Some(Ipv4Addr::new(10, 40, 0, 99));
        let nak = answer(&request(MessageType::Request, MAC, other), &lease(), None).expect("nak");
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        let stranger = request(MessageType::Discover, [2, 0, 0, 0, 0, 1], None);
        assert!(answer(&stranger, &lease(), None).is_none());
    }

    #[test]
    fn frames_round_trip() {
        let msg = request(MessageType::Discover, MAC, None);
        let f = frame(&msg, MAC, Ipv4Addr::new(10, 40, 0, 1)).expect("frame");
        // Our own frame goes to the client port, so it is not a request...
        assert!(parse_request(&f).is_none());
        // ...but with the ports swapped it parses back to the same message.
        let mut to_server = f.clone();
        to_server[34..36].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        to_server[36..38].copy_from_slice(&SERVER_PORT.to_be_bytes());
        let (src, back) = parse_request(&to_server).expect("parses");
        assert_eq!((src, back), (MAC, msg));
        assert_eq!(checksum(&f[14..34]), 0, "valid IPv4 header checksum");
        assert!(parse_request(&f[..20]).is_none());
    }
}
