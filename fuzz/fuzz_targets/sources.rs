//! libFuzzer target: [`dingtalk_relay_fuzz::sources`] (see FUZZING.md for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dingtalk_relay_fuzz::sources(data));
