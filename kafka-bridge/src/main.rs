//! Kafka REST bridge (being built).
fn main() {}
