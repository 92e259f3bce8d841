"""The information-model level of attributes beyond PS3.18's QIDO-RS tables, as data.

A search returns an attribute of its own level or a higher one, never of a
lower one (PS3.18 §10.6.3.3): ``includefield=Manufacturer`` on a study search
names a series attribute, and the study has no value of its own for it.
``qido.attribute_level`` reads these tables after the QIDO-RS ones: every
attribute of the patient group (0010) is of the study level, where the
archive keeps it (``records``); the keywords below are the Patient and Study
IE's others and the Series IE's; any other attribute, private ones included,
is of the instance level.
"""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword

PATIENT_GROUP = 0x0010


def _tags(keywords: str) -> frozenset[int]:
    """The tags of ``keywords``; a keyword pydicom does not know fails the import, so a
    misspelt one cannot drop out of a table unseen."""
    tags = {k: tag_for_keyword(k) for k in keywords.split()}
    if unknown := [k for k, tag in tags.items() if tag is None]:
        raise KeyError(f"unknown DICOM keywords: {unknown}")
    return frozenset(t for t in tags.values() if t is not None)


# PS3.3 C.7.2.1 General Study, C.7.2.2 Patient Study, C.7.2.3 Clinical Trial Study,
# C.7.1.3 Clinical Trial Subject; PS3.4 C.6.1.1.2-3 Patient and Study level keys.
# Those of group 0010 need no listing.
STUDY_TAGS = _tags("""
    StudyInstanceUID StudyDate StudyTime StudyID AccessionNumber IssuerOfAccessionNumberSequence
    StudyDescription ReferringPhysicianName ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName ConsultingPhysicianIdentificationSequence PhysiciansOfRecord
    PhysiciansOfRecordIdentificationSequence NameOfPhysiciansReadingStudy
    PhysiciansReadingStudyIdentificationSequence RequestingServiceCodeSequence
    ReferencedStudySequence ProcedureCodeSequence ReasonForPerformedProcedureCodeSequence
    ModalitiesInStudy SOPClassesInStudy AnatomicRegionsInStudyCodeSequence OtherStudyNumbers
    NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances ReferencedPatientSequence
    NumberOfPatientRelatedStudies NumberOfPatientRelatedSeries NumberOfPatientRelatedInstances
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence AdmissionID
    IssuerOfAdmissionIDSequence ServiceEpisodeID ServiceEpisodeDescription
    IssuerOfServiceEpisodeIDSequence ReasonForVisit ReasonForVisitCodeSequence PatientState
    ClinicalTrialSponsorName ClinicalTrialProtocolID ClinicalTrialProtocolName
    ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID ClinicalTrialSubjectReadingID
    ClinicalTrialProtocolEthicsCommitteeName ClinicalTrialProtocolEthicsCommitteeApprovalNumber
    ClinicalTrialTimePointID ClinicalTrialTimePointDescription
    LongitudinalTemporalOffsetFromEvent LongitudinalTemporalEventType
    ConsentForClinicalTrialUseSequence
""")

# PS3.3 C.7.3.1 General Series, C.7.3.2 Clinical Trial Series, C.7.4.1 Frame of
# Reference, C.7.4.2 Synchronization, C.7.5.1 General Equipment; PS3.4 C.6.1.1.4
# Series level keys. (AnatomicalOrientationType, General Series' but of group 0010,
# stays with the study, where the archive keeps it.)
SERIES_TAGS = _tags("""
    Modality SeriesInstanceUID SeriesNumber SeriesDate SeriesTime SeriesDescription
    SeriesDescriptionCodeSequence Laterality BodyPartExamined PatientPosition ProtocolName
    PerformingPhysicianName PerformingPhysicianIdentificationSequence OperatorsName
    OperatorIdentificationSequence ReferencedPerformedProcedureStepSequence RelatedSeriesSequence
    SmallestPixelValueInSeries LargestPixelValueInSeries RequestAttributesSequence
    PerformedProcedureStepID PerformedProcedureStepStartDate PerformedProcedureStepStartTime
    PerformedProcedureStepEndDate PerformedProcedureStepEndTime PerformedProcedureStepDescription
    PerformedProtocolCodeSequence CommentsOnThePerformedProcedureStep TreatmentSessionUID
    NumberOfSeriesRelatedInstances
    ClinicalTrialCoordinatingCenterName ClinicalTrialSeriesID ClinicalTrialSeriesDescription
    FrameOfReferenceUID PositionReferenceIndicator
    SynchronizationFrameOfReferenceUID SynchronizationTrigger TriggerSourceOrType
    SynchronizationChannel AcquisitionTimeSynchronized TimeSource TimeDistributionProtocol
    NTPSourceAddress
    Manufacturer ManufacturerModelName ManufacturerDeviceClassUID DeviceSerialNumber DeviceUID
    UDISequence SoftwareVersions GantryID SpatialResolution DateOfLastCalibration
    TimeOfLastCalibration InstitutionName InstitutionAddress InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence StationName
""")
