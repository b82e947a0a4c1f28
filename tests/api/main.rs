//! Integration tests: the real server on port 0 against the fake DingTalk.
#![allow(unreachable_pub)]

mod helpers;

mod admin;
mod check_config;
mod delivery_retry;
mod digest;
mod exactly_once;
mod limits;
mod load;
mod metrics;
mod native_events;
mod process;
mod quota;
mod shared_limit;
mod sources;
mod store_contract;
mod store_faults;
mod token_cache;
mod webhook;
