//! DNS answers (pure): a query's bytes in, the response's bytes out, from one network's
//! [`Zone`]. Only standard queries of one question in class IN are answered; names outside
//! the zone are refused, never looked up elsewhere.

use super::Zone;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::Ipv4Addr;

/// Time to live of every answer: short, as instances come and go.
pub const TTL_SECS: u32 = 5;
const REVERSE_SUFFIX: &str = ".in-addr.arpa";

/// What a query name is, seen from the zone.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// An instance of the zone's domain, by name (which may have no record).
    Host(String),
    /// A reverse lookup of an address.
    Reverse(Ipv4Addr),
    /// The domain itself: it exists, with no address.
    Apex,
    /// Not ours.
    Foreign,
}

/// The response to the query in `bytes` (`None`: not a query, or not even a DNS header,
/// which gets no answer at all).
pub fn answer(bytes: &[u8], zone: Option<&Zone>) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = false;
    let code = match (req.metadata.op_code, req.queries.as_slice()) {
        (OpCode::Query, [q]) => {
            resp.add_query(q.clone());
            respond(q, zone, &mut resp)
        }
        (OpCode::Query, _) => ResponseCode::FormErr,
        _ => ResponseCode::NotImp,
    };
    resp.metadata.response_code = code;
    resp.to_vec().ok()
}

/// Fills `resp`'s answers for `q`; returns its response code.
fn respond(q: &Query, zone: Option<&Zone>, resp: &mut Message) -> ResponseCode {
    let Some(zone) = zone else {
        // The controller has not sent this network's names (yet): say so, do not guess.
        return ResponseCode::ServFail;
    };
    if q.query_class() != DNSClass::IN {
        return ResponseCode::Refused;
    }
    let record = |data: RData| Record::from_rdata(q.name().clone(), TTL_SECS, data);
    match lookup(q.name(), zone) {
        Lookup::Foreign => return ResponseCode::Refused,
        Lookup::Apex => {}
        Lookup::Host(host) => {
            let Some(ip) = zone.records.get(&host) else {
                resp.metadata.authoritative = true;
                return ResponseCode::NXDomain;
            };
            if q.query_type() == RecordType::A {
                resp.add_answer(record(RData::A(A(*ip))));
            }
        }
        Lookup::Reverse(ip) => {
            let Some((host, _)) = zone.records.iter().find(|(_, a)| **a == ip) else {
                return ResponseCode::Refused;
            };
            let Ok(target) = Name::from_ascii(format!("{host}.{}.", zone.domain)) else {
                return ResponseCode::ServFail;
            };
            if q.query_type() == RecordType::PTR {
                resp.add_answer(record(RData::PTR(PTR(target))));
            }
        }
    }
    resp.metadata.authoritative = true;
    ResponseCode::NoError
}

/// Where `name` falls: a single label or `<label>.<domain>` is a host of the zone.
fn lookup(name: &Name, zone: &Zone) -> Lookup {
    let text = name.to_ascii().to_ascii_lowercase();
    let text = text.trim_end_matches('.');
    if text == zone.domain {
        return Lookup::Apex;
    }
    if let Some(reversed) = text.strip_suffix(REVERSE_SUFFIX) {
        return reverse(reversed).map_or(Lookup::Foreign, Lookup::Reverse);
    }
    let host = match text.strip_suffix(&format!(".{}", zone.domain)) {
        Some(host) => host,
        None => text,
    };
    if host.is_empty() || host.contains('.') {
        return Lookup::Foreign;
    }
    Lookup::Host(host.to_string())
}

/// The address of a reverse name's labels (`20.0.10.10` → 10.10.0.20).
fn reverse(labels: &str) -> Option<Ipv4Addr> {
    let octets: Vec<u8> = labels
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a]: [u8; 4] = octets.try_into().ok()?;
    Some(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone {
            domain: "backend.internal".into(),
            records: [("web1".to_string(), Ipv4Addr::new(10, 10, 0, 20))].into(),
        }
    }

    fn ask(name: &str, kind: RecordType, zone: Option<&Zone>) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        let bytes = answer(&q.to_vec().expect("encode"), zone).expect("an answer");
        let resp = Message::from_vec(&bytes).expect("decodes");
        assert_eq!(resp.metadata.id, q.metadata.id);
        assert_eq!(resp.metadata.message_type, MessageType::Response);
        assert!(!resp.metadata.recursion_available, "never recursive");
        resp
    }

    fn addresses(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn instances_resolve_by_name_and_by_name_in_the_domain() {
        let z = zone();
        for name in [
            "web1",
            "web1.",
            "WEB1.backend.internal.",
            "web1.backend.internal",
        ] {
            let r = ask(name, RecordType::A, Some(&z));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(r.metadata.authoritative);
            assert_eq!(addresses(&r), vec![Ipv4Addr::new(10, 10, 0, 20)], "{name}");
        }
        let aaaa = ask("web1", RecordType::AAAA, Some(&z));
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty(), "no IPv6 address: no data");
        let ptr = ask("20.0.10.10.in-addr.arpa.", RecordType::PTR, Some(&z));
        match ptr.answers.first().map(|r| &r.data) {
            Some(RData::PTR(PTR(n))) => assert_eq!(n.to_ascii(), "web1.backend.internal."),
            other => panic!("no PTR: {other:?}"),
        }
    }

    #[test]
    fn unknown_names_of_the_domain_do_not_exist_and_others_are_refused() {
        let z = zone();
        let r = ask("db9.backend.internal", RecordType::A, Some(&z));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            ask("db9", RecordType::A, Some(&z)).metadata.response_code,
            ResponseCode::NXDomain
        );
        for foreign in [
            "example.com",
            "web1.other.internal",
            "web1.backend.internal.evil",
            "8.8.8.8.in-addr.arpa",
        ] {
            let r = ask(foreign, RecordType::A, Some(&z));
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{foreign}");
            assert!(r.answers.is_empty());
        }
        let unknown = ask("web1", RecordType::A, None);
        assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn garbage_and_responses_get_no_answer() {
        assert!(answer(b"", Some(&zone())).is_none());
        assert!(answer(&[0xff; 7], Some(&zone())).is_none());
        let mut resp = Message::response(1, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("web1").expect("name"),
            RecordType::A,
        ));
        let bytes = resp.to_vec().expect("encode");
        assert!(
            answer(&bytes, Some(&zone())).is_none(),
            "no reflection loops"
        );
    }
}
