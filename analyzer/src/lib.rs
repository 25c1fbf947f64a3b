//! flowmesh's analyzer: reads the collector's database (read-only), flags
//! RTT and loss anomalies per path and window ([`detect`]), localizes them
//! to a host, a rack or a pair of racks with the topology ([`localize`]),
//! and reports them ([`report`]), also as Prometheus metrics ([`results`]).

pub mod detect;
pub mod html;
pub mod localize;
pub mod model;
pub mod report;
pub mod results;
