//! `dingtalk-relay`: turns CI job results and standup updates into DingTalk 日志 (work
//! reports). It verifies webhooks, normalises them into events, renders them into the fields of
//! a report template, stores them durably, and creates the reports through DingTalk's API with
//! a cached app `access_token`, retrying what DingTalk rejects transiently.
//!
//! # Layout
//!
//! - [`config`]: settings, loading (YAML + `DINGTALK_RELAY__…` environment) and validation.
//! - [`sources`]: one parser per CI system, turning a webhook into an [`sources::Event`].
//! - [`mapping`]: pure; event + route → report contents (minijinja field templates, filters).
//! - [`inbound`]: the HTTP edge — webhook and admin listeners, authentication, error shape.
//! - [`store`]: the durable queue, delivery state and dedup keys (SQLite, PostgreSQL, memory).
//! - [`digest`]: digest mode — schedules, and folding a period's events into one report per
//!   group, made once across replicas.
//! - [`delivery`]: workers that create reports, retry with backoff, reconcile lost answers.
//! - [`quota`]: the monthly DingTalk call budget — counted in the store, shown, protected.
//! - [`dingtalk`]: the DingTalk client, token cache, wire model and error classifier.
//! - [`sandbox`]: an in-process DingTalk stand-in (`serve --sandbox`, tests).
//! - [`metrics`], [`telemetry`]: Prometheus series and logs.
//! - [`startup`], [`state`], [`cli`]: wiring, shared handler state, and the offline commands.

pub mod cli;
pub mod config;
pub mod delivery;
pub mod digest;
pub mod dingtalk;
pub mod inbound;
pub mod mapping;
pub mod metrics;
pub mod quota;
pub mod sandbox;
pub mod sources;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
