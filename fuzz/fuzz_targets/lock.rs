#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imagelock::fuzz::lock(data));
