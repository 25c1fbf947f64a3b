//! NIC clock arithmetic: completion timestamps are counts of the NIC's
//! free-running clock, which is narrower than 64 bits (its
//! `completion_timestamp_mask`) and ticks at `hca_core_clock` kHz.

/// A NIC's free-running clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicClock {
    khz: u64,
    mask: u64,
}

impl NicClock {
    /// The clock of a device reporting `khz` (`hca_core_clock`) and
    /// `mask` (`completion_timestamp_mask`); `None` when either is zero,
    /// meaning the device has no completion timestamps.
    pub fn new(khz: u64, mask: u64) -> Option<NicClock> {
        (khz != 0 && mask != 0).then_some(NicClock { khz, mask })
    }

    /// Ticks from `earlier` to `later`, across a wrap of the counter.
    pub fn ticks_between(&self, earlier: u64, later: u64) -> u64 {
        later.wrapping_sub(earlier) & self.mask
    }

    /// Nanoseconds in `ticks`.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(self.khz)).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from `earlier` to `later`.
    pub fn elapsed_ns(&self, earlier: u64, later: u64) -> u64 {
        self.ticks_to_ns(self.ticks_between(earlier, later))
    }
}

/// Maps NIC clock readings to wall-clock time from one paired reading (the
/// NIC's clock and the host's wall clock read together). Readings within
/// half the counter's range of the pairing map correctly, before or after
/// it; pair again every few seconds to bound the drift between the clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    clock: NicClock,
    ticks: u64,
    wall_ns: u64,
}

impl Calibration {
    /// The pairing of NIC reading `ticks` with wall-clock `wall_ns`.
    pub fn new(clock: NicClock, ticks: u64, wall_ns: u64) -> Calibration {
        Calibration {
            clock,
            ticks: ticks & clock.mask,
            wall_ns,
        }
    }

    /// The clock this calibration is for.
    pub fn clock(&self) -> NicClock {
        self.clock
    }

    /// Wall-clock ns since the Unix epoch at NIC reading `ticks`.
    pub fn wall_ns(&self, ticks: u64) -> u64 {
        let ahead = self.clock.ticks_between(self.ticks, ticks);
        if ahead <= self.clock.mask / 2 {
            self.wall_ns.saturating_add(self.clock.ticks_to_ns(ahead))
        } else {
            let behind = self.clock.ticks_between(ticks, self.ticks);
            self.wall_ns.saturating_sub(self.clock.ticks_to_ns(behind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK_48: u64 = (1 << 48) - 1;

    #[test]
    fn a_device_without_timestamps_has_no_clock() {
        assert_eq!(NicClock::new(0, MASK_48), None);
        assert_eq!(NicClock::new(1_000_000, 0), None);
    }

    #[test]
    fn ticks_convert_at_the_clock_rate() {
        // 156.25 MHz, a common ConnectX core clock: 6.4 ns per tick.
        let clock = NicClock::new(156_250, MASK_48).unwrap();
        assert_eq!(clock.ticks_to_ns(156_250), 1_000_000);
        assert_eq!(clock.elapsed_ns(1_000, 1_005), 32);
        // 1 GHz: ticks are ns.
        let clock = NicClock::new(1_000_000, MASK_48).unwrap();
        assert_eq!(clock.elapsed_ns(10, 12_345), 12_335);
    }

    #[test]
    fn elapsed_time_survives_the_counter_wrapping() {
        let clock = NicClock::new(1_000_000, MASK_48).unwrap();
        // 100 ticks before the wrap to 50 after it.
        assert_eq!(clock.elapsed_ns(MASK_48 - 99, 50), 150);
        // Bits above the mask (a provider that leaves them set) are ignored.
        assert_eq!(clock.elapsed_ns(1 << 50, (1 << 50) + 7), 7);
    }

    #[test]
    fn calibration_maps_readings_before_and_after_the_pairing() {
        let clock = NicClock::new(1_000_000, MASK_48).unwrap();
        let cal = Calibration::new(clock, 5_000, 1_700_000_000_000_000_000);
        assert_eq!(cal.wall_ns(5_000), 1_700_000_000_000_000_000);
        assert_eq!(cal.wall_ns(7_500), 1_700_000_000_000_002_500);
        assert_eq!(cal.wall_ns(4_000), 1_699_999_999_999_999_000);
        // A pairing just before the wrap and a reading just after it.
        let cal = Calibration::new(clock, MASK_48 - 9, 1_000_000);
        assert_eq!(cal.wall_ns(10), 1_000_020);
        // And a reading before a pairing just after the wrap.
        let cal = Calibration::new(clock, 5, 1_000_000);
        assert_eq!(cal.wall_ns(MASK_48 - 4), 999_990);
    }

    #[test]
    fn network_rtt_from_nic_timestamps_excludes_the_responders_hold() {
        // Requester at 156.25 MHz, responder at 1 GHz, with unrelated
        // counters: each difference is taken on one clock only.
        let requester = NicClock::new(156_250, MASK_48).unwrap();
        let responder = NicClock::new(1_000_000, MASK_48).unwrap();
        let (t1, t4) = (MASK_48 - 1_000, 2_125); // 3 126 ticks = 20 006.4 ns
        let (t2, t3) = (900_000_000, 900_015_000); // held 15 µs
        let round_trip = requester.elapsed_ns(t1, t4);
        let held = responder.elapsed_ns(t2, t3);
        assert_eq!((round_trip, held), (20_006, 15_000));
        assert_eq!(round_trip - held, 5_006);
    }
}
