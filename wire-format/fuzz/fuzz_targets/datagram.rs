//! Agent datagrams: the parser never panics, and every record it accepts
//! decodes to values that encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire_format::{Flow, Probe, Records, parse};
use zerocopy::IntoBytes;

fuzz_target!(|bytes: &[u8]| {
    let Ok(datagram) = parse(bytes) else { return };
    match datagram.records {
        Records::Flow(records) => {
            for record in records {
                let flow = Flow::from_record(record).expect("parse validated the record");
                assert_eq!(flow.to_record().as_bytes(), record.as_bytes());
            }
        }
        Records::Probe(records) => {
            for record in records {
                let probe = Probe::from_record(record).expect("parse validated the record");
                assert_eq!(probe.to_record().as_bytes(), record.as_bytes());
                let _ = record.network_rtt_ns();
            }
        }
    }
});
