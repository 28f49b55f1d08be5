//! Access log to Kafka filter (being built).
