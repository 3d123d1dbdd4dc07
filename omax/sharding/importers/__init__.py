"""Importers: turn a model file or folder into blobs plus a ``Manifest``.

Each importer writes tensor and file blobs and returns the manifest; it never writes
the manifest blob or touches the catalog (``ModelStore`` does that last, so a failed
import leaves no visible model). Every failure is ``ImportFailed`` naming the file.
"""
