//! Tools around the service: the synthetic CDR generator ([`synth`]) that
//! the demo, tests and benchmarks share, a producer of synthetic CDRs into
//! a real Kafka ([`produce`]), the demo on an embedded Kafka ([`demo`]) and
//! the backfill from a file ([`import`]). Each runs the real pipeline; none
//! is a shortcut around it.

pub mod demo;
pub mod import;
pub mod produce;
pub mod synth;
