//! DNS over TCP (RFC 7766): the same answers as over UDP, each message prefixed by its
//! length. Resolvers fall back to TCP for large answers and some ask by TCP only. Against a
//! hostile guest: a bounded number of connections at once (past it a new one is closed at
//! once), each with an idle timeout, a lifetime and a bounded number of queries; a query
//! longer than [`MAX_QUERY`] closes its connection; queries count in the rate limit of
//! their source as over UDP.

use super::limit::RateLimit;
use super::{answer, Zones, PORT};
use crate::network::command::enter_netns;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Larger queries are refused (as over UDP).
pub const MAX_QUERY: usize = super::server::MAX_QUERY;
/// Connections served at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 16;
/// Queries answered on one connection.
pub const MAX_QUERIES: usize = 64;
/// A connection silent this long is closed (RFC 7766 suggests seconds).
pub const IDLE: Duration = Duration::from_secs(2);
/// No connection lives longer.
pub const LIFETIME: Duration = Duration::from_secs(10);

/// What the connections of one server share.
#[derive(Clone)]
pub struct Shared {
    pub vni: u32,
    pub zones: Zones,
    pub limit: Arc<Mutex<RateLimit>>,
    pub open: Arc<AtomicUsize>,
}

/// Enters `netns` (this thread only) and listens on `address`:53 of `device` only; accepts
/// wake every `poll` to look at the stop flag.
pub fn listen(
    netns: &str,
    device: &str,
    address: Ipv4Addr,
    poll: Duration,
) -> Result<TcpListener, String> {
    enter_netns(netns)?;
    let listener = TcpListener::bind((address, PORT))
        .map_err(|e| format!("bind tcp {address}:{PORT}: {e}"))?;
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(
        &listener,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(device),
    )
    .map_err(|e| format!("bind to device {device}: {e}"))?;
    // Linux applies SO_RCVTIMEO to accept(): the loop sees its stop flag.
    let timeout = nix::sys::time::TimeVal::new(poll.as_secs() as i64, poll.subsec_micros().into());
    setsockopt(&listener, sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| format!("accept timeout: {e}"))?;
    Ok(listener)
}

/// Accepts connections until `stop`, each served on a thread of its own.
pub fn accept_loop(listener: &TcpListener, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = match listener.accept() {
            Ok(got) => got,
            Err(e) if crate::network::command::nothing_yet(e.kind()) => continue,
            Err(e) => {
                tracing::debug!(vni = shared.vni, error = %e, "DNS accept failed");
                continue;
            }
        };
        if shared.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(vni = shared.vni, %peer, "too many DNS connections; closed");
            continue;
        }
        let conn = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dns-tcp-{}", shared.vni))
            .spawn(move || {
                if let Err(e) = configure(&stream) {
                    tracing::debug!(error = %e, "DNS connection not configured");
                } else {
                    serve_stream(stream, peer.ip(), &conn, Instant::now());
                }
                conn.open.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    stream.set_nodelay(true)
}

/// Answers the length-prefixed queries of one connection until it closes, is idle, sends
/// too much, or reaches a limit.
pub fn serve_stream(mut stream: impl Read + Write, peer: IpAddr, shared: &Shared, opened: Instant) {
    let mut buf = [0u8; MAX_QUERY];
    for _ in 0..MAX_QUERIES {
        if opened.elapsed() > LIFETIME {
            return;
        }
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_QUERY || stream.read_exact(&mut buf[..len]).is_err() {
            return;
        }
        let allowed = match shared.limit.lock() {
            Ok(mut limit) => limit.allow(peer, Instant::now()),
            Err(_) => false,
        };
        if !allowed {
            return;
        }
        let Some(reply) = shared
            .zones
            .with(shared.vni, |zone| answer(&buf[..len], zone))
        else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = reply_len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use std::io::Cursor;

    /// A connection: what the client sent, what the server wrote.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn shared() -> Shared {
        let zones = Zones::default();
        zones.replace(&[nimbus_agent_api::NetworkNames {
            vni: 7,
            domain: "backend.internal".into(),
            records: vec![nimbus_agent_api::NameRecord {
                name: "web1".into(),
                address: "10.10.0.20".into(),
            }],
        }]);
        Shared {
            vni: 7,
            zones,
            limit: Arc::new(Mutex::new(RateLimit::default())),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn framed(name: &str, kind: RecordType) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        let bytes = q.to_vec().expect("encode");
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend(bytes);
        out
    }

    fn run(input: Vec<u8>) -> Vec<Message> {
        let mut conn = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let peer = "10.10.0.21".parse().expect("ip");
        serve_stream(&mut conn, peer, &shared(), Instant::now());
        let mut answers = Vec::new();
        let mut rest = conn.output.as_slice();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            answers.push(Message::from_vec(&rest[2..2 + len]).expect("an answer"));
            rest = &rest[2 + len..];
        }
        answers
    }

    #[test]
    fn queries_on_one_connection_are_answered_in_order() {
        let mut input = framed("web1", RecordType::A);
        input.extend(framed("web1.backend.internal", RecordType::AAAA));
        input.extend(framed("db9", RecordType::A));
        let answers = run(input);
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].answers.len(), 1, "the A record");
        assert_eq!(answers[1].metadata.response_code, ResponseCode::NoError);
        assert!(
            answers[1].answers.is_empty(),
            "v4 only: no data, not NXDOMAIN"
        );
        assert_eq!(answers[2].metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn an_oversized_query_closes_the_connection() {
        let mut input = (MAX_QUERY as u16 + 1).to_be_bytes().to_vec();
        input.extend(vec![0u8; MAX_QUERY + 1]);
        input.extend(framed("web1", RecordType::A));
        assert!(run(input).is_empty(), "nothing after an oversized length");
        assert!(run(vec![0, 0]).is_empty(), "an empty message closes too");
    }

    #[test]
    fn a_connection_answers_a_bounded_number_of_queries() {
        let input: Vec<u8> = (0..MAX_QUERIES + 10)
            .flat_map(|_| framed("web1", RecordType::A))
            .collect();
        assert_eq!(run(input).len(), MAX_QUERIES);
    }
}
