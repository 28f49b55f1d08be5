//! The Kafka bridge's produce API as a library: what a request must be and what each answer
//! is, so that the emulator's gateway tests answer kafka-log's batches as the bridge does.

pub mod api;
