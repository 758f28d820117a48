//! Pull flows: a data plane serves a flow's source for download instead of pushing it.
//!
//! A signaling start with `flowType: PULL` makes one. The answer carries an endpoint
//! (`{publicUrl}/pull/{processId}`) and a bearer token scoped to that flow (an EDR in
//! dataspace terms). Tokens are 256 random bits; only their SHA-256 is kept, in memory,
//! with an expiry. The control plane may ask for a new one; suspending, terminating or
//! completing the flow revokes them all. A pull flow moves no data by itself, so it has
//! no run: it lives here, in the data plane's memory, until the process stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_connectors::serve::Served;
use ferry_core::DataAddress;
use rand::rngs::SysRng;
use rand::TryRng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::controller::{lock, now_ms, ControlError, ControlResult, Controller};
use crate::resource::FieldError;
use crate::signaling::{
    flow_source, flow_transfer_name, store_type, Checked, FlowMessage, FlowResponse, FlowState,
    FlowStatus,
};

/// The `endpointType` of the data address a pull start answers with.
pub const HTTP_ENDPOINT_TYPE: &str = "https://w3id.org/idsa/v4.1/HTTP";
/// How long a token is valid unless configured otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(900);
/// Live tokens kept per flow: older ones are dropped first.
const MAX_TOKENS: usize = 8;

type TokenHash = [u8; 32];

struct PullFlow {
    source: DataAddress,
    /// The opened source, shared by the flow's requests once the first opens it.
    opened: Arc<OnceCell<Arc<Served>>>,
    state: FlowState,
    message_id: String,
    /// Live tokens: hash and expiry (ms since the epoch).
    tokens: Vec<(TokenHash, i64)>,
    /// Tokens revoked by a suspend, terminate or completion: a request with one is told so.
    revoked: Vec<TokenHash>,
}

/// A token just made; the only place it exists in clear.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub expires_at: i64,
}

/// What a request with a valid token may read.
pub struct Granted {
    pub source: DataAddress,
    /// The source once opened ([`Served::open`]), kept for the flow's later requests.
    pub opened: Arc<OnceCell<Arc<Served>>>,
}

/// Why a request to a pull endpoint gets no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No bearer token was sent (401).
    Missing,
    /// The token is not one of the flow's (401).
    Invalid,
    /// The token was the flow's and has expired (401).
    Expired,
    /// The token was revoked: the flow is suspended, terminated or completed (403).
    Revoked(FlowState),
}

/// The pull flows this data plane serves.
pub struct PullFlows {
    flows: Mutex<HashMap<String, PullFlow>>,
    ttl: Duration,
}

fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares in time independent of where the first difference is.
fn same(a: &TokenHash, b: &TokenHash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl PullFlows {
    pub fn new(ttl: Duration) -> Self {
        Self {
            flows: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn contains(&self, id: &str) -> bool {
        lock(&self.flows).contains_key(id)
    }

    pub fn state(&self, id: &str) -> Option<FlowState> {
        lock(&self.flows).get(id).map(|f| f.state)
    }

    pub fn message_id(&self, id: &str) -> Option<String> {
        lock(&self.flows).get(id).map(|f| f.message_id.clone())
    }

    /// Records a flow in `state` (PREPARED or STARTED) serving `source`.
    pub fn insert(&self, id: &str, message_id: &str, source: DataAddress, state: FlowState) {
        lock(&self.flows).insert(
            id.to_string(),
            PullFlow {
                source,
                opened: Arc::new(OnceCell::new()),
                state,
                message_id: message_id.to_string(),
                tokens: Vec::new(),
                revoked: Vec::new(),
            },
        );
    }

    /// Sets the state of a flow; leaving STARTED revokes its tokens. `None` when unknown.
    pub fn set_state(&self, id: &str, state: FlowState) -> Option<FlowState> {
        let mut flows = lock(&self.flows);
        let flow = flows.get_mut(id)?;
        flow.state = state;
        if state != FlowState::Started {
            let revoked: Vec<TokenHash> = flow.tokens.drain(..).map(|(h, _)| h).collect();
            flow.revoked.extend(revoked);
            let excess = flow.revoked.len().saturating_sub(64);
            flow.revoked.drain(..excess);
        }
        Some(state)
    }

    /// A new token for a STARTED flow; tokens made before stay valid until they expire.
    pub fn mint(&self, id: &str) -> Result<Minted, Option<FlowState>> {
        let mut flows = lock(&self.flows);
        let flow = flows.get_mut(id).ok_or(None)?;
        if flow.state != FlowState::Started {
            return Err(Some(flow.state));
        }
        let mut bytes = [0u8; 32];
        SysRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random number generator failed");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = now_ms();
        let expires_at = now + self.ttl.as_millis() as i64;
        flow.tokens.retain(|(_, until)| *until > now);
        if flow.tokens.len() >= MAX_TOKENS {
            flow.tokens.remove(0);
        }
        flow.tokens.push((hash(&token), expires_at));
        Ok(Minted { token, expires_at })
    }

    /// The source a request with `token` may read, or why it may not.
    pub fn authorize(&self, id: &str, token: Option<&str>) -> Result<Granted, Denied> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Denied::Missing)?;
        let presented = hash(token);
        let flows = lock(&self.flows);
        // An unknown flow and a wrong token look the same to the caller.
        let flow = flows.get(id).ok_or(Denied::Invalid)?;
        if let Some((_, until)) = flow.tokens.iter().find(|(h, _)| same(h, &presented)) {
            if *until <= now_ms() {
                return Err(Denied::Expired);
            }
            if flow.state == FlowState::Started {
                return Ok(Granted {
                    source: flow.source.clone(),
                    opened: flow.opened.clone(),
                });
            }
            return Err(Denied::Revoked(flow.state));
        }
        if flow.revoked.iter().any(|h| same(h, &presented)) {
            return Err(Denied::Revoked(flow.state));
        }
        Err(Denied::Invalid)
    }

    /// Forgets every token of every flow at once (tests of expiry use a short TTL instead).
    #[cfg(test)]
    fn expire_all(&self) {
        for flow in lock(&self.flows).values_mut() {
            for t in &mut flow.tokens {
                t.1 = 0;
            }
        }
    }
}

/// Where a pull flow's files are downloaded from: `{public_url}/pull/{id}`.
pub fn endpoint(public_url: Option<&str>, id: &str) -> String {
    let base = public_url.unwrap_or("").trim_end_matches('/');
    let id_segment: String = url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    format!("{base}/pull/{id_segment}")
}

/// The Dataplane Signaling `DataAddress` of a pull flow: where to download and with what
/// token (an endpoint data reference).
pub fn endpoint_data_address(public_url: Option<&str>, id: &str, minted: &Minted) -> Value {
    let endpoint = endpoint(public_url, id);
    let expires: DateTime<Utc> =
        DateTime::from_timestamp_millis(minted.expires_at).unwrap_or_default();
    let expires_in = ((minted.expires_at - now_ms()).max(0) / 1000).to_string();
    let property = |name: &str, value: &str| json!({"@type": "EndpointProperty", "name": name, "value": value});
    json!({
        "@type": "DataAddress",
        "endpointType": HTTP_ENDPOINT_TYPE,
        "endpoint": endpoint,
        "endpointProperties": [
            property("authorization", &minted.token),
            property("authType", "bearer"),
            property("expiresAt", &expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            property("expiresIn", &expires_in),
            property("flowId", id),
        ],
    })
}

/// What a `transferType` asks for: `{destinationType, flowType}` or `"HttpData-PULL"`.
/// `Some(destination type)` for a pull, `None` for a push.
pub fn pull_destination(transfer_type: Option<&Value>) -> Option<String> {
    match transfer_type? {
        Value::Object(o) => {
            let flow = o.get("flowType").and_then(Value::as_str)?;
            flow.eq_ignore_ascii_case("pull").then(|| {
                o.get("destinationType")
                    .and_then(Value::as_str)
                    .unwrap_or("HttpData")
                    .to_string()
            })
        }
        Value::String(s) => {
            let (dest, flow) = s.rsplit_once('-')?;
            flow.eq_ignore_ascii_case("pull").then(|| dest.to_string())
        }
        _ => None,
    }
}

impl Controller {
    fn pull_response(&self, id: &str, state: FlowState, minted: Option<&Minted>) -> FlowResponse {
        FlowResponse {
            dataplane_id: self.config().instance.clone(),
            process_id: id.to_string(),
            state,
            data_address: minted
                .map(|m| endpoint_data_address(self.config().public_url.as_deref(), id, m)),
            error: None,
        }
    }

    /// A prepare or start of a pull flow: recorded here, and when started, answered with
    /// the endpoint and a token.
    pub(crate) async fn pull_start(
        &self,
        msg: &FlowMessage,
        ids: &Checked,
        destination_type: &str,
        prepare: bool,
    ) -> ControlResult<FlowResponse> {
        let id = ids.process_id.as_str();
        let pulls = self.pulls();
        if let Some(state) = pulls.state(id) {
            let sent_again = pulls.message_id(id).as_deref() == Some(ids.message_id.as_str());
            return match (state, prepare) {
                (FlowState::Prepared, true) if sent_again => {
                    Ok(self.pull_response(id, state, None))
                }
                (FlowState::Prepared, false) => {
                    pulls.set_state(id, FlowState::Started);
                    self.pull_minted(id)
                }
                // The same start again: a fresh token, the earlier ones still valid.
                (FlowState::Started, false) if sent_again => self.pull_minted(id),
                (state, false) if sent_again => Ok(self.pull_response(id, state, None)),
                (state, _) => Err(ControlError::Conflict(format!(
                    "data flow '{id}' exists already ({state:?}); a {} is accepted once per processId",
                    if prepare { "prepare" } else { "start" }
                ))),
            };
        }
        if self.store().get_run(id).await?.is_some()
            || self
                .store()
                .get_transfer(&flow_transfer_name(id))
                .await?
                .is_some()
        {
            return Err(ControlError::Conflict(format!(
                "data flow '{id}' exists already as a push flow"
            )));
        }
        let mut errors = Vec::new();
        if store_type(destination_type) != Some("http") {
            errors.push(FieldError::new(
                "transferType.destinationType",
                format!("'{destination_type}': ferry serves pull flows over HTTP; use HttpData"),
            ));
        }
        let source = flow_source(msg, &mut errors);
        if !errors.is_empty() {
            return Err(ControlError::BadMessage(errors));
        }
        let Some((source, _)) = source else {
            return Err(ControlError::BadMessage(errors));
        };
        let state = if prepare {
            FlowState::Prepared
        } else {
            FlowState::Started
        };
        pulls.insert(id, &ids.message_id, source, state);
        tracing::info!(flow = id, "pull flow {state:?}");
        if prepare {
            return Ok(self.pull_response(id, state, None));
        }
        self.pull_minted(id)
    }

    fn pull_minted(&self, id: &str) -> ControlResult<FlowResponse> {
        match self.pulls().mint(id) {
            Ok(minted) => Ok(self.pull_response(id, FlowState::Started, Some(&minted))),
            Err(Some(state)) => Err(ControlError::Conflict(format!(
                "data flow '{id}' is {state:?}; tokens are given only while it is STARTED"
            ))),
            Err(None) => Err(ControlError::Missing(format!("data flow '{id}' not found"))),
        }
    }

    /// Moves a pull flow to `state` (its tokens are revoked unless STARTED); `None` when
    /// `id` is not a pull flow.
    pub(crate) fn pull_signal(
        &self,
        id: &str,
        state: FlowState,
    ) -> Option<ControlResult<FlowResponse>> {
        let current = self.pulls().state(id)?;
        let final_state = matches!(current, FlowState::Completed | FlowState::Terminated);
        Some(match state {
            _ if current == state && state != FlowState::Started => {
                Ok(self.pull_response(id, state, None))
            }
            _ if final_state => Err(ControlError::Conflict(format!(
                "data flow '{id}' is {current:?}, which is final"
            ))),
            FlowState::Started if current != FlowState::Suspended => Err(ControlError::Conflict(
                format!("data flow '{id}' is {current:?}, not SUSPENDED"),
            )),
            FlowState::Started => {
                self.pulls().set_state(id, state);
                self.pull_minted(id)
            }
            _ => {
                self.pulls().set_state(id, state);
                tracing::info!(flow = id, "pull flow {state:?}: its tokens are revoked");
                Ok(self.pull_response(id, state, None))
            }
        })
    }

    /// `POST /dataflows/{id}/token`: a new token for a STARTED pull flow. Earlier tokens
    /// stay valid until they expire, so downloads in progress go on.
    pub async fn flow_token(&self, id: &str) -> ControlResult<FlowResponse> {
        if self.pulls().contains(id) {
            return self.pull_minted(id);
        }
        if self.store().get_run(id).await?.is_some() {
            return Err(ControlError::Conflict(format!(
                "data flow '{id}' is a push flow: it has no tokens"
            )));
        }
        Err(ControlError::Missing(format!("data flow '{id}' not found")))
    }

    pub(crate) fn pull_status(&self, id: &str) -> Option<FlowStatus> {
        let state = self.pulls().state(id)?;
        Some(FlowStatus {
            dataflow_id: id.to_string(),
            state,
            dataplane_id: self.config().instance.clone(),
            error: None,
            transfer: String::new(),
            run: None,
            endpoint: Some(endpoint(self.config().public_url.as_deref(), id)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows() -> PullFlows {
        let flows = PullFlows::new(Duration::from_secs(60));
        flows.insert(
            "p1",
            "m1",
            DataAddress::parse("/tmp/x").unwrap(),
            FlowState::Started,
        );
        flows
    }

    #[test]
    fn a_token_opens_its_flow_only_until_it_expires() {
        let flows = flows();
        flows.insert(
            "p2",
            "m2",
            DataAddress::parse("/tmp/y").unwrap(),
            FlowState::Started,
        );
        let t = flows.mint("p1").unwrap();
        assert_eq!(t.token.len(), 64);
        assert!(flows.authorize("p1", Some(&t.token)).is_ok());
        assert_eq!(
            flows.authorize("p2", Some(&t.token)).err(),
            Some(Denied::Invalid)
        );
        assert_eq!(flows.authorize("p1", None).err(), Some(Denied::Missing));
        assert_eq!(flows.authorize("p1", Some("")).err(), Some(Denied::Missing));
        assert_eq!(
            flows.authorize("p1", Some("nope")).err(),
            Some(Denied::Invalid)
        );
        assert_eq!(
            flows.authorize("nope", Some(&t.token)).err(),
            Some(Denied::Invalid)
        );
        flows.expire_all();
        assert_eq!(
            flows.authorize("p1", Some(&t.token)).err(),
            Some(Denied::Expired)
        );
    }

    #[test]
    fn leaving_started_revokes_every_token() {
        let flows = flows();
        let a = flows.mint("p1").unwrap();
        let b = flows.mint("p1").unwrap();
        assert_ne!(a.token, b.token);
        assert!(flows.authorize("p1", Some(&a.token)).is_ok());
        flows.set_state("p1", FlowState::Suspended);
        assert_eq!(
            flows.authorize("p1", Some(&b.token)).err(),
            Some(Denied::Revoked(FlowState::Suspended))
        );
        assert_eq!(flows.mint("p1").unwrap_err(), Some(FlowState::Suspended));
        flows.set_state("p1", FlowState::Started);
        assert_eq!(
            flows.authorize("p1", Some(&a.token)).err(),
            Some(Denied::Revoked(FlowState::Started))
        );
        let c = flows.mint("p1").unwrap();
        assert!(flows.authorize("p1", Some(&c.token)).is_ok());
    }

    #[test]
    fn transfer_types_name_pulls() {
        assert_eq!(
            pull_destination(Some(
                &json!({"destinationType": "HttpData", "flowType": "PULL"})
            )),
            Some("HttpData".into())
        );
        assert_eq!(
            pull_destination(Some(&json!("HttpData-PULL"))),
            Some("HttpData".into())
        );
        assert_eq!(pull_destination(Some(&json!("HttpData-PUSH"))), None);
        assert_eq!(
            pull_destination(Some(
                &json!({"destinationType": "AmazonS3", "flowType": "PUSH"})
            )),
            None
        );
        assert_eq!(pull_destination(None), None);
    }

    #[test]
    fn the_data_address_is_an_endpoint_data_reference() {
        let minted = Minted {
            token: "abc".into(),
            expires_at: now_ms() + 60_000,
        };
        let address = endpoint_data_address(Some("http://dp:8081/"), "p 1", &minted);
        assert_eq!(address["endpointType"], HTTP_ENDPOINT_TYPE);
        assert_eq!(address["endpoint"], "http://dp:8081/pull/p%201");
        let props = address["endpointProperties"].as_array().unwrap();
        let get = |n: &str| {
            props
                .iter()
                .find(|p| p["name"] == n)
                .map(|p| p["value"].clone())
        };
        assert_eq!(get("authorization"), Some(json!("abc")));
        assert_eq!(get("authType"), Some(json!("bearer")));
        assert!(get("expiresAt").is_some());
    }
}
