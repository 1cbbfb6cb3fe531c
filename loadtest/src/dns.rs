//! [`DnsServer`]: a real, authoritative DNS server on loopback for tests and load tests.
//!
//! The records to serve are described with the [`DnsRecords`] builder (MX, null MX, A, AAAA,
//! TXT, plus names that must fail with SERVFAIL). [`DnsServer::start`] binds UDP and TCP on the
//! same `127.0.0.1` port and serves them with hickory-server, so a resolver pointed at
//! [`DnsServer::addr`] sees what it would see from a real authoritative server:
//!
//! * one authoritative zone (with an SOA) is created per top-level label used by the records
//!   (all names under `test.` live in the zone `test.`), so a name under a served suffix that
//!   has no records at all is answered NXDOMAIN with the SOA in the authority section;
//! * a name that has records of other types only is answered NOERROR with an empty answer
//!   (NODATA);
//! * a name configured with [`DnsRecords::servfail`], and every name under it, is answered
//!   SERVFAIL whatever the query type;
//! * names outside every served suffix are REFUSED;
//! * a zone named with [`DnsRecords::sign`] is signed (DNSSEC, Ed25519, NSEC denial) with a
//!   key made at start; [`DnsServer::trust_anchors`] gives its DNSKEY in the presentation
//!   format a validating resolver takes as a trust anchor. [`DnsRecords::sign_badly`] signs a
//!   zone but hands out another key as its anchor, so that every answer from it is bogus.
//!
//! Invalid input (a malformed name, an empty name) never panics: it is reported by
//! [`DnsServer::start`] as an [`std::io::ErrorKind::InvalidInput`] error wrapping a
//! [`DnsRecordError`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_server::proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_server::proto::dnssec::{DnssecSigner, SigningKey};
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// TTL of records added before any call to [`DnsRecords::ttl`].
const DEFAULT_TTL: u32 = 300;
/// TTL of the zones' SOA records, and their negative-caching TTL (SOA MINIMUM).
const SOA_TTL: u32 = 60;
/// Serial number of every zone (zones never change once served).
const SERIAL: u32 = 1;
/// Longest character-string of a TXT record (RFC 1035 §3.3.14).
const TXT_CHUNK: usize = 255;
/// A TCP connection that sends no request for this long is closed by the server.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-connection buffer of outgoing TCP responses.
const TCP_RESPONSE_BUFFER: usize = 32;
/// How many random UDP ports are tried before giving up finding one whose TCP twin is free.
const BIND_ATTEMPTS: usize = 32;
/// How long the signatures of a signed zone stay valid.
const SIGNATURE_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

/// Why a [`DnsRecords`] set cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DnsRecordError {
    /// A name (owner name or MX exchange) is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given to the builder.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An owner name is empty or the root: there is no zone to serve it from.
    #[error("a record cannot be owned by the root name ({name:?})")]
    RootOwner {
        /// The name as given to the builder.
        name: String,
    },
    /// The zone could not be signed.
    #[error("cannot sign the zone {zone}: {reason}")]
    Signing {
        /// Origin of the zone.
        zone: String,
        /// What failed.
        reason: String,
    },
    /// The zone refused the record (hickory-server's `upsert` failed).
    #[error("the zone {zone} refused the record {record}")]
    Rejected {
        /// Origin of the zone.
        zone: String,
        /// The record, in presentation format.
        record: String,
    },
}

impl From<DnsRecordError> for std::io::Error {
    fn from(err: DnsRecordError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err)
    }
}

/// The data of one record, as given to the builder (names are parsed by [`DnsServer::start`]).
#[derive(Clone, Debug)]
enum Data {
    Mx {
        preference: u16,
        exchange: String,
    },
    NullMx,
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
    Cname(String),
    Tlsa {
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    },
}

/// One record, as given to the builder.
#[derive(Clone, Debug)]
struct Entry {
    owner: String,
    ttl: u32,
    data: Data,
}

/// Records to serve. Builder style; every name is a DNS name, with or without the trailing dot
/// (all names are taken as fully qualified).
///
/// ```
/// # use std::net::Ipv4Addr;
/// # use volley_loadtest::DnsRecords;
/// let records = DnsRecords::new()
///     .ttl(60)
///     .mx("example.test", 10, "mx1.example.test")
///     .a("mx1.example.test", Ipv4Addr::LOCALHOST)
///     .null_mx("nomail.test")
///     .servfail("broken.test");
/// ```
#[derive(Clone, Debug)]
pub struct DnsRecords {
    ttl: u32,
    entries: Vec<Entry>,
    servfail: Vec<String>,
    /// Zones to sign, and whether their published anchor is the key that signed them.
    signed: Vec<(String, bool)>,
}

impl Default for DnsRecords {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            entries: Vec::new(),
            servfail: Vec::new(),
            signed: Vec::new(),
        }
    }
}

impl DnsRecords {
    /// An empty set of records; the TTL is 300 seconds until [`DnsRecords::ttl`] changes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the TTL (in seconds) of the records added after this call.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    /// Adds `domain MX preference host`. Several MX records may be added for one domain.
    pub fn mx(self, domain: &str, preference: u16, host: &str) -> Self {
        self.push(
            domain,
            Data::Mx {
                preference,
                exchange: host.to_owned(),
            },
        )
    }

    /// Adds the null MX of RFC 7505 (`domain MX 0 .`): the domain accepts no mail.
    pub fn null_mx(self, domain: &str) -> Self {
        self.push(domain, Data::NullMx)
    }

    /// Adds `host A ip`.
    pub fn a(self, host: &str, ip: Ipv4Addr) -> Self {
        self.push(host, Data::A(ip))
    }

    /// Adds `host AAAA ip`.
    pub fn aaaa(self, host: &str, ip: Ipv6Addr) -> Self {
        self.push(host, Data::Aaaa(ip))
    }

    /// Adds `name TXT text`, e.g. a DKIM key at `selector._domainkey.example.test`. Text longer
    /// than 255 bytes is split into several character-strings of one record, which resolvers
    /// concatenate (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    pub fn txt(self, name: &str, text: &str) -> Self {
        self.push(name, Data::Txt(text.to_owned()))
    }

    /// Adds `name CNAME target`.
    pub fn cname(self, name: &str, target: &str) -> Self {
        self.push(name, Data::Cname(target.to_owned()))
    }

    /// Adds `name TLSA usage selector matching data` (RFC 6698), e.g. at `_25._tcp.mx.example`.
    pub fn tlsa(self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> Self {
        self.push(
            name,
            Data::Tlsa {
                usage,
                selector,
                matching,
                data: data.to_vec(),
            },
        )
    }

    /// Signs the zone `zone` (a top-level label such as `"secure"`) with DNSSEC; its key is
    /// in [`DnsServer::trust_anchors`].
    pub fn sign(mut self, zone: &str) -> Self {
        self.signed.push((zone.to_owned(), true));
        self
    }

    /// Signs the zone `zone`, but [`DnsServer::trust_anchors`] names another key for it: a
    /// validating resolver finds every answer from it bogus (a forged or broken zone).
    pub fn sign_badly(mut self, zone: &str) -> Self {
        self.signed.push((zone.to_owned(), false));
        self
    }

    /// Makes every query for `domain`, and for every name under it, fail with SERVFAIL,
    /// whatever records are configured for those names.
    pub fn servfail(mut self, domain: &str) -> Self {
        self.servfail.push(domain.to_owned());
        self
    }

    fn push(mut self, owner: &str, data: Data) -> Self {
        self.entries.push(Entry {
            owner: owner.to_owned(),
            ttl: self.ttl,
            data,
        });
        self
    }
}

/// Parses `name` as a fully qualified DNS name (IDNs are converted to their A-label form).
fn parse_name(name: &str) -> Result<Name, DnsRecordError> {
    let mut parsed = Name::from_utf8(name).map_err(|e| DnsRecordError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// Parses an owner name, which must not be the root.
fn parse_owner(name: &str) -> Result<Name, DnsRecordError> {
    let parsed = parse_name(name)?;
    if parsed.is_root() {
        return Err(DnsRecordError::RootOwner {
            name: name.to_owned(),
        });
    }
    Ok(parsed)
}

/// Splits `text` into character-strings of at most 255 bytes (one empty string for "").
fn txt_chunks(text: &str) -> Vec<&[u8]> {
    if text.is_empty() {
        return vec![&[]];
    }
    text.as_bytes().chunks(TXT_CHUNK).collect()
}

/// Builds the record of `entry`.
fn to_record(entry: &Entry) -> Result<Record, DnsRecordError> {
    let owner = parse_owner(&entry.owner)?;
    let data = match &entry.data {
        Data::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, parse_name(exchange)?)),
        Data::NullMx => RData::MX(MX::new(0, Name::root())),
        Data::A(ip) => RData::A(A(*ip)),
        Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Data::Txt(text) => RData::TXT(TXT::from_bytes(txt_chunks(text))),
        Data::Cname(target) => RData::CNAME(CNAME(parse_name(target)?)),
        Data::Tlsa {
            usage,
            selector,
            matching,
            data,
        } => RData::TLSA(TLSA::new(
            CertUsage::from(*usage),
            Selector::from(*selector),
            Matching::from(*matching),
            data.clone(),
        )),
    };
    Ok(Record::from_rdata(owner, entry.ttl, data))
}

/// An empty authoritative zone for `origin`, holding only its SOA.
fn new_zone(
    origin: &Name,
    signed: bool,
) -> Result<InMemoryZoneHandler<TokioRuntimeProvider>, DnsRecordError> {
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        signed.then_some(NxProofKind::Nsec),
    );
    let label = |prefix: &str| {
        Name::from_ascii(prefix)
            .and_then(|p| p.append_domain(origin))
            .map_err(|e| DnsRecordError::InvalidName {
                name: format!("{prefix}.{origin}"),
                reason: e.to_string(),
            })
    };
    let soa = SOA::new(
        label("ns")?,
        label("hostmaster")?,
        SERIAL,
        3600,
        600,
        86400,
        SOA_TTL,
    );
    let record = Record::from_rdata(origin.clone(), SOA_TTL, RData::SOA(soa));
    insert(&mut zone, origin, record)?;
    Ok(zone)
}

fn insert(
    zone: &mut InMemoryZoneHandler<TokioRuntimeProvider>,
    origin: &Name,
    record: Record,
) -> Result<(), DnsRecordError> {
    let text = record.to_string();
    if zone.upsert_mut(record, SERIAL) {
        Ok(())
    } else {
        Err(DnsRecordError::Rejected {
            zone: origin.to_string(),
            record: text,
        })
    }
}

/// A new Ed25519 key, and its DNSKEY record at `origin` in presentation format.
fn zone_key(origin: &Name) -> Result<(Ed25519SigningKey, String), DnsRecordError> {
    let error = |reason: String| DnsRecordError::Signing {
        zone: origin.to_string(),
        reason,
    };
    let pkcs8 = Ed25519SigningKey::generate_pkcs8().map_err(|e| error(e.to_string()))?;
    let key = Ed25519SigningKey::from_pkcs8(&pkcs8).map_err(|e| error(e.to_string()))?;
    let public = key.to_public_key().map_err(|e| error(e.to_string()))?;
    let dnskey = DNSKEY::from_key(&public);
    let record = Record::from_rdata(
        origin.clone(),
        SOA_TTL,
        RData::DNSSEC(DNSSECRData::DNSKEY(dnskey)),
    );
    Ok((key, record.to_string()))
}

/// Signs `zone` with a new key; returns the anchor to publish for it (its own DNSKEY, or,
/// when `honest` is false, another key's).
fn sign(
    zone: &mut InMemoryZoneHandler<TokioRuntimeProvider>,
    origin: &Name,
    honest: bool,
) -> Result<String, DnsRecordError> {
    let error = |reason: String| DnsRecordError::Signing {
        zone: origin.to_string(),
        reason,
    };
    let (key, anchor) = zone_key(origin)?;
    let public = key.to_public_key().map_err(|e| error(e.to_string()))?;
    let signer = DnssecSigner::new(
        DNSKEY::from_key(&public),
        Box::new(key),
        origin.clone(),
        SIGNATURE_VALIDITY,
    );
    zone.add_zone_signing_key_mut(signer)
        .map_err(|e| error(e.to_string()))?;
    zone.secure_zone_mut().map_err(|e| error(e.to_string()))?;
    if honest {
        Ok(anchor)
    } else {
        Ok(zone_key(origin)?.1)
    }
}

/// What [`build`] makes: the catalog, the SERVFAIL names, the zones' origins, and the trust
/// anchors of the signed zones.
type Built = (Catalog, Vec<LowerName>, Vec<Name>, Vec<String>);

/// Builds the catalog (one zone per top-level label) and the list of SERVFAIL names.
fn build(records: &DnsRecords) -> Result<Built, DnsRecordError> {
    let signed: Vec<(Name, bool)> = records
        .signed
        .iter()
        .map(|(zone, honest)| parse_owner(zone).map(|z| (z.to_lowercase(), *honest)))
        .collect::<Result<_, _>>()?;
    let is_signed = |origin: &Name| signed.iter().find(|(z, _)| z == origin).map(|(_, h)| *h);
    let mut zones: BTreeMap<Name, InMemoryZoneHandler<TokioRuntimeProvider>> = BTreeMap::new();
    for entry in &records.entries {
        let record = to_record(entry)?;
        let origin = record.name.trim_to(1).to_lowercase();
        let zone = match zones.entry(origin.clone()) {
            std::collections::btree_map::Entry::Occupied(zone) => zone.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let fresh = new_zone(&origin, is_signed(&origin).is_some())?;
                slot.insert(fresh)
            }
        };
        insert(zone, &origin, record)?;
    }
    let mut anchors = Vec::new();
    for (origin, zone) in &mut zones {
        if let Some(honest) = is_signed(origin) {
            anchors.push(sign(zone, origin, honest)?);
        }
    }
    let servfail = records
        .servfail
        .iter()
        .map(|name| parse_name(name).map(LowerName::from))
        .collect::<Result<Vec<_>, _>>()?;
    let origins: Vec<Name> = zones.keys().cloned().collect();
    let mut catalog = Catalog::new();
    for (origin, zone) in zones {
        let handler: Arc<dyn ZoneHandler> = Arc::new(zone);
        catalog.upsert(LowerName::from(origin), vec![handler]);
    }
    Ok((catalog, servfail, origins, anchors))
}

/// What is served: the catalog, and the names answered SERVFAIL.
struct Zones {
    catalog: Catalog,
    servfail: Vec<LowerName>,
}

impl Zones {
    fn is_servfail(&self, request: &Request) -> bool {
        request
            .queries
            .queries()
            .iter()
            .any(|query| self.servfail.iter().any(|name| name.zone_of(query.name())))
    }
}

/// The request handler: SERVFAIL for the configured names, the catalog for everything else.
/// The zones can be replaced while the server runs ([`DnsServer::replace`]).
struct Handler {
    zones: Arc<std::sync::RwLock<Arc<Zones>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let zones = Arc::clone(&self.zones.read().unwrap_or_else(|e| e.into_inner()));
        if !zones.is_servfail(request) {
            return zones
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let response = MessageResponseBuilder::from_message_request(request)
            .error_msg(&request.metadata, ResponseCode::ServFail);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!(%err, "dns: cannot send SERVFAIL response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Binds a UDP socket on `127.0.0.1:0` and a TCP listener on the same port.
async fn bind() -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("cannot bind UDP and TCP on one port")))
}

/// A running DNS server on `127.0.0.1` (UDP and TCP on the same port). Dropping it leaves the
/// server running until the tokio runtime stops; call [`DnsServer::shutdown`] to stop it.
pub struct DnsServer {
    addr: SocketAddr,
    zones: Vec<Name>,
    anchors: Vec<String>,
    served: Arc<std::sync::RwLock<Arc<Zones>>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let zones: Vec<String> = self.zones.iter().map(Name::to_string).collect();
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("zones", &zones)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Builds the zones from `records`, binds UDP and TCP on the same `127.0.0.1` port and
    /// starts serving. Invalid records are reported as [`std::io::ErrorKind::InvalidInput`]
    /// (wrapping a [`DnsRecordError`]).
    pub async fn start(records: DnsRecords) -> std::io::Result<DnsServer> {
        let (catalog, servfail, zones, anchors) = build(&records)?;
        let (udp, tcp) = bind().await?;
        let addr = udp.local_addr()?;
        let served = Arc::new(std::sync::RwLock::new(Arc::new(Zones {
            catalog,
            servfail,
        })));
        let mut server = Server::new(Handler {
            zones: Arc::clone(&served),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            if stopped.await.is_err() {
                // The handle was dropped without shutdown: keep serving until the runtime stops.
                std::future::pending::<()>().await;
            }
            if let Err(err) = server.shutdown_gracefully().await {
                tracing::debug!(%err, "dns: server stopped with an error");
            }
        });
        tracing::debug!(%addr, zones = zones.len(), "dns: serving");
        Ok(DnsServer {
            addr,
            zones,
            anchors,
            served,
            stop,
            task,
        })
    }

    /// The address (UDP and TCP) the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `records` from now on instead of the ones given to [`DnsServer::start`] (a
    /// zone whose records change). Signed zones get new keys: their anchors change too.
    pub fn replace(&mut self, records: DnsRecords) -> std::io::Result<()> {
        let (catalog, servfail, zones, anchors) = build(&records)?;
        *self.served.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Zones { catalog, servfail });
        self.zones = zones;
        self.anchors = anchors;
        Ok(())
    }

    /// The DNSKEY records of the signed zones, one per line in presentation format: the
    /// trust anchors a validating resolver needs (a file of them is what `[dane]
    /// trust_anchor` reads). Empty when no zone is signed.
    pub fn trust_anchors(&self) -> String {
        self.anchors.iter().map(|a| format!("{a}\n")).collect()
    }

    /// Stops accepting queries and waits for the server's tasks to end.
    pub async fn shutdown(self) {
        // An error means the task is already gone (the runtime is shutting down).
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            tracing::debug!(%err, "dns: server task failed");
        }
    }
}
