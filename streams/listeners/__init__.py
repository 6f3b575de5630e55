"""Network listeners of the hospital feeds (MLLP, FHIR gateway) and their Kafka publisher."""
