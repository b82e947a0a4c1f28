//! Integration tests: the real server on port 0 against the fake DingTalk.
#![allow(unreachable_pub)]

mod helpers;

mod admin;
mod delivery_retry;
mod digest;
mod exactly_once;
mod limits;
mod load;
mod metrics;
mod native_events;
mod process;
mod shared_limit;
mod sources;
mod store_contract;
mod token_cache;
mod webhook;
