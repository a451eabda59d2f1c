//! The proxy's environment configuration (`weft_proxy::config::Config::from_env`).
//!
//! The input is lines of `NAME=VALUE` (the seeds use the real variable names;
//! the fuzzer mutates names and values). `from_env` must answer Ok or a list
//! of errors, each naming its variable, and never panic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use weft_api::consts::env;
use weft_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut vars: HashMap<String, String> = text
        .split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.replace("\\n", "\n")))
        .collect();
    // The one variable that makes from_env read a file: a fuzzed path could be
    // /dev/zero. The format of that file is the destinations target's.
    vars.remove(env::DESTINATIONS_FILE);
    match Config::from_env(&vars) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a problem");
            let _ = errors.to_string();
        }
    }
});
