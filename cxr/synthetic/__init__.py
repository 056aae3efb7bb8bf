"""Synthetic chest X-ray archive laid out like MIMIC-CXR: the embedded demo dataset and fixture.

``generate_archive`` writes real DICOM files (CR/DX, MONOCHROME1/2, 10-16 bits, five transfer
syntaxes, fake PHI), MIMIC-style free-text reports with CheXpert labels that agree with them,
deliberately broken files, and the ground truth the tests and evaluations compare against.
"""

from cxr.synthetic.archive import ArchiveSummary, generate_archive
from cxr.synthetic.reports import OBSERVATIONS

__all__ = ["OBSERVATIONS", "ArchiveSummary", "generate_archive"]
