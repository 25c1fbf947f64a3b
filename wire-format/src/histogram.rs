//! RTT histograms in batches: the HdrHistogram V2 encoding (uncompressed),
//! with bounds a receiver checks before it allocates anything.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

/// Highest value an RTT histogram tracks: 2⁴³ ns, about 2.4 hours.
pub const RTT_HISTOGRAM_MAX_NS: u64 = 1 << 43;

/// Significant decimal digits of RTT histograms (0.1% value precision).
pub const RTT_HISTOGRAM_SIGFIGS: u8 = 3;

/// The HdrHistogram V2 cookie (uncompressed), with its word size bits.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_HEADER_LEN: usize = 40;

/// Why an encoded histogram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistogramError {
    /// Not an uncompressed HdrHistogram V2 encoding, or its header does not
    /// match its length.
    #[error("not an uncompressed HdrHistogram V2 encoding: {0}")]
    Format(&'static str),
    /// Precision or range beyond what flowmesh writes; refused so a hostile
    /// header cannot make the reader allocate without bound.
    #[error("histogram bounds out of range: {sigfigs} digits, highest {highest}")]
    Bounds {
        /// Significant digits in the header.
        sigfigs: u32,
        /// Highest trackable value in the header.
        highest: u64,
    },
    /// The counts payload did not decode.
    #[error("histogram payload: {0}")]
    Payload(String),
}

/// The quantile a window reports as its 99th percentile of `count` values
/// (`rtt_p99_ns`, `responder_delay_p99_ns`), for
/// [`Histogram::value_at_quantile`] (the ⌈q·n⌉-th smallest value).
///
/// The 99th percentile of fewer than 100 values is their maximum: one
/// probe — a descheduled responder, one packet behind a burst — would be
/// the window's tail, and a window of 50 probes would flag on it. Below 100
/// values the reported tail is the second-highest value; from 100 on it is
/// the 99th percentile, which has at least one value above it anyway. The
/// maximum is reported apart (`rtt_max_ns`).
pub fn tail_quantile(count: u64) -> f64 {
    if (2..100).contains(&count) {
        // ⌈n − 1.5⌉ = n − 1 whatever the rounding of the division.
        (count as f64 - 1.5) / count as f64
    } else {
        0.99
    }
}

/// An empty histogram with flowmesh's RTT bounds and precision.
pub fn new_rtt_histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 ≤ low, 2·low ≤ high, sigfigs ≤ 5.
    Histogram::new_with_bounds(1, RTT_HISTOGRAM_MAX_NS, RTT_HISTOGRAM_SIGFIGS)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Appends the V2 encoding of `histogram` to `out`; returns its length.
pub fn encode_histogram(histogram: &Histogram<u64>, out: &mut Vec<u8>) -> Result<usize, HistogramError> {
    V2Serializer::new()
        .serialize(histogram, out)
        .map_err(|e| HistogramError::Payload(e.to_string()))
}

/// Decodes a histogram written by [`encode_histogram`].
///
/// Checks the header first: uncompressed V2 only, the payload length equal to
/// the bytes present, at most [`RTT_HISTOGRAM_SIGFIGS`] digits and a highest
/// value of at most [`RTT_HISTOGRAM_MAX_NS`]. Memory use is therefore bounded
/// (about 300 KiB) whatever the input.
pub fn decode_histogram(bytes: &[u8]) -> Result<Histogram<u64>, HistogramError> {
    let header = bytes
        .get(..V2_HEADER_LEN)
        .ok_or(HistogramError::Format("shorter than the 40-byte header"))?;
    let word = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    if word(0) != V2_COOKIE {
        return Err(HistogramError::Format("wrong cookie"));
    }
    if word(4) as usize != bytes.len() - V2_HEADER_LEN {
        return Err(HistogramError::Format("payload length does not match"));
    }
    let sigfigs = word(12);
    let mut highest = [0u8; 8];
    highest.copy_from_slice(&header[24..32]);
    let highest = u64::from_be_bytes(highest);
    if sigfigs > u32::from(RTT_HISTOGRAM_SIGFIGS) || highest > RTT_HISTOGRAM_MAX_NS {
        return Err(HistogramError::Bounds { sigfigs, highest });
    }
    check_payload(&bytes[V2_HEADER_LEN..])?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| HistogramError::Payload(e.to_string()))
}

/// Most samples an encoded histogram may hold: 2⁴⁸, far above any window's
/// probe count, and low enough that 65 536 such histograms merge without
/// overflowing a `u64` total.
pub const MAX_HISTOGRAM_SAMPLES: u64 = 1 << 48;

/// Walks the payload's varints before hdrhistogram's decoder does, refusing
/// what hdrhistogram 7.5 mishandles (both found by the `histogram` fuzz
/// target): a zero-run of −2⁶³ (the zig-zag value `u64::MAX`), whose negation
/// overflows in the decoder, and counts summing past `u64::MAX`, which make
/// later quantile queries overflow. Totals above [`MAX_HISTOGRAM_SAMPLES`]
/// are refused.
///
/// The payload is a sequence of LEB128 varints of at most 9 bytes, the ninth
/// contributing all eight of its bits; each is a zig-zag encoded count, or a
/// run of zero counts when negative.
fn check_payload(payload: &[u8]) -> Result<(), HistogramError> {
    let mut rest = payload;
    let mut samples = 0u64;
    while !rest.is_empty() {
        let mut value = 0u64;
        let mut used = 0;
        for (i, &byte) in rest.iter().take(9).enumerate() {
            used = i + 1;
            if i == 8 {
                value |= u64::from(byte) << 56;
                break;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                break;
            }
        }
        let last = rest[used - 1];
        if used < 9 && last & 0x80 != 0 {
            return Err(HistogramError::Format("payload ends inside a varint"));
        }
        if value == u64::MAX {
            return Err(HistogramError::Format("zero-run length out of range"));
        }
        // Zig-zag: even values are counts (value / 2), odd ones zero-runs.
        if value & 1 == 0 {
            samples = samples.saturating_add(value >> 1);
            if samples > MAX_HISTOGRAM_SAMPLES {
                return Err(HistogramError::Format("more samples than MAX_HISTOGRAM_SAMPLES"));
            }
        }
        rest = &rest[used..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Below 100 values the tail is the second-highest, never one value;
    /// from 100 on, the 99th percentile.
    #[test]
    fn the_tail_of_few_values_is_never_one_value() {
        for n in [2u64, 3, 30, 50, 97, 99, 100, 101, 1_000] {
            let mut histogram = new_rtt_histogram();
            // Values 1..=n ms, each in a bucket of its own at this precision.
            for i in 1..=n {
                histogram.record(i * 1_000_000).unwrap();
            }
            let tail = histogram.value_at_quantile(tail_quantile(n));
            let rank = if n < 100 { n - 1 } else { (n * 99).div_ceil(100) };
            assert!(histogram.equivalent(tail, rank * 1_000_000), "n = {n}: {tail}");
        }
        assert_eq!(tail_quantile(1), 0.99);
    }

    #[test]
    fn round_trip_keeps_quantiles() {
        let mut histogram = new_rtt_histogram();
        for rtt in [20_000u64, 21_000, 25_000, 30_000, 400_000] {
            histogram.record(rtt).unwrap();
        }
        let mut bytes = Vec::new();
        let len = encode_histogram(&histogram, &mut bytes).unwrap();
        assert_eq!(len, bytes.len());
        let decoded = decode_histogram(&bytes).unwrap();
        assert_eq!(decoded.len(), 5);
        assert_eq!(decoded.value_at_quantile(0.5), histogram.value_at_quantile(0.5));
        assert_eq!(decoded.max(), histogram.max());
    }

    /// The input the fuzzer found: a zero-run varint of −2⁶³.
    #[test]
    fn overflowing_zero_run_is_refused() {
        let mut bytes = Vec::new();
        encode_histogram(&new_rtt_histogram(), &mut bytes).unwrap();
        bytes.truncate(V2_HEADER_LEN);
        bytes.extend_from_slice(&[0xff; 9]);
        bytes[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decode_histogram(&bytes),
            Err(HistogramError::Format("zero-run length out of range"))
        );
        // A varint cut short is refused too.
        bytes.truncate(V2_HEADER_LEN + 3);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(decode_histogram(&bytes), Err(HistogramError::Format(_))));
    }

    /// The second input the fuzzer found: counts whose sum overflows.
    #[test]
    fn overflowing_total_count_is_refused() {
        let crash = [
            0x1c, 0x84, 0x93, 0x13, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x00, 0x00, 0x01, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, //
            0x3f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, 0xff, 0xfa, 0x1c, 0x84, 0x93, 0xff, 0xff, //
            0xff, 0xff, 0xff, 0xff, 0xff, 0x8e, 0xff, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, //
            0xff, 0xff, 0x00, 0x01,
        ];
        assert_eq!(
            decode_histogram(&crash),
            Err(HistogramError::Format("more samples than MAX_HISTOGRAM_SAMPLES"))
        );
        let mut histogram = new_rtt_histogram();
        histogram.record_n(1_000, MAX_HISTOGRAM_SAMPLES).unwrap();
        let mut bytes = Vec::new();
        encode_histogram(&histogram, &mut bytes).unwrap();
        assert_eq!(decode_histogram(&bytes).unwrap().len(), MAX_HISTOGRAM_SAMPLES);
        histogram.record(1_000).unwrap();
        bytes.clear();
        encode_histogram(&histogram, &mut bytes).unwrap();
        assert!(decode_histogram(&bytes).is_err());
    }

    #[test]
    fn hostile_headers_are_refused_before_allocating() {
        let mut bytes = Vec::new();
        encode_histogram(&new_rtt_histogram(), &mut bytes).unwrap();
        let mut wide = bytes.clone();
        wide[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode_histogram(&wide), Err(HistogramError::Bounds { .. })));
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode_histogram(&long), Err(HistogramError::Format(_))));
        assert!(decode_histogram(&bytes[..10]).is_err());
        let mut compressed = bytes;
        compressed[3] = 0x14;
        assert!(matches!(decode_histogram(&compressed), Err(HistogramError::Format(_))));
    }
}
