//! `portcullis authz suggest`: allow rules that admit exactly the peers a
//! running proxy has seen, as a reviewable TOML block.
//!
//! The observations come from the admin endpoint's `GET /peers` (SPIFFE ID,
//! or subject fields and issuer, per listener) or from JSON access logs
//! (`--log-format json`: the `listener` and `peer_identity` of each line).
//! Every rule names one identity exactly; with `--generalize`, SPIFFE IDs of
//! one trust domain that differ only in their last path segment become one
//! glob, and the output says which identities it covers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::AuthzError;

/// Largest `/peers` answer read.
const MAX_PEERS_BODY: usize = 64 * 1024 * 1024;
/// Limit on fetching `/peers`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the observations come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `http://host:port/peers` of a running proxy's admin endpoint.
    Peers(String),
    /// A saved `GET /peers` answer (e.g. fetched with curl from an mTLS
    /// admin endpoint).
    PeersFile(PathBuf),
    /// A file of JSON log lines.
    Log(PathBuf),
}

/// What `authz suggest` was asked.
#[derive(Debug, Clone)]
pub struct SuggestRequest {
    /// Where the observations come from.
    pub source: Source,
    /// Only this listener.
    pub listener: Option<String>,
    /// Fold SPIFFE IDs that share a trust domain and parent path into a glob.
    pub generalize: bool,
}

/// One identity seen on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// How it is shown, e.g. a SPIFFE ID or `CN=batch, O=Example`.
    identity: String,
    /// The rule fields that name it, in order.
    fields: Vec<(String, String)>,
    /// Its issuer, when the source knows it.
    issuer: Option<String>,
    /// How often, when the source knows it.
    count: Option<u64>,
    last_seen: Option<String>,
    last_decision: Option<String>,
}

/// Read the observations and write the rules.
pub fn suggest(request: &SuggestRequest) -> Result<String, AuthzError> {
    let (origin, mut observed) = match &request.source {
        Source::Peers(url) => (url.clone(), from_peers(&fetch(url)?)?),
        Source::PeersFile(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| AuthzError::Input(format!("{}: cannot read: {e}", path.display())))?;
            let json = serde_json::from_slice(&bytes).map_err(|e| {
                AuthzError::Input(format!(
                    "{}: not the JSON of GET /peers ({e})",
                    path.display()
                ))
            })?;
            (path.display().to_string(), from_peers(&json)?)
        }
        Source::Log(path) => (path.display().to_string(), from_log(path)?),
    };
    if let Some(name) = &request.listener {
        if !observed.contains_key(name) {
            let seen: Vec<&str> = observed.keys().map(String::as_str).collect();
            return Err(AuthzError::Input(format!(
                "no peers seen on listener {name:?} in {origin}; listeners seen: {}",
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            )));
        }
        observed.retain(|listener, _| listener == name);
    }
    Ok(render(&origin, &observed, request.generalize))
}

/// GET the admin endpoint's `/peers` (a bare `http://host:port` gets
/// `/peers` added) with hyper; only plain HTTP, as the admin endpoint
/// serves on loopback.
fn fetch(url: &str) -> Result<Value, AuthzError> {
    let bad = |why: String| AuthzError::Input(format!("--from {url:?}: {why}"));
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("not a URL ({e})")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only http:// URLs of the admin endpoint are fetched; for an mTLS admin \
             endpoint, save its /peers with curl and pass the file to --from"
                .into(),
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = match uri.path() {
        "" | "/" => "/peers".to_string(),
        path => uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| path.to_string()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| bad(format!("cannot start the async runtime: {e}")))?;
    let body = runtime
        .block_on(async { tokio::time::timeout(FETCH_TIMEOUT, get(&host, port, &path)).await })
        .map_err(|_| bad(format!("no answer within {FETCH_TIMEOUT:?}")))?
        .map_err(bad)?;
    serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the answer is not the JSON of GET /peers ({e}); is this a portcullis admin endpoint?"
        ))
    })
}

async fn get(host: &str, port: u16, path: &str) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_PEERS_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    Ok(body)
}

type ByListener = BTreeMap<String, Vec<Observed>>;

/// The identities in a `GET /peers` answer, by listener.
fn from_peers(json: &Value) -> Result<ByListener, AuthzError> {
    let bad = |why: &str| AuthzError::Input(format!("not the JSON of GET /peers: {why}"));
    let listeners = json
        .get("listeners")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no \"listeners\" object"))?;
    let mut out = ByListener::new();
    for (listener, rows) in listeners {
        let rows = rows
            .as_array()
            .ok_or_else(|| bad("a listener's peers are not a list"))?;
        let mut seen = Vec::new();
        for row in rows {
            let text = |key: &str| row.get(key).and_then(Value::as_str).map(str::to_string);
            let identity = text("identity").ok_or_else(|| bad("a peer without \"identity\""))?;
            let fields = row
                .get("fields")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("a peer without \"fields\""))?
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|v| (k.clone(), v.to_string()))
                        .ok_or_else(|| bad("a field value that is not a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if fields.is_empty() {
                return Err(bad("a peer with no fields"));
            }
            seen.push(Observed {
                identity,
                fields: ordered(fields),
                issuer: text("issuer"),
                count: row.get("count").and_then(Value::as_u64),
                last_seen: text("last_seen"),
                last_decision: text("last_decision"),
            });
        }
        out.insert(listener.clone(), seen);
    }
    Ok(out)
}

/// Rule fields in the order a reader expects them.
fn ordered(mut fields: Vec<(String, String)>) -> Vec<(String, String)> {
    const ORDER: [&str; 6] = ["spiffe_id", "cn", "o", "ou", "dns", "serial"];
    fields.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    fields
}

/// The identities in JSON log lines (`listener` and `peer_identity`, at
/// the top level or under `fields`), by listener. Lines that are not JSON
/// objects are skipped; a file with no usable line is an error.
fn from_log(path: &PathBuf) -> Result<ByListener, AuthzError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthzError::Input(format!("{}: cannot read: {e}", path.display())))?;
    let mut counts: BTreeMap<(String, String), LogSightings> = BTreeMap::new();
    for line in text.lines() {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = object
            .get("fields")
            .and_then(Value::as_object)
            .unwrap_or(&object);
        let text = |key: &str| {
            fields
                .get(key)
                .or_else(|| object.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (Some(listener), Some(identity)) = (text("listener"), text("peer_identity")) else {
            continue;
        };
        if identity.is_empty() {
            continue;
        }
        let entry = counts.entry((listener, identity)).or_default();
        entry.count += 1;
        entry.last_seen = text("timestamp").or(entry.last_seen.take());
        entry.last_decision = text("decision").or(entry.last_decision.take());
    }
    if counts.is_empty() {
        return Err(AuthzError::Input(format!(
            "{}: no JSON log line with a listener and a peer_identity (run the proxy with --log-format json)",
            path.display()
        )));
    }
    let mut out = ByListener::new();
    for ((listener, identity), sightings) in counts {
        let LogSightings {
            count,
            last_seen,
            last_decision,
        } = sightings;
        let Some(fields) = fields_of_log_identity(&identity) else {
            continue;
        };
        out.entry(listener).or_default().push(Observed {
            identity,
            fields,
            issuer: None,
            count: Some(count),
            last_seen,
            last_decision,
        });
    }
    Ok(out)
}

/// What the log says of one identity on one listener.
#[derive(Debug, Default)]
struct LogSightings {
    count: u64,
    last_seen: Option<String>,
    last_decision: Option<String>,
}

/// The rule fields of a `peer_identity` as the log writes it.
fn fields_of_log_identity(identity: &str) -> Option<Vec<(String, String)>> {
    let field = |name: &str, value: &str| Some(vec![(name.to_string(), value.to_string())]);
    if identity.starts_with("spiffe://") {
        return field("spiffe_id", identity);
    }
    for (prefix, name) in [("CN=", "cn"), ("DNS=", "dns"), ("serial=", "serial")] {
        if let Some(value) = identity.strip_prefix(prefix) {
            return field(name, value);
        }
    }
    None
}

/// A TOML string literal.
fn quoted(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

fn seen_note(o: &Observed) -> String {
    let mut note = Vec::new();
    if let Some(count) = o.count {
        note.push(format!(
            "seen {count} time{}",
            if count == 1 { "" } else { "s" }
        ));
    }
    if let Some(last) = &o.last_seen {
        note.push(format!("last {last}"));
    }
    if let Some(decision) = &o.last_decision {
        note.push(format!("last decision {decision}"));
    }
    note.join(", ")
}

/// One `[[inbound.allow]]` block per identity (or per glob).
fn render(origin: &str, observed: &ByListener, generalize: bool) -> String {
    let mut out = format!(
        "# Allow rules suggested by `portcullis authz suggest` from {origin}.\n\
         # Review them before use: each rule admits exactly the identities named\n\
         # in its comment. Paste each listener's block into that [[inbound]] entry.\n"
    );
    if observed.is_empty() {
        out.push_str("# No peer identity was observed.\n");
    }
    for (listener, peers) in observed {
        out.push_str(&format!(
            "\n# ---- listener {}: {} identit{} observed\n",
            quoted(listener),
            peers.len(),
            if peers.len() == 1 { "y" } else { "ies" }
        ));
        let (globs, exact) = if generalize {
            generalized(peers)
        } else {
            (Vec::new(), peers.iter().collect())
        };
        for (glob, covered) in globs {
            out.push_str("\n[[inbound.allow]]\n");
            out.push_str(&format!(
                "# covers {} observed identities (and any other SPIFFE ID below this path):\n",
                covered.len()
            ));
            for o in covered {
                out.push_str(&format!("#   {} ({})\n", o.identity, seen_note(o)));
            }
            out.push_str(&format!("spiffe_id = {}\n", quoted(&glob)));
        }
        for o in exact {
            if let Some((field, _)) = o
                .fields
                .iter()
                .chain(
                    o.issuer
                        .as_ref()
                        .map(|i| ("issuer".to_string(), i.clone()))
                        .iter(),
                )
                .find(|(_, value)| value.contains('*'))
            {
                out.push_str(&format!(
                    "\n# skipped {}: its {field} contains '*', which a rule would read as a wildcard\n",
                    o.identity
                ));
                continue;
            }
            out.push_str("\n[[inbound.allow]]\n");
            let note = seen_note(o);
            if note.is_empty() {
                out.push_str(&format!("# {}\n", o.identity));
            } else {
                out.push_str(&format!("# {}: {note}\n", o.identity));
            }
            for (field, value) in &o.fields {
                out.push_str(&format!("{field} = {}\n", quoted(value)));
            }
            match &o.issuer {
                // A subject alone could be claimed under any trusted issuer.
                Some(issuer) if o.fields.iter().all(|(f, _)| f != "spiffe_id") => {
                    out.push_str(&format!("issuer = {}\n", quoted(issuer)));
                }
                None if o.fields.iter().all(|(f, _)| f != "spiffe_id") => {
                    out.push_str(
                        "# the log does not name the issuer: consider adding issuer = \"...\"\n",
                    );
                }
                _ => {}
            }
        }
    }
    out
}

/// SPIFFE IDs that share a trust domain and parent path, two or more of
/// them, become `spiffe://td/parent/*`; everything else stays exact.
fn generalized(peers: &[Observed]) -> (Vec<(String, Vec<&Observed>)>, Vec<&Observed>) {
    let mut groups: BTreeMap<String, Vec<&Observed>> = BTreeMap::new();
    let mut exact = Vec::new();
    for o in peers {
        let spiffe = o
            .fields
            .iter()
            .find(|(f, _)| f == "spiffe_id")
            .map(|(_, v)| v.as_str());
        let parent = spiffe.and_then(|id| {
            let rest = id.strip_prefix("spiffe://")?;
            let (_, path) = rest.split_once('/')?;
            path.contains('/')
                .then(|| id.rsplit_once('/').map(|(p, _)| p))?
        });
        match parent {
            Some(parent) => groups.entry(parent.to_string()).or_default().push(o),
            None => exact.push(o),
        }
    }
    let mut globs = Vec::new();
    for (parent, members) in groups {
        if members.len() >= 2 {
            globs.push((format!("{parent}/*"), members));
        } else {
            exact.extend(members);
        }
    }
    (globs, exact)
}

#[cfg(test)]
mod tests;
