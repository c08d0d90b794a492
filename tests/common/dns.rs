//! A DNS server on loopback for the discovery tests: authoritative for whatever names the
//! test sets (A and SRV records with the TTL it chooses), over UDP and TCP on one port, with
//! a log of the queries it answered. It speaks the wire format through hickory's own codec
//! (the resolver's protocol crate), so the resolver under test meets a real server; the test
//! changes records between queries and can take the server down and up again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// SRV records: (priority, weight, port, target).
type Srv = Vec<(u16, u16, u16, String)>;

#[derive(Default)]
struct Zone {
    a: HashMap<String, (Vec<Ipv4Addr>, u32)>,
    srv: HashMap<String, (Srv, u32)>,
    /// Queries answered: (when, name, type).
    log: Vec<(Instant, String, RecordType)>,
}

/// A running test DNS server.
pub struct DnsServer {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Mutex<CancellationToken>,
    /// The tasks that own the UDP socket and the TCP listener: each closes its socket when
    /// it ends.
    sockets: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn key(name: &str) -> String {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{n}.")
}

impl DnsServer {
    /// Starts on a free loopback port.
    pub async fn start() -> DnsServer {
        // A UDP port whose TCP twin is taken is tried again with another.
        let (udp, tcp) = 'bind: {
            for _ in 0..50 {
                let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
                if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                    break 'bind (udp, tcp);
                }
            }
            panic!("no loopback port free for both UDP and TCP");
        };
        let addr = udp.local_addr().unwrap();
        let s = DnsServer {
            addr,
            zone: Arc::new(Mutex::new(Zone::default())),
            stop: Mutex::new(CancellationToken::new()),
            sockets: Mutex::new(Vec::new()),
        };
        s.serve(udp, tcp);
        s
    }

    fn serve(&self, udp: UdpSocket, tcp: TcpListener) {
        let stop = self.stop.lock().unwrap().clone();
        let zone = self.zone.clone();
        let (z2, s2) = (zone.clone(), stop.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = udp.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                };
                if let Some(out) = answer(&zone, &buf[..n]) {
                    let _ = udp.send_to(&out, peer).await;
                }
            }
        });
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut conn, _) = tokio::select! {
                    _ = s2.cancelled() => return,
                    r = tcp.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (zone, stop) = (z2.clone(), s2.clone());
                tokio::spawn(async move {
                    let session = async {
                        loop {
                            let mut len = [0u8; 2];
                            conn.read_exact(&mut len).await?;
                            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                            conn.read_exact(&mut msg).await?;
                            if let Some(out) = answer(&zone, &msg) {
                                conn.write_all(&(out.len() as u16).to_be_bytes()).await?;
                                conn.write_all(&out).await?;
                            }
                        }
                        #[allow(unreachable_code)]
                        Ok::<(), std::io::Error>(())
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = session => {}
                    }
                });
            }
        });
        self.sockets.lock().unwrap().extend([udp_task, tcp_task]);
    }

    /// Sets the A records of `name` (replacing any), with `ttl` seconds.
    pub fn set_a(&self, name: &str, ips: &[&str], ttl: u32) {
        let ips = ips
            .iter()
            .map(|i| i.parse().expect("an IPv4 address"))
            .collect();
        self.zone.lock().unwrap().a.insert(key(name), (ips, ttl));
    }

    /// Sets the SRV records of `name`: (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let r = records
            .iter()
            .map(|(p, w, port, t)| (*p, *w, *port, key(t)))
            .collect();
        self.zone.lock().unwrap().srv.insert(key(name), (r, ttl));
    }

    /// When `name` was asked for, by type.
    pub fn queries(&self, name: &str, t: RecordType) -> Vec<Instant> {
        let k = key(name);
        let z = self.zone.lock().unwrap();
        z.log
            .iter()
            .filter(|(_, n, rt)| *n == k && *rt == t)
            .map(|(at, _, _)| *at)
            .collect()
    }

    /// Stops answering (both sockets close): the server is down.
    pub fn stop(&self) {
        self.stop.lock().unwrap().cancel();
    }

    /// Answers again on the same port, after [`DnsServer::stop`].
    pub async fn restart(&self) {
        // The stopped tasks close the old sockets as they end, on whichever thread sees the
        // stop: bind only once they have, or the port may still be taken.
        let old = std::mem::take(&mut *self.sockets.lock().unwrap());
        for task in old {
            let _ = task.await;
        }
        let udp = UdpSocket::bind(self.addr).await.expect("udp rebind");
        let tcp = TcpListener::bind(self.addr).await.expect("tcp rebind");
        *self.stop.lock().unwrap() = CancellationToken::new();
        self.serve(udp, tcp);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.lock().unwrap().cancel();
    }
}

/// The response to one query message, from the zone as it is now.
fn answer(zone: &Mutex<Zone>, msg: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(msg).ok()?;
    let q = req.queries().first()?.clone();
    let name = key(&q.name().to_utf8());
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    let mut z = zone.lock().unwrap();
    z.log.push((Instant::now(), name.clone(), q.query_type()));
    let owner = Name::from_utf8(&name).ok()?;
    let known = z.a.contains_key(&name) || z.srv.contains_key(&name);
    match q.query_type() {
        RecordType::A => {
            if let Some((ips, ttl)) = z.a.get(&name) {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(owner.clone(), *ttl, RData::A(A(*ip))));
                }
            }
        }
        RecordType::SRV => {
            if let Some((recs, ttl)) = z.srv.get(&name) {
                for (p, w, port, target) in recs {
                    let t = Name::from_utf8(target).ok()?;
                    resp.add_answer(Record::from_rdata(
                        owner.clone(),
                        *ttl,
                        RData::SRV(SRV::new(*p, *w, *port, t)),
                    ));
                }
            }
        }
        _ => {}
    }
    if !known {
        resp.set_response_code(ResponseCode::NXDomain);
    }
    resp.to_vec().ok()
}
