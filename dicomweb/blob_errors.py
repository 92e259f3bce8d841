"""The blob store's errors, shared by ``blobstore`` and ``blob_gather``.

BlobError
├── InvalidBlobKey     -- not a key the store produced
└── BlobNotFound       -- nothing stored under the key
"""

from __future__ import annotations


class BlobError(Exception):
    """A blob operation failed; ``InvalidBlobKey`` and ``BlobNotFound`` refine it."""


class InvalidBlobKey(BlobError):
    """The key is not one this store produced (guards against path traversal)."""


class BlobNotFound(BlobError):
    """No blob is stored under the key."""
