"""Reference documents generated from the code: the support matrix, the features reference, the plugin API reference."""

from mistralrs_torch.reference._features_doc import features_reference_markdown
from mistralrs_torch.reference._matrix import support_matrix_markdown
from mistralrs_torch.reference._plugin_api import plugin_api_markdown

__all__ = ["features_reference_markdown", "plugin_api_markdown", "support_matrix_markdown"]
