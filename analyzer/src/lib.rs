//! flowmesh's analyzer: reads the collector's database (read-only), flags
//! RTT and loss anomalies per path and window ([`detect`]), localizes them
//! to a host, a rack, a pair of racks or a pair of hosts with the topology ([`localize`]),
//! groups a flapping element's anomalies into incidents ([`incident`]) and
//! reports them ([`report`]), also as Prometheus metrics ([`results`]).

pub mod detect;
pub mod html;
pub mod incident;
pub mod localize;
pub mod model;
pub mod report;
pub mod results;
