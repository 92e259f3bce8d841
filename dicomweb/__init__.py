"""radhub's DICOMweb imaging archive: ingest, blob storage, QIDO-RS, WADO-RS, STOW-RS.

This package re-exports the backend-independent building blocks (PS3.18).
"""

from __future__ import annotations

from dicomweb.blob_errors import BlobError, BlobNotFound, InvalidBlobKey
from dicomweb.blobstore import BlobRef, BlobStore, FileBlobStore, blob_stem
from dicomweb.dicom_json import (
    format_tag_path,
    from_dicom_json,
    instance_uri_prefix,
    parse_tag_path,
    to_dicom_json,
)
from dicomweb.ingest_parse import (
    FAILURE_REASONS,
    InstanceHeader,
    InstanceRejected,
    ParsedInstance,
    PixelDataLocation,
    parse_instance,
)
from dicomweb.multipart import (
    ContentType,
    MultipartError,
    OutPart,
    Part,
    boundary_of,
    iter_parts,
    new_boundary,
    parse_content_type,
    related_content_type,
    write_parts,
)
from dicomweb.pixel_codec import TranscodeError, transcode_to_explicit_le
from dicomweb.qido import (
    MATCHING_ATTRIBUTES,
    RETURN_ATTRIBUTES,
    Match,
    QidoError,
    QidoQuery,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    parse_qido,
    return_attributes,
    searchable_levels,
)
from dicomweb.qido_match import filter_records, matches
from dicomweb.transfer_syntax import (
    TRANSFER_SYNTAXES,
    NotAcceptable,
    TransferSyntax,
    can_decode,
    negotiate,
    parse_accept,
)
from dicomweb.warning_headers import warning_header

__all__ = [
    "FAILURE_REASONS",
    "MATCHING_ATTRIBUTES",
    "RETURN_ATTRIBUTES",
    "TRANSFER_SYNTAXES",
    "BlobError",
    "BlobNotFound",
    "BlobRef",
    "BlobStore",
    "ContentType",
    "FileBlobStore",
    "InstanceHeader",
    "InstanceRejected",
    "InvalidBlobKey",
    "Match",
    "MultipartError",
    "NotAcceptable",
    "OutPart",
    "ParsedInstance",
    "Part",
    "PixelDataLocation",
    "QidoError",
    "QidoQuery",
    "Range",
    "SingleValue",
    "TranscodeError",
    "TransferSyntax",
    "Universal",
    "ValueList",
    "Wildcard",
    "blob_stem",
    "boundary_of",
    "can_decode",
    "filter_records",
    "format_tag_path",
    "from_dicom_json",
    "instance_uri_prefix",
    "iter_parts",
    "matches",
    "negotiate",
    "new_boundary",
    "parse_accept",
    "parse_content_type",
    "parse_instance",
    "parse_qido",
    "parse_tag_path",
    "related_content_type",
    "return_attributes",
    "searchable_levels",
    "to_dicom_json",
    "transcode_to_explicit_le",
    "warning_header",
    "write_parts",
]
