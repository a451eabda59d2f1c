//! A tiny authoritative DNS server over UDP, standing in for a cluster's
//! CoreDNS: it answers A and AAAA queries for the names it was given, NXDOMAIN
//! for every other name, and remembers every question it was asked, so a test
//! can check that a client used the search domains of its `resolv.conf`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// TTL of every answer: zero, so that a resolver asks again each time and a
/// test that changes an answer sees the change at once.
const TTL: u32 = 0;

/// One question the server was asked: the name (fully qualified, lower case,
/// without the final dot) and the record type (`A`, `AAAA`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub kind: String,
}

/// A running server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    asked: Arc<Mutex<Vec<Question>>>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Serves `records` (fully qualified names, with or without the final
    /// dot, to their addresses) on `socket`, which the caller bound where
    /// the clients look (in a network namespace, 127.0.0.1:53).
    pub fn start(socket: std::net::UdpSocket, records: &[(&str, IpAddr)]) -> anyhow::Result<Self> {
        socket.set_nonblocking(true)?;
        let addr = socket.local_addr()?;
        let socket = UdpSocket::from_std(socket)?;
        let mut table = Zone::new();
        for (name, ip) in records {
            table.entry(normalise(name)).or_default().push(*ip);
        }
        let zone = Arc::new(Mutex::new(table));
        let served = zone.clone();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let answer = {
                    let zone = served
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    answer(&zone, &buf[..len], &log)
                };
                let Some(answer) = answer else {
                    continue;
                };
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        Ok(Self {
            addr,
            zone,
            asked,
            task,
        })
    }

    /// Binds 127.0.0.1:0 (for tests that can point a resolver at any port).
    pub async fn start_local(records: &[(&str, IpAddr)]) -> anyhow::Result<Self> {
        Self::start(std::net::UdpSocket::bind("127.0.0.1:0")?, records)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on `name` has exactly the addresses `ips`.
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        self.zone
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(normalise(name), ips.to_vec());
    }

    /// Every question asked so far, in order.
    pub fn asked(&self) -> Vec<Question> {
        self.asked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Zone = HashMap<String, Vec<IpAddr>>;

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The response to one datagram, `None` for one that is no query.
fn answer(zone: &Zone, datagram: &[u8], log: &Mutex<Vec<Question>>) -> Option<Vec<u8>> {
    let request = Message::from_vec(datagram).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    let name = normalise(&query.name().to_string());
    log.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(Question {
            name: name.clone(),
            kind: query.query_type().to_string(),
        });
    match zone.get(&name) {
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) => {
            let owner: Name = query.name().clone();
            for ip in ips {
                let rdata = match (ip, query.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    // The name exists without this type: an empty NOERROR.
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
            }
        }
    }
    response.to_vec().ok()
}
