//! The Dataplane Signaling API of a data plane: data flows that a control plane (ferry's
//! own, or a dataspace connector's) prepares, starts, suspends, resumes and terminates.
//!
//! A flow is a run, and the flow id is the control plane's `processId`, which is the run
//! id. A run a ferry control plane dispatches is in the shared store already; a flow that
//! another control plane starts becomes a one-time transfer named after its process id,
//! built from the message's data addresses. Either way the run executes, checkpoints,
//! retries and reports as every other run, and the control plane hears of it at its
//! `callbackAddress` when it starts, completes or fails.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_state::{RunRecord, TransferRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::controller::{
    lock, now_ms, with_progress, ControlError, ControlResult, Controller, Inner, SUSPENDED,
};
use crate::resource::{validate, FieldError, RunView};
use crate::retry::Backoff;
use crate::selector::canonical_type;
use crate::webhook::post_with_retries;
use ferry_engine::manifest::API_VERSION;

/// Annotations a flow's transfer keeps about the message that made it.
pub const PROCESS_ID: &str = "ferry.dev/process-id";
pub const MESSAGE_ID: &str = "ferry.dev/message-id";
pub const CALLBACK_ADDRESS: &str = "ferry.dev/callback-address";
/// The label that marks transfers made by the signaling API.
pub const FLOW_LABEL: &str = "ferry.dev/flow";

/// A data flow's state, as the signaling protocol names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlowState {
    Prepared,
    Starting,
    Started,
    Suspended,
    Completed,
    Terminated,
}

impl FlowState {
    /// The state a run stands for.
    pub fn of(run: &RunRecord) -> Self {
        match run.phase.as_str() {
            "Succeeded" => Self::Completed,
            SUSPENDED => Self::Suspended,
            _ if run.finished() => Self::Terminated,
            "Pending" if run.attempt == 0 && run.owner.is_none() => Self::Starting,
            _ => Self::Started,
        }
    }
}

/// `DataFlowPrepareMessage` and `DataFlowStartMessage`. Fields other protocols add are
/// accepted and ignored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowMessage {
    /// Unique per message: a message sent again gets the same answer.
    pub message_id: Option<String>,
    /// The control plane's transfer process id; the flow's id from then on.
    pub process_id: Option<String>,
    pub participant_id: Option<String>,
    pub counter_party_id: Option<String>,
    pub dataspace_context: Option<String>,
    pub agreement_id: Option<String>,
    pub dataset_id: Option<String>,
    /// Where the control plane hears of the flow: `{callbackAddress}/transfers/{processId}/dataflow/started|completed|errored`.
    pub callback_address: Option<String>,
    #[schema(value_type = Object)]
    pub transfer_type: Option<Value>,
    /// The destination (provider push): a `DataAddress`.
    #[schema(value_type = Object)]
    pub data_address: Option<Value>,
    /// The destination, as older control planes name it.
    #[schema(value_type = Object)]
    pub destination_data_address: Option<Value>,
    /// The source. The protocol leaves it to the data plane (from `datasetId`); ferry takes
    /// it here, or in `metadata.sourceDataAddress`.
    #[schema(value_type = Object)]
    pub source_data_address: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Flow properties. ferry reads `ferry.execution.engine` (`auto`, `inProcess` or an
    /// engine's name) and `ferry.execution.prefer` (`latency`, `throughput`) here or in
    /// `metadata`: the transfer's `spec.execution`; and `ferry.stream` (`true`: a
    /// StreamTransfer, which keeps the destination up to date until the flow is
    /// suspended or terminated, and never completes).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
}

const EXECUTION_ENGINE: &str = "ferry.execution.engine";
/// A flow property: `true` makes the flow a StreamTransfer.
const STREAM: &str = "ferry.stream";
const EXECUTION_PREFER: &str = "ferry.execution.prefer";

/// `DataFlowSuspendMessage`, `DataFlowTerminateMessage`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReasonMessage {
    pub reason: Option<String>,
}

/// `DataFlowResponseMessage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowResponse {
    pub dataplane_id: String,
    pub process_id: String,
    pub state: FlowState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub data_address: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `DataFlowStatusResponseMessage`, with what ferry knows of the run.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowStatus {
    pub dataflow_id: String,
    pub state: FlowState,
    pub dataplane_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The transfer the flow's run belongs to (none for a pull flow).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transfer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunView>,
    /// A pull flow's download endpoint; its tokens come from `POST /dataflows/{id}/token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// What a data plane tells the control plane's callback address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEvent {
    Started,
    Completed,
    Errored,
}

impl FlowEvent {
    fn path(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Errored => "errored",
        }
    }
}

/// The transfer name of a flow started by another control plane: the process id when it
/// is a valid name, else a readable prefix of it and a hash.
pub fn flow_transfer_name(process_id: &str) -> String {
    let clean: String = process_id
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let candidate = format!("flow-{clean}");
    if candidate == format!("flow-{process_id}") && crate::resource::check_name(&candidate).is_ok()
    {
        return candidate;
    }
    let hash = crate::resource::name_hash(process_id);
    let prefix: String = clean.trim_matches('-').chars().take(36).collect();
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        format!("flow-{hash:016x}")
    } else {
        format!("flow-{prefix}-{hash:016x}")
    }
}

fn check_process_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if id
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '?' || c == '#')
    {
        return Err(format!(
            "'{id}' must not contain '/', '?', '#' or control characters"
        ));
    }
    Ok(())
}

/// Store types as other control planes name them.
pub(crate) fn store_type(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let known = match lower.as_str() {
        "httpdata" | "https://w3id.org/idsa/v4.1/http" | "https" => "http",
        "amazons3" | "aws-s3" => "s3",
        "azurestorage" | "azureblob" | "azure-blob" => "azure",
        "googlecloudstorage" | "gcs-bucket" => "gcs",
        "localfile" | "file-system" | "filesystem" => "file",
        other => return canonical_type(other),
    };
    Some(known)
}

/// A `DataAddress` (flat, or with `endpointProperties`) as a ferry address.
fn address(value: &Value, field: &str, errors: &mut Vec<FieldError>) -> Option<Value> {
    let Value::Object(object) = value else {
        errors.push(FieldError::new(field, "must be a DataAddress object"));
        return None;
    };
    let mut props = Map::new();
    for (k, v) in object {
        match k.as_str() {
            "@type" | "@context" | "@id" => {}
            "endpointProperties" => {
                let Value::Array(items) = v else {
                    errors.push(FieldError::new(
                        format!("{field}.endpointProperties"),
                        "must be a list of {name, value}",
                    ));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    match (item.get("name").and_then(Value::as_str), item.get("value")) {
                        (Some(name), Some(value)) => {
                            props.insert(name.to_string(), value.clone());
                        }
                        _ => errors.push(FieldError::new(
                            format!("{field}.endpointProperties[{i}]"),
                            "needs a name and a value",
                        )),
                    }
                }
            }
            _ => {
                props.insert(k.clone(), v.clone());
            }
        }
    }
    let declared = props
        .remove("type")
        .or_else(|| props.remove("endpointType"));
    props.remove("endpointType");
    let Some(declared) = declared.as_ref().and_then(Value::as_str) else {
        errors.push(FieldError::new(
            format!("{field}.type"),
            "required: the store type (file, s3, azure, gcs, http, postgres, mysql, sqlite, kafka)",
        ));
        return None;
    };
    let Some(kind) = store_type(declared) else {
        errors.push(FieldError::new(
            format!("{field}.type"),
            format!("unknown store type '{declared}'; use file, s3, azure, gcs, http, postgres, mysql, sqlite or kafka"),
        ));
        return None;
    };
    for (alias, name) in [
        ("bucketName", "bucket"),
        ("keyName", "key"),
        ("objectName", "key"),
        ("containerName", "container"),
        ("accountName", "account"),
        ("blobName", "path"),
        ("baseUrl", "url"),
        ("bootstrapServers", "brokers"),
        ("topicName", "topic"),
    ] {
        if let Some(v) = props.remove(alias) {
            props.entry(name.to_string()).or_insert(v);
        }
    }
    // `endpoint` is the object store's service endpoint for s3, azure and gcs, as in ferry's
    // own addresses; for the others it is where the data is.
    if let Some(endpoint) = props.remove("endpoint") {
        let target = match kind {
            "s3" | "azure" | "gcs" => "endpoint",
            "file" => "path",
            "kafka" => "brokers",
            _ => "url",
        };
        props.entry(target.to_string()).or_insert(endpoint);
    }
    props.insert("type".into(), Value::String(kind.into()));
    Some(Value::Object(props))
}

/// A field path in the manifest made from a message, as the message names it.
fn message_field(field: &str, source_field: &str, destination_field: &str) -> String {
    if field == "spec.execution.engine" {
        format!("properties.{EXECUTION_ENGINE}")
    } else if field == "spec.execution.prefer" {
        format!("properties.{EXECUTION_PREFER}")
    } else if let Some(rest) = field.strip_prefix("spec.source") {
        format!("{source_field}{rest}")
    } else if let Some(rest) = field.strip_prefix("spec.destination") {
        format!("{destination_field}{rest}")
    } else {
        field.to_string()
    }
}

#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) process_id: String,
    pub(crate) message_id: String,
}

fn check_message(msg: &FlowMessage) -> Result<Checked, Vec<FieldError>> {
    let mut errors = Vec::new();
    let process_id = msg.process_id.clone().unwrap_or_default();
    if msg.process_id.is_none() {
        errors.push(FieldError::new("processId", "required"));
    } else if let Err(reason) = check_process_id(&process_id) {
        errors.push(FieldError::new("processId", reason));
    }
    let message_id = msg.message_id.clone().unwrap_or_default();
    if message_id.is_empty() {
        errors.push(FieldError::new("messageId", "required"));
    }
    if let Some(url) = &msg.callback_address {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(FieldError::new(
                "callbackAddress",
                format!("'{url}' is not an http(s) URL"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Checked {
            process_id,
            message_id,
        })
    } else {
        Err(errors)
    }
}

/// The transfer manifest a flow message describes.
fn flow_manifest(msg: &FlowMessage, ids: &Checked) -> Result<Value, Vec<FieldError>> {
    let mut errors = Vec::new();
    let (source_field, source) = match (
        &msg.source_data_address,
        msg.metadata.get("sourceDataAddress"),
    ) {
        (Some(v), _) => ("sourceDataAddress", Some(v)),
        (None, Some(v)) => ("metadata.sourceDataAddress", Some(v)),
        (None, None) => ("sourceDataAddress", None),
    };
    let (destination_field, destination) = match (&msg.data_address, &msg.destination_data_address)
    {
        (Some(v), _) => ("dataAddress", Some(v)),
        (None, Some(v)) => ("destinationDataAddress", Some(v)),
        (None, None) => ("dataAddress", None),
    };
    let source = match source {
        Some(v) => address(v, source_field, &mut errors),
        None => {
            errors.push(FieldError::new(
                source_field,
                "required: the DataAddress ferry reads (ferry keeps no dataset catalog)",
            ));
            None
        }
    };
    let destination = match destination {
        Some(v) => address(v, destination_field, &mut errors),
        None => {
            errors.push(FieldError::new(
                destination_field,
                "required: the DataAddress ferry writes to (provider push)",
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(PROCESS_ID.to_string(), ids.process_id.clone());
    annotations.insert(MESSAGE_ID.to_string(), ids.message_id.clone());
    if let Some(url) = &msg.callback_address {
        annotations.insert(CALLBACK_ADDRESS.to_string(), url.clone());
    }
    for (key, value) in [
        ("ferry.dev/agreement-id", &msg.agreement_id),
        ("ferry.dev/dataset-id", &msg.dataset_id),
        ("ferry.dev/participant-id", &msg.participant_id),
        ("ferry.dev/counter-party-id", &msg.counter_party_id),
    ] {
        if let Some(v) = value {
            annotations.insert(key.to_string(), v.clone());
        }
    }
    let mut spec = json!({"source": source, "destination": destination});
    for (key, field) in [(EXECUTION_ENGINE, "engine"), (EXECUTION_PREFER, "prefer")] {
        if let Some(v) = msg.properties.get(key).or_else(|| msg.metadata.get(key)) {
            spec["execution"][field] = v.clone();
        }
    }
    let stream = msg
        .properties
        .get(STREAM)
        .or_else(|| msg.metadata.get(STREAM))
        .is_some_and(|v| v == &json!(true) || v == &json!("true"));
    let manifest = json!({
        "apiVersion": API_VERSION,
        "kind": if stream { "StreamTransfer" } else { "BatchTransfer" },
        "metadata": {
            "name": flow_transfer_name(&ids.process_id),
            "labels": {FLOW_LABEL: "true"},
            "annotations": annotations,
        },
        "spec": spec,
    });
    // Checked now, so a bad address fails the start, not the run.
    validate(manifest.clone()).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| FieldError {
                field: message_field(&e.field, source_field, destination_field),
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    Ok(manifest)
}

/// The source a pull flow serves: a file, S3 or Azure address, from `sourceDataAddress`
/// (or `metadata.sourceDataAddress`).
pub(crate) fn flow_source(
    msg: &FlowMessage,
    errors: &mut Vec<FieldError>,
) -> Option<(ferry_core::DataAddress, &'static str)> {
    let (field, value) = match (
        &msg.source_data_address,
        msg.metadata.get("sourceDataAddress"),
    ) {
        (Some(v), _) => ("sourceDataAddress", v),
        (None, Some(v)) => ("metadata.sourceDataAddress", v),
        (None, None) => {
            errors.push(FieldError::new(
                "sourceDataAddress",
                "required: the DataAddress ferry serves (ferry keeps no dataset catalog)",
            ));
            return None;
        }
    };
    let value = address(value, field, errors)?;
    let spec: ferry_engine::manifest::AddressSpec = match serde_json::from_value(value) {
        Ok(spec) => spec,
        Err(e) => {
            errors.push(FieldError::new(field, e.to_string()));
            return None;
        }
    };
    match spec.address(field) {
        Ok(
            address @ (ferry_core::DataAddress::Local { .. }
            | ferry_core::DataAddress::S3 { .. }
            | ferry_core::DataAddress::Azure { .. }
            | ferry_core::DataAddress::Gcs { .. }),
        ) => Some((address, field)),
        Ok(other) => {
            errors.push(FieldError::new(
                field,
                format!("{other}: a pull flow serves files, S3, Azure or GCS objects"),
            ));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(
                field,
                ferry_core::redact::redact(&e.to_string()),
            ));
            None
        }
    }
}

fn annotation<'a>(record: &'a TransferRecord, key: &str) -> Option<&'a str> {
    record.manifest["metadata"]["annotations"][key].as_str()
}

impl Controller {
    /// The engine a flow's properties name must be one of this data plane's that can do
    /// the flow; the error names the property.
    fn check_flow_execution(
        &self,
        manifest: &crate::resource::TransferManifest,
    ) -> ControlResult<()> {
        self.check_execution(manifest).map_err(|e| match e {
            ControlError::Invalid(errors) => ControlError::BadMessage(
                errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: message_field(&e.field, "", ""),
                        message: e.message,
                    })
                    .collect(),
            ),
            other => other,
        })
    }

    fn response(&self, process_id: &str, state: FlowState, error: Option<String>) -> FlowResponse {
        FlowResponse {
            dataplane_id: self.config().instance.clone(),
            process_id: process_id.to_string(),
            state,
            data_address: None,
            error,
        }
    }

    fn run_response(&self, run: &RunRecord) -> FlowResponse {
        let state = FlowState::of(run);
        let error = (state == FlowState::Terminated)
            .then(|| run.error.clone())
            .flatten();
        self.response(&run.id, state, error)
    }

    /// The transfer of a flow started by another control plane, if it exists.
    async fn flow_transfer(&self, process_id: &str) -> ControlResult<Option<TransferRecord>> {
        let name = flow_transfer_name(process_id);
        let record = self.store().get_transfer(&name).await?;
        Ok(record.filter(|r| annotation(r, PROCESS_ID) == Some(process_id)))
    }

    /// `POST /dataflows/prepare`: records the flow without moving data (state PREPARED).
    /// A message sent again gets the same answer.
    pub async fn flow_prepare(&self, msg: FlowMessage) -> ControlResult<FlowResponse> {
        let ids = check_message(&msg).map_err(ControlError::BadMessage)?;
        if let Some(destination) = crate::pull::pull_destination(msg.transfer_type.as_ref()) {
            return self.pull_start(&msg, &ids, &destination, true).await;
        }
        if let Some(run) = self.store().get_run(&ids.process_id).await? {
            return Err(ControlError::Conflict(format!(
                "data flow '{}' exists already ({:?})",
                ids.process_id,
                FlowState::of(&run)
            )));
        }
        if let Some(record) = self.flow_transfer(&ids.process_id).await? {
            if annotation(&record, MESSAGE_ID) == Some(ids.message_id.as_str()) {
                return Ok(self.response(&ids.process_id, FlowState::Prepared, None));
            }
            return Err(ControlError::Conflict(format!(
                "data flow '{}' exists already; a prepare is accepted once per processId",
                ids.process_id
            )));
        }
        let manifest = flow_manifest(&msg, &ids).map_err(ControlError::BadMessage)?;
        let manifest = validate(manifest).map_err(ControlError::BadMessage)?;
        self.check_flow_execution(&manifest)?;
        self.inner().create_record(&manifest).await?;
        let mut response = self.response(&ids.process_id, FlowState::Prepared, None);
        response.data_address = msg.data_address.or(msg.destination_data_address);
        Ok(response)
    }

    /// `POST /dataflows/start`: starts moving data (state STARTED). For a run a ferry
    /// control plane dispatched, the run from the shared store; otherwise a new flow made
    /// from the message, or the prepared one. The same message sent again, or a start of a
    /// flow executing here, gets the flow's state; a start of a flow that exists otherwise
    /// is refused.
    pub async fn flow_start(&self, msg: FlowMessage) -> ControlResult<FlowResponse> {
        let ids = check_message(&msg).map_err(ControlError::BadMessage)?;
        if let Some(destination) = crate::pull::pull_destination(msg.transfer_type.as_ref()) {
            return self.pull_start(&msg, &ids, &destination, false).await;
        }
        if self.pulls().contains(&ids.process_id) {
            return Err(ControlError::Conflict(format!(
                "data flow '{}' exists already as a pull flow",
                ids.process_id
            )));
        }
        let inner = self.inner();
        if let Some(url) = &msg.callback_address {
            lock(&inner.callback_addresses).insert(ids.process_id.clone(), url.clone());
        }
        if let Some(run) = self.store().get_run(&ids.process_id).await? {
            return self.start_existing(run, &ids).await;
        }
        let record = match self.flow_transfer(&ids.process_id).await? {
            Some(record) => record,
            None => {
                let manifest = flow_manifest(&msg, &ids).map_err(ControlError::BadMessage)?;
                let manifest = validate(manifest).map_err(ControlError::BadMessage)?;
                self.check_flow_execution(&manifest)?;
                inner.create_record(&manifest).await?
            }
        };
        let run = inner
            .new_run(&record, "signal", None, Some(ids.process_id.clone()))
            .await?;
        self.claim_and_spawn(run).await
    }

    async fn start_existing(&self, run: RunRecord, ids: &Checked) -> ControlResult<FlowResponse> {
        let inner = self.inner();
        // A flow another control plane started takes one start message: the same one
        // again gets the flow's state, another is refused.
        if let Some(record) = self.store().get_transfer(&run.transfer).await? {
            let external = annotation(&record, PROCESS_ID).is_some();
            let sent_again = annotation(&record, MESSAGE_ID) == Some(ids.message_id.as_str());
            if external && !sent_again {
                return Err(ControlError::Conflict(format!(
                    "data flow '{}' exists already ({:?}); a start is accepted once per processId",
                    run.id,
                    FlowState::of(&run)
                )));
            }
            if external {
                return Ok(self.run_response(&run));
            }
        }
        // A run a ferry control plane dispatched: started here unless it runs here already.
        let here = lock(&inner.active).contains_key(&run.id);
        if here || run.finished() || run.phase == SUSPENDED {
            return Ok(self.run_response(&run));
        }
        self.claim_and_spawn(run).await
    }

    /// Claims the run for this process and starts executing it.
    async fn claim_and_spawn(&self, run: RunRecord) -> ControlResult<FlowResponse> {
        let inner = self.inner();
        if inner.draining() {
            return Err(ControlError::Conflict(format!(
                "data plane '{}' is stopping and takes no new flows",
                inner.config.instance
            )));
        }
        let now = now_ms();
        let lease_until = now + inner.config.lease.as_millis() as i64;
        let claimed = match self
            .store()
            .claim_run(&run.id, &inner.config.instance, lease_until, now)
            .await?
        {
            Some(claimed) => claimed,
            None => {
                // Not claimed now: someone else holds it, or this process's own control
                // loop was writing the row at that moment (claims skip locked rows).
                let current = self.flow_run(&run.id).await?;
                if current.owner.as_deref() != Some(inner.config.instance.as_str()) {
                    let owner = current.owner.unwrap_or_default();
                    return Err(ControlError::Conflict(format!(
                        "data flow '{}' executes on '{owner}' until its lease ends",
                        run.id
                    )));
                }
                current
            }
        };
        if claimed.finished() || claimed.phase == SUSPENDED {
            return Ok(self.run_response(&claimed));
        }
        let mut response = self.run_response(&claimed);
        let queued = {
            let active = lock(&inner.active);
            !active.contains_key(&claimed.id) && active.len() >= inner.config.max_active_runs
        };
        if queued {
            // At capacity: the claim holds it here, and the control loop starts it when a
            // run ends.
            response.state = FlowState::Starting;
            return Ok(response);
        }
        if !lock(&inner.active).contains_key(&claimed.id) {
            inner.clone().spawn_run(claimed.clone());
        }
        response.state = FlowState::Started;
        Ok(response)
    }

    async fn flow_run(&self, id: &str) -> ControlResult<RunRecord> {
        self.store()
            .get_run(id)
            .await?
            .ok_or_else(|| ControlError::Missing(format!("data flow '{id}' not found")))
    }

    /// Stops the flow's run where it is; its checkpoint stays, so a resume continues it.
    pub async fn flow_suspend(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> ControlResult<FlowResponse> {
        if let Some(answer) = self.pull_signal(id, FlowState::Suspended) {
            return answer;
        }
        let inner = self.inner();
        let run = self.flow_run(id).await?;
        if run.finished() {
            return Err(ControlError::Conflict(format!(
                "data flow '{id}' is {:?}, which is final",
                FlowState::of(&run)
            )));
        }
        if run.phase == SUSPENDED {
            return Ok(self.run_response(&run));
        }
        self.check_owner(&run)?;
        let active = lock(&inner.active).remove(id);
        if let Some(a) = &active {
            a.task.abort();
        }
        // Read again: the attempt may have ended while it was being stopped.
        let mut run = self.flow_run(id).await?;
        if run.finished() {
            return Ok(self.run_response(&run));
        }
        run.phase = SUSPENDED.into();
        if let Some(a) = &active {
            run.stats = with_progress(&run.stats, &a.tracker);
        }
        self.store().put_run(&run).await?;
        self.store().release_run(id, &inner.config.instance).await?;
        let why = reason.unwrap_or_else(|| "the control plane asked".into());
        inner
            .emit(
                &run.transfer,
                Some(id),
                "Normal",
                "RunSuspended",
                format!("run {id} suspended: {why}; it resumes from its checkpoint"),
                json!({"reason": why}),
            )
            .await;
        inner.refresh_status(&run.transfer).await?;
        Ok(self.run_response(&run))
    }

    /// Starts a suspended flow's run again, from its checkpoint.
    pub async fn flow_resume(&self, id: &str) -> ControlResult<FlowResponse> {
        if let Some(answer) = self.pull_signal(id, FlowState::Started) {
            return answer;
        }
        let mut run = self.flow_run(id).await?;
        if run.phase != SUSPENDED {
            if !run.finished() && lock(&self.inner().active).contains_key(id) {
                return Ok(self.run_response(&run));
            }
            return Err(ControlError::Conflict(format!(
                "data flow '{id}' is {:?}, not SUSPENDED",
                FlowState::of(&run)
            )));
        }
        run.phase = "Pending".into();
        self.store().put_run(&run).await?;
        self.claim_and_spawn(run).await
    }

    /// Ends the flow for good (TERMINATED); what it wrote stays.
    pub async fn flow_terminate(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> ControlResult<FlowResponse> {
        if let Some(answer) = self.pull_signal(id, FlowState::Terminated) {
            return answer;
        }
        let inner = self.inner();
        let run = match self.store().get_run(id).await? {
            Some(run) => run,
            None => {
                // Prepared, never started: it ends with a cancelled run to say so.
                let Some(record) = self.flow_transfer(id).await? else {
                    return Err(ControlError::Missing(format!("data flow '{id}' not found")));
                };
                inner
                    .new_run(&record, "signal", None, Some(id.to_string()))
                    .await?
            }
        };
        if run.phase == "Succeeded" {
            return Err(ControlError::Conflict(format!(
                "data flow '{id}' is COMPLETED, which is final"
            )));
        }
        if run.finished() {
            return Ok(self.run_response(&run));
        }
        self.check_owner(&run)?;
        let why = format!(
            "terminated: {}",
            reason.unwrap_or_else(|| "the control plane asked".into())
        );
        inner.finish_cancelled(&run, &why).await?;
        Ok(self.run_response(&self.flow_run(id).await?))
    }

    /// The counterpart says the transmission is complete: fine for a flow that completed
    /// or was only prepared; a flow still moving data completes by itself.
    pub async fn flow_completed(&self, id: &str) -> ControlResult<FlowResponse> {
        if let Some(answer) = self.pull_signal(id, FlowState::Completed) {
            return answer;
        }
        let inner = self.inner();
        let run = match self.store().get_run(id).await? {
            Some(run) => run,
            None => {
                let Some(record) = self.flow_transfer(id).await? else {
                    return Err(ControlError::Missing(format!("data flow '{id}' not found")));
                };
                let mut run = inner
                    .new_run(&record, "signal", None, Some(id.to_string()))
                    .await?;
                run.phase = "Succeeded".into();
                run.finished_at = Some(now_ms());
                self.store().put_run(&run).await?;
                inner.refresh_status(&run.transfer).await?;
                run
            }
        };
        match FlowState::of(&run) {
            FlowState::Completed => Ok(self.run_response(&run)),
            state => Err(ControlError::Conflict(format!(
                "data flow '{id}' is {state:?}; ferry completes a flow when its data has moved"
            ))),
        }
    }

    /// A data plane says a run it executes started, completed or errored: the run's
    /// record is in the shared store already, so the control loop looks again now.
    pub fn flow_notified(&self, id: &str, event: &str) {
        tracing::debug!(run = id, event, "data plane callback");
        self.inner().wake.notify_one();
        self.inner().pipeline_wake.notify_one();
    }

    /// `GET /dataflows/{id}`.
    pub async fn flow_status(&self, id: &str) -> ControlResult<FlowStatus> {
        if let Some(status) = self.pull_status(id) {
            return Ok(status);
        }
        let dataplane_id = self.config().instance.clone();
        if let Some(run) = self.store().get_run(id).await? {
            let response = self.run_response(&run);
            let view = self.inner().run_view(&run);
            return Ok(FlowStatus {
                dataflow_id: run.id.clone(),
                state: response.state,
                dataplane_id,
                error: response.error,
                transfer: run.transfer,
                run: Some(view),
                endpoint: None,
            });
        }
        match self.flow_transfer(id).await? {
            Some(record) => Ok(FlowStatus {
                dataflow_id: id.to_string(),
                state: FlowState::Prepared,
                dataplane_id,
                error: None,
                transfer: record.name,
                run: None,
                endpoint: None,
            }),
            None => Err(ControlError::Missing(format!("data flow '{id}' not found"))),
        }
    }

    /// Only the process holding a live claim on a run may stop it.
    fn check_owner(&self, run: &RunRecord) -> ControlResult<()> {
        let me = &self.config().instance;
        match (&run.owner, run.lease_until) {
            (Some(owner), Some(until)) if owner != me && until > now_ms() => {
                Err(ControlError::Conflict(format!(
                    "data flow '{}' executes on data plane '{owner}'; send this there",
                    run.id
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Inner {
    /// Tells the control plane that started a flow what became of it.
    pub(crate) fn notify_flow(&self, run: &RunRecord, record: &TransferRecord, event: FlowEvent) {
        let address = lock(&self.callback_addresses)
            .get(&run.id)
            .cloned()
            .or_else(|| annotation(record, CALLBACK_ADDRESS).map(str::to_string));
        let Some(address) = address else {
            return;
        };
        if event != FlowEvent::Started {
            lock(&self.callback_addresses).remove(&run.id);
        }
        let state = FlowState::of(run);
        let stats = RunView::of(run).stats;
        let body = json!({
            "dataplaneId": self.config.instance,
            "processId": run.id,
            "state": state,
            "error": run.error.as_ref().filter(|_| event == FlowEvent::Errored),
            "numRecords": stats.num_records,
            "bytes": stats.bytes,
        });
        let url = format!(
            "{}/transfers/{}/dataflow/{}",
            address.trim_end_matches('/'),
            run.id,
            event.path()
        );
        self.callbacks.send(url, body);
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Delivers callbacks in order, each with retries, from one task; a full queue drops
/// (and logs) rather than holding a run up.
#[derive(Clone)]
pub struct Callbacks {
    tx: Option<mpsc::Sender<(String, Value)>>,
}

const CALLBACK_QUEUE: usize = 1024;
const CALLBACK_ATTEMPTS: u32 = 6;
const CALLBACK_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(10),
    factor: 2.0,
};

impl Callbacks {
    /// Starts the delivery task on the current runtime; without a runtime (unit tests that
    /// build a controller outside one), callbacks are dropped.
    pub fn start(token: Option<String>) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self { tx: None };
        };
        let (tx, mut rx) = mpsc::channel::<(String, Value)>(CALLBACK_QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok();
        runtime.spawn(async move {
            let Some(client) = client else { return };
            while let Some((url, body)) = rx.recv().await {
                deliver(&client, token.as_deref(), &url, &body).await;
            }
        });
        Self { tx: Some(tx) }
    }

    fn send(&self, url: String, body: Value) {
        if let Some(tx) = &self.tx {
            if tx.try_send((url.clone(), body)).is_err() {
                tracing::warn!("callback to {} dropped: too many waiting", redact_url(&url));
            }
        }
    }
}

async fn deliver(client: &reqwest::Client, token: Option<&str>, url: &str, body: &Value) {
    let build = || {
        let request = client.post(url).json(body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let label = redact_url(url);
    if let Err(error) =
        post_with_retries(build, CALLBACK_ATTEMPTS, &CALLBACK_BACKOFF, true, &label).await
    {
        tracing::warn!("callback to {label} failed: {error}");
    }
}

/// A URL without its user information.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_names_are_valid_transfer_names_and_distinct() {
        assert_eq!(flow_transfer_name("abc-1"), "flow-abc-1");
        let a = flow_transfer_name("Process/ID 1");
        let b = flow_transfer_name("process-id-1");
        assert_ne!(a, b);
        for id in ["Process/ID 1", "x".repeat(150).as_str(), "---", "UUID-4F2A"] {
            let name = flow_transfer_name(id);
            assert!(crate::resource::check_name(&name).is_ok(), "{name}");
        }
    }

    #[test]
    fn data_addresses_become_ferry_addresses() {
        let mut errors = Vec::new();
        let got = address(
            &json!({"@type": "DataAddress", "endpointType": "AmazonS3",
                    "endpointProperties": [{"name": "bucketName", "value": "lake"},
                                           {"name": "key", "value": "in/"},
                                           {"name": "endpoint", "value": "http://127.0.0.1:9000"}]}),
            "dataAddress",
            &mut errors,
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            got,
            json!({"type": "s3", "bucket": "lake", "key": "in/", "endpoint": "http://127.0.0.1:9000"})
        );
        let got = address(
            &json!({"type": "file", "endpoint": "/data/in"}),
            "sourceDataAddress",
            &mut errors,
        )
        .unwrap();
        assert_eq!(got, json!({"type": "file", "path": "/data/in"}));

        assert!(address(&json!({"type": "ftp"}), "dataAddress", &mut errors).is_none());
        assert!(address(&json!({"endpoint": "x"}), "dataAddress", &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["dataAddress.type", "dataAddress.type"]);
        assert!(errors[0].message.contains("'ftp'"), "{}", errors[0].message);
    }

    #[test]
    fn execution_properties_become_the_transfers_spec_execution() {
        let ids = Checked {
            process_id: "p1".into(),
            message_id: "m1".into(),
        };
        let mut msg = FlowMessage {
            source_data_address: Some(json!({"type": "file", "path": "/in/"})),
            data_address: Some(json!({"type": "file", "path": "/out/"})),
            ..FlowMessage::default()
        };
        msg.properties
            .insert(EXECUTION_ENGINE.into(), json!("rclone-eu"));
        msg.metadata
            .insert(EXECUTION_PREFER.into(), json!("throughput"));
        let manifest = flow_manifest(&msg, &ids).unwrap();
        assert_eq!(
            manifest["spec"]["execution"],
            json!({"engine": "rclone-eu", "prefer": "throughput"})
        );
        msg.properties
            .insert(EXECUTION_PREFER.into(), json!("soon"));
        let errors = flow_manifest(&msg, &ids).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["properties.ferry.execution.prefer"]);
    }

    #[test]
    fn a_message_names_every_field_at_fault() {
        let msg = FlowMessage {
            process_id: Some("a/b".into()),
            callback_address: Some("ftp://x".into()),
            data_address: Some(json!({"type": "file", "path": "/out/", "bogus": 1})),
            ..FlowMessage::default()
        };
        let errors = check_message(&msg).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["processId", "messageId", "callbackAddress"]);

        let ids = Checked {
            process_id: "p1".into(),
            message_id: "m1".into(),
        };
        let errors = flow_manifest(&msg, &ids).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["sourceDataAddress"]);
        let msg = FlowMessage {
            source_data_address: Some(json!({"type": "file", "path": "/in/"})),
            ..msg
        };
        let errors = flow_manifest(&msg, &ids).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.field.starts_with("dataAddress.bogus")),
            "{errors:?}"
        );
    }
}
