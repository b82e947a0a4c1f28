//! `dingtalk-relay`: turns CI job results and standup updates into DingTalk 日志.
pub mod sandbox;
pub mod config;
pub mod mapping;
pub mod sources;
pub mod dingtalk;
pub mod metrics;
pub mod store;
pub mod delivery;
pub mod inbound;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod cli;
