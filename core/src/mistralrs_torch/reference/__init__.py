"""Reference documents generated from the installed manifests: the support matrix and the features reference."""

from mistralrs_torch.reference._features_doc import features_reference_markdown
from mistralrs_torch.reference._matrix import support_matrix_markdown

__all__ = ["features_reference_markdown", "support_matrix_markdown"]
