"""HL7 v2 ORU^R01: bytes in, LabResults or Rejections out (pure; no sockets, no Kafka)."""
