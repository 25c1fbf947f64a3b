//! Sampler batches and acknowledgements: the parsers never panic, and an
//! accepted batch re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire_format::{BatchAck, BatchBuilder, BatchView};

fuzz_target!(|bytes: &[u8]| {
    let _ = BatchAck::parse(bytes);
    let Ok(view) = BatchView::parse(bytes) else { return };
    // A batch whose histograms overlap or leave gaps is valid but does not
    // re-encode byte for byte; compare only the ones laid out in order.
    let mut next = 0usize;
    for path in view.paths {
        if path.histogram_offset.get() as usize != next {
            return;
        }
        next += path.histogram_len.get() as usize;
    }
    if next != view.histograms.len() {
        return;
    }
    let mut again = BatchBuilder::new(view.header.info());
    for path in view.paths {
        again.push_path(*path, view.histogram(path)).expect("fits");
    }
    view.completeness.iter().for_each(|c| again.push_completeness(*c));
    view.flows.iter().for_each(|s| again.push_flow(s.meta, s.record));
    view.probes.iter().for_each(|s| again.push_probe(s.meta, s.record));
    assert_eq!(again.encode().expect("fits"), bytes);
});
