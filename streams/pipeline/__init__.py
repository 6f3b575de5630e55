"""Framework-free pipeline: batches of Kafka records in, alerts, dead letters and states out;
the state store interface and its codec; the offline replay driver (docs/architecture.md)."""
