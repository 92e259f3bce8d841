"""HL7 v2 over MLLP and DICOM DIMSE, translated to and from FHIR and DICOMweb
(arrives with its own issue)."""

__all__: list[str] = []
