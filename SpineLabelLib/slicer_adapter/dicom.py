"""Which DICOM files a Slicer volume node was loaded from (for the panel's "Export DICOM SEG").

Slicer's DICOM scalar-volume plugin records the loaded instances in the node attribute
``DICOM.instanceUIDs`` (space-separated SOP Instance UIDs); its DICOM database maps each UID to a
file (``fileForInstance``). A volume that came from a file (NIfTI, NRRD, the sample phantom) has no
such attribute: then there is no series for a SEG to reference, and the message says so.
"""
from __future__ import annotations

from ..core.errors import InputError

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
NOT_FROM_DICOM = ("{name}: this volume was not loaded from a DICOM series (load the series through the DICOM "
                  "module), so there is no series for a DICOM SEG to reference; the segments can still be "
                  "saved as .seg.nrrd")


def dicom_files_of(volume_node, database) -> list[str]:
    """The source files of a volume loaded by Slicer's DICOM module, or an InputError in one line."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids or database is None:
        raise InputError(NOT_FROM_DICOM.format(name=volume_node.GetName()))
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path]
    if missing:
        raise InputError(f"{volume_node.GetName()}: {len(missing)} of its DICOM instances are no longer in the "
                         "DICOM database; import the series again")
    return files
