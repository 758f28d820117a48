//! ferry's control plane: keeps transfers as durable resources and runs them on schedules,
//! with retries, history, events, webhooks and secrets resolved at run time.
//!
//! - [`resource`]: what a transfer, its status, runs and events look like, and validation.
//! - [`controller`]: the loop that creates, claims and executes runs and keeps statuses.
//! - [`execute`]: one attempt of a run on the embedded data plane.
//! - [`schedule`], [`retry`], [`secrets`], [`webhook`], [`metrics`]: the parts it uses.

pub mod command;
pub mod controller;
pub mod dispatch;
pub mod engines;
pub mod execute;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod pull;
pub mod resource;
pub mod retry;
pub mod schedule;
pub mod secrets;
pub mod selector;
pub mod signaling;
pub mod webhook;

pub use controller::{ControlConfig, ControlError, ControlResult, Controller, Role};
pub use resource::{EventView, FieldError, Phase, RunView, TransferStatus, TransferView};
