//! Encoded RTT histograms: decoding never panics and never allocates beyond
//! the bounds decode_histogram checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(histogram) = wire_format::decode_histogram(bytes) {
        let _ = histogram.value_at_quantile(0.99);
    }
});
