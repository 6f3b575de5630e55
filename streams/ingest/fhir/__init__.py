"""FHIR R4 Observation and Bundle: bytes in, LabResults or Rejections out (pure)."""
