//! ferry's control plane: keeps transfers as durable resources and runs them on schedules,
//! with retries, history, events, webhooks and secrets resolved at run time.

pub mod retry;
pub mod schedule;
pub mod secrets;
pub mod webhook;
